"""Key-value stores the tests start and stop: Debian's redis-server on a loopback port."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

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
