"""KV counter over HTTP: the store against shared memory, two servers behind HAProxy vs one.

Every server is up at once (Granian, RSGI, one worker each, the counter as the default tenant,
stateful), then each round runs one ``wrk -t2 -c16`` burst against each variant in turn (the
order rotates from round to round), so that two variants' figures of one round are seconds
apart on a shared machine:

- ``shm``: the shared-memory counter (``apps/build/counter``), the baseline of (a);
- ``sqlite``: the KV counter (``apps/build/counter_kv``) on a SQLite file;
- ``redis``: the KV counter on a local redis-server (AOF, fsync always), server A directly;
- ``haproxy 1``: HAProxy in front of server A alone (the proxy's own cost);
- ``haproxy 2``: HAProxy round-robin over servers A and B, both counting in the same Redis.

Per round it prints req/s and p50 of each, and the ratios (a) ``sqlite/shm``, ``redis/shm``
and (b) ``haproxy 2/redis`` (two servers through the proxy against one directly) and
``haproxy 2/haproxy 1`` (two against one, both through the proxy); then the medians (min-max)
over rounds.  A non-2xx answer (a store call slower than ``kv_timeout_ms`` answers 503) counts
as an error and is printed.  At the end it prints the Redis count next to the 200s servers A
and B answered (equal: no increment lost or doubled), and how many each served in the rounds.
The Redis variants are left out, saying so, without redis-server; the HAProxy ones without
haproxy.

Everything listens on 127.0.0.1 and is stopped at the end, on an error and on Ctrl-C/SIGTERM.

    .venv/bin/python bench/kv_http.py [--rounds 5] [--seconds 2]

``make bench`` runs it after bench/kv.py with quick parameters (``KV_HTTP_BENCH_ARGS``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from common import APPS_BUILD, REPO, Server, free_port, http_get, log, run_wrk

sys.path.insert(0, str(REPO))

from tests.httpserver import parse_metric
from tests.kvstores import REDIS_SERVER, Redis
from tests.test_scaleout import HAPROXY_CFG

TENANTS = """\
# Written by bench/kv_http.py.
[server]
default_tenant = "counter"
{kv}

