"""Soak test (issue 6): a bounded mixed load against a real server; ``make soak``.

Starts ``python -m granian --interface asgi --workers 2 tenantvm.app:app`` with its own
tenants file and drives it for ``--seconds`` with a few client threads on persistent
connections, each sending a random mix of:

- ``hello``   → 200 "Hello World!"
- ``echo``    → 200, the random body it sent, byte for byte
- ``counter`` → 200 "Hello N World!" (stateful, shared memory: one count for the server)
- ``crasher`` → 502 ``x-tenantvm-error: fault`` (``misbehave /fault``)
- ``sleeper`` → 504 ``x-tenantvm-error: timeout`` (``misbehave /spin`` or ``/sleep?ms=`` past
  its 50 ms limit)

Meanwhile it samples the RSS and the open descriptors of every server process every few
seconds.  At the end it checks, and exits non-zero unless all hold:

1. no unexpected answer (any other status, body or error header, or a connection error);
2. after warm-up, the servers' total RSS and descriptor counts grow by at most 5% (mean of
   the last samples against the mean of the first samples after warm-up);
3. the counter's last value equals the number of counter requests sent, and no value repeats;
4. the server's own request counts (``/_tenantvm/metrics``) equal the client's;
5. the same processes served from start to end (no worker died), and the server is healthy.

The report is printed and written to ``bench/results/soak.md`` and ``soak.json``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import random
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    APPS_BUILD,
    RESULTS,
    TIMES,
    Server,
    fd_count,
    log,
    machine_info,
    percentile,
    rss_kib,
    tenants_file,
)

SOAK_TENANTS = """\
# Written by bench/soak.py.
[defaults]
pool_size = 2
memory_mb = 16
timeout_ms = 20
queue_timeout_ms = 5000

[tenants.hello]
hosts = ["hello.soak"]
program = "{build}/hello"

[tenants.echo]
hosts = ["echo.soak"]
program = "{build}/echo"

[tenants.counter]
hosts = ["counter.soak"]
program = "{build}/counter"
mode = "stateful"
shared_memory_kb = 4

[tenants.crasher]
hosts = ["crasher.soak"]
program = "{build}/misbehave"
memory_mb = 32    # misbehave has 17 MiB of static buffers

