"""HTTP: tenantvm against three baselines under wrk (issue 5, section 3).

Variants, all ``python -m granian --interface I --workers W`` with the same other flags:

- ``a`` tenantvm: ``tenantvm.app:app`` under RSGI (Granian's default, what ``tenantvm serve``
  uses) with a tenants file holding only ``hello`` (ephemeral: every request runs in a VM reset
  to the snapshot afterwards);
- ``f`` tenantvm under ASGI, the same tenants file;
- ``b`` starlette: a plain Starlette hello world, no isolation (``bench/apps/starlette_hello``);
- ``c`` wasmtime: Starlette + a fresh wasmtime store and instance per request
  (``bench/apps/wasm_hello``);
- ``d`` fork: Starlette + ``os.fork()`` per request (``bench/apps/fork_hello``);
- ``e`` tenantvm (RSGI) with batching off (``batch_budget_us = 0``): every request its own VM
  entry;
- ``g`` tenantvm (RSGI) serving the CPython WSGI hello (the bundled file's ``python`` tenant:
  Debian's python3 with tenantvm_guest), ``h`` the Lua hello (``lua``), ``j`` the Node.js hello
  (``node``), each only where its runtime is installed;
- ``i`` the same WSGI hello served natively by Granian's WSGI interface (no isolation);
- ``k`` tenantvm (RSGI) serving the Deno hello (the bundled file's ``deno`` tenant), where
  deno is installed.

``--before DIR`` runs every tenantvm variant a second time (key + ``0``, e.g. ``k0``) from
another checkout of tenantvm whose ``py/`` holds its built native module (``DIR/py`` first on
``PYTHONPATH``), in the same rounds: a change measured against the build before it, side by
side (ratios ``k/k0``).

The baselines are ASGI applications (Starlette has no RSGI interface).

Each round measures the floor, then runs every variant in turn (the order rotates from round
to round): start a fresh server, check its answer, warm up, ``wrk -t1 -c1`` (latency), then
``wrk -t2 -c16`` (throughput), stop it.  Ratios are taken within a round, then summarised.

Run alone: ``python bench/http_load.py [--quick]`` prints the raw results as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from calls import measure_floor
from common import APPS_BUILD, Server, http_get, log, rss_kib, run_wrk, tenants_file


@dataclass(frozen=True)
class HttpVariant:
    """One server under test."""

    key: str
    name: str
    label: str
    target: str
    interface: str = "asgi"


VARIANTS = [
    HttpVariant("a", "tenantvm", "tenantvm, RSGI (hello, ephemeral VM per request)", "tenantvm.app:app", "rsgi"),
    HttpVariant("b", "starlette", "Starlette hello world (no isolation)", "starlette_hello:app"),
    HttpVariant("c", "wasmtime", "Starlette + fresh wasmtime instance per request", "wasm_hello:app"),
    HttpVariant("d", "fork", "Starlette + os.fork() per request", "fork_hello:app"),
    HttpVariant(
        "e", "tenantvm-unbatched", "tenantvm, RSGI, batches off (batch_budget_us = 0)", "tenantvm.app:app", "rsgi"
    ),
    HttpVariant("f", "tenantvm-asgi", "tenantvm, ASGI (hello, ephemeral VM per request)", "tenantvm.app:app"),
    HttpVariant(
        "g", "tenantvm-python", "tenantvm, RSGI, CPython WSGI hello (python3 per VM)", "tenantvm.app:app", "rsgi"
    ),
    HttpVariant("h", "tenantvm-lua", "tenantvm, RSGI, Lua 5.4 hello", "tenantvm.app:app", "rsgi"),
    HttpVariant("j", "tenantvm-node", "tenantvm, RSGI, Node.js hello", "tenantvm.app:app", "rsgi"),
    HttpVariant("i", "wsgi", "the same WSGI hello under Granian's WSGI (no isolation)", "wsgi_hello:app", "wsgi"),
    HttpVariant("k", "tenantvm-deno", "tenantvm, RSGI, Deno hello", "tenantvm.app:app", "rsgi"),
]

#: Variants whose tenants file is the bundled file's runtime tenant of that name.
RUNTIME_VARIANTS = {"g": "python", "h": "lua", "j": "node", "k": "deno"}


def before_variant(v: HttpVariant) -> HttpVariant:
    """``v`` run from the ``--before`` checkout."""
    return HttpVariant(v.key + "0", v.name + "-before", v.label + ", the --before build", v.target, v.interface)


RUNTIME_TENANTS = """\
# Written by bench/http_load.py: the bundled file's {name} tenant alone, for every host.
[server]
default_tenant = "{name}"