[tenants.counter]
hosts = ["counter.localhost"]
program = "{program}"
mode = "stateful"
timeout_ms = 2000
pool_size = 4
{shared}
"""
#: The key Redis holds the counter under (tenant ``counter``, key ``count``).
REDIS_KEY = "tvm:7:counter:count"


def write_tenants(path: Path, program: str, *, kv: str | None = None, shared_kb: int = 0) -> Path:
    """A tenants file serving ``apps/build/PROGRAM`` as the default tenant."""
    path.write_text(
        TENANTS.format(
            kv=f'kv = "{kv}"' if kv else "",
            program=APPS_BUILD / program,
            shared=f"shared_memory_kb = {shared_kb}" if shared_kb else "",
        )
    )
    return path


class HAProxy:
    """haproxy on a free 127.0.0.1 port, round-robin over ``backends``.

    tests/test_scaleout.py's configuration: health checks on ``/_tenantvm/health``.
    """

    def __init__(self, exe: str, dir: Path, backends: list[int]) -> None:
        self.port = free_port()
        lines = "\n".join(
            f"    server s{i} 127.0.0.1:{p} check inter 200ms fall 2 rise 2" for i, p in enumerate(backends)
        )
        self.cfg = dir / f"haproxy-{self.port}.cfg"
        self.cfg.write_text(HAPROXY_CFG.format(port=self.port, servers=lines))
        self.log = dir / f"haproxy-{self.port}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [exe, "-db", "-f", str(self.cfg)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 30) -> None:
        """Waits until it answers health checks, then until its checks marked every backend up."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):
                if http_get(self.port, "/_tenantvm/health")[0] == 200:
                    break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not start: {self.log.read_text(errors='replace')}")
            time.sleep(0.1)
        time.sleep(1)  # rise 2 after inter 200ms: every backend's checks passed twice

    def url(self) -> str:
        """The frontend's URL."""
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def requests_served(port: int) -> float:
    """The counter tenant's 200 answers of the server on ``port`` (its metrics)."""
    _, text = http_get(port, "/_tenantvm/metrics")
    return parse_metric(text.decode(), "tenantvm_requests_total", {"tenant": "counter", "status": "200"})


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def stopping(things: list[Server | HAProxy | Redis], tmp: Path) -> Iterator[None]:
    """Stops everything in ``things`` (in reverse order), then removes ``tmp``.

    However the block ends: SIGTERM ends it as Ctrl-C does.
    """
    previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        yield
    finally:
        for t in reversed(things):
            try:
                t.stop()
            except Exception as e:  # stop the others regardless
                log(f"stopping {type(t).__name__}: {e}")
        shutil.rmtree(tmp, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    """Starts the servers, runs the rounds, prints figures per round and the medians."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0, help="each wrk burst (whole seconds)")
    ap.add_argument("--connections", type=int, default=16, help="wrk -c (with -t2)")
    ns = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tenantvm-kvhttp-"))
    haproxy_exe = shutil.which("haproxy")
    started: list[Server | HAProxy | Redis] = []
    targets: dict[str, str] = {}
    redis: Redis | None = None
    with stopping(started, tmp):

        def server(name: str, config: Path) -> Server:
            s = Server(name, "tenantvm.app:app", workers=1, interface="rsgi", env={"TENANTVM_CONFIG": str(config)})
            started.append(s)
            s.start()
            status, body = http_get(s.port, "/")
            if status != 200 or not body.startswith(b"Hello "):
                raise RuntimeError(f"{name} answered {status} {body[:100]!r}")
            return s

        shm = server("shm", write_tenants(tmp / "shm.toml", "counter", shared_kb=4))
        targets["shm"] = shm.url()
        sqlite = server("sqlite", write_tenants(tmp / "sqlite.toml", "counter_kv", kv=f"sqlite:///{tmp}/kv.sqlite3"))
        targets["sqlite"] = sqlite.url()
        backends: list[Server] = []
        if REDIS_SERVER is None:
            print("redis, haproxy: left out (no redis-server; tools/setup-host.sh installs it)")
        else:
            redis = Redis(tmp / "redis")
            started.append(redis)
            redis.start()
            config = write_tenants(tmp / "redis.toml", "counter_kv", kv=redis.url)
            backends = [server("redis A", config), server("redis B", config)]
            targets["redis"] = backends[0].url()
            if haproxy_exe is None:
                print("haproxy 1, haproxy 2: left out (no haproxy; tools/setup-host.sh installs it)")
            else:
                for name, ports in (("haproxy 1", [backends[0].port]), ("haproxy 2", [b.port for b in backends])):
                    proxy = HAProxy(haproxy_exe, tmp, ports)
                    started.append(proxy)
                    proxy.wait_ready()
                    targets[name] = proxy.url()
        for url in targets.values():
            run_wrk(url, threads=2, connections=ns.connections, seconds=1)  # warm-up
        served_before = [requests_served(b.port) for b in backends]

        names = list(targets)
        rps: dict[str, list[float]] = {k: [] for k in names}
        ratios: dict[str, list[float]] = {}
        pairs = [("sqlite", "shm"), ("redis", "shm"), ("haproxy 2", "redis"), ("haproxy 2", "haproxy 1")]
        pairs = [(a, b) for a, b in pairs if a in targets and b in targets]
        errors = {k: 0 for k in names}
        for r in range(ns.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            row: dict[str, float] = {}
            cells = []
            for k in order:
                res = run_wrk(targets[k], threads=2, connections=ns.connections, seconds=ns.seconds)
                row[k] = res.rps
                rps[k].append(res.rps)
                errors[k] += res.error_count
                cells.append(f"{k} {res.rps:,.0f} req/s p50 {res.p50_us / 1000:.1f} ms")
            for a, b in pairs:
                ratios.setdefault(f"{a}/{b}", []).append(row[a] / row[b])
            print(f"round {r + 1}/{ns.rounds}: " + "; ".join(cells), flush=True)
            print("    " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in ratios.items()), flush=True)

        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"\n{ns.rounds} rounds of wrk -t2 -c{ns.connections} -d{max(1, round(ns.seconds))}s; load after: {load}")
        for k in names:
            v = rps[k]
            print(f"{k:<10} {statistics.median(v):>9,.0f} req/s ({min(v):,.0f}-{max(v):,.0f}), {errors[k]} errors")
        for k, v in ratios.items():
            print(f"{k:<20} {statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})")
        if redis is not None:
            served = [requests_served(b.port) - s for b, s in zip(backends, served_before, strict=True)]
            spread = ", ".join(f"{x:,.0f}" for x in served)
            print(f"requests served in the rounds by A (redis, haproxy 1, 2) and B (haproxy 2): {spread}")
            count = int(redis.command("GET", REDIS_KEY).split(b"\r\n")[1])
            total = sum(requests_served(b.port) for b in backends)
            # Every 200 that A and B answered (the start-up checks included) is one increment.
            same = "=" if count == total else "!="
            print(f"Redis count {count:,} {same} 200s answered by A and B {total:,.0f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # everything was stopped on the way out
        sys.exit(130)
