"""HTTP side by side on a shared machine: every server up at once, short interleaved bursts.

``make bench``'s HTTP section runs each variant on a fresh server in turn (5 s per wrk run);
on a machine shared with other work, the load changes between two variants' runs more than
the variants differ.  This script starts every server first (one Granian worker each, idle
when not measured), then in each round runs a 1-s ``wrk -t2 -c16`` against each server in turn
(order rotating), then a 1-s ``wrk -t1 -c1`` against each: two variants' figures of one round
are seconds apart.  Per round it takes the ratios to Starlette; it prints the medians and
ranges, and the CPU time of each worker per request at ``-c16`` (its utime + stime over the
requests served: less sensitive to other load than throughput).

Variants: ``a`` tenantvm (RSGI), ``f`` tenantvm (ASGI), ``b`` Starlette hello (ASGI, no
isolation); ``o`` and ``p`` are tenantvm under RSGI and ASGI from another copy of the package
(``--other DIR``: a directory holding a ``tenantvm`` package, e.g. an older commit's
``py/tenantvm`` with its built ``_native`` module), to compare two versions side by side.

``python bench/http_ab.py [--rounds 8] [--variants afb] [--other DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from typing import Any

from common import Server, http_get, run_wrk
from http_load import hello_tenants

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process ``pid``, all its threads, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def batch_totals(port: int) -> tuple[float, float]:
    """The hello tenant's ``tenantvm_batch_size`` histogram so far: (requests, batches).

    Every inline call counts, a lone one as a batch of one; none on other call paths.
    """
    _, body = http_get(port, "/_tenantvm/metrics")
    total = {"sum": 0.0, "count": 0.0}
    for line in body.decode().splitlines():
        for kind in total:
            if line.startswith(f"tenantvm_batch_size_{kind}{{") and 'tenant="hello"' in line:
                total[kind] += float(line.rsplit(" ", 1)[1])
    return total["sum"], total["count"]


def run(rounds: int, keys: str, other: str | None) -> dict[str, Any]:
    """Interleaved rounds of the variants in ``keys``; raw figures per round."""
    with hello_tenants() as config:
        env = {"TENANTVM_CONFIG": str(config)}
        other_env = {**env, "PYTHONPATH": other or ""}
        spec = {
            "a": ("tenantvm.app:app", "rsgi", env),
            "f": ("tenantvm.app:app", "asgi", env),
            "b": ("starlette_hello:app", "asgi", {}),
            "o": ("tenantvm.app:app", "rsgi", other_env),
            "p": ("tenantvm.app:app", "asgi", other_env),
        }
        servers: dict[str, Server] = {}
        try:
            for k in keys:
                target, interface, extra = spec[k]
                servers[k] = Server(k, target, workers=1, env=extra, interface=interface).start()
                if http_get(servers[k].port, "/") != (200, b"Hello World!"):
                    raise RuntimeError(f"variant {k} does not answer Hello World!")
            for s in servers.values():
                run_wrk(s.url(), threads=2, connections=16, seconds=1)  # warm-up
            data: dict[str, dict[str, list[float]]] = {
                k: {"c16_rps": [], "c16_cpu_us": [], "c16_batch": [], "c1_rps": [], "c1_p50_us": []} for k in keys
            }
            for r in range(rounds):
                order = keys[r % len(keys) :] + keys[: r % len(keys)]
                for k in order:
                    worker = servers[k].worker_pids()[0]
                    tenantvm = spec[k][0].startswith("tenantvm")
                    batches = batch_totals(servers[k].port) if tenantvm else (0.0, 0.0)
                    before = cpu_seconds(worker)
                    res = run_wrk(servers[k].url(), threads=2, connections=16, seconds=1)
                    data[k]["c16_cpu_us"].append((cpu_seconds(worker) - before) / res.requests * 1e6)
                    data[k]["c16_rps"].append(res.rps)
                    if tenantvm:
                        after = batch_totals(servers[k].port)
                        served, runs = after[0] - batches[0], after[1] - batches[1]
                        data[k]["c16_batch"].append(served / runs if runs else 0.0)
                for k in order:
                    res = run_wrk(servers[k].url(), threads=1, connections=1, seconds=1)
                    data[k]["c1_rps"].append(res.rps)
                    data[k]["c1_p50_us"].append(res.p50_us)
            with open("/proc/loadavg") as f:
                load = f.read().split()[:3]
            # A tenant whose inline call timed out (a host too loaded to run a 20-ms request in
            # time) serves from threads for a while: a different path, worth knowing about.
            modes = {}
            for k, s in servers.items():
                if spec[k][0].startswith("tenantvm"):
                    _, body = http_get(s.port, "/_tenantvm/health")
                    modes[k] = json.loads(body)["tenants"]["hello"]["calls"]
            return {"rounds": rounds, "load_after": load, "calls": modes, "data": data}
        finally:
            for s in servers.values():
                s.stop()


def summary(result: dict[str, Any]) -> list[str]:
    """Medians (min-max over rounds) per variant, and the ratios to Starlette per round."""
    data = result["data"]
    med = statistics.median
    lines = [f"{result['rounds']} rounds; load average after: {' '.join(result['load_after'])}"]
    lines.append("tenantvm calls at the end: " + ", ".join(f"{k} {mode}" for k, mode in result["calls"].items()))
    for k, d in data.items():
        batch = f", {med(d['c16_batch']):.1f} requests per inline batch" if d.get("c16_batch") else ""
        lines.append(
            f"{k}: -c16 {med(d['c16_rps']):,.0f} req/s, worker CPU {med(d['c16_cpu_us']):.1f} µs/request{batch}; "
            f"-c1 p50 {med(d['c1_p50_us']):.0f} µs"
        )
    if "o" in data or "p" in data:
        for k, o in (("a", "o"), ("f", "p")):
            if k in data and o in data:
                rps = [x / y for x, y in zip(data[k]["c16_rps"], data[o]["c16_rps"], strict=True)]
                lines.append(f"{k}/{o}: -c16 req/s {med(rps):.2f} ({min(rps):.2f}-{max(rps):.2f})")
    if "b" in data:
        base = data["b"]
        for k, d in data.items():
            if k == "b":
                continue
            rps = [x / y for x, y in zip(d["c16_rps"], base["c16_rps"], strict=True)]
            cpu = [x / y for x, y in zip(d["c16_cpu_us"], base["c16_cpu_us"], strict=True)]
            added = [x - y for x, y in zip(d["c1_p50_us"], base["c1_p50_us"], strict=True)]
            lines.append(
                f"{k}/b: -c16 req/s {med(rps):.2f} ({min(rps):.2f}-{max(rps):.2f}), "
                f"CPU per request {med(cpu):.2f} ({min(cpu):.2f}-{max(cpu):.2f}); "
                f"-c1 p50 added {med(added):.0f} µs ({min(added):.0f} to {max(added):.0f})"
            )
    return lines


def main() -> None:
    """Runs the rounds and prints the summary (and the raw figures as JSON with --json)."""
    parser = argparse.ArgumentParser(description="HTTP, all servers up at once, interleaved 1-s bursts.")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--variants", default="afb", help="keys among a, f, b, o, p (default afb)")
    parser.add_argument("--other", help="a directory holding another tenantvm package (variants o, p)")
    parser.add_argument("--json", action="store_true", help="also print the raw figures")
    args = parser.parse_args()
    if any(k in args.variants for k in "op") and not args.other:
        parser.error("variants o and p need --other")
    result = run(args.rounds, args.variants, args.other)
    print("\n".join(summary(result)))
    if args.json:
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
