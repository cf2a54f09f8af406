"""Real tenantvm HTTP servers for tests: Granian processes on free 127.0.0.1 ports.

``start_server`` launches either ``granian [--interface asgi] tenantvm.app:app`` (the tenants
file in ``$TENANTVM_CONFIG``; Granian's default interface is RSGI) or ``tenantvm serve --config
FILE [--interface asgi]``, in its own process group,
with its output in a log file, and waits until every worker answers.  ``Server.stop`` ends it
with SIGTERM (the graceful path, which removes the server's run directory) and falls back to
killing the whole process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tenantvm import rundir

PYTHON = sys.executable
GRANIAN = str(Path(sys.executable).with_name("granian"))
#: The interfaces the application is tested under (Granian's names).
INTERFACES = ("rsgi", "asgi")
#: Environment variables a server must not inherit from the test process.
SCRUBBED = ("TENANTVM_CONFIG", "TENANTVM_RUN_DIR", "PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(**extra: str) -> dict[str, str]:
    """The test process's environment without tenantvm's variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env.update(extra)
    return env


def granian_command(port: int, workers: int = 1, interface: str = "rsgi") -> list[str]:
    """A plain Granian running the app (the tenants file comes from the environment).

    RSGI is Granian's default: then the command names no interface, as a user would type it.
    """
    return [
        GRANIAN,
        *(["--interface", interface] if interface != "rsgi" else []),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "tenantvm.app:app",
    ]


def serve_command(config: Path, port: int, workers: int = 1, interface: str = "rsgi") -> list[str]:
    """``tenantvm serve`` (as ``python -m tenantvm``); RSGI is its default."""
    return [
        PYTHON,
        "-m",
        "tenantvm",
        "serve",
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        *(["--interface", interface] if interface != "rsgi" else []),
    ]


class ServerFailed(RuntimeError):
    """The server exited or did not become ready."""


class Server:
    """A running server process (group leader of its own session)."""

    def __init__(
        self, proc: subprocess.Popen[bytes], port: int, log: Path, workers: int, interface: str = "rsgi"
    ) -> None:
        self.proc = proc
        #: The Granian interface the application runs under (``rsgi`` or ``asgi``).
        self.interface = interface
        self.port = port
        self.log = log
        self.workers = workers
        self.base_url = f"http://127.0.0.1:{port}"
        #: The server's run directory (its master is this process).
        self.run_dir = rundir.server_dir(proc.pid)
        self.client = httpx.Client(base_url=self.base_url, timeout=30)

    def output(self) -> str:
        """Everything the server printed so far."""
        return self.log.read_text(errors="replace")

    def request(self, method: str, path: str, host: str | None = "localhost", **kwargs: object) -> httpx.Response:
        """One request on the shared keep-alive client."""
        headers = dict(kwargs.pop("headers", None) or {})  # type: ignore[call-overload]
        if host is not None:
            headers["host"] = host
        return self.client.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]

    def get(self, path: str, host: str | None = "localhost", **kwargs: object) -> httpx.Response:
        return self.request("GET", path, host, **kwargs)

    def fresh(self, method: str, path: str, host: str = "localhost", **kwargs: object) -> httpx.Response:
        """One request on a new connection (so that any worker may answer it)."""
        headers = dict(kwargs.pop("headers", None) or {})  # type: ignore[call-overload]
        headers["host"] = host
        headers["connection"] = "close"
        with httpx.Client(base_url=self.base_url, timeout=30) as c:
            return c.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One sample of the scraped metrics (0 when absent)."""
        return parse_metric(self.fresh("GET", "/_tenantvm/metrics").text, name, labels)

    def wait_ready(self, timeout: float = 60) -> None:
        """Waits until every worker has booted its tenants (the metrics count live workers)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(f"the server exited with {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                r = self.fresh("GET", "/_tenantvm/metrics")
                if r.status_code == 200 and parse_metric(r.text, "tenantvm_workers") == self.workers:
                    return
            time.sleep(0.1)
        raise ServerFailed(f"the server did not become ready in {timeout} s:\n{self.output()}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM to the master, then SIGKILL to the whole group if it lingers."""
        self.client.close()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(timeout)


def start_server(
    command: list[str],
    log: Path,
    *,
    env: dict[str, str],
    workers: int = 1,
    port: int,
    ready: bool = True,
    interface: str = "rsgi",
) -> Server:
    """Starts ``command`` in its own process group; waits until it serves (if ``ready``).

    ``interface`` is the one ``command`` selects (recorded for the tests).
    """
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    server = Server(proc, port, log, workers, interface)
    if ready:
        try:
            server.wait_ready()
        except BaseException:
            server.stop()
            raise
    return server


def run_until_exit(command: list[str], *, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Runs a server command that must exit by itself (e.g. on a bad tenants file)."""
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise ServerFailed(f"still running after {timeout} s:\n{out}\n{err}") from None
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def parse_metric(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The value of the sample ``name{labels}`` in Prometheus text format (0 when absent)."""
    wanted = labels or {}
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        found = {}
        for part in rest.rstrip("}").split(","):
            if "=" in part:
                k, _, v = part.partition("=")
                found[k] = v.strip('"')
        if all(found.get(k) == v for k, v in wanted.items()) and (labels is not None or not found):
            return float(value)
    return 0.0
