"""The results table (markdown), the targets and the chart, from the raw results of a run.

``python bench/report.py [bench/results/results.json]`` rebuilds ``results.md`` and
``chart.png`` from a saved ``results.json``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common import DASH, RESULTS, TIMES, Spread, median

OK, MISS = "✅", "❌"


def _spread(rounds: Sequence[dict[str, Any]], get: Callable[[dict[str, Any]], float | None]) -> Spread:
    values = [v for r in rounds if (v := get(r)) is not None]
    return Spread.of(values)


def all_floors(results: dict[str, Any]) -> list[float]:
    """Every floor measurement of the run (in-process rounds and HTTP rounds)."""
    sections = results.get("sections", {})
    return [*sections.get("calls", {}).get("floor_us", []), *sections.get("http", {}).get("floor_us", [])]


# --------------------------------------------------------------------------------------------
# Targets


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 5: what was measured, the goal, met or not."""
    sections = results.get("sections", {})
    rows: list[dict[str, Any]] = []

    def add(name: str, measured: str, goal: str, met: bool | None, value: float | None) -> None:
        rows.append({"target": name, "measured": measured, "goal": goal, "met": met, "value": value})

    calls = sections.get("calls")
    if calls:
        eph = calls["variants"]["hello-ephemeral"]["rounds"]
        exits = _spread(eph, lambda r: r["exits_per_call"])
        add("Ephemeral hello: VM exits per call", exits.fmt(".2f"), "1", exits.hi == 1.0, exits.median)
        ratio = _spread(eph, lambda r: r["ratio_p50_floor"])
        p50 = _spread(eph, lambda r: r["p50_us"])
        add(
            "Ephemeral hello: call p50 / floor",
            f"{ratio.fmt('.2f', TIMES)} = {p50.median:.1f} µs vs floor {median(calls['floor_us']):.1f} µs",
            f"≤ 1.5{TIMES}",
            ratio.median <= 1.5,
            ratio.median,
        )
        pauses = calls.get("pauses", {})
        if "none" in pauses:
            for key in ("spin-10ms", "sleep-10ms"):
                if key not in pauses:
                    continue
                cold = _spread(
                    list(zip(pauses[key]["rounds"], pauses["none"]["rounds"], strict=True)),
                    lambda r: r[0]["p50_us"] / r[1]["p50_us"],
                )
                add(
                    f"Hello call {pauses[key]['label']} / back to back (p50)",
                    cold.fmt(".2f", TIMES),
                    f"≤ 2{TIMES}",
                    cold.median <= 2,
                    cold.median,
                )
    http = sections.get("http")
    if http:
        rd = http["rounds_data"]
        for key, goal in (("a/b c16", 1.0), ("f/b c16", 1.0), ("a/c c16", 2.0), ("a/d c16", 30.0)):
            if key not in rd[0]["ratios"]:
                continue
            s = _spread(rd, lambda r, k=key: r["ratios"][k])  # type: ignore[misc]
            what = {
                "a/b": "tenantvm RSGI / Starlette",
                "f/b": "tenantvm ASGI / Starlette",
                "a/c": "tenantvm / wasmtime",
                "a/d": "tenantvm / fork",
            }[key[:3]]
            add(f"HTTP -c16 req/s {key[:3]} ({what})", s.fmt(".2f"), f"≥ {goal:g}", s.median >= goal, s.median)
        for key, what in (("added p50 c1 us", "RSGI"), ("added p50 c1 us asgi", "ASGI")):
            if key not in rd[0]["ratios"]:
                continue
            added = _spread(rd, lambda r, k=key: r["ratios"][k])  # type: ignore[misc]
            add(
                f"HTTP -c1 p50 latency tenantvm ({what}) adds over Starlette",
                added.fmt(".0f", " µs"),
                "≤ 40 µs",
                added.median <= 40,
                added.median,
            )
    scale = sections.get("scale")
    if scale:
        slopes = scale["slopes"]
        host = _spread(slopes, lambda r: r["idle_host_kib"])
        rss = _spread(slopes, lambda r: r["idle_rss_kib"])
        private = _spread(slopes, lambda r: r["idle_private_kib"])
        kernel = _spread(slopes, lambda r: r["idle_kernel_kib"])
        add(
            "Host memory per extra idle instance (process private + kernel/KVM)",
            f"{host.fmt('.0f', ' KiB')} = {private.median:.0f} private + {kernel.median:.0f} kernel "
            f"(RSS alone: {rss.median:.0f} KiB)",
            "≤ 256 KiB (+ what it wrote: 0 idle)",
            host.median <= 256,
            host.median,
        )
        creates = [c for size in scale["results"].values() for res in size for c in res["create_us"]]
        c = median(creates)
        add(
            "Instance creation from a snapshot",
            f"{c:.0f} µs (median of {len(creates)})",
            "≤ 1 ms",
            c <= 1000,
            c,
        )
    return rows


