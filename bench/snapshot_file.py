"""Cold start: booting a tenant vs starting it from its snapshot file, side by side.

For each example tenant (and the runtime ones when their interpreters are installed): the
median time to boot it (Tenant(...)) and to be ready from its file (Tenant.from_snapshot +
the first instance), over --runs runs (boot and load alternate, so both see the same load),
and their ratio.  The file is in the page cache (a server restarting, or a second worker), as
in production after the first start.  Tenants with threads at their snapshot (node: V8's and
libuv's) are written with them.

    .venv/bin/python bench/snapshot_file.py [--runs 20] [--tenants hello,python,node]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tenantvm import Request, Tenant
from tenantvm import config as tconfig


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
    print(f"{'tenant':<10} {'boot ms':>10} {'from file ms':>13} {'ratio':>7}  {'file KiB':>9}")
    with tempfile.TemporaryDirectory() as d:
        for t in cfg.tenants:
            if wanted is not None and t.name not in wanted:
                continue
            kwargs = t.tenant_kwargs()
            program = kwargs.pop("program")
            boots, loads = [], []
            path = Path(d) / f"{t.name}.snap"
            for i in range(ns.runs):
                started = time.perf_counter()
                tenant = Tenant(program, **kwargs)
                tenant.instance()
                boots.append(time.perf_counter() - started)
                if i == 0:
                    tenant.write_snapshot(path)
                started = time.perf_counter()
                loaded = Tenant.from_snapshot(path)
                vm = loaded.instance()
                loads.append(time.perf_counter() - started)
                vm.call(Request("GET", "/"))
            boot, load = statistics.median(boots) * 1000, statistics.median(loads) * 1000
            size = path.stat().st_blocks // 2
            print(f"{t.name:<10} {boot:>10.2f} {load:>13.2f} {boot / load:>6.1f}x  {size:>9}")


if __name__ == "__main__":
    main()
