"""Scale-out end to end: the kv counter on real servers (`tenantvm serve --workers 2`), sharing
SQLite on one machine, and two servers behind a real HAProxy sharing one Redis."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.httpserver import Server, free_port, serve_command, server_env, start_server
from tests.kvstores import Redis, need_redis

CONFIG = """
[server]
kv = "{kv}"

[tenants.counter]
hosts = ["counter.localhost"]
program = "{apps}/counter_kv"
mode = "stateful"
timeout_ms = 2000
pool_size = 2
"""
HELLO = re.compile(rb"Hello (\d+) World!")


def write_config(path: Path, apps: Path, kv: str) -> Path:
    path.write_text(CONFIG.format(apps=apps, kv=kv))
    return path


def counts(base_url: str, n: int, threads: int = 4) -> list[tuple[int, int | None]]:
    """``n`` requests to the counter over fresh connections: (status, count or None)."""

    def one(_: int) -> tuple[int, int | None]:
        try:
            with httpx.Client(base_url=base_url, timeout=30) as c:
                r = c.get("/", headers={"host": "counter.localhost", "connection": "close"})
        except httpx.HTTPError:
            return (0, None)
        m = HELLO.fullmatch(r.content)
        return (r.status_code, int(m.group(1)) if m and r.status_code == 200 else None)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(n)))


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        s.stop()


def test_two_workers_of_one_server_count_exactly_in_sqlite(apps: Path, kvm: dict, tmp_path: Path, servers) -> None:  # type: ignore[no-untyped-def]
    config = write_config(tmp_path / "tenants.toml", apps, f"sqlite:///{tmp_path}/kv.sqlite3")
    port = free_port()
    servers.append(
        start_server(serve_command(config, port, workers=2), tmp_path / "s.log", env=server_env(), workers=2, port=port)
    )
    results = counts(servers[0].base_url, 200)
    assert sorted(n for _, n in results) == list(range(1, 201))
    assert {s for s, _ in results} == {200}


HAPROXY_CFG = """
global
    maxconn 512
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch
    retry-on conn-failure
frontend web
    bind 127.0.0.1:{port}
    default_backend tenantvm
backend tenantvm
    balance roundrobin
    option httpchk
    http-check send meth GET uri /_tenantvm/health
    http-check expect status 200
{servers}
"""


@contextlib.contextmanager
def haproxy(tmp_path: Path, backends: list[int]) -> Iterator[str]:
    exe = shutil.which("haproxy")
    if exe is None:
        pytest.skip("haproxy is not installed (tools/setup-host.sh installs it)")
    port = free_port()
    lines = "\n".join(f"    server s{i} 127.0.0.1:{p} check inter 200ms fall 2 rise 2" for i, p in enumerate(backends))
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(port=port, servers=lines))
    with open(tmp_path / "haproxy.log", "wb") as log:
        proc = subprocess.Popen([exe, "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/_tenantvm/health", timeout=5).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("haproxy did not start: " + (tmp_path / "haproxy.log").read_text())
            time.sleep(0.1)
        # Both servers up (rise 2 after inter 200ms): give the checks time to pass twice.
        time.sleep(1)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def test_two_servers_behind_haproxy_share_one_redis_count(apps: Path, kvm: dict, tmp_path: Path, servers) -> None:  # type: ignore[no-untyped-def]
    need_redis()
    redis = Redis(tmp_path / "redis").start()
    try:
        config = write_config(tmp_path / "tenants.toml", apps, redis.url)
        ports = [free_port(), free_port()]
        for i, port in enumerate(ports):
            cmd = serve_command(config, port, workers=2)
            servers.append(start_server(cmd, tmp_path / f"s{i}.log", env=server_env(), workers=2, port=port))
        with haproxy(tmp_path, ports) as url:
            # N requests through HAProxy: exactly 1..N, served by both servers.
            n = 300
            results = counts(url, n)
            assert [s for s, _ in results] == [200] * n
            assert sorted(c for _, c in results) == list(range(1, n + 1))
            served = [s.metric("tenantvm_requests_total", {"tenant": "counter", "status": "200"}) for s in servers]
            assert all(x > 0 for x in served), f"HAProxy did not spread the load: {served}"

            # One server killed mid-load: every acknowledged increment is distinct and counted;
            # once HAProxy's checks have marked it down, every request succeeds again.
            done = threading.Event()
            acked: list[int] = []
            failed: list[int] = []

            def load() -> None:
                while not done.is_set():
                    for status, c in counts(url, 8, threads=2):
                        (acked.append(c) if c is not None else failed.append(status))

            loader = threading.Thread(target=load)
            loader.start()
            time.sleep(1.0)
            os.killpg(servers[1].proc.pid, signal.SIGKILL)
            time.sleep(1.5)
            done.set()
            loader.join()
            after = counts(url, 50)
            assert [s for s, _ in after] == [200] * 50, f"requests failed after the checks: {after}"
            acked += [c for _, c in after if c is not None]
            assert len(set(acked)) == len(acked), "one count was acknowledged twice"
            final = int(redis.command("GET", "tvm:7:counter:count").split(b"\r\n")[1])
            assert final >= max(acked)
            assert final - n >= len(acked)
    finally:
        redis.stop()
