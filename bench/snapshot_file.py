"""Cold start: booting a tenant vs starting it from its snapshot file, side by side.

For each example tenant (and the runtime ones when their interpreters are installed), the
median over --runs rounds (boot and loads alternate, so all see the same load) of:

- **boot**: ``Tenant(...)`` and its first instance;
- **fresh process**: ``Tenant.from_snapshot`` and the first instance in a new Python process
  (a server starting: the process opens ``/dev/kvm`` and checks the whole file; the time
  counts from after ``import tenantvm``);
- **again**: the same in this process, which has verified the file before (another worker's
  pool, a reload: only the header and state are checked again, see docs/snapshot-files.md);

and their ratios; then, per tenant, where the time went: the median of each step of reading
and checking the file (``Tenant.load_steps``) and of making the first instance
(``InstanceStats.create_steps``), fresh and again.  The file is in the page cache (a server
restarting, or a second worker), as in production after the first start.  Objects of the
previous round are freed, and each timed phase starts PAUSE s after the previous one ended:
tearing down a VM is not part of starting one, and the kernel finishes it after the process
(or the instance) let it go; without the pause the next VM's memory slots waited several ms
for it on the loaded PVM host.

    .venv/bin/python bench/snapshot_file.py [--runs 20] [--tenants hello,python,node]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tenantvm import Request, Tenant
from tenantvm import config as tconfig

#: A new process's first load of a snapshot file, timed after the import.
FRESH = """
import json, sys, time
import tenantvm
started = time.perf_counter()
t = tenantvm.Tenant.from_snapshot(sys.argv[1])
vm = t.instance()
took = time.perf_counter() - started
print(json.dumps({"took": took, "load": t.load_steps, "create": vm.stats().create_steps}))
"""


#: Seconds between timed phases (see the module's docstring).
PAUSE = 0.2


def fresh_load(path: Path) -> tuple[float, list[tuple[str, float]]]:
    """Loads ``path`` in a new process: seconds to a first instance, and the steps."""
    out = subprocess.run(
        [sys.executable, "-c", FRESH, str(path)], check=True, capture_output=True, text=True, timeout=300
    )
    r = json.loads(out.stdout)
    return r["took"], [(f"file: {n}", s) for n, s in r["load"]] + [(f"instance: {n}", s) for n, s in r["create"]]


def settle(path: Path) -> None:
    """Waits until ``path`` was last changed over a second ago.

    Younger files are verified whole on every load: a write within the same clock tick could
    leave their times unchanged.
    """
    age = time.time() - os.stat(path).st_ctime
    if age < 1.1:
        time.sleep(1.1 - age)


def main() -> None:
    """Prints the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--config", help="tenants file (default: the bundled examples)")
    parser.add_argument("--tenants", help="comma-separated tenant names (default: all)")
    ns = parser.parse_args()
    cfg = tconfig.load(tconfig.config_path(ns.config))
    wanted = set(ns.tenants.split(",")) if ns.tenants else None
    for name, why in cfg.skipped:
        if wanted is None or name in wanted:
            print(f"{name}: left out ({why})")
    print(
        f"{'tenant':<10} {'boot ms':>9} {'fresh ms':>9} {'again ms':>9} "
        f"{'boot/fresh':>11} {'boot/again':>11} {'file KiB':>9}"
    )
    breakdowns: list[tuple[str, dict[str, dict[str, float]]]] = []
    with tempfile.TemporaryDirectory() as d:
        for t in cfg.tenants:
            if wanted is not None and t.name not in wanted:
                continue
            kwargs = t.tenant_kwargs()
            program = kwargs.pop("program")
            boots: list[float] = []
            loads: dict[str, list[float]] = {"fresh": [], "again": []}
            steps: dict[str, dict[str, list[float]]] = {"fresh": {}, "again": {}}
            path = Path(d) / f"{t.name}.snap"
            Tenant(program, **kwargs).write_snapshot(path)
            settle(path)
            Tenant.from_snapshot(path)  # this process verifies the file once
            gc.collect()
            for _ in range(ns.runs):
                time.sleep(PAUSE)
                started = time.perf_counter()
                tenant = Tenant(program, **kwargs)
                tenant.instance()
                boots.append(time.perf_counter() - started)
                del tenant
                gc.collect()
                time.sleep(PAUSE)
                took, fresh_steps = fresh_load(path)
                loads["fresh"].append(took)
                for step, s in fresh_steps:
                    steps["fresh"].setdefault(step, []).append(s)
                time.sleep(PAUSE)
                started = time.perf_counter()
                loaded = Tenant.from_snapshot(path)
                vm = loaded.instance()
                loads["again"].append(time.perf_counter() - started)
                for step, s in loaded.load_steps:
                    steps["again"].setdefault(f"file: {step}", []).append(s)
                for step, s in vm.stats().create_steps:
                    steps["again"].setdefault(f"instance: {step}", []).append(s)
                vm.call(Request("GET", "/"))
                del loaded, vm
                gc.collect()
            boot = statistics.median(boots) * 1000
            fresh, again = (statistics.median(loads[k]) * 1000 for k in ("fresh", "again"))
            size = path.stat().st_blocks // 2
            print(
                f"{t.name:<10} {boot:>9.2f} {fresh:>9.2f} {again:>9.2f} "
                f"{boot / fresh:>10.1f}x {boot / again:>10.1f}x {size:>9}"
            )
            breakdowns.append(
                (t.name, {k: {s: statistics.median(v) * 1000 for s, v in steps[k].items()} for k in steps})
            )
    for name, medians in breakdowns:
        names = list(dict.fromkeys([*medians["fresh"], *medians["again"]]))
        sums = {k: sum(medians[k].values()) for k in medians}
        print(f"\n{name}: steps, median ms{'fresh':>24} {'again':>9}")
        for step in names:
            cells = [f"{medians[k][step]:>9.3f}" if step in medians[k] else f"{'-':>9}" for k in ("fresh", "again")]
            print(f"  {step:<52} {' '.join(cells)}")
        print(f"  {'sum of the steps':<52} {sums['fresh']:>9.3f} {sums['again']:>9.3f}")


if __name__ == "__main__":
    main()
