"""The HTTP platform end to end: real Granian servers (tenantvm.app:app) on 127.0.0.1.

The single-worker server runs once under each of Granian's interfaces (RSGI, its default, and
ASGI): every test that uses it runs against both.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.httpserver import (
    INTERFACES,
    Server,
    free_port,
    granian_command,
    parse_metric,
    run_until_exit,
    serve_command,
    server_env,
    start_server,
)

pytestmark = pytest.mark.usefixtures("kvm")

TENANTS = """
[server]
inline_timeout_ms = 50
retry_after_s = 2

[defaults]
pool_size = 2
queue_timeout_ms = 2000

[groups.fast]
memory_mb = 16
timeout_ms = 50

[tenants.hello]
group = "fast"
hosts = ["hello.test", "localhost"]
program = "{apps}/hello"

[tenants.counter]
group = "fast"
hosts = ["counter.test"]
program = "{apps}/counter"
mode = "stateful"
shared_memory_kb = 4
pool_size = 3

[tenants.echo]
hosts = ["echo.test"]
program = "{apps}/echo"
timeout_ms = 2000
max_request_bytes = 16384

[tenants.echo_fast]
group = "fast"
hosts = ["echo-fast.test"]
program = "{apps}/echo"

[tenants.calc]
group = "fast"
hosts = ["calc.test"]
program = "{apps}/calc"

[tenants.misbehave]
hosts = ["misbehave.test"]
program = "{apps}/misbehave"
timeout_ms = 300

[tenants.inline]
group = "fast"
hosts = ["inline.test"]
program = "{apps}/misbehave"
memory_mb = 64
timeout_ms = 50

[tenants.slow]
hosts = ["slow.test"]
program = "{apps}/misbehave"
timeout_ms = 10000
pool_size = 1
queue_timeout_ms = 200
"""

MULTI = """
[server]
default_tenant = "hello"
inline_timeout_ms = 50

[tenants.hello]
hosts = ["hello.test"]
program = "{apps}/hello"
timeout_ms = 50

[tenants.counter]
hosts = ["counter.test"]
program = "{apps}/counter"
mode = "stateful"
shared_memory_kb = 4
timeout_ms = 50

[tenants.misbehave]
hosts = ["misbehave.test"]
program = "{apps}/misbehave"
timeout_ms = 300
"""


def write_config(directory: Path, text: str, apps: Path, name: str = "tenants.toml") -> Path:
    path = directory / name
    path.write_text(text.replace("{apps}", str(apps)))
    return path


@pytest.fixture(scope="module", params=INTERFACES)
def server(
    apps: Path, kvm: dict, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Server]:
    """One worker, started as a plain `granian tenantvm.app:app` (RSGI) or with `--interface asgi`."""
    interface = request.param
    d = tmp_path_factory.mktemp(f"http-{interface}")
    config = write_config(d, TENANTS, apps)
    port = free_port()
    s = start_server(
        granian_command(port, interface=interface),
        d / "server.log",
        env=server_env(TENANTVM_CONFIG=str(config)),
        port=port,
        workers=1,
        interface=interface,
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def multi(apps: Path, kvm: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Two workers, started with `tenantvm serve --workers 2` (RSGI)."""
    d = tmp_path_factory.mktemp("multi")
    config = write_config(d, MULTI, apps)
    port = free_port()
    s = start_server(serve_command(config, port, workers=2), d / "server.log", env=server_env(), port=port, workers=2)
    yield s
    s.stop()


def health(server: Server) -> dict:
    r = server.get("/_tenantvm/health")
    assert r.status_code == 200, r.text
    return r.json()


# --- routing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["hello.test", "HELLO.Test", "hello.test:8080", "localhost:1", "LocalHost."])
def test_host_routing_ignores_port_and_case(server: Server, host: str) -> None:
    r = server.get("/", host=host)
    assert (r.status_code, r.text) == (200, "Hello World!")
    assert r.headers["content-type"] == "text/plain"


def test_unknown_host_is_404_with_a_clear_message(server: Server) -> None:
    r = server.get("/", host="nobody.test")
    assert r.status_code == 404
    assert "no tenant serves the host name 'nobody.test'" in r.text
    assert r.headers["content-type"].startswith("text/plain")


