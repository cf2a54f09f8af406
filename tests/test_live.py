"""Live update end to end: `tenantvm reload`, SIGHUP and the admin API on real servers.

A tenant ``app`` alternates between two versions, ``hello`` (answers ``Hello World!``) and
``echo`` (answers the request's body): under load from threads on 127.0.0.1, every answer must
be a 200 from one of the two, and the workers' file descriptors must come back to where they
were (the old instances are freed).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.httpserver import INTERFACES, Server, free_port, serve_command, server_env, start_server

pytestmark = pytest.mark.usefixtures("kvm")

TOKEN = "s3cret-token-for-tests"

CONFIG = """
[server]
default_tenant = "app"
inline_timeout_ms = 50
{server}

[tenants.app]
hosts = ["app.test"]
program = "{program}"
timeout_ms = {timeout}
pool_size = 2

[tenants.other]
hosts = ["other.test"]
program = "{apps}/hello"
timeout_ms = 50
pool_size = 1
"""

BODY = b"from-the-echo-version"
HELLO = b"Hello World!"


def write(path: Path, apps: Path, program: str, *, timeout: int = 2000, server: str = "") -> None:
    text = CONFIG.format(apps=apps, program=apps / program, timeout=timeout, server=server)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def reload(server: Server, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tenantvm", "reload", "--server", str(server.proc.pid), "--timeout", str(timeout)],
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=timeout + 30,
    )


def workers(server: Server) -> list[int]:
    pid = server.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children]


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss(pid: int) -> int:
    """Resident memory of ``pid`` (bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def answer(server: Server, client: httpx.Client | None = None) -> tuple[int, bytes]:
    c = client or server.client
    r = c.post("/", content=BODY, headers={"host": "app.test"})
    return r.status_code, r.content


def wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.fixture(params=INTERFACES)
def live(apps: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Server, Path]]:
    """`tenantvm serve --workers 2` serving ``app`` (first version: hello)."""
    config = tmp_path / "tenants.toml"
    write(config, apps, "hello")
    port = free_port()
    s = start_server(
        serve_command(config, port, workers=2, interface=request.param),
        tmp_path / "server.log",
        env=server_env(),
        port=port,
        workers=2,
        interface=request.param,
    )
    yield s, config
    s.stop()


def test_reloads_under_load_drop_nothing_and_free_the_old_instances(live: tuple[Server, Path], apps: Path) -> None:
    server, config = live
    # One round trip of versions first: what the workers hold open settles.
    for program in ("echo", "hello"):
        write(config, apps, program)
        assert reload(server).returncode == 0
    pids = workers(server)
    assert len(pids) == 2
    before = {pid: fds(pid) for pid in pids}
    rss_before = {pid: rss(pid) for pid in pids}

    seen: Counter[tuple[int, bytes]] = Counter()
    stop = threading.Event()
    errors: list[BaseException] = []

    def load() -> None:
        try:
            with httpx.Client(base_url=server.base_url, timeout=30) as c:
                while not stop.is_set():
                    seen[answer(server, c)] += 1
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(20):
            write(config, apps, "echo" if i % 2 == 0 else "hello")
            result = reload(server)
            assert result.returncode == 0, result.stdout + result.stderr
            assert result.stdout.count(": ok: ") == 2, result.stdout
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert set(seen) <= {(200, HELLO), (200, BODY)}, seen
    assert seen[(200, HELLO)] > 0, seen
    assert seen[(200, BODY)] > 0, seen
    # 22 reloads in all: the last one served hello again, at version 23 in every worker.
    assert answer(server) == (200, HELLO)
    assert server.metric("tenantvm_tenant_version", {"tenant": "app"}) == 23
    assert server.metric("tenantvm_tenant_version", {"tenant": "other"}) == 1  # never booted again
    assert server.metric("tenantvm_reloads_total", {"result": "ok"}) == 44

    # The old versions drain and are freed: the descriptors come back (20 leaked versions of
    # two instances would hold well over a hundred more).
    def flat() -> bool:
        return all(fds(pid) <= before[pid] + 4 for pid in pids)

    wait_for(flat)
    # Memory: each version's snapshot and instances go back too (20 kept versions would hold
    # their guest RAM and page tables: far more than this margin).
    grown = {pid: (rss(pid) - rss_before[pid]) >> 20 for pid in pids}
    assert all(mb < 48 for mb in grown.values()), f"RSS grew by {grown} MiB"


