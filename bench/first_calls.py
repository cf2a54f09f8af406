"""A new instance's first requests, with and without priming (:meth:`TenantVM.prime`).

For each bundled tenant named (default: the language runtimes that are installed), in
alternation: an instance made as the pool makes it (``tenant.instance()``), then one primed
with the tenant's priming requests (``tenantvm.server.priming_requests``: its first warm-up
requests); then three ``GET /`` calls on it, each timed, with the host page faults of the
calling thread (``getrusage(RUSAGE_THREAD).ru_minflt``) and the VM exits of the first.
Medians and ranges over the rounds.

``python bench/first_calls.py [--rounds 5] [python node lua]``
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

from tenantvm import Request, Tenant
from tenantvm import config as tconfig
from tenantvm.server import priming_requests


def faults() -> int:
    """Minor page faults of the calling thread so far."""
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt


def measure(name: str, rounds: int) -> dict[bool, dict[str, list[float]]]:
    """Figures per round for unprimed (False) and primed (True) instances of ``name``."""
    tc = tconfig.load(tconfig.BUNDLED_CONFIG).tenant(name)
    kwargs = tc.tenant_kwargs()
    tenant = Tenant(kwargs.pop("program"), **kwargs)
    priming = priming_requests(tc)
    out: dict[bool, dict[str, list[float]]] = {
        p: {"ready_ms": [], "call1_ms": [], "call2_ms": [], "call3_ms": [], "call1_faults": [], "call1_exits": []}
        for p in (False, True)
    }
    for _ in range(rounds):
        for primed in (False, True):
            t0 = time.perf_counter()
            vm = tenant.instance()
            if primed:
                vm.prime(priming)
            out[primed]["ready_ms"].append((time.perf_counter() - t0) * 1e3)
            for i in (1, 2, 3):
                f0, t0 = faults(), time.perf_counter()
                r = vm.call(Request(path="/"))
                out[primed][f"call{i}_ms"].append((time.perf_counter() - t0) * 1e3)
                if i == 1:
                    out[primed]["call1_faults"].append(faults() - f0)
                    out[primed]["call1_exits"].append(r.exits)
    return out


def main() -> None:
    """Prints the figures of each tenant."""
    parser = argparse.ArgumentParser(description="A new instance's first requests, with and without priming.")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("tenants", nargs="*", help="bundled tenants (default: the installed runtimes)")
    args = parser.parse_args()
    bundled = {t.name for t in tconfig.load(tconfig.BUNDLED_CONFIG).tenants}
    names = args.tenants or [n for n in ("python", "node", "lua") if n in bundled]
    for name in names:
        for primed, figures in measure(name, args.rounds).items():
            cells = []
            for key, values in figures.items():
                m, lo, hi = statistics.median(values), min(values), max(values)
                cells.append(f"{key} {m:.2f} ({lo:.2f}-{hi:.2f})" if key.endswith("ms") else f"{key} {m:.0f}")
            print(f"{name} {'primed  ' if primed else 'unprimed'}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