# --------------------------------------------------------------------------------------------
# Markdown


def _rounds(n: int) -> str:
    return f"{n} round" + ("" if n == 1 else "s")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def _machine(results: dict[str, Any]) -> list[str]:
    m = results.get("machine", {})
    idle = results.get("idle_check", {})
    load = idle.get("loadavg") or m.get("loadavg") or (0, 0, 0)
    lines = [
        f"- **Machine**: {m.get('cpu')} {TIMES} {m.get('cpus')} vCPUs, kernel {m.get('kernel')}, KVM: {m.get('kvm')}",
        f"- **Software**: Python {m.get('python')}, {m.get('granian')}, {m.get('wrk', '').split(' Copyright')[0]}",
        f"- **Run**: {m.get('date')}, commit `{m.get('commit')}`, `bench/run.py {results.get('command', '')}`, "
        f"{results.get('duration_s', 0):.0f} s",
    ]
    if idle:
        lines.append(
            f"- **Background load at start**: {idle.get('busy', 0):.0%} of all CPUs busy over 2 s "
            f"(load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; waited {idle.get('waited_s', 0)} s)"
        )
    bg = results.get("background", {})
    if bg:
        lines.append(
            "- **Background before each section** (CPU busy while idle): "
            + ", ".join(f"{k} {v:.0%}" for k, v in bg.items())
        )
    return lines


def _calls(calls: dict[str, Any]) -> list[str]:
    floor = Spread.of(calls["floor_us"])
    lines = [
        "## 2. In-process calls (`TenantVM.call`)",
        "",
        f"{calls['rounds']} rounds of {calls['calls_per_round']} calls per variant, interleaved with the floor "
        f"(floor, each variant, floor, ...). Median (min{DASH}max) over rounds of each round's figure.",
        "",
    ]
    rows = [
        [
            "**floor** (bare guest, no-op exit)",
            f"{1e6 / floor.median:,.0f}",
            floor.fmt(".1f"),
            "",
            f"1.00{TIMES}",
            "1",
            "",
            "",
        ]
    ]
    for v in calls["variants"].values():
        rd = v["rounds"]
        reset = _spread(rd, lambda r: r["reset_us"])
        rows.append(
            [
                v["label"],
                _spread(rd, lambda r: r["calls_per_s"]).fmt(",.0f"),
                _spread(rd, lambda r: r["p50_us"]).fmt(".1f"),
                _spread(rd, lambda r: r["p99_us"]).fmt(".1f"),
                _spread(rd, lambda r: r["ratio_p50_floor"]).fmt(".2f", TIMES),
                _spread(rd, lambda r: r["exits_per_call"]).fmt(".2f"),
                _spread(rd, lambda r: r["pages_per_call"]).fmt(".1f"),
                reset.fmt(".1f")
                if reset.n
                else ("in the guest" if "call_batch" in v["label"] else "no reset (stateful)"),
            ]
        )
    lines += _table(
        ["call", "calls/s", "p50 µs", "p99 µs", "p50 / floor", "exits/call", "pages restored/call", "reset µs"], rows
    )
    pauses = calls.get("pauses")
    if pauses:
        lines += [
            "",
            f"**An ephemeral hello call after a pause** ({calls['pause_calls_per_round']} calls per kind per round): "
            "the thread busy-spins, sleeps, or walks a 64 MiB buffer (one byte per page) before each call.",
            "",
        ]
        prow = []
        for p in pauses.values():
            rd = p["rounds"]
            prow.append(
                [
                    p["label"],
                    _spread(rd, lambda r: r["p50_us"]).fmt(".1f"),
                    _spread(rd, lambda r: r["p90_us"]).fmt(".1f"),
                    _spread(rd, lambda r: r["reset_p50_us"]).fmt(".1f"),
                    _spread(rd, lambda r: r["exits_per_call"]).fmt(".2f"),
                ]
            )
        lines += _table(["before the call", "p50 µs", "p90 µs", "reset µs (p50)", "exits/call"], prow)
    return lines


