"""Key-value stores the tests start and stop: Debian's redis-server on a loopback port."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.httpserver import free_port

REDIS_SERVER = shutil.which("redis-server")


def need_redis() -> str:
    """redis-server's path; skips the test when it is not installed (tools/setup-host.sh)."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (tools/setup-host.sh installs it)")
    return REDIS_SERVER


def _ping(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")
    return False


class Redis:
    """One redis-server on 127.0.0.1:``port``, its data (AOF, fsync always) in ``dir``."""

    def __init__(self, dir: Path, port: int | None = None) -> None:
        self.dir = dir
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> Redis:
        """Starts it and waits until it answers PING."""
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [need_redis(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        args += ["--save", "", "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no"]
        with open(self.dir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not _ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start: {(self.dir / 'redis.log').read_text()}")
            time.sleep(0.05)
        return self

    def stop(self, kill: bool = False) -> None:
        """Stops it (SIGKILL with ``kill``: no shutdown; acknowledged writes are in the AOF)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            (self.proc.kill if kill else self.proc.terminate)()
        self.proc.wait(30)
        self.proc = None

    def command(self, *args: str) -> bytes:
        """One command over a raw connection (RESP), its first reply line."""
        out = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a.encode()) for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(out)
            return s.recv(4096)


#: The requests a language binding's KV test tenant serves (tests/guest/luakv.lua, nodekv.js,
#: denokv.ts), for its warm-up: every path, so that nothing is loaded lazily during a request.
KV_PROBE_WARMUP = ["/incr", "/set", "/get", "/delete", "/error?badincr", "/error?longkey", "/raise"]


def check_kv_binding(tenant: Any, tmp_path: Path) -> None:
    """Checks a language binding's key-value calls through its test tenant (luakv.lua,
    nodekv.js, denokv.ts), against the embedded SQLite store: a counter across requests and
    instances, set with and without TTL, get, delete, the tenant's scope, and each limit as the
    language's error (code, errno, whether the store is unavailable); a store down answers 503."""
    from tenantvm import Request, _native
    from tenantvm.kv import SqliteKv

    bridge = _native.KvBridge(SqliteKv(tmp_path / "kv.sqlite3"), timeout=5)
    a = tenant.with_kv(bridge, "a", max_ops=16)

    def body(vm: Any, path: str, content: bytes = b"") -> bytes:
        method = "POST" if content else "GET"
        path, _, query = path.partition("?")
        r = vm.call(Request(method, path, query=query, body=content))
        assert r.status == 200, (path, r.status, r.body, r.stderr)
        return bytes(r.body)

    vm, other = a.instance(), a.instance()
    # The counter lives in the store, not in the VM (which is reset after each request).
    assert [body(vm, "/incr") for _ in range(3)] == [b"1", b"2", b"3"]
    assert body(other, "/incr") == b"4", "another instance counts on"
    # Another tenant (namespace) has its own keys.
    b = tenant.with_kv(bridge, "b").instance()
    assert body(b, "/incr") == b"1"
    assert body(b, "/get") == b"<nil>"
    # Values are bytes; a TTL makes the key expire; delete says whether it existed.
    assert body(vm, "/get") == b"<nil>"
    assert body(vm, "/set", b"\x00value\xff") == b"ok"
    assert body(other, "/get") == b"\x00value\xff"
    assert body(vm, "/delete") == b"true"
    assert body(vm, "/delete") == b"false"
    assert body(vm, "/set?1", b"short-lived") == b"ok"
    time.sleep(0.05)
    assert body(vm, "/get") == b"<nil>", "expired after its 1 ms"
    assert body(b, "/get") == b"<nil>"
    # Limits and misuse: the language's errors, carrying the errno.
    errors = {
        "badincr": b"EBADMSG 74 false kv_incr",
        "longkey": b"ENAMETOOLONG 36 false kv_get",
        "bigvalue": b"E2BIG 7 false kv_set",
        "ops": b"EDQUOT 122 false kv_get",
    }
    for name, want in errors.items():
        got = body(vm, f"/error?{name}")
        assert got.startswith(want), (name, got)
    # A store that is down: an unhandled error answers 503 (the host's reason stays on the host).
    down = tenant.with_kv(_native.KvBridge(_DownStore(), timeout=5), "a").instance()
    r = down.call(Request("GET", "/raise"))
    assert r.status == 503, (r.status, r.body, r.stderr)
    assert b"kv_incr" in r.stderr
    assert body(down, "/error?longkey").startswith(b"ENAMETOOLONG"), "checked before the store"


class _DownStore:
    """A store that is down: every call fails."""

    def get(self, ns: bytes, key: bytes) -> bytes | None:
        raise ConnectionError("the store is down")

    def set(self, ns: bytes, key: bytes, value: bytes, ttl_ms: int) -> None:
        raise ConnectionError("the store is down")

    def incr(self, ns: bytes, key: bytes, delta: int) -> int:
        raise ConnectionError("the store is down")

    def delete(self, ns: bytes, key: bytes) -> bool:
        raise ConnectionError("the store is down")
