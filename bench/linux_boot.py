"""Boot to first output of dynamically linked programs, tenantvm vs native, side by side.

``python bench/linux_boot.py [--rounds N]``: for each program, alternates a native run
(``subprocess``, fork+exec) and a one-shot ``tenantvm.run`` (VM creation, ld.so, libraries,
the program's own start-up, exit), and prints the medians, min-max, the ratio and the VM exits
per run.  Programs: the dynamic C hello from apps/build, ``/bin/true``, Debian's
``python3 -c pass``, ``perl -e 1`` and ``lua5.4 -e ''`` where installed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from pathlib import Path

from common import APPS_BUILD, Spread, median

import tenantvm


def programs() -> list[tuple[str, list[str], int]]:
    """(label, argv, memory_mb) of what this host has."""
    out = [("hello.dyn (C, glibc)", [str(APPS_BUILD / "hello.dyn")], 64), ("/bin/true", ["/bin/true"], 64)]
    for label, argv, mem in [
        ("python3 -c pass", ["/usr/bin/python3", "-c", "pass"], 256),
        ("perl -e 1", [shutil.which("perl") or "", "-e", "1"], 128),
        ("lua5.4 -e ''", [shutil.which("lua5.4") or "", "-e", ""], 64),
    ]:
        if argv[0] and Path(argv[0]).exists():
            out.append((label, argv, mem))
    return out


def main() -> None:
    """Measures and prints the table."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    print(f"| program | native ms | tenantvm ms | ratio | exits per run | ({args.rounds} rounds, median [min-max]) |")
    print("|---|---|---|---|---|---|")
    for label, argv, mem in programs():
        native, vm, exits = [], [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True)
            native.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            r = tenantvm.run(argv[0], argv[1:], memory_mb=mem)
            vm.append((time.perf_counter() - t) * 1e3)
            assert r.exit_code == 0, r.stderr
            exits.append(r.exits)
        n, v = Spread.of(native), Spread.of(vm)
        ratio = median(vm) / median(native)
        print(f"| {label} | {n.fmt('.2f')} | {v.fmt('.2f')} | {ratio:.2f}x | {median(exits):.0f} | |")


if __name__ == "__main__":
    main()
