"""Where the time goes: one profile of the HTTP path (issue 5, section 5).

A tenantvm server (``hello``, one worker) runs under ``wrk -t2 -c16``.  Two profilers look at
its worker process, one after the other, under the same load:

1. ``perf record -e cpu-clock -g`` (every thread, user and kernel): which thread and which
   code the CPU time is in.  Samples on Granian's own threads (its Rust HTTP runtime: parsing,
   sockets, wake-ups) are Granian; on the event-loop thread, samples in KVM (``KVM_RUN`` and
   the dirty-log ioctls, the PVM world switch, the guest itself) are KVM, samples in
   ``_native`` and the system calls only the VMM makes (timers, randomness) are tenantvm's
   Rust, samples in ``_granian`` are Granian, and the rest — the interpreter, libc, the kernel
   time of the loop's own system calls — is Python.
2. ``py-spy record --nonblocking`` (Python stacks, read without stopping the process): splits
   that Python share between Granian's Python glue, Starlette/anyio, tenantvm's Python (with
   the prometheus-client metrics it updates), the asyncio loop and the rest, by the innermost
   frame of a known package.

``py-spy --native`` is not used: it stops the process to unwind native stacks, and on this
host the stops land mostly on system call boundaries, which skews the profile towards
whatever makes system calls (it showed ``getpid`` as 6% of all samples).

A second server (``bench/apps/timed_tenantvm.py``: the same application with every
VM call timed) shows what one VM call costs inside the server under different loads:
``wrk -c1``, ``wrk -c16``, and one request every 1 ms or 10 ms (the server idle in between).

Run alone: ``python bench/profiling.py [--seconds S]`` prints the breakdown as JSON.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import Server, log, percentile, run_wrk
from http_load import hello_tenants

CATEGORIES = [
    ("granian", "Granian (Rust HTTP runtime threads, its native code and Python glue)"),
    ("starlette", "Starlette / anyio"),
    ("tenantvm_py", "tenantvm Python (app, pool, Request/Response)"),
    ("metrics", "  of which prometheus-client metrics (called by tenantvm)"),
    ("asyncio", "asyncio event loop (incl. its wake-up system calls)"),
    ("python_other", "other Python (interpreter, stdlib, libc)"),
    ("tenantvm_rust", "tenantvm Rust (_native: VMM, marshalling, reset, timers)"),
    ("kvm", "KVM (kernel: KVM_RUN, PVM world switch, guest, dirty log)"),
    ("other_threads", "other threads"),
]

PERF_RECORD = ("perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-g")
PYSPY_RECORD = ("record", "--nonblocking", "--rate", "250", "--format", "raw")

# System calls that, on the event-loop thread, only the VMM makes.
_VMM_SYSCALLS = {"timer_settime", "timer_gettime", "timer_create", "timer_delete", "getrandom", "madvise"}
_SYSCALL = re.compile(r"^(?:__x64_sys_|__do_sys_|ksys_|__se_sys_)(\w+)$")


# --------------------------------------------------------------------------------------------
# perf


@dataclass(frozen=True)
class PerfSample:
    """One perf sample: thread, weight (ns), the leaf, and the call chain (leaf first)."""

    tid: int
    period: int
    leaf_sym: str
    leaf_dso: str
    chain: tuple[tuple[str, str], ...]


def _sym_dso(text: str) -> tuple[str, str]:
    # "7f24... symbol+off (dso)" -> (symbol, dso); the address is already stripped.
    sym, _, dso = text.rpartition(" (")
    return sym.strip(), dso.rstrip(")")


def read_perf(data: Path) -> list[PerfSample]:
    """The samples of a perf.data file (``perf script``, once for leaves, once for chains)."""
    leaves = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "tid,period,ip,sym,dso", "-G"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.splitlines()
    chains = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "tid,period,ip,sym,dso"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    blocks = [b for b in chains.split("\n\n") if b.strip()]
    leaf_lines = [line for line in leaves if line.strip()]
    if len(blocks) != len(leaf_lines):
        raise RuntimeError(f"perf script: {len(leaf_lines)} leaves but {len(blocks)} call chains")
    samples: list[PerfSample] = []
    for leaf, block in zip(leaf_lines, blocks, strict=True):
        tid, period, _ip, rest = leaf.split(None, 3)
        sym, dso = _sym_dso(rest)
        chain = []
        for line in block.splitlines()[1:]:
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                chain.append(_sym_dso(parts[1]))
        samples.append(PerfSample(int(tid), int(period), sym, dso, tuple(chain)))
    return samples


def _is_kernel(dso: str) -> bool:
    return "kernel.kallsyms" in dso or dso.startswith("[kernel")


def _is_kvm(sym: str) -> bool:
    return sym.startswith(("kvm_", "pvm_", "__kvm", "vcpu_", "kvm")) or "_kvm_" in sym


def classify_perf(samples: list[PerfSample], main_tid: int) -> dict[str, Any]:
    """CPU time by (coarse) category: Granian threads, KVM, tenantvm Rust, Python, other."""
    granian_tids = {
        s.tid
        for s in samples
        if s.tid != main_tid and any("_granian" in dso for _, dso in (*s.chain, (s.leaf_sym, s.leaf_dso)))
    }
    totals: collections.Counter[str] = collections.Counter()
    main_detail: collections.Counter[str] = collections.Counter()
    for s in samples:
        if s.tid != main_tid:
            totals["granian" if s.tid in granian_tids else "other_threads"] += s.period
            continue
        kernel_syms = [sym for sym, dso in s.chain if _is_kernel(dso)]
        if _is_kernel(s.leaf_dso):
            kernel_syms.insert(0, s.leaf_sym)
        syscall = next((m.group(1) for sym in kernel_syms if (m := _SYSCALL.match(sym))), None)
        if any(_is_kvm(sym) for sym in kernel_syms) or (syscall == "ioctl") or s.leaf_sym == "__GI___ioctl":
            # The event-loop thread makes no ioctl but the VMM's (KVM_RUN, dirty log); a sample
            # at the libc ioctl wrapper is time accounted at the return from KVM.
            cat, detail = "kvm", "kernel: KVM" if _is_kernel(s.leaf_dso) else "ioctl return"
        elif _is_kernel(s.leaf_dso):
            if syscall in _VMM_SYSCALLS:
                cat, detail = "tenantvm_rust", f"kernel: {syscall}"
            else:
                cat, detail = "python", f"kernel: {syscall or 'interrupts/scheduling'}"
        elif "_native" in s.leaf_dso:
            cat, detail = "tenantvm_rust", "user: _native"
        elif "_granian" in s.leaf_dso:
            cat, detail = "granian", "user: _granian"
        else:
            cat, detail = "python", f"user: {Path(s.leaf_dso).name or s.leaf_dso}"
        totals[cat] += s.period
        main_detail[detail] += s.period
    return {
        "totals_ns": dict(totals),
        "main_thread_detail_ns": dict(main_detail.most_common(25)),
        "granian_threads": sorted(granian_tids),
        "main_thread_ns": sum(main_detail.values()),
    }


# --------------------------------------------------------------------------------------------
# py-spy

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")
_IDLE_LEAVES = ("EpollSelector.select", "SimpleQueue.get", "Condition.wait", "Event.wait", "Thread._wait_for_tstate")
_PACKAGE_CATEGORY = [
    ("prometheus_client/", "metrics"),
    ("tenantvm/", "tenantvm_py"),
    ("starlette/", "starlette"),
    ("anyio/", "starlette"),
    ("granian/", "granian"),
    ("asyncio/", "asyncio"),
    ("selectors.py", "asyncio"),
]


#: Modules whose calls into an instance's native object run the guest.
_NATIVE_CALLERS = ("tenantvm/tenant.py", "tenantvm/batcher.py")


def _native_call_lines() -> set[tuple[str, int]]:
    """(module, line) of the lines that call into the native module (the guest runs there)."""
    import tenantvm

    root = Path(tenantvm.__file__).parent.parent
    out: set[tuple[str, int]] = set()
    for module in _NATIVE_CALLERS:
        lines = (root / module).read_text().splitlines()
        out |= {(module, i + 1) for i, text in enumerate(lines) if "._native." in text}
    return out


def classify_pyspy(raw: Path) -> dict[str, Any]:
    """Python samples by category (innermost frame of a known package)."""
    native_lines = _native_call_lines()
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack.strip() or not n.isdigit():
            continue  # a thread without Python frames
        frames = [m.groupdict() for f in stack.split(";") if (m := _FRAME.match(f))]
        if not frames:
            continue
        leaf = frames[-1]
        if leaf["func"].startswith(_IDLE_LEAVES):
            counts["idle"] += int(n)
            continue
        module = next((m for m in _NATIVE_CALLERS if leaf["file"].endswith(m)), None)
        if module and leaf["line"] and (module, int(leaf["line"])) in native_lines:
            counts["native_call"] += int(n)
            continue
        category = "python_other"
        for frame in reversed(frames):
            found = next((cat for pat, cat in _PACKAGE_CATEGORY if pat in frame["file"]), None)
            if found:
                category = found
                break
        counts[category] += int(n)
    return dict(counts)


# --------------------------------------------------------------------------------------------
# The run


def combine(perf: dict[str, Any] | None, pyspy: dict[str, int] | None, requests: float) -> dict[str, Any]:
    """The breakdown: perf's coarse split, its Python share divided as py-spy saw it."""
    shares: dict[str, float] = {}
    method: list[str] = []
    if perf is not None:
        totals = perf["totals_ns"]
        total = sum(totals.values())
        python = totals.get("python", 0) / total
        for cat in ("granian", "tenantvm_rust", "kvm", "other_threads"):
            shares[cat] = totals.get(cat, 0) / total
        method.append("`perf record -e cpu-clock -F 999 -g` on the worker (all threads)")
    if pyspy is not None:
        py_cats = ("granian", "starlette", "tenantvm_py", "metrics", "asyncio", "python_other")
        py_total = sum(pyspy.get(c, 0) for c in py_cats)
        if perf is not None and py_total:
            for cat in py_cats:
                shares[cat] = shares.get(cat, 0.0) + python * pyspy.get(cat, 0) / py_total
        elif py_total:
            busy = py_total + pyspy.get("native_call", 0)
            for cat in py_cats:
                shares[cat] = pyspy.get(cat, 0) / busy
            shares["tenantvm_rust"] = pyspy.get("native_call", 0) / busy  # Rust and KVM together
        method.append("`py-spy record --nonblocking` (Python stacks) to split the Python share")
    elif perf is not None:
        shares["python_other"] = python
    # "metrics" is reported as a part of tenantvm's Python.
    shares["tenantvm_py"] = shares.get("tenantvm_py", 0.0) + shares.get("metrics", 0.0)
    cpu_s = sum(perf["totals_ns"].values()) / 1e9 if perf is not None else None
    rows = []
    for cat, label in CATEGORIES:
        share = shares.get(cat, 0.0)
        rows.append(
            {
                "category": cat,
                "label": label,
                "share": share,
                "cpu_us_per_request": share * cpu_s / requests * 1e6 if cpu_s and requests else None,
            }
        )
    return {"rows": rows, "method": "; ".join(method), "cpu_s": cpu_s}


