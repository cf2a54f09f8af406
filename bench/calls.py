"""In-process calls against the floor (issue 5, sections 1 and 2), and the cost of a pause.

The floor is the cheapest VM round trip this host allows: a bare guest looping on a no-op
call that exits to the host (``tenantvm._native.measure_round_trip``).  Every round measures
it, then each call variant in turn (``floor, hello-ephemeral, hello-stateful, state-stateful,
echo-1k, echo-64k, python-hello, lua-hello, node-hello, ..., floor, ...``; the language runtimes' hellos
are the bundled tenants file's, left out where their runtime is not installed): a tight loop of
N ``TenantVM.call``s, each timed with ``perf_counter_ns``, with ``vm.stats()`` before and after
for exits, restored pages and reset time per call.

The "pause" part measures an ephemeral hello call that follows a pause of the calling thread:
busy-spinning, sleeping, or walking a 64 MiB buffer (evicting caches and TLBs) for 1 or 10 ms.
A call that is cheap in a tight loop costs more after a pause; this shows by how much and what
it follows.

Run alone: ``python bench/calls.py [--quick]`` prints the raw results as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from typing import Any

from common import APPS_BUILD, log, median, percentile

import tenantvm
from tenantvm import _native
from tenantvm import config as tconfig


@dataclass(frozen=True)
class CallVariant:
    """One kind of call: which program, which mode, which request."""

    key: str
    label: str
    program: str
    ephemeral: bool
    request: tenantvm.Request
    #: Requests per ``TenantVM.call_batch`` (1: plain ``call``s); times are per request.
    batch: int = 1
    #: A tenant of the bundled tenants file (a language runtime's hello) instead of ``program``.
    bundled: str | None = None


VARIANTS = [
    CallVariant("hello-ephemeral", "hello, ephemeral", "hello", True, tenantvm.Request("GET", "/")),
    CallVariant(
        "hello-stateful", "hello, stateful (respond + wait: 2 exits)", "hello", False, tenantvm.Request("GET", "/")
    ),
    CallVariant(
        "state-stateful",
        "state, stateful (respond_and_wait: 1 exit)",
        "state",
        False,
        tenantvm.Request("GET", "/"),
    ),
    CallVariant(
        "echo-1k", "echo, 1 KiB body, ephemeral", "echo", True, tenantvm.Request("POST", "/echo", body=b"x" * 1024)
    ),
    CallVariant(
        "echo-64k",
        "echo, 64 KiB body, ephemeral",
        "echo",
        True,
        tenantvm.Request("POST", "/echo", body=b"y" * 65536),
    ),
    CallVariant(
        "python-hello", "CPython WSGI hello (python.localhost)", "", True, tenantvm.Request(), bundled="python"
    ),
    CallVariant("lua-hello", "Lua 5.4 hello (lua.localhost)", "", True, tenantvm.Request(), bundled="lua"),
    CallVariant("node-hello", "Node.js hello (node.localhost)", "", True, tenantvm.Request(), bundled="node"),
    CallVariant(
        "hello-batch32",
        "hello, ephemeral, call_batch of 32 (per request)",
        "hello",
        True,
        tenantvm.Request("GET", "/"),
        batch=32,
    ),
    CallVariant(
        "echo-1k-batch32",
        "echo, 1 KiB body, call_batch of 32 (per request)",
        "echo",
        True,
        tenantvm.Request("POST", "/echo", body=b"x" * 1024),
        batch=32,
    ),
]

#: Pauses before a call: (key, label, mode, microseconds).
PAUSES = [
    ("none", "back to back", "none", 0),
    ("spin-1ms", "after 1 ms busy-spinning", "spin", 1000),
    ("sleep-1ms", "after 1 ms asleep", "sleep", 1000),
    ("walk-1ms", "after 1 ms walking 64 MiB", "walk", 1000),
    ("spin-10ms", "after 10 ms busy-spinning", "spin", 10000),
    ("sleep-10ms", "after 10 ms asleep", "sleep", 10000),
    ("walk-10ms", "after 10 ms walking 64 MiB", "walk", 10000),
]


def measure_floor(exits: int, samples: int) -> float:
    """The cheapest VM exit round trip, µs (median over ``samples`` runs of ``exits`` exits)."""
    return float(_native.measure_round_trip(exits, samples)["exit_us"])


def time_calls(vm: tenantvm.TenantVM, request: tenantvm.Request, n: int, batch: int = 1) -> dict[str, Any]:
    """Per-request times and stats deltas of N calls in a tight loop.

    With ``batch`` > 1: N/batch ``call_batch``es of ``batch`` requests, timed per request.
    """
    clock = time.perf_counter_ns
    if batch > 1:
        requests = [request] * batch
        call_batch = vm.call_batch
        n = max(1, n // batch)

        def call(_: tenantvm.Request) -> None:
            call_batch(requests)
    else:
        call = vm.call
    times = [0] * n
    before = vm.stats()
    t_start = clock()
    for i in range(n):
        t0 = clock()
        call(request)
        times[i] = (clock() - t0) // batch
    total = clock() - t_start
    after = vm.stats()
    calls = after.calls - before.calls
    resets = after.resets - before.resets
    us = sorted(t / 1000 for t in times)
    return {
        "p50_us": percentile(us, 50),
        "p99_us": percentile(us, 99),
        "mean_us": sum(us) / n,
        "calls_per_s": n * batch / (total / 1e9),
        "exits_per_call": (after.exits - before.exits) / calls,
        "pages_per_call": (
            after.pages_restored + after.guest_pages_restored - before.pages_restored - before.guest_pages_restored
        )
        / calls,
        "resets_per_call": (resets + after.guest_resets - before.guest_resets) / calls,
        "reset_us": (after.reset_time - before.reset_time) / resets * 1e6 if resets else None,
        "samples_us": [round(t / 1000, 1) for t in times],
    }


_WALK = bytearray(64 << 20)


def _pause(mode: str, us: int) -> None:
    if mode == "none":
        return
    if mode == "sleep":
        time.sleep(us / 1e6)
        return
    clock = time.perf_counter_ns
    end = clock() + us * 1000
    if mode == "spin":
        while clock() < end:
            pass
        return
    buf, i, size = _WALK, 0, len(_WALK)
    while clock() < end:  # one byte per page, striding over the buffer
        buf[i] = 1
        i = (i + 4096 * 17) % size


def time_after_pause(vm: tenantvm.TenantVM, request: tenantvm.Request, mode: str, us: int, n: int) -> dict[str, Any]:
    """N calls, each after a pause: p50/p90 and the reset time the VMM measured."""
    clock = time.perf_counter_ns
    times: list[float] = []
    resets: list[float] = []
    exits: list[int] = []
    for _ in range(n):
        _pause(mode, us)
        t0 = clock()
        vm.call(request)
        times.append((clock() - t0) / 1000)
        s = vm.stats()
        resets.append(s.last_reset["duration"] * 1e6)
        exits.append(s.last_call_exits)
    times.sort()
    return {
        "p50_us": percentile(times, 50),
        "p90_us": percentile(times, 90),
        "reset_p50_us": median(resets),
        "exits_per_call": sum(exits) / n,
    }


def run(rounds: int = 7, calls: int = 3000, pause_calls: int = 60, quick: bool = False) -> dict[str, Any]:
    """Every round: the floor, then each variant, then the pauses; raw per-round figures."""
    if quick:
        rounds, calls, pause_calls = 3, 500, 15
    floor_exits, floor_samples = (1000, 3) if quick else (2000, 5)
    tenants: dict[tuple[str, bool], tenantvm.Tenant] = {}
    vms: dict[str, tenantvm.TenantVM] = {}
    bundled = tconfig.load(tconfig.BUNDLED_CONFIG)
    variants = [v for v in VARIANTS if v.bundled is None or v.bundled in {t.name for t in bundled.tenants}]
    for v in VARIANTS:
        if v not in variants:
            log(f"calls: {v.key} left out: {dict(bundled.skipped).get(v.bundled or '', 'not in the tenants file')}")
    for v in variants:
        key = (v.bundled or v.program, v.ephemeral)
        if key not in tenants and v.bundled:
            kwargs = bundled.tenant(v.bundled).tenant_kwargs()
            tenants[key] = tenantvm.Tenant(kwargs.pop("program"), **kwargs)
        elif key not in tenants:
            tenants[key] = tenantvm.Tenant(APPS_BUILD / v.program, memory_mb=16, ephemeral=v.ephemeral, timeout=1.0)
        vms[v.key] = vm = tenants[key].instance()
        for _ in range(min(500, calls) // v.batch):  # warm: copy-on-write faults, hot pages, caches
            vm.call_batch([v.request] * v.batch) if v.batch > 1 else vm.call(v.request)
    pause_vm = tenants[("hello", True)].instance()
    hello = tenantvm.Request("GET", "/")
    for _ in range(200):
        pause_vm.call(hello)

    out: dict[str, Any] = {
        "rounds": rounds,
        "calls_per_round": calls,
        "pause_calls_per_round": pause_calls,
        "floor_us": [],
        "variants": {v.key: {"label": v.label, "rounds": []} for v in variants},
        "pauses": {key: {"label": label, "rounds": []} for key, label, _, _ in PAUSES},
    }
    for r in range(rounds):
        floor = measure_floor(floor_exits, floor_samples)
        out["floor_us"].append(floor)
        line = [f"floor {floor:.1f}"]
        for v in variants:
            res = time_calls(vms[v.key], v.request, calls, v.batch)
            res["ratio_p50_floor"] = res["p50_us"] / floor
            out["variants"][v.key]["rounds"].append(res)
            line.append(f"{v.key} {res['p50_us']:.1f}")
        for pause, _, mode, us in PAUSES:
            out["pauses"][pause]["rounds"].append(time_after_pause(pause_vm, hello, mode, us, pause_calls))
        log(f"calls round {r + 1}/{rounds}: p50 µs " + ", ".join(line))
    return out


def main() -> None:
    """Runs the section alone and prints its raw results (without the per-call samples)."""
    parser = argparse.ArgumentParser(description="In-process calls against the floor.")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    res = run(quick=args.quick)
    for v in res["variants"].values():
        for rnd in v["rounds"]:
            rnd.pop("samples_us")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