[tenants.sleeper]
hosts = ["sleeper.soak"]
program = "{build}/misbehave"
memory_mb = 32
timeout_ms = 50   # above inline_timeout_ms: its calls run in threads
"""

#: (kind, weight) of the request mix.
MIX = [("hello", 40), ("echo", 25), ("counter", 20), ("crasher", 10), ("sleeper", 5)]
#: Requests on one connection before the client opens a new one (at most).
MAX_PER_CONNECTION = 2000
EXPECTED = {"hello": 200, "echo": 200, "counter": 200, "crasher": 502, "sleeper": 504}
_COUNTER = re.compile(rb"^Hello (\d+) World!$")
_METRIC = re.compile(r"^tenantvm_requests_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$")


@dataclass
class Tally:
    """What the clients saw (merged from every client thread)."""

    by_kind_status: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    unexpected: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: list[str] = field(default_factory=list)
    counter_values: list[int] = field(default_factory=list)
    latency_us: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def total(self) -> int:
        """Requests answered so far."""
        return sum(self.by_kind_status.values())

    def error(self, what: str, detail: str) -> None:
        """Records an unexpected outcome (and keeps the first few for the report)."""
        with self.lock:
            self.unexpected[what] += 1
            if len(self.examples) < 20:
                self.examples.append(f"{what}: {detail}")


def _request(kind: str, rng: random.Random) -> tuple[str, str, bytes]:
    """(method, path, body) of one request of ``kind``."""
    if kind == "echo":
        return "POST", f"/echo/{rng.randrange(1 << 30)}", rng.randbytes(rng.randrange(0, 8192))
    if kind == "crasher":
        return "GET", "/fault", b""
    if kind == "sleeper":
        return ("GET", "/spin", b"") if rng.random() < 0.5 else ("GET", "/sleep?ms=400", b"")
    return "GET", "/", b""


def _check(kind: str, status: int, headers: http.client.HTTPMessage, body: bytes, sent: bytes) -> str | None:
    """Why this answer is not the expected one (None if it is)."""
    if status != EXPECTED[kind]:
        return f"status {status} (expected {EXPECTED[kind]}), body {body[:120]!r}"
    if kind == "hello" and body != b"Hello World!":
        return f"body {body[:120]!r}"
    if kind == "echo" and body != sent:
        return f"echo body differs ({len(body)} bytes back for {len(sent)} sent)"
    if kind == "counter" and not _COUNTER.match(body):
        return f"body {body[:120]!r}"
    if kind == "crasher" and headers.get("x-tenantvm-error") != "fault":
        return f"x-tenantvm-error {headers.get('x-tenantvm-error')!r}"
    if kind == "sleeper" and headers.get("x-tenantvm-error") != "timeout":
        return f"x-tenantvm-error {headers.get('x-tenantvm-error')!r}"
    return None


def client(port: int, deadline: float, seed: int, tally: Tally, stop: threading.Event) -> None:
    """One client thread: a random request mix until the deadline.

    Connections are persistent, each used for a random number of requests (up to
    ``MAX_PER_CONNECTION``) before a new one is opened: the load spreads over the workers
    and connections come and go all along.
    """
    rng = random.Random(seed)
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    conn: http.client.HTTPConnection | None = None
    left = 0
    while time.monotonic() < deadline and not stop.is_set():
        kind = rng.choices(kinds, weights)[0]
        method, path, body = _request(kind, rng)
        if conn is not None and left <= 0:
            conn.close()
            conn = None
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            left = rng.randrange(1, MAX_PER_CONNECTION)
        left -= 1
        t0 = time.perf_counter()
        try:
            conn.request(method, path, body=body, headers={"Host": f"{kind}.soak"})
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as e:
            tally.error(f"{kind}: connection error", repr(e))
            conn.close()
            conn = None
            continue
        elapsed = (time.perf_counter() - t0) * 1e6
        problem = _check(kind, resp.status, resp.headers, data, body)
        with tally.lock:
            tally.by_kind_status[(kind, resp.status)] += 1
            tally.latency_us[kind].append(elapsed)
            if kind == "counter" and resp.status == 200 and (m := _COUNTER.match(data)):
                tally.counter_values.append(int(m.group(1)))
        if problem:
            tally.error(f"{kind}: unexpected answer", problem)
        if resp.will_close:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()


def monitor(server: Server, interval: float, samples: list[dict[str, Any]], stop: threading.Event) -> None:
    """Samples RSS and descriptor counts of every server process every ``interval`` s."""
    t0 = time.monotonic()
    while True:
        pids = server.pids()
        samples.append(
            {
                "t": round(time.monotonic() - t0, 1),
                "rss_kib": {pid: rss_kib(pid) for pid in pids},
                "fds": {pid: fd_count(pid) for pid in pids},
            }
        )
        if stop.wait(interval):
            return


def server_counts(port: int) -> dict[tuple[str, int], int]:
    """``tenantvm_requests_total`` by (tenant, status), from the server's metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/_tenantvm/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out: dict[tuple[str, int], int] = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group("labels")))
            out[(labels["tenant"], int(labels["status"]))] = int(float(m.group("value")))
    return out


def health(port: int, workers: int, tries: int = 20) -> dict[int, tuple[int, dict[str, Any]]]:
    """``/_tenantvm/health`` by worker pid: new connections until every worker answered."""
    seen: dict[int, tuple[int, dict[str, Any]]] = {}
    for _ in range(tries):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/_tenantvm/health")
            resp = conn.getresponse()
            body = json.loads(resp.read())
            seen[int(body.get("worker", 0))] = (resp.status, body)
        finally:
            conn.close()
        if len(seen) >= workers:
            break
    return seen