def test_missing_host_is_404_without_a_default_tenant(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.0 404") or data.startswith(b"HTTP/1.1 404"), data[:100]
    assert b"no tenant serves" in data


def test_unknown_host_goes_to_the_default_tenant(multi: Server) -> None:
    r = multi.fresh("GET", "/", host="whatever.example")
    assert (r.status_code, r.text) == (200, "Hello World!")


def test_head_request_has_headers_and_no_body(server: Server) -> None:
    r = server.request("HEAD", "/", host="hello.test")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-length"] == str(len("Hello World!"))


# --- round trips -----------------------------------------------------------------------------


def test_echo_round_trips_method_path_query_headers_body(server: Server) -> None:
    body = bytes(range(256)) * 20
    r = server.client.request(
        "PUT",
        "/a%20b/c%2Fd?x=1&y=%20z&flag",
        headers={"host": "echo.test", "X-Custom": "v a l", "X-Other": "2"},
        content=body,
    )
    assert r.status_code == 200
    assert r.content == body
    assert r.headers["x-echo-method"] == "PUT"
    # RSGI gives the application the decoded path only: re-encoded, %2F comes out as "/".
    assert r.headers["x-echo-path"] == ("/a%20b/c%2Fd" if server.interface == "asgi" else "/a%20b/c/d")
    assert r.headers["x-echo-query"] == "x=1&y=%20z&flag"
    assert r.headers["x-echo-h-x-custom"] == "v a l"
    assert r.headers["x-echo-h-x-other"] == "2"
    assert r.headers["x-echo-h-host"] == "echo.test"
    assert r.headers["content-length"] == str(len(body))


def test_chunked_body_within_the_limit_reaches_the_guest(server: Server) -> None:
    parts = [b"x" * 1000, b"y" * 1000, b"z"]
    r = server.request("POST", "/", host="echo.test", content=iter(parts))
    assert r.status_code == 200
    assert r.content == b"".join(parts)


def test_calc_json_api(server: Server) -> None:
    r = server.request("POST", "/calc", host="calc.test", json={"op": "add", "a": 1, "b": 2})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"result": 3}
    assert server.get("/calc?op=mul&a=-1.5&b=4", host="calc.test").json() == {"result": -6}
    assert server.get("/calc?op=div&a=7&b=2", host="calc.test").json() == {"result": 3.5}
    r = server.request("POST", "/calc", host="calc.test", json={"op": "sub", "b": 0.5, "a": 2, "note": [1, {}]})
    assert r.json() == {"result": 1.5}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"op": "add", "a": 1, "b": 2', "expected"),
        (b"not json", "JSON object"),
        (b'{"op": "pow", "a": 1, "b": 2}', "unknown op"),
        (b'{"op": "div", "a": 1, "b": 0}', "division by zero"),
        (b'{"op": "add", "a": "1", "b": 2}', "must be a number"),
        (b'{"op": "add", "a": 1}', "missing b"),
        (b"[" * 10_000, "JSON object"),
    ],
)
def test_calc_rejects_bad_input_with_json_400(server: Server, body: bytes, error: str) -> None:
    r = server.request("POST", "/calc", host="calc.test", content=body)
    assert r.status_code == 400
    assert error in r.json()["error"]


def test_calc_other_paths_are_json_404(server: Server) -> None:
    r = server.get("/nothing", host="calc.test")
    assert r.status_code == 404
    assert "error" in r.json()


# --- failures ---------------------------------------------------------------------------------


def test_guest_timeout_is_504_and_the_instance_serves_again(server: Server) -> None:
    r = server.get("/spin", host="misbehave.test")
    assert r.status_code == 504
    assert r.headers["x-tenantvm-error"] == "timeout"
    assert server.get("/count", host="misbehave.test").text == "1"
    assert "tenant misbehave" in server.output()


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/fault", "fault"),
        ("/illegal", "fault"),
        ("/badptr", "fault"),
        ("/exit", "no_response"),
        ("/abort", "no_response"),
        ("/wait", "no_response"),
        ("/big", "response_too_large"),
        ("/oom", "out_of_memory"),
    ],
)
def test_guest_failures_are_502(server: Server, path: str, kind: str) -> None:
    r = server.get(path, host="misbehave.test")
    assert r.status_code == 502
    assert r.headers["x-tenantvm-error"] == kind
    assert server.get("/count", host="misbehave.test").text == "1"


def test_inline_timeout_is_504_and_moves_the_tenant_to_threads(server: Server) -> None:
    assert health(server)["tenants"]["inline"]["calls"] == "inline"
    r = server.get("/spin", host="inline.test")
    assert r.status_code == 504
    assert health(server)["tenants"]["inline"]["calls"] == "threaded"
    assert server.get("/", host="inline.test").text == "ok"