[tenants.{name}]
hosts = ["127.0.0.1", "localhost"]
program = "{program}"
args = {args}
env = {{ {env} }}
mounts = {mounts}
memory_mb = {memory_mb}
timeout_ms = {timeout_ms}
boot_timeout_ms = {boot_timeout_ms}
pool_size = 4
warmup = [{{ path = "/", repeat = {warmups} }}]
"""


@contextlib.contextmanager
def runtime_tenants(name: str) -> Iterator[Path | None]:
    """A temporary tenants file serving the bundled ``name`` tenant (None: runtime missing)."""
    from tenantvm import config as tconfig

    bundled = tconfig.load(tconfig.BUNDLED_CONFIG)
    if name not in {t.name for t in bundled.tenants}:
        yield None
        return
    t = bundled.tenant(name)
    text = RUNTIME_TENANTS.format(
        name=name,
        program=t.program,
        args=json.dumps(list(t.args)),
        env=", ".join(f"{k} = {json.dumps(v)}" for k, v in t.env),
        mounts=json.dumps([f"{host}:{guest}" for host, guest in t.mounts]),
        memory_mb=t.memory_mb,
        timeout_ms=t.timeout_ms,
        boot_timeout_ms=t.boot_timeout_ms,
        warmups=max(1, len(t.warmup)),  # the hellos' warm-up: GET / repeated
    )
    with tenants_file(text) as path:
        yield path


HELLO_TENANTS = """\
# Written by bench/http_load.py: the hello tenant alone, ephemeral, calls inline.
[server]
default_tenant = "hello"
batch_budget_us = {batch_budget_us}

