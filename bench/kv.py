"""KV counter cost per request, in-process, rounds interleaved.

The shared-memory counter (baseline) vs the key-value counter on SQLite and on Redis, each
through ``TenantVM.call``.

    .venv/bin/python bench/kv.py [--calls 2000] [--rounds 5]

Prints, per variant, median (min-max over rounds) µs per call, VM exits per call, and the
ratio to the shared-memory counter within each round.  Needs redis-server (the Redis variant
is left out without it, saying so).  ``make bench`` runs it after bench/run.py with quick
parameters (``KV_BENCH_ARGS``, default ``--calls 500 --rounds 3``).  HTTP req/s of the two
counters, and of two servers behind HAProxy against one, are bench/kv_http.py's (also in
``make bench``; figures in docs/deploy.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.kvstores import REDIS_SERVER, Redis  # noqa: E402

from tenantvm import Request, Tenant, _native  # noqa: E402
from tenantvm.kv import RedisKv, SqliteKv  # noqa: E402

APPS = REPO / "apps" / "build"


def per_call(vm, calls: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(µs per call, exits per call) over ``calls`` GET / calls."""
    req = Request("GET", "/")
    exits = 0
    started = time.perf_counter()
    for _ in range(calls):
        r = vm.call(req)
        exits += r.exits
    return (time.perf_counter() - started) / calls * 1e6, exits / calls


def main() -> int:
    """Runs the rounds and prints the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ns = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tenantvm-kvbench-"))
    variants = {"shared memory": Tenant(APPS / "counter", ephemeral=False, shared_memory_kb=4).instance()}
    kv = Tenant(APPS / "counter_kv", ephemeral=False)
    variants["kv sqlite"] = kv.with_kv(_native.KvBridge(SqliteKv(tmp / "kv.sqlite3"), timeout=5), "b").instance()
    redis = None
    if REDIS_SERVER:
        redis = Redis(tmp / "redis").start()
        variants["kv redis"] = kv.with_kv(_native.KvBridge(RedisKv(redis.url, timeout=5), timeout=5), "b").instance()
    else:
        print("kv redis: left out (no redis-server; tools/setup-host.sh installs it)")
    try:
        results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in variants}
        for _ in range(ns.rounds):
            base = None
            for name, vm in variants.items():
                us, exits = per_call(vm, ns.calls)
                base = base or us
                results[name].append((us, exits, us / base))
        print(f"{'variant':<16} {'µs/call':>22} {'exits/call':>10} {'x shared memory':>18}")
        for name, rows in results.items():
            us = [r[0] for r in rows]
            ratio = [r[2] for r in rows]
            print(
                f"{name:<16} {statistics.median(us):>8.1f} ({min(us):.1f}-{max(us):.1f})"
                f" {statistics.median(r[1] for r in rows):>10.2f}"
                f" {statistics.median(ratio):>8.2f} ({min(ratio):.2f}-{max(ratio):.2f})"
            )
    finally:
        if redis is not None:
            redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