def _recorded_calls(port: int) -> tuple[list[float], list[int]]:
    """The calls the timed server recorded since the last fetch: (µs, exits)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/_bench/calls")
        data = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return [ns / 1000 for ns in data["ns"]], list(data["exits"])


def _paced(port: int, pause: float, count: int) -> list[float]:
    """``count`` requests on one connection, ``pause`` seconds apart: client-side µs."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    times: list[float] = []
    try:
        for _ in range(count):
            time.sleep(pause)
            t0 = time.perf_counter()
            conn.request("GET", "/")
            resp = conn.getresponse()
            resp.read()
            times.append((time.perf_counter() - t0) * 1e6)
    finally:
        conn.close()
    return times


def calls_in_server(seconds: float, paced: int, interface: str = "rsgi") -> dict[str, Any]:
    """What one hello call costs inside the server under four loads."""
    out: dict[str, Any] = {}
    with hello_tenants() as config:
        env = {"TENANTVM_CONFIG": str(config)}
        with Server("tenantvm-timed", "timed_tenantvm:app", workers=1, env=env, interface=interface) as server:
            run_wrk(server.url(), threads=2, connections=16, seconds=1)
            loads: list[tuple[str, Any]] = [
                ("wrk -t1 -c1", lambda: run_wrk(server.url(), threads=1, connections=1, seconds=seconds).p50_us),
                ("wrk -t2 -c16", lambda: run_wrk(server.url(), threads=2, connections=16, seconds=seconds).p50_us),
                ("one request every 1 ms", lambda: percentile(sorted(_paced(server.port, 0.001, paced)), 50)),
                ("one request every 10 ms", lambda: percentile(sorted(_paced(server.port, 0.01, paced // 2)), 50)),
            ]
            for name, load in loads:
                _recorded_calls(server.port)  # forget the calls made so far
                client_p50 = load()
                us, exits = _recorded_calls(server.port)
                us.sort()
                out[name] = {
                    "calls": len(us),
                    "p50_us": percentile(us, 50),
                    "p90_us": percentile(us, 90),
                    "p99_us": percentile(us, 99),
                    "exits_per_call": sum(exits) / max(1, len(exits)),
                    "client_p50_us": client_p50,
                }
                log(f"call inside the server, {name}: p50 {out[name]['p50_us']:.1f} µs over {len(us)} calls")
    return out


def run(seconds: float = 10.0, quick: bool = False, interface: str = "rsgi") -> dict[str, Any]:
    """Profiles the tenantvm HTTP path under wrk -t2 -c16, under Granian's ``interface``."""
    if quick:
        seconds = 4.0
    have_perf = shutil.which("perf") is not None
    spy = shutil.which("py-spy") or str(Path(__import__("sys").executable).with_name("py-spy"))
    have_pyspy = Path(spy).exists()
    out: dict[str, Any] = {
        "seconds": seconds,
        "interface": interface,
        "tools": {"perf": have_perf, "py-spy": have_pyspy},
    }
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp, hello_tenants() as config:
        tmpd = Path(tmp)
        env = {"TENANTVM_CONFIG": str(config)}
        with Server("tenantvm", "tenantvm.app:app", workers=1, env=env, interface=interface) as server:
            worker = server.worker_pids()[0]
            run_wrk(server.url(), threads=2, connections=16, seconds=1)
            total = (seconds if have_perf else 0) + (seconds if have_pyspy else 0) + 3
            wrk = subprocess.Popen(
                ["wrk", "-t2", "-c16", f"-d{round(total)}s", server.url()],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            try:
                time.sleep(1.0)
                perf_data = tmpd / "perf.data"
                if have_perf:
                    log(f"profile: perf record on worker {worker} for {seconds:.0f} s")
                    subprocess.run(
                        [*PERF_RECORD, "-p", str(worker), "-o", str(perf_data), "--", "sleep", str(seconds)],
                        capture_output=True,
                        timeout=seconds + 60,
                        check=False,
                    )
                raw = tmpd / "pyspy.txt"
                if have_pyspy:
                    log(f"profile: py-spy record on worker {worker} for {seconds:.0f} s")
                    subprocess.run(
                        [spy, *PYSPY_RECORD, "--duration", str(round(seconds)), "-o", str(raw), "--pid", str(worker)],
                        capture_output=True,
                        timeout=seconds + 60,
                        check=False,
                    )
            finally:
                try:
                    wrk_out, _ = wrk.communicate(timeout=total + 30)
                except subprocess.TimeoutExpired:
                    wrk.kill()
                    wrk_out, _ = wrk.communicate()
        rps_match = re.search(r"Requests/sec:\s+([\d.]+)", wrk_out)
        rps = float(rps_match.group(1)) if rps_match else 0.0
        out["wrk_rps"] = rps
        perf = None
        if have_perf and perf_data.exists():
            perf = classify_perf(read_perf(perf_data), worker)
            perf["main_thread_utilisation"] = perf["main_thread_ns"] / (seconds * 1e9)
        pyspy = classify_pyspy(raw) if have_pyspy and raw.exists() else None
        out["perf"] = perf
        out["pyspy_samples"] = pyspy
        out["breakdown"] = combine(perf, pyspy, rps * seconds)
    out["calls_in_server"] = calls_in_server(min(seconds, 4.0), 100 if quick else 300, interface)
    return out


def main() -> None:
    """Runs the profile alone and prints the breakdown."""
    parser = argparse.ArgumentParser(description="Where the time of the HTTP path goes.")
    parser.add_argument("--seconds", type=float, default=10.0, help="each profiler's duration")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--interface", choices=("rsgi", "asgi"), default="rsgi", help="Granian's interface")
    args = parser.parse_args()
    print(json.dumps(run(args.seconds, args.quick, args.interface), indent=1))


if __name__ == "__main__":
    main()