def _http(http: dict[str, Any]) -> list[str]:
    rd = http["rounds_data"]
    lines = [
        "## 3. HTTP (wrk against Granian)",
        "",
        f"Every variant: `python -m granian {http['granian_flags']}`. {http['rounds']} rounds; in each, every "
        f"variant in turn (order rotating) on a fresh server: answer checked, {http['warmup_s']:g} s warm-up, "
        f"`wrk {http['wrk']['c1']}` then `wrk {http['wrk']['c16']}`, {http['seconds']:g} s each. "
        "Latency percentiles are wrk's exact ones (Lua report).",
        "",
    ]
    rows = []
    for key, v in http["variants"].items():
        errors = sum(sum(r[key][c]["errors"].values()) for r in rd for c in ("c1", "c16"))
        rows.append(
            [
                f"({key}) {v['label']}",
                _spread(rd, lambda r, k=key: r[k]["c1"]["rps"]).fmt(",.0f"),  # type: ignore[misc]
                _spread(rd, lambda r, k=key: r[k]["c1"]["p50_us"]).fmt(".0f"),  # type: ignore[misc]
                _spread(rd, lambda r, k=key: r[k]["c1"]["p99_us"]).fmt(".0f"),  # type: ignore[misc]
                _spread(rd, lambda r, k=key: r[k]["c16"]["rps"]).fmt(",.0f"),  # type: ignore[misc]
                _spread(rd, lambda r, k=key: r[k]["c16"]["p50_us"]).fmt(".0f"),  # type: ignore[misc]
                _spread(rd, lambda r, k=key: r[k]["c16"]["p99_us"]).fmt(".0f"),  # type: ignore[misc]
                str(errors),
            ]
        )
    lines += _table(
        ["variant", "-c1 req/s", "-c1 p50 µs", "-c1 p99 µs", "-c16 req/s", "-c16 p50 µs", "-c16 p99 µs", "errors"],
        rows,
    )
    lines += ["", "Ratios of req/s, each taken within one round:", ""]
    ratio_rows = []
    for name in ("a/b", "f/b", "a/f", "a/c", "a/d", "a/e"):
        if f"{name} c1" not in rd[0]["ratios"]:
            continue
        ratio_rows.append(
            [
                name,
                _spread(rd, lambda r, n=name: r["ratios"][f"{n} c1"]).fmt(".2f"),  # type: ignore[misc]
                _spread(rd, lambda r, n=name: r["ratios"][f"{n} c16"]).fmt(".2f"),  # type: ignore[misc]
            ]
        )
    lines += _table(["ratio", "-c1", "-c16"], ratio_rows)
    added = _spread(rd, lambda r: r["ratios"]["added p50 c1 us"])
    ratio = _spread(rd, lambda r: r["ratios"]["added p50 c1 / floor"])
    floor = Spread.of(http["floor_us"])
    lines += [
        "",
        f"p50 latency tenantvm (RSGI) adds over plain Starlette at -c1: **{added.fmt('.0f', ' µs')}**, "
        f"{ratio.fmt('.1f', TIMES)} the floor measured in the same rounds ({floor.fmt('.1f', ' µs')}).",
    ]
    if "added p50 c1 us asgi" in rd[0]["ratios"]:
        asgi = _spread(rd, lambda r: r["ratios"]["added p50 c1 us asgi"])
        lines += ["", f"The same under ASGI: **{asgi.fmt('.0f', ' µs')}**."]
    return lines