def test_an_invalid_file_or_a_failing_boot_leaves_the_server_unchanged(live: tuple[Server, Path], apps: Path) -> None:
    server, config = live
    assert answer(server) == (200, HELLO)
    # Invalid TOML: refused by the command itself, before the workers are asked.
    config.write_text(config.read_text() + "\njunk = [\n")
    result = reload(server)
    assert result.returncode == 2
    assert "invalid TOML" in result.stderr
    # A program that is no program: every worker refuses, saying why.
    write(config, apps, "echo")
    config.write_text(config.read_text().replace(str(apps / "echo"), str(config)))
    result = reload(server)
    assert result.returncode == 1
    assert result.stdout.count("REFUSED") == 2, result.stdout
    assert "failed to boot" in result.stdout
    assert "ELF" in result.stdout
    assert answer(server) == (200, HELLO)
    assert server.metric("tenantvm_tenant_version", {"tenant": "app"}) == 1
    assert server.metric("tenantvm_reloads_total", {"result": "failed"}) == 2
    # Invalid values reached through SIGHUP (the workers check the file themselves).
    write(config, apps, "echo", timeout=0)
    os.kill(server.proc.pid, signal.SIGHUP)
    wait_for(lambda: server.metric("tenantvm_reloads_total", {"result": "invalid"}) == 2)
    assert "timeout_ms" in server.output()
    assert answer(server) == (200, HELLO)
    # A good file after the bad ones is taken.
    write(config, apps, "echo")
    os.kill(server.proc.pid, signal.SIGHUP)
    wait_for(lambda: server.metric("tenantvm_reloads_total", {"result": "ok"}) == 2)
    assert all(answer(server, httpx.Client(base_url=server.base_url)) == (200, BODY) for _ in range(4))
    assert server.metric("tenantvm_tenant_version", {"tenant": "app"}) == 2


def test_only_changed_tenants_boot_again(live: tuple[Server, Path], apps: Path) -> None:
    server, config = live
    assert reload(server).returncode == 0  # nothing changed
    assert server.metric("tenantvm_tenant_version", {"tenant": "app"}) == 1
    # Same path, new program content: a change.
    program = config.parent / "prog"
    program.write_bytes((apps / "hello").read_bytes())
    config.write_text(
        config.read_text().replace(str(apps / "hello") + '"\ntimeout_ms = 2000', f'{program}"\ntimeout_ms = 2000')
    )
    assert reload(server).returncode == 0
    assert server.metric("tenantvm_tenant_version", {"tenant": "app"}) == 2
    tmp = program.with_suffix(".new")
    tmp.write_bytes((apps / "echo").read_bytes())
    os.replace(tmp, program)
    result = reload(server)
    assert result.returncode == 0
    assert "booted app" in result.stdout
    assert "other" not in result.stdout
    assert answer(server) == (200, BODY)
    assert server.metric("tenantvm_tenant_version", {"tenant": "app"}) == 3
    assert server.metric("tenantvm_tenant_version", {"tenant": "other"}) == 1
    last = server.get("/_tenantvm/stats").json()["last_reload"]
    assert last["ok"] is True
    assert "booted app" in last["message"]


def test_reload_without_a_server_fails_clearly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tenantvm", "reload", "--server", "1"], capture_output=True, text=True, env=server_env()
    )
    assert result.returncode == 2
    assert "no tenantvm server" in result.stderr


# --- the admin API ---------------------------------------------------------------------------