def test_body_over_the_limit_by_content_length_is_413(server: Server) -> None:
    r = server.request("POST", "/", host="echo.test", content=b"x" * 20_000)
    assert r.status_code == 413
    assert "limit" in r.text
    assert "x-echo-method" not in r.headers


def test_chunked_body_over_the_limit_is_413(server: Server) -> None:
    sent = []

    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            sent.append(1)
            yield b"y" * 1024

    r = server.request("POST", "/", host="echo.test", content=chunks())
    assert r.status_code == 413
    # Refused by the server while the body streamed in, not by the VMM once it was all read.
    assert "request body is over" in r.text
    assert r.headers["connection"] == "close"
    assert "x-echo-method" not in r.headers
    assert server.get("/", host="echo.test").status_code == 200


def test_request_just_under_the_body_limit_but_over_the_vm_limit_is_413(server: Server) -> None:
    # The body fits the limit, but the encoded request (headers too) does not.
    r = server.request("POST", "/", host="echo.test", content=b"x" * 16000, headers={"x-pad": "p" * 1000})
    assert r.status_code == 413


def test_no_free_instance_is_503_with_retry_after(server: Server) -> None:
    results: list[int] = []

    def slow() -> None:
        with_client = server.fresh("GET", "/sleep?ms=3000", host="slow.test")
        results.append(with_client.status_code)

    t = threading.Thread(target=slow)
    t.start()
    try:
        for _ in range(300):  # until the slow request holds the only instance
            if health(server)["tenants"]["slow"]["busy"] == 1:
                break
            time.sleep(0.01)
        else:
            pytest.fail("the slow request never started")
        r = server.fresh("GET", "/", host="slow.test")
        assert r.status_code == 503
        assert r.headers["retry-after"] == "2"
        assert r.headers["x-tenantvm-error"] == "pool_busy"
        assert server.get("/", host="hello.test").status_code == 200  # others are served meanwhile
    finally:
        t.join()
    assert results == [200]
    assert server.get("/", host="slow.test").text == "ok"


def test_a_tenant_crashing_every_other_request_does_not_disturb_others(server: Server) -> None:
    statuses: dict[str, list[int]] = {"hello": [], "fault": []}
    for _ in range(30):
        statuses["fault"].append(server.get("/fault", host="misbehave.test").status_code)
        statuses["hello"].append(server.get("/", host="hello.test").status_code)
    assert statuses["hello"] == [200] * 30
    assert statuses["fault"] == [502] * 30
    r = server.get("/count", host="misbehave.test")
    assert (r.status_code, r.text) == (200, "1")


def test_crashes_interleaved_across_threads(server: Server) -> None:
    def one(i: int) -> tuple[str, int]:
        if i % 2:
            return "fault", server.fresh("GET", "/crash-odd", host="misbehave.test").status_code
        return "hello", server.fresh("GET", "/", host="hello.test").status_code

    with ThreadPoolExecutor(6) as ex:
        results = list(ex.map(one, range(60)))
    assert {s for k, s in results if k == "hello"} == {200}
    # ephemeral: every request is the instance's first since the snapshot (odd): it faults
    assert {s for k, s in results if k == "fault"} == {502}


def test_concurrent_requests_batched_on_the_loop_each_get_their_own_answer(server: Server) -> None:
    """Inline calls that arrive together run as batches: no answer may go to another request."""

    def one(i: int) -> tuple[int, str, bytes, bytes]:
        body = f"request {i} ".encode() * (1 + i % 7)
        r = server.fresh("POST", f"/item/{i}", host="echo-fast.test", content=body)
        return i, r.headers.get("x-echo-path", ""), r.content, body

    with ThreadPoolExecutor(12) as ex:
        results = list(ex.map(one, range(240)))
    for i, path, got, sent in results:
        assert (path, got) == (f"/item/{i}", sent)
    text = server.get("/_tenantvm/metrics").text
    served = parse_metric(text, "tenantvm_batch_size_sum", {"tenant": "echo_fast"})
    assert served >= 240, "every request went through the batcher"


# --- observability and the reserved prefix --------------------------------------------------