[tenants.hello]
hosts = ["127.0.0.1", "localhost"]
program = "{program}"
memory_mb = 16
timeout_ms = 20
pool_size = {pool_size}
"""


@contextlib.contextmanager
def hello_tenants(pool_size: int = 4, batch_budget_us: int = 2000) -> Iterator[Path]:
    """A temporary tenants file serving ``apps/build/hello`` for every host."""
    text = HELLO_TENANTS.format(program=APPS_BUILD / "hello", pool_size=pool_size, batch_budget_us=batch_budget_us)
    with tenants_file(text) as path:
        yield path


def measure_variant(
    variant: HttpVariant,
    config: Path,
    *,
    workers: int,
    seconds: float,
    warmup: float,
    pythonpath: Path | None = None,
) -> dict[str, Any]:
    """One fresh server of ``variant``: answer check, warm-up, wrk -c1, wrk -c16.

    With ``pythonpath``, tenantvm is imported from there (another build).
    """
    env = {"TENANTVM_CONFIG": str(config)} if variant.target.startswith("tenantvm") else {}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), os.environ.get("PYTHONPATH", "")]))
    server = Server(variant.name, variant.target, workers=workers, env=env, interface=variant.interface)
    # A runtime boots and warms up before its snapshot (deno: ~30 s alone, minutes on a busy host).
    server.start(timeout=600.0 if variant.key.rstrip("0") in RUNTIME_VARIANTS else 90.0)
    try:
        status, body = http_get(server.port, "/")
        if status != 200 or body != b"Hello World!":
            raise RuntimeError(f"{variant.name} answered {status} {body[:100]!r}, not 200 'Hello World!'")
        run_wrk(server.url(), threads=2, connections=16, seconds=warmup)
        c1 = run_wrk(server.url(), threads=1, connections=1, seconds=seconds)
        c16 = run_wrk(server.url(), threads=2, connections=16, seconds=seconds)
        rss = sum(rss_kib(pid) for pid in server.worker_pids())
        return {"start_s": server.start_time, "c1": asdict(c1), "c16": asdict(c16), "workers_rss_kib": rss}
    finally:
        server.stop()


def run(
    rounds: int = 5,
    seconds: float = 4.0,
    warmup: float = 1.5,
    workers: int = 1,
    quick: bool = False,
    only: str = "",
    before: Path | None = None,
) -> dict[str, Any]:
    """Interleaved rounds of every variant (or of the keys in ``only``); raw figures and ratios.

    With ``before`` (a checkout), each tenantvm variant also runs from that build.
    """
    variants = [v for v in VARIANTS if not only or v.key in only]
    if before is not None:
        variants += [before_variant(v) for v in variants if v.target.startswith("tenantvm")]
    if quick:
        rounds, seconds, warmup = 2, 2.0, 1.0
    out: dict[str, Any] = {
        "rounds": rounds,
        "seconds": seconds,
        "warmup_s": warmup,
        "workers": workers,
        "granian_flags": f"--workers {workers} --host 127.0.0.1 --log-level warning",
        "interfaces": {v.key: v.interface for v in variants},
        "wrk": {"c1": "-t1 -c1", "c16": "-t2 -c16"},
        "variants": {
            v.key: {"name": v.name, "label": v.label, "target": v.target, "interface": v.interface} for v in variants
        },
        "floor_us": [],
        "rounds_data": [],
    }
    with (
        hello_tenants() as config,
        hello_tenants(batch_budget_us=0) as unbatched,
        runtime_tenants("python") as python,
        runtime_tenants("lua") as lua,
        runtime_tenants("node") as node,
        runtime_tenants("deno") as deno,
    ):
        configs = {"e": unbatched, "g": python, "h": lua, "j": node, "k": deno}
        for key, missing in (("g", python), ("h", lua), ("j", node), ("k", deno)):
            if missing is None and any(v.key == key for v in variants):
                log(f"http: variant {key} left out: its runtime is not installed")
        configs.update({k + "0": c for k, c in configs.items()} | {"a0": config, "f0": config})
        variants = [v for v in variants if v.key not in configs or configs[v.key] is not None]
        kept = {v.key for v in variants}
        out["variants"] = {k: v for k, v in out["variants"].items() if k in kept}
        out["interfaces"] = {k: v for k, v in out["interfaces"].items() if k in kept}
        for r in range(rounds):
            floor = measure_floor(2000, 5)
            out["floor_us"].append(floor)
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            data: dict[str, Any] = {"floor_us": floor, "order": [v.key for v in order]}
            for v in order:
                cfg = configs.get(v.key) or config
                pythonpath = before / "py" if before is not None and v.key.endswith("0") else None
                data[v.key] = measure_variant(
                    v, cfg, workers=workers, seconds=seconds, warmup=warmup, pythonpath=pythonpath
                )
                c1, c16 = data[v.key]["c1"], data[v.key]["c16"]
                log(
                    f"http round {r + 1}/{rounds} {v.name}: c1 {c1['rps']:.0f} req/s p50 {c1['p50_us']:.0f} µs, "
                    f"c16 {c16['rps']:.0f} req/s p50 {c16['p50_us']:.0f} µs"
                )
            ratios: dict[str, float] = {}
            # g/i, g/a, h/a, j/a: a runtime in tenantvm against it natively, and against the C hello.
            pairs = [(p[0], p[1]) for p in ("ae", "ab", "fb", "af", "ac", "ad", "gi", "ga", "ha", "ja", "ka")]
            pairs += [(k, k + "0") for k in "aefghjk"]  # this build against the --before one
            for num, den in pairs:
                if num in data and den in data:
                    for load in ("c16", "c1"):
                        ratios[f"{num}/{den} {load}"] = data[num][load]["rps"] / data[den][load]["rps"]
            if "a" in data and "b" in data:
                added = data["a"]["c1"]["p50_us"] - data["b"]["c1"]["p50_us"]
                ratios["added p50 c1 us"] = added
                ratios["added p50 c1 / floor"] = added / floor
            if "f" in data and "b" in data:
                ratios["added p50 c1 us asgi"] = data["f"]["c1"]["p50_us"] - data["b"]["c1"]["p50_us"]
            data["ratios"] = ratios
            out["rounds_data"].append(data)
    return out


def main() -> None:
    """Runs the section alone and prints its raw results."""
    parser = argparse.ArgumentParser(description="HTTP: tenantvm against three baselines under wrk.")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="each wrk run")
    parser.add_argument("--workers", type=int, default=1, help="Granian workers (all variants)")
    parser.add_argument("--variants", default="", help="only these variant keys, e.g. 'ab' (default: all)")
    parser.add_argument(
        "--before",
        type=Path,
        help="another checkout of tenantvm, built: every tenantvm variant runs from it too (key + '0')",
    )
    args = parser.parse_args()
    result = run(
        args.rounds, args.seconds, workers=args.workers, quick=args.quick, only=args.variants, before=args.before
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