@pytest.fixture(scope="module", params=INTERFACES)
def admin(
    apps: Path, kvm: dict, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Server]:
    d = tmp_path_factory.mktemp(f"admin-{request.param}")
    config = d / "tenants.toml"
    token_file = d / "token"
    token_file.write_text(TOKEN + "\n")
    write(config, apps, "hello", server='admin_token_file = "token"\nadmin_max_upload_bytes = 4000000')
    port = free_port()
    s = start_server(
        serve_command(config, port, workers=2, interface=request.param),
        d / "server.log",
        env=server_env(),
        port=port,
        workers=2,
        interface=request.param,
    )
    yield s
    s.stop()


def put(server: Server, path: str, token: str | None, **kwargs: object) -> httpx.Response:
    headers = dict(kwargs.pop("headers", None) or {})  # type: ignore[call-overload]
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return server.client.put(path, headers=headers, **kwargs)  # type: ignore[arg-type]


def test_admin_api_refuses_missing_and_wrong_tokens(admin: Server, apps: Path) -> None:
    program = (apps / "echo").read_bytes()
    r = put(admin, "/_tenantvm/tenants/app", None, content=program)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    # Answered without reading the upload: the connection is not reused for another request.
    assert r.headers["connection"] == "close"
    r = admin.client.put("/_tenantvm/tenants/app", content=program, headers={"authorization": f"Basic {TOKEN}"})
    assert r.status_code == 403
    # Wrong tokens that a timing probe would try: a prefix, one more character, the right length
    # with the last character wrong, one character.
    for wrong in (TOKEN[:-1], TOKEN + "x", TOKEN[:-1] + "X", "x", TOKEN.upper()):
        assert put(admin, "/_tenantvm/tenants/app", wrong, content=program).status_code == 403, wrong
    assert admin.client.post("/", content=BODY, headers={"host": "app.test"}).content == HELLO
    assert admin.metric("tenantvm_tenant_version", {"tenant": "app"}) == 1


def test_admin_api_puts_a_new_program_and_settings(admin: Server, apps: Path) -> None:
    assert put(admin, "/_tenantvm/tenants/nobody", TOKEN, content=b"\x7fELF").status_code == 404
    assert put(admin, "/_tenantvm/tenants/app", TOKEN, content=b"#!/bin/sh\n").status_code == 400
    assert put(admin, "/_tenantvm/tenants/app", TOKEN, content=b"\x7fELF" + bytes(4_000_001)).status_code == 413
    assert admin.client.get("/_tenantvm/tenants/app").status_code == 405
    r = put(admin, "/_tenantvm/tenants/app", TOKEN, content=(apps / "echo").read_bytes())
    assert r.status_code == 200, r.text
    assert r.json()["outcome"]["booted"] == ["app"]
    # Every worker serves the new program once the answer came.
    for _ in range(6):
        assert answer(admin, httpx.Client(base_url=admin.base_url)) == (200, BODY)
    version = admin.metric("tenantvm_tenant_version", {"tenant": "app"})
    assert version == 2
    # Invalid settings: 422 with the reason, nothing changes.
    r = put(admin, "/_tenantvm/tenants/app", TOKEN, json={"pool_size": 0})
    assert r.status_code == 422
    assert "pool_size" in "".join(r.json()["outcome"]["problems"])
    assert admin.metric("tenantvm_tenant_version", {"tenant": "app"}) == version
    r = put(admin, "/_tenantvm/tenants/app", TOKEN, json={"pool_size": 3})
    assert r.status_code == 200, r.text
    assert admin.metric("tenantvm_pool_instances", {"tenant": "app"}) == 6
    assert answer(admin) == (200, BODY)


def test_admin_api_is_off_by_default(live: tuple[Server, Path], apps: Path) -> None:
    server, _ = live
    r = put(server, "/_tenantvm/tenants/app", TOKEN, content=(apps / "echo").read_bytes())
    assert r.status_code == 404
    assert "admin API is off" in r.text
