"""tenantvm benchmarks (issue 5): ``make bench``, or ``python bench/run.py [--quick] [--sections ...]``.

Runs the sections in one process, each with its baselines measured in the same run and
interleaved, prints one results table (markdown) with every figure's median and min-max over
rounds, the ratios and the targets, and writes ``results.md``, ``results.json`` (raw samples
included) and ``chart.png`` to ``bench/results/`` (``--out``).

Sections: ``calls`` (the floor and in-process calls), ``http`` (tenantvm against Starlette,
wasmtime and fork under wrk), ``scale`` (memory per instance, boot and creation times),
``profile`` (where the time of the HTTP path goes).  A full run takes about 8 minutes on a
2-vCPU PVM machine; ``--quick`` about 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import calls
import http_load
import profiling
import report
import scale
from common import APPS_BUILD, RESULTS, cpu_busy, log, machine_info, wait_until_idle

SECTIONS = ("calls", "http", "scale", "profile")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description="tenantvm benchmarks with baselines measured in the same run.")
    p.add_argument("--quick", action="store_true", help="a short smoke run (fewer rounds, shorter loads)")
    p.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run (default: all: {','.join(SECTIONS)})",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="where to write the results (default: bench/results)")
    p.add_argument("--workers", type=int, default=1, help="Granian workers, for every HTTP variant (default 1)")
    p.add_argument("--http-rounds", type=int, default=5, help="HTTP rounds (default 5)")
    p.add_argument("--http-seconds", type=float, default=4.0, help="each wrk run, seconds (default 4)")
    p.add_argument("--call-rounds", type=int, default=7, help="in-process rounds (default 7)")
    p.add_argument("--calls", type=int, default=3000, help="calls per variant per round (default 3000)")
    p.add_argument("--scale-rounds", type=int, default=3, help="rounds of the memory measurements (default 3)")
    p.add_argument("--profile-seconds", type=float, default=10.0, help="each profiler's duration (default 10)")
    p.add_argument(
        "--max-busy",
        type=float,
        default=0.25,
        help="wait until at most this fraction of the CPUs is busy before starting (default 0.25)",
    )
    p.add_argument("--no-wait", action="store_true", help="do not wait for the machine to be idle")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections: {', '.join(sorted(unknown))} (known: {', '.join(SECTIONS)})")
    return args


def main(argv: list[str] | None = None) -> int:
    """Runs the selected sections and writes the results."""
    args = parse_args(argv)
    if not (APPS_BUILD / "hello").is_file():
        print(f"guest programs not found in {APPS_BUILD}: build them with `make -C apps`", file=sys.stderr)
        return 2
    results: dict[str, Any] = {
        "machine": machine_info(),
        "settings": {
            k: v for k, v in vars(args).items() if k not in ("out", "no_wait", "max_busy") and not k.startswith("_")
        },
        "sections": {},
        "background": {},
        "notes": [],
    }
    results["settings"]["out"] = os.fspath(args.out)
    results["command"] = " ".join(sys.argv[1:] if argv is None else argv) or "(defaults)"
    if not args.no_wait:
        log("checking that the machine is otherwise idle")
        results["idle_check"] = idle = wait_until_idle(args.max_busy)
        if not idle["idle"]:
            results["notes"].append(
                f"The machine was not idle at the start ({idle['busy']:.0%} of all CPUs busy): figures are noisier."
            )
    t_start = time.monotonic()
    for section in args.sections:
        results["background"][section] = cpu_busy(1.0)
        log(f"section {section} (background CPU {results['background'][section]:.0%})")
        t0 = time.monotonic()
        if section == "calls":
            results["sections"]["calls"] = calls.run(args.call_rounds, args.calls, quick=args.quick)
        elif section == "http":
            results["sections"]["http"] = http_load.run(
                args.http_rounds, args.http_seconds, workers=args.workers, quick=args.quick
            )
        elif section == "scale":
            results["sections"]["scale"] = scale.run(args.scale_rounds, quick=args.quick)
        elif section == "profile":
            results["sections"]["profile"] = profiling.run(args.profile_seconds, quick=args.quick)
        log(f"section {section} done in {time.monotonic() - t0:.0f} s")
    results["duration_s"] = round(time.monotonic() - t_start, 1)
    text = report.write(results, args.out)
    print(text)
    log(f"wrote {args.out}/results.md, results.json and chart.png ({results['duration_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
