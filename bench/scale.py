"""Scale and memory: host memory per instance, boot and instance-creation times (issue 5, §4).

For each size N (1, 8, 64) a fresh Python process (so that its memory is clean) boots
``hello`` (ephemeral), creates N instances, and reads its own memory (``VmRSS`` and
``/proc/self/smaps_rollup``: Rss, Pss, private pages) idle, then again after 1,000 requests
on each instance.  The parent runs the sizes interleaved over several rounds.  The memory an
instance wrote (``last_reset.pages_restored``, the pages a request dirties and a reset copies
back) is recorded, since the target is "256 KiB plus what it wrote".

KVM's own memory for a VM (vCPU structures, PVM shadow page tables, memory-slot metadata) is
kernel memory and not in any process's RSS: the change of ``/proc/meminfo``'s kernel counters
(Slab, PageTables, SecPageTables, VmallocUsed) is recorded too, as an indication only (the
machine is shared), and split by source from ``/proc/vmallocinfo`` and ``/proc/slabinfo``.
KernelStack is not added: with vmapped stacks (CONFIG_VMAP_STACK, the x86-64 default) thread
stacks are already in VmallocUsed.

Boot time (``tenant.boot_time``, five boots per process) and instance creation time
(``stats().create_time`` of every instance, and the wall time around ``tenant.instance()``)
are collected from every process.

Run alone: ``python bench/scale.py [--quick]``; ``--child N`` is the measuring process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from common import APPS_BUILD, kernel_sources, log, meminfo, rss_kib, run_json_child, smaps_rollup

SIZES = (1, 8, 64)
KERNEL_COUNTERS = ("Slab", "PageTables", "SecPageTables", "VmallocUsed")


def _memory() -> dict[str, Any]:
    roll = smaps_rollup()
    info = meminfo()
    return {
        "rss_kib": rss_kib(),
        "pss_kib": roll.get("Pss", 0),
        "private_kib": roll.get("Private_Clean", 0) + roll.get("Private_Dirty", 0),
        "anonymous_kib": roll.get("Anonymous", 0),
        "kernel_kib": sum(info.get(k, 0) for k in KERNEL_COUNTERS),
        "kernel": {k: info.get(k, 0) for k in KERNEL_COUNTERS},
        "kernel_sources": kernel_sources(),
        "mem_available_kib": info.get("MemAvailable", 0),
    }


def child(n: int, requests: int) -> dict[str, Any]:
    """The measuring process: boot, N instances, memory idle and after ``requests`` each."""
    import tenantvm

    program = APPS_BUILD / "hello"
    hello = tenantvm.Request("GET", "/")
    # Import and warm the Python side first so that it does not count as instance memory.
    warm = tenantvm.Tenant(program, memory_mb=16, timeout=1.0)
    warm.instance().call(hello)
    del warm
    base = _memory()
    tenant = tenantvm.Tenant(program, memory_mb=16, timeout=1.0)
    booted = _memory()
    create_wall: list[float] = []
    vms = []
    for _ in range(n):
        t0 = time.perf_counter()
        vms.append(tenant.instance())
        create_wall.append((time.perf_counter() - t0) * 1e6)
    idle = _memory()
    for vm in vms:
        for _ in range(requests):
            vm.call(hello)
    after = _memory()
    stats = [vm.stats() for vm in vms]
    written = sorted(s.last_reset["pages_restored"] for s in stats)
    boots = [tenant.boot_time * 1e6]
    for _ in range(4):
        boots.append(tenantvm.Tenant(program, memory_mb=16, timeout=1.0).boot_time * 1e6)
    return {
        "n": n,
        "requests_each": requests,
        "base": base,
        "booted": booted,
        "idle": idle,
        "after": after,
        "snapshot_resident_pages": tenant.resident_pages,
        "written_pages_per_instance": written[len(written) // 2],
        "create_us": [s.create_time * 1e6 for s in stats],
        "create_wall_us": create_wall,
        "boot_us": boots,
    }


MEASURES = ("rss_kib", "pss_kib", "private_kib", "kernel_kib", "host_kib")


def _value(mem: dict[str, Any], key: str) -> float:
    # Host memory of the instances: the process's private pages plus the kernel's (KVM) memory.
    return float(mem["private_kib"] + mem["kernel_kib"] if key == "host_kib" else mem[key])


def per_instance(result: dict[str, Any]) -> dict[str, float]:
    """Memory per instance in KiB (idle and after the requests), from one child's result."""
    n = result["n"]
    out: dict[str, float] = {}
    for state in ("idle", "after"):
        for key in MEASURES:
            out[f"{state}_{key}"] = (_value(result[state], key) - _value(result["booted"], key)) / n
    kernel = result["idle"]["kernel"]
    for name, value in kernel.items():
        out[f"idle_kernel_{name}_kib"] = (value - result["booted"]["kernel"][name]) / n
    booted = result["booted"].get("kernel_sources", {})
    for name, value in result["idle"].get("kernel_sources", {}).items():
        out[f"idle_source_{name}_kib"] = (value - booted.get(name, 0)) / n
    return out


def run(rounds: int = 3, requests: int = 1000, quick: bool = False) -> dict[str, Any]:
    """Each size in a fresh process, sizes interleaved over ``rounds``."""
    if quick:
        rounds, requests = 1, 200
    results: dict[str, list[dict[str, Any]]] = {str(n): [] for n in SIZES}
    for r in range(rounds):
        for n in SIZES:
            res = run_json_child(["bench/scale.py", "--child", str(n), "--requests", str(requests)], timeout=300)
            res["per_instance_kib"] = per_instance(res)
            results[str(n)].append(res)
            p = res["per_instance_kib"]
            log(
                f"scale round {r + 1}/{rounds} n={n}: per instance idle {p['idle_rss_kib']:.0f} KiB RSS, "
                f"{p['idle_private_kib']:.0f} private, {p['idle_kernel_kib']:.0f} kernel; after {requests} "
                f"requests {p['after_rss_kib']:.0f} RSS, {p['after_private_kib']:.0f} private"
            )
    # The slope between the smallest and the largest size cancels what is paid once.
    slopes: list[dict[str, float]] = []
    lo, hi = str(SIZES[0]), str(SIZES[-1])
    for a, b in zip(results[lo], results[hi], strict=True):
        span = SIZES[-1] - SIZES[0]
        slopes.append(
            {
                f"{state}_{key}": (_value(b[state], key) - _value(a[state], key)) / span
                for state in ("idle", "after")
                for key in MEASURES
            }
        )
    return {"rounds": rounds, "requests_each": requests, "sizes": list(SIZES), "results": results, "slopes": slopes}


def main() -> None:
    """Runs the section alone (or, with --child, one measuring process)."""
    parser = argparse.ArgumentParser(description="Scale and memory of tenant instances.")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--child", type=int, help="measure N instances in this process")
    parser.add_argument("--requests", type=int, default=1000, help="requests per instance")
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.requests)))
        sys.stdout.flush()
        return
    print(json.dumps(run(quick=args.quick), indent=1))


if __name__ == "__main__":
    main()