def test_metrics_endpoint(server: Server) -> None:
    before = server.metric("tenantvm_requests_total", {"tenant": "calc", "status": "200"})
    for _ in range(3):
        server.get("/calc?op=add&a=1&b=1", host="calc.test")
    server.get("/fault", host="misbehave.test")
    r = server.get("/_tenantvm/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert parse_metric(text, "tenantvm_requests_total", {"tenant": "calc", "status": "200"}) == before + 3
    assert parse_metric(text, "tenantvm_guest_errors_total", {"tenant": "misbehave", "error": "fault"}) >= 1
    assert parse_metric(text, "tenantvm_request_duration_seconds_count", {"tenant": "calc"}) >= 3
    assert parse_metric(text, "tenantvm_resets_total", {"tenant": "calc"}) >= 3
    assert parse_metric(text, "tenantvm_pool_instances", {"tenant": "counter"}) == 3
    assert parse_metric(text, "tenantvm_pool_busy", {"tenant": "counter"}) == 0
    assert parse_metric(text, "tenantvm_workers") == 1


def test_health_endpoint(server: Server) -> None:
    data = health(server)
    assert data["ok"] is True
    assert set(data["tenants"]) == {"hello", "counter", "echo", "echo_fast", "calc", "misbehave", "inline", "slow"}
    counter = data["tenants"]["counter"]
    assert (counter["size"], counter["mode"], counter["hosts"]) == (3, "stateful", ["counter.test"])
    assert counter["idle"] + counter["busy"] == 3
    assert data["tenants"]["echo"]["calls"] == "vcpu-thread"
    assert data["tenants"]["hello"]["calls"] == "inline"


@pytest.mark.parametrize("host", ["echo.test", "hello.test", "nobody.test"])
def test_reserved_prefix_cannot_be_shadowed(server: Server, host: str) -> None:
    r = server.get("/_tenantvm/metrics", host=host)
    assert r.status_code == 200
    assert "tenantvm_requests_total" in r.text
    assert "x-echo-method" not in r.headers
    for method, path in [
        ("GET", "/_tenantvm/anything"),
        ("POST", "/_tenantvm/x/y"),
        ("GET", "/_tenantvm"),
        ("GET", "/%5Ftenantvm/health/x"),
    ]:
        r = server.request(method, path, host=host)
        assert r.status_code == 404, (method, path)
        assert "x-echo-method" not in r.headers
    r = server.request("POST", "/_tenantvm/health", host=host)
    assert r.status_code == 405
    assert "x-echo-method" not in r.headers


def test_paths_that_only_start_like_the_reserved_prefix_reach_the_tenant(server: Server) -> None:
    for path in ("/_tenantvmx", "/_tenantvm.metrics", "/_TENANTVM/metrics"):
        r = server.get(path, host="echo.test")
        assert (r.status_code, r.headers.get("x-echo-path")) == (200, path)


# --- several workers --------------------------------------------------------------------------


def by_worker(server: Server, attempts: int = 200) -> dict[int, dict]:
    """The health of every worker (fresh connections until each has answered)."""
    seen: dict[int, dict] = {}
    for _ in range(attempts):
        r = server.fresh("GET", "/_tenantvm/health")
        seen[int(r.headers["x-tenantvm-worker"])] = r.json()
        if len(seen) == server.workers:
            break
    return seen


def count_of(text: str) -> int:
    words = text.split()
    assert (words[0], words[2]) == ("Hello", "World!"), text
    return int(words[1])


def test_concurrent_clients_raise_the_shared_counter_by_exactly_n(multi: Server) -> None:
    start = count_of(multi.fresh("GET", "/", host="counter.test").text)
    served_before = {pid: h["tenants"]["counter"]["served"] for pid, h in by_worker(multi).items()}
    n, threads = 200, 8

    def hit(_: int) -> int:
        r = multi.fresh("GET", "/", host="counter.test")
        assert r.status_code == 200
        return count_of(r.text)

    with ThreadPoolExecutor(threads) as ex:
        seen = list(ex.map(hit, range(n)))
    assert sorted(seen) == list(range(start + 1, start + n + 1))  # each value exactly once
    assert count_of(multi.fresh("GET", "/", host="counter.test").text) == start + n + 1
    after = by_worker(multi)
    assert len(after) == 2, "both workers must have answered"
    served = {pid: after[pid]["tenants"]["counter"]["served"] - served_before.get(pid, 0) for pid in after}
    assert sum(served.values()) == n + 1
    assert all(v > 0 for v in served.values()), f"one worker served every request: {served}"


def test_metrics_describe_every_worker(multi: Server) -> None:
    def total() -> tuple[int, float]:
        r = multi.fresh("GET", "/_tenantvm/metrics")
        value = parse_metric(r.text, "tenantvm_requests_total", {"tenant": "hello", "status": "200"})
        return int(r.headers["x-tenantvm-worker"]), value

    _, before = total()
    n = 40
    with ThreadPoolExecutor(4) as ex:
        statuses = list(ex.map(lambda _: multi.fresh("GET", "/", host="hello.test").status_code, range(n)))
    assert statuses == [200] * n
    scrapes = [total() for _ in range(40)]
    assert {value for _, value in scrapes} == {before + n}
    workers = {pid for pid, _ in scrapes}
    assert len(workers) == 2, "scrapes should have reached both workers"
    assert multi.metric("tenantvm_workers") == 2
    assert multi.metric("tenantvm_pool_instances", {"tenant": "hello"}) == 8  # the default 4 per worker


def test_misbehaving_tenant_with_several_workers(multi: Server) -> None:
    with ThreadPoolExecutor(4) as ex:
        faults = list(ex.map(lambda _: multi.fresh("GET", "/fault", host="misbehave.test").status_code, range(20)))
        hellos = list(ex.map(lambda _: multi.fresh("GET", "/", host="hello.test").status_code, range(20)))
    assert faults == [502] * 20
    assert hellos == [200] * 20
    assert multi.metric("tenantvm_guest_errors_total", {"tenant": "misbehave", "error": "fault"}) >= 20


# --- start-up and shut-down -------------------------------------------------------------------


BAD = """
[tenants.hello]
hosts = ["hello.test"]
program = "{apps}/hello"
memory_mb = "lots"
"""


def test_serve_refuses_a_broken_tenants_file(apps: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, BAD, apps, "bad.toml")
    p = run_until_exit(serve_command(config, free_port()), env=server_env())
    assert p.returncode == 2
    assert str(config) in p.stderr
    assert "tenant 'hello'" in p.stderr
    assert "memory_mb" in p.stderr


@pytest.mark.parametrize("interface", INTERFACES)
def test_granian_refuses_a_broken_tenants_file(apps: Path, tmp_path: Path, kvm: dict, interface: str) -> None:
    config = write_config(tmp_path, BAD, apps, "bad.toml")
    command = granian_command(free_port(), workers=2, interface=interface)
    p = run_until_exit(command, env=server_env(TENANTVM_CONFIG=str(config)))
    assert p.returncode != 0
    output = p.stdout + p.stderr
    assert "tenant 'hello'" in output
    assert "memory_mb" in output


def test_serve_fails_when_a_tenant_cannot_boot(apps: Path, tmp_path: Path, kvm: dict) -> None:
    (tmp_path / "notelf").write_text("#!/bin/sh\necho hi\n")
    config = write_config(
        tmp_path,
        '[tenants.broken]\nhosts = ["b.test"]\nprogram = "notelf"\n',
        apps,
    )
    p = run_until_exit(serve_command(config, free_port()), env=server_env())
    assert p.returncode == 1
    assert "tenant 'broken'" in p.stdout + p.stderr


@pytest.mark.parametrize("launcher", ["granian-rsgi", "granian-asgi", "serve-rsgi", "serve-asgi"])
def test_servers_leave_no_run_directory_behind(apps: Path, tmp_path: Path, kvm: dict, launcher: str) -> None:
    config = write_config(tmp_path, MULTI, apps)
    port = free_port()
    command: Callable[[], list[str]]
    how, interface = launcher.split("-")
    if how == "granian":
        env = server_env(TENANTVM_CONFIG=str(config))
        command = lambda: granian_command(port, workers=2, interface=interface)  # noqa: E731
    else:
        env = server_env()
        command = lambda: serve_command(config, port, workers=2, interface=interface)  # noqa: E731
    s = start_server(command(), tmp_path / "server.log", env=env, port=port, workers=2)
    try:
        assert s.fresh("GET", "/", host="counter.test").text == "Hello 1 World!"
        assert (s.run_dir / "shm" / "counter").is_file()
        assert any((s.run_dir / "metrics").iterdir())
    finally:
        code = s.stop()
    assert code == 0, s.output()
    assert not s.run_dir.exists()


def _seccomp_threads(pid: int) -> int:
    """Threads of ``pid`` running under a seccomp filter (``Seccomp: 2`` in their status)."""
    n = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            if "\nSeccomp:\t2\n" in (task / "status").read_text():
                n += 1
    return n


def test_threads_that_run_guests_are_seccomp_restricted(server: Server) -> None:
    """After serving, the worker's guest-running threads (the event loop for inline tenants, the
    call threads for the others) are filtered, and the server still serves everything."""
    assert server.get("/", host="hello.test").status_code == 200
    assert server.request("POST", "/", host="echo.test", content=b"x").status_code == 200
    worker = health(server)["worker"]
    assert _seccomp_threads(worker) >= 2
    assert server.get("/_tenantvm/metrics").status_code == 200
    assert server.get("/", host="hello.test").text == "Hello World!"