def _scale(scale: dict[str, Any]) -> list[str]:
    lines = [
        "## 4. Scale and memory",
        "",
        f"Each size in a fresh process, {_rounds(scale['rounds'])}, sizes interleaved; `hello` (16 MiB, ephemeral). "
        "Per instance = (process after - process with the booted tenant) / N. *Kernel* is the change of "
        "/proc/meminfo's Slab + PageTables + SecPageTables + VmallocUsed (KVM's memory for the VMs, not in any "
        "RSS; machine-wide, so indicative; KernelStack is left out: with vmapped stacks it is inside VmallocUsed).",
        "",
    ]
    rows = []
    for size, res in scale["results"].items():
        rows.append(
            [
                size,
                _spread(res, lambda r: r["idle"]["rss_kib"] / 1024).fmt(".1f"),
                _spread(res, lambda r: r["after"]["rss_kib"] / 1024).fmt(".1f"),
                _spread(res, lambda r: r["per_instance_kib"]["idle_rss_kib"]).fmt(".0f"),
                _spread(res, lambda r: r["per_instance_kib"]["idle_private_kib"]).fmt(".0f"),
                _spread(res, lambda r: r["per_instance_kib"]["idle_kernel_kib"]).fmt(".0f"),
                _spread(res, lambda r: r["per_instance_kib"]["after_rss_kib"]).fmt(".0f"),
                _spread(res, lambda r: r["per_instance_kib"]["after_private_kib"]).fmt(".0f"),
                _spread(res, lambda r: r["written_pages_per_instance"] * 4).fmt(".0f"),
            ]
        )
    lines += _table(
        [
            "instances",
            "process RSS idle MiB",
            f"RSS after {scale['requests_each']:,} req each MiB",
            "per instance idle: RSS KiB",
            "private KiB",
            "kernel KiB",
            "per instance after: RSS KiB",
            "private KiB",
            "written per request KiB",
        ],
        rows,
    )
    slopes = scale["slopes"]
    lines += [
        "",
        f"Marginal cost (slope from {scale['sizes'][0]} to {scale['sizes'][-1]} instances): idle "
        f"{_spread(slopes, lambda r: r['idle_rss_kib']).fmt('.0f')} KiB RSS, "
        f"{_spread(slopes, lambda r: r['idle_private_kib']).fmt('.0f')} KiB private, "
        f"{_spread(slopes, lambda r: r['idle_kernel_kib']).fmt('.0f')} KiB kernel; after "
        f"{scale['requests_each']:,} requests each "
        f"{_spread(slopes, lambda r: r['after_rss_kib']).fmt('.0f')} KiB RSS, "
        f"{_spread(slopes, lambda r: r['after_private_kib']).fmt('.0f')} KiB private.",
    ]
    kernel_keys = [
        k
        for k in next(iter(scale["results"].values()))[0]["per_instance_kib"]
        if k.startswith("idle_kernel_") and k != "idle_kernel_kib"
    ]
    big = scale["results"][str(scale["sizes"][-1])]
    lines.append(
        f"Kernel memory per instance at {scale['sizes'][-1]} instances, by counter: "
        + ", ".join(
            f"{k.removeprefix('idle_kernel_').removesuffix('_kib')} "
            f"{_spread(big, lambda r, kk=k: r['per_instance_kib'][kk]).median:.0f} KiB"  # type: ignore[misc]
            for k in kernel_keys
        )
        + "."
    )
    source_keys = sorted(
        {k for res in big for k in res["per_instance_kib"] if k.startswith("idle_source_")},
        key=lambda k: -_spread(big, lambda r, kk=k: r["per_instance_kib"].get(kk, 0.0)).median,  # type: ignore[misc]
    )
    if source_keys:
        kernel_total = _spread(big, lambda r: r["per_instance_kib"]["idle_kernel_kib"]).median
        rows = []
        for k in source_keys:
            v = _spread(big, lambda r, kk=k: r["per_instance_kib"].get(kk, 0.0)).median  # type: ignore[misc]
            rows.append([k.removeprefix("idle_source_").removesuffix("_kib"), f"{v:.0f}"])
            kernel_total -= v
        rows.append(["other (kmalloc caches, dentries, file objects, ...)", f"{kernel_total:.0f}"])
        lines += [
            "",
            f"The same kernel memory by source (`/proc/vmallocinfo` callers, `/proc/slabinfo` caches), per "
            f"instance at {scale['sizes'][-1]} instances. *Memory slots* scale with the guest memory "
            "(KVM's reverse map and write tracking: 2.5 KiB per MiB, per slot) plus about 20 KiB per slot "
            "(RAM, vCPU area, snapshot view); the rest is paid by any KVM VM with one vCPU on this kernel.",
            "",
        ]
        lines += _table(["source", "KiB per instance"], rows)
    boots = [b for size in scale["results"].values() for res in size for b in res["boot_us"]]
    creates = [c for size in scale["results"].values() for res in size for c in res["create_us"]]
    walls = [c for size in scale["results"].values() for res in size for c in res["create_wall_us"]]
    lines += [
        "",
        f"- Boot `hello` to its snapshot (`tenant.boot_time`): **{median(boots) / 1000:.2f} ms** median of "
        f"{len(boots)} (min {min(boots) / 1000:.2f}, max {max(boots) / 1000:.2f}).",
        f"- Create an instance from the snapshot (`stats().create_time`): **{median(creates):.0f} µs** median of "
        f"{len(creates)} (min {min(creates):.0f}, max {max(creates):.0f}); wall time around `tenant.instance()` "
        f"{median(walls):.0f} µs.",
    ]
    return lines