def growth(samples: list[dict[str, Any]], key: str, warmup: float, window: int) -> dict[str, float]:
    """Total ``key`` of all processes: mean of the first samples after warm-up and of the last."""
    totals = [(s["t"], sum(s[key].values())) for s in samples]
    after = [v for t, v in totals if t >= warmup]
    if len(after) < 2:
        return {"baseline": float("nan"), "final": float("nan"), "growth": float("nan"), "max": float("nan")}
    n = max(1, min(window, len(after) // 3))
    baseline = sum(after[:n]) / n
    final = sum(after[-n:]) / n
    return {"baseline": baseline, "final": final, "growth": final / baseline - 1, "max": max(after)}


def soak(seconds: float, clients: int, workers: int, interval: float, seed: int) -> dict[str, Any]:
    """Runs the soak and returns everything the report needs."""
    tally = Tally()
    samples: list[dict[str, Any]] = []
    stop = threading.Event()
    warmup = min(60.0, max(10.0, seconds * 0.15))
    with tenants_file(SOAK_TENANTS.format(build=APPS_BUILD)) as config:
        server = Server(
            "soak",
            "tenantvm.app:app",
            workers=workers,
            env={"TENANTVM_CONFIG": str(config)},
            ready_path="/_tenantvm/health",
        )
        server.env["TENANTVM_LOG_LEVEL"] = "ERROR"  # every crash and timeout is logged as a warning
        with server:
            pids_start = server.pids()
            mon = threading.Thread(target=monitor, args=(server, interval, samples, stop), daemon=True)
            mon.start()
            t0 = time.monotonic()
            deadline = t0 + seconds
            threads = [
                threading.Thread(target=client, args=(server.port, deadline, seed + i, tally, stop), daemon=True)
                for i in range(clients)
            ]
            for t in threads:
                t.start()
            next_log = t0 + 30
            try:
                while any(t.is_alive() for t in threads):
                    for t in threads:
                        t.join(timeout=1.0)
                    if time.monotonic() >= next_log:
                        next_log += 30
                        log(f"soak: {time.monotonic() - t0:.0f}/{seconds:.0f} s, {tally.total()} requests")
            except KeyboardInterrupt:
                stop.set()
                for t in threads:
                    t.join(timeout=15)
            elapsed = time.monotonic() - t0
            stop.set()
            mon.join(timeout=10)
            pids_end = server.pids()
            healthy = health(server.port, workers)
            counts = server_counts(server.port)
            log_tail = server.log_tail(20)
            exit_code = server.stop()
    # Final sample after the load (the loop's last sample may predate the end).
    return {
        "seconds": seconds,
        "elapsed_s": elapsed,
        "clients": clients,
        "workers": workers,
        "warmup_s": warmup,
        "interval_s": interval,
        "tally": tally,
        "samples": samples,
        "pids_start": pids_start,
        "pids_end": pids_end,
        "health": healthy,
        "server_counts": counts,
        "server_log_tail": log_tail,
        "server_exit_code": exit_code,
    }


def evaluate(res: dict[str, Any]) -> tuple[list[tuple[str, bool, str]], dict[str, Any]]:
    """The checks (name, passed, detail) and the figures of the report."""
    tally: Tally = res["tally"]
    checks: list[tuple[str, bool, str]] = []
    total = sum(tally.by_kind_status.values())
    unexpected = sum(tally.unexpected.values())
    checks.append(
        (
            "no unexpected answers",
            unexpected == 0 and total > 0,
            f"{unexpected} unexpected of {total} requests" + (f": {dict(tally.unexpected)}" if unexpected else ""),
        )
    )
    window = max(1, round(30 / res["interval_s"]))
    rss = growth(res["samples"], "rss_kib", res["warmup_s"], window)
    fds = growth(res["samples"], "fds", res["warmup_s"], window)
    for name, g, scale, unit in (("RSS", rss, 1024, " MiB"), ("open descriptors", fds, 1, "")):
        ok = g["growth"] == g["growth"] and g["growth"] <= 0.05
        checks.append(
            (
                f"{name} of all server processes: growth after warm-up ≤ 5%",
                ok,
                f"{g['baseline'] / scale:.1f} → {g['final'] / scale:.1f}{unit} ({g['growth']:+.1%}; "
                f"max {g['max'] / scale:.1f})",
            )
        )
    sent = sum(n for (kind, _), n in tally.by_kind_status.items() if kind == "counter")
    values = tally.counter_values
    last = max(values) if values else 0
    dupes = len(values) - len(set(values))
    checks.append(
        (
            "counter's last value = counter requests sent, no value twice",
            last == sent and dupes == 0,
            f"last value {last}, sent {sent}, repeated values {dupes}",
        )
    )
    client_counts = {(k, s): n for (k, s), n in tally.by_kind_status.items()}
    server = res["server_counts"]
    mismatch = {
        f"{k} {s}": (client_counts.get((k, s), 0), server.get((k, s), 0))
        for k, s in set(client_counts) | set(server)
        if client_counts.get((k, s), 0) != server.get((k, s), 0)
    }
    checks.append(
        (
            "server's request counts (metrics) = client's",
            not mismatch,
            "equal" if not mismatch else f"differ (client, server): {mismatch}",
        )
    )
    same = res["pids_start"] == res["pids_end"]
    statuses = {pid: status for pid, (status, _) in res["health"].items()}
    checks.append(
        (
            "same server processes from start to end, every worker healthy",
            same and len(statuses) == res["workers"] and all(s == 200 for s in statuses.values()),
            f"processes {res['pids_start']} → {res['pids_end']}, health by worker {statuses}",
        )
    )
    checks.append(
        (
            "server stopped cleanly (SIGTERM, exit status 0)",
            res["server_exit_code"] == 0,
            f"exit status {res['server_exit_code']}",
        )
    )
    figures = {"total": total, "rps": total / res["elapsed_s"], "rss": rss, "fds": fds}
    return checks, figures


def report(res: dict[str, Any], checks: list[tuple[str, bool, str]], figures: dict[str, Any]) -> str:
    """The soak report (markdown)."""
    tally: Tally = res["tally"]
    m = machine_info()
    lines = [
        "# tenantvm soak test",
        "",
        f"- {m['cpu']} {TIMES} {m['cpus']} vCPUs, kernel {m['kernel']}, KVM {m['kvm']}; {m['date']}, commit "
        f"`{m['commit']}`; load average at the end {m['loadavg'][0]:.2f}",
        f"- `python -m granian --interface asgi --workers {res['workers']} tenantvm.app:app`, "
        f"{res['clients']} client threads on persistent connections, {res['elapsed_s']:.0f} s "
        f"(warm-up {res['warmup_s']:.0f} s), {figures['total']:,} requests ({figures['rps']:,.0f} req/s)",
        "",
        "## Checks",
        "",
        "| check | result | detail |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {'✅' if ok else '❌'} | {detail} |" for name, ok, detail in checks]
    lines += ["", "## Requests", "", "| tenant | expected | status: count | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    for kind, _ in MIX:
        statuses = {s: n for (k, s), n in sorted(tally.by_kind_status.items()) if k == kind}
        lat = sorted(tally.latency_us.get(kind, []))
        lines.append(
            f"| {kind} | {EXPECTED[kind]} | {', '.join(f'{s}: {n:,}' for s, n in statuses.items()) or '-'} | "
            f"{percentile(lat, 50) / 1000:.2f} | {percentile(lat, 99) / 1000:.2f} |"
        )
    if tally.examples:
        lines += ["", "Unexpected answers (first ones):", "", *[f"- {e}" for e in tally.examples]]
    lines += [
        "",
        "## Server processes over time",
        "",
        "| t (s) | RSS per process (MiB) | total RSS (MiB) | descriptors per process | total descriptors |",
        "|---|---|---|---|---|",
    ]
    samples = res["samples"]
    step = max(1, len(samples) // 15)
    shown = samples[::step] + ([samples[-1]] if samples and (len(samples) - 1) % step else [])
    for s in shown:
        rss = " / ".join(f"{v / 1024:.1f}" for v in s["rss_kib"].values())
        fds = " / ".join(str(v) for v in s["fds"].values())
        lines.append(
            f"| {s['t']:.0f} | {rss} | {sum(s['rss_kib'].values()) / 1024:.1f} | {fds} | {sum(s['fds'].values())} |"
        )
    lines += ["", f"Processes (master first, then the workers): {', '.join(map(str, res['pids_start']))}."]
    served = {
        pid: sum(t.get("served", 0) for t in body.get("tenants", {}).values())
        for pid, (_, body) in res["health"].items()
    }
    lines.append("Requests served by each worker: " + ", ".join(f"{pid}: {n:,}" for pid, n in served.items()) + ".")
    verdict = "PASS" if all(ok for _, ok, _ in checks) else "FAIL"
    lines += ["", f"**{verdict}**"]
    return "\n".join(lines) + "\n"


def main() -> int:
    """Runs the soak, prints and writes the report; non-zero exit if a check fails."""
    parser = argparse.ArgumentParser(description="A bounded mixed load against a real tenantvm server.")
    parser.add_argument("--seconds", type=float, default=600.0, help="duration of the load (default 600)")
    parser.add_argument("--clients", type=int, default=4, help="client threads (default 4)")
    parser.add_argument("--workers", type=int, default=2, help="Granian workers (default 2)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between RSS/fd samples (default 5)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the request mix")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write soak.md and soak.json")
    args = parser.parse_args()
    if not (APPS_BUILD / "misbehave").is_file():
        print(f"guest programs not found in {APPS_BUILD}: build them with `make -C apps`", file=sys.stderr)
        return 2
    log(f"soak: {args.seconds:.0f} s, {args.clients} clients, {args.workers} workers")
    res = soak(args.seconds, args.clients, args.workers, args.interval, args.seed)
    checks, figures = evaluate(res)
    text = report(res, checks, figures)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.md").write_text(text)
    tally: Tally = res.pop("tally")
    res["requests"] = {f"{k} {s}": n for (k, s), n in sorted(tally.by_kind_status.items())}
    res["unexpected"] = dict(tally.unexpected)
    res["unexpected_examples"] = tally.examples
    res["server_counts"] = {f"{k} {s}": n for (k, s), n in sorted(res["server_counts"].items())}
    res["checks"] = [{"check": n, "passed": ok, "detail": d} for n, ok, d in checks]
    with contextlib.suppress(OSError):
        (args.out / "soak.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