def _profile(profile: dict[str, Any], tight_p50: float | None = None) -> list[str]:
    b = profile["breakdown"]
    lines = [
        "## 5. Where the time goes (HTTP path, `wrk -t2 -c16`, one worker)",
        "",
        f"Method: {b['method']}; {profile['seconds']:g} s each, under the same load "
        f"({profile['wrk_rps']:,.0f} req/s while profiled). Shares of the worker process's CPU time; "
        f"CPU µs per request = share {TIMES} CPU time / requests.",
        "",
    ]
    rows = []
    for row in b["rows"]:
        if row["share"] == 0:
            continue
        per = row["cpu_us_per_request"]
        rows.append([row["label"], f"{row['share'] * 100:.1f}%", f"{per:.1f}" if per is not None else "n/a"])
    lines += _table(["where", "share of CPU", "CPU µs / request"], rows)
    perf = profile.get("perf")
    spy = profile.get("pyspy_samples")
    if perf:
        lines += [
            "",
            f"The event-loop thread was busy {perf['main_thread_utilisation']:.0%} of the time (it runs the "
            "application and every inline VM call, so it is the bottleneck at -c16).",
        ]
    if spy:
        busy = sum(v for k, v in spy.items() if k != "idle")
        lines.append(
            "py-spy saw the event-loop thread inside the native call (`TenantVM.call`, or the server's "
            f"`native_call` → Rust → KVM) in "
            f"{spy.get('native_call', 0) / max(1, busy):.0%} of its busy Python samples."
        )
    inside = profile.get("calls_in_server")
    if inside:
        lines += [
            "",
            "**One hello call inside the server** (`bench/apps/timed_tenantvm.py`: the same application with "
            "every VM call timed; a request served in a batch counts an equal share of the batch's time "
            "and exits), by load:",
            "",
        ]
        rows = [
            [
                name,
                f"{d['calls']:,}",
                f"{d['p50_us']:.1f}",
                f"{d['p90_us']:.1f}",
                f"{d['p99_us']:.1f}",
                f"{d['exits_per_call']:.2f}",
                f"{d['client_p50_us']:.0f}",
            ]
            for name, d in inside.items()
        ]
        if tight_p50 is not None:
            rows.append(["in process, tight loop (section 2)", "", f"{tight_p50:.1f}", "", "", "1.00", ""])
        lines += _table(
            ["load", "calls", "call p50 µs", "call p90 µs", "call p99 µs", "exits/call", "request p50 µs (client)"],
            rows,
        )
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The whole results page."""
    sections = results.get("sections", {})
    lines = ["# tenantvm benchmarks", ""]
    lines += _machine(results)
    lines += [
        "",
        "Every comparison runs its baseline in the same run, interleaved, and reports the median and the "
        f"min{DASH}max over rounds; ratios are taken within a round. The machine is shared and noisy: only such "
        "ratios count, absolute figures are indicative.",
        "",
        "## Targets",
        "",
    ]
    trows = [
        [t["target"], t["measured"], t["goal"], DASH if t["met"] is None else (OK if t["met"] else MISS)]
        for t in targets(results)
    ]
    lines += _table(["target", "measured", "goal", ""], trows)
    floors = all_floors(results)
    if floors:
        f = Spread.of(floors)
        lines += [
            "",
            "## 1. The floor",
            "",
            f"The cheapest VM round trip on this host (a bare guest looping on a no-op call that exits to the "
            f"host, `tenantvm._native.measure_round_trip`), measured {f.n} times during this run: "
            f"**{f.fmt('.1f', ' µs')}**.",
        ]
    if "calls" in sections:
        lines += ["", *_calls(sections["calls"])]
    if "http" in sections:
        lines += ["", *_http(sections["http"])]
    if "scale" in sections:
        lines += ["", *_scale(sections["scale"])]
    if "profile" in sections:
        tight = None
        if "calls" in sections:
            tight = median([r["p50_us"] for r in sections["calls"]["variants"]["hello-ephemeral"]["rounds"]])
        lines += ["", *_profile(sections["profile"], tight)]
    notes = results.get("notes")
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Chart


def chart(results: dict[str, Any], path: Path) -> None:
    """HTTP req/s per variant, call latency against the floor, pauses, and the profile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = results.get("sections", {})
    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    ax_http, ax_calls, ax_pause, ax_prof = axes[0][0], axes[0][1], axes[1][0], axes[1][1]

    def bars(ax: Any, labels: list[str], spreads: list[Spread], color: str, offset: float = 0.0, width=0.8) -> None:
        xs = [i + offset for i in range(len(labels))]
        meds = [s.median for s in spreads]
        err = [[s.median - s.lo for s in spreads], [s.hi - s.median for s in spreads]]
        ax.bar(xs, meds, width=width, color=color, yerr=err, capsize=4)

    http = sections.get("http")
    if http:
        rd = http["rounds_data"]
        keys = list(http["variants"])
        labels = [f"({k}) {http['variants'][k]['name']}" for k in keys]
        for conn, color, off in (("c1", "#8fb3d9", -0.2), ("c16", "#2b6cb0", 0.2)):
            spreads = [Spread.of([r[k][conn]["rps"] for r in rd]) for k in keys]
            bars(ax_http, labels, spreads, color, off, 0.4)
        ax_http.set_xticks(range(len(keys)), labels)
        ax_http.set_yscale("log")
        ax_http.set_ylabel(f"requests/s (log; median, min{DASH}max)")
        ax_http.set_title("HTTP: wrk -t1 -c1 (light) and -t2 -c16 (dark)")
    else:
        ax_http.set_visible(False)

    calls = sections.get("calls")
    floors = all_floors(results)
    if calls:
        labels = ["floor"] + [k for k in calls["variants"]]
        spreads = [Spread.of(calls["floor_us"])] + [
            Spread.of([r["p50_us"] for r in v["rounds"]]) for v in calls["variants"].values()
        ]
        bars(ax_calls, labels, spreads, "#dd8452")
        f = median(floors)
        ax_calls.axhline(1.5 * f, color="grey", linestyle="--", label=f"1.5 {TIMES} floor ({1.5 * f:.0f} µs)")
        ax_calls.set_xticks(range(len(labels)), labels, rotation=20)
        ax_calls.set_ylabel(f"p50 µs per call (median, min{DASH}max)")
        ax_calls.set_title("In-process TenantVM.call against the floor")
        ax_calls.legend()
        pauses = calls.get("pauses", {})
        if pauses:
            plabels = list(pauses)
            pspreads = [Spread.of([r["p50_us"] for r in p["rounds"]]) for p in pauses.values()]
            bars(ax_pause, plabels, pspreads, "#55a868")
            ax_pause.axhline(f, color="grey", linestyle=":", label=f"floor ({f:.0f} µs)")
            ax_pause.set_xticks(range(len(plabels)), plabels, rotation=20)
            ax_pause.set_ylabel("p50 µs per call")
            ax_pause.set_title("Ephemeral hello call after a pause of the calling thread")
            ax_pause.legend()
        else:
            ax_pause.set_visible(False)
    else:
        ax_calls.set_visible(False)
        ax_pause.set_visible(False)

    profile = sections.get("profile")
    if profile:
        rows = [r for r in profile["breakdown"]["rows"] if r["category"] != "metrics" and r["share"] > 0]
        ax_prof.barh([r["label"].split(" (")[0] for r in rows], [r["share"] * 100 for r in rows], color="#8172b3")
        ax_prof.invert_yaxis()
        ax_prof.set_xlabel("% of the worker's CPU time")
        ax_prof.set_title("Where the time goes (HTTP, -c16)")
    else:
        ax_prof.set_visible(False)
    m = results.get("machine", {})
    fig.suptitle(f"tenantvm benchmarks — {m.get('kvm', '')}, {m.get('cpu', '')}, {m.get('date', '')}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict[str, Any], out_dir: Path) -> str:
    """Writes results.json, results.md and chart.png; returns the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results["targets"] = targets(results)
    text = markdown(results)
    # Compact: the raw per-call samples are most of it.
    (out_dir / "results.json").write_text(json.dumps(results, separators=(",", ":")) + "\n")
    (out_dir / "results.md").write_text(text)
    chart(results, out_dir / "chart.png")
    return text


def main() -> None:
    """Rebuilds the table and the chart from a saved results.json."""
    parser = argparse.ArgumentParser(description="Rebuild results.md and chart.png from results.json.")
    parser.add_argument("results", nargs="?", type=Path, default=RESULTS / "results.json")
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    print(write(results, args.results.parent), end="")


if __name__ == "__main__":
    main()
