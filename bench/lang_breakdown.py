"""Where a language tenant's request goes, by counting (issue 12).

The bundled runtimes' hellos against the C hello, one request per call and 32 per batch.

For each tenant (``c`` = ``apps/build/hello``; ``python``, ``lua``, ``node``, ``deno``: the
bundled tenants file's, where the runtime is installed), on one warmed-up instance, in
interleaved rounds (``call``, then ``batch``, tenant after tenant):

- ``call``: ``TenantVM.call`` one request at a time: VM exits, the program's system calls (by
  name: the host's and the guest kernel's), pages the host's reset copied back, its time;
- ``batch``: ``TenantVM.call_batch`` of 32: exits per request, the requests the guest kernel
  finished (in-guest resets) and the pages those copied back and re-protected;
- for both: the calling thread's CPU time per request (``thread_time``: the guest's run and
  the host's work, without the time a loaded host kept the thread waiting), and what KVM
  itself did per request (the vCPU's binary statistics, ``KVM_GET_STATS_FD``: page faults it
  fixed, TLB flushes, ``invlpg``, emulated instructions -- the guest kernel's trapped page-table
  writes under PVM -- and all exits, including those KVM handles without returning to us).

Counts do not depend on the machine's load; CPU times do a little (caches), so compare them
within a round (``batch / call``).  ``python bench/lang_breakdown.py [--rounds 5] [c python ...]``
prints JSON; ``--markdown FILE`` writes the tables.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import struct
import time
from pathlib import Path
from typing import Any

from common import APPS_BUILD, Spread, log

import tenantvm
from tenantvm import config as tconfig

#: ``_IO(KVMIO, 0xce)``: a vCPU's (or VM's) binary statistics file.
KVM_GET_STATS_FD = 0xAECE
#: KVM's counters shown (the rest are in the JSON).
KVM_SHOWN = ("exits", "pf_fixed", "tlb_flush", "invlpg", "insn_emulation")
BATCH = 32


class KvmStats:
    """The binary statistics of one KVM file descriptor (a vCPU here): cumulative counters."""

    def __init__(self, fd: int) -> None:
        self.fd = fcntl.ioctl(fd, KVM_GET_STATS_FD)
        _flags, name_size, count, _id, desc_offset, self.data_offset = struct.unpack("<6I", os.pread(self.fd, 24, 0))
        size = 16 + name_size
        raw = os.pread(self.fd, size * count, desc_offset)
        self.counters: list[tuple[str, int]] = []
        for i in range(count):
            desc = raw[i * size : (i + 1) * size]
            _fl, _exp, n, offset, _bucket = struct.unpack("<IhHII", desc[:16])
            if n == 1:
                self.counters.append((desc[16:].split(b"\0")[0].decode(), offset))

    def read(self) -> dict[str, int]:
        """Every single-value counter now."""
        return {
            name: struct.unpack("<Q", os.pread(self.fd, 8, self.data_offset + off))[0] for name, off in self.counters
        }

    def close(self) -> None:
        """Closes the statistics file."""
        os.close(self.fd)


def vcpu_fds() -> set[int]:
    """This process's open vCPU file descriptors."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("anon_inode:kvm-vcpu"):
                found.add(int(fd))
        except OSError:
            pass
    return found


def make_instance(name: str) -> tuple[tenantvm.TenantVM, KvmStats | None]:
    """A warmed-up instance of tenant ``name`` and its vCPU's statistics (None if unreadable)."""
    if name == "c":
        tenant = tenantvm.Tenant(APPS_BUILD / "hello", memory_mb=16)
    else:
        tenant = tenantvm.Tenant(**tconfig.load(tconfig.BUNDLED_CONFIG).tenant(name).tenant_kwargs())
    before = vcpu_fds()
    vm = tenant.instance()
    new = sorted(vcpu_fds() - before)
    stats = None
    if len(new) == 1:
        try:
            stats = KvmStats(new[0])
        except OSError as e:
            log(f"lang_breakdown: no KVM statistics ({e})")
    req = tenantvm.Request()
    for _ in range(50):
        vm.call(req)
    for _ in range(3):
        vm.call_batch([req] * BATCH)
    return vm, stats


def measure(vm: tenantvm.TenantVM, kvm: KvmStats | None, mode: str, requests: int) -> dict[str, Any]:
    """``requests`` hello requests one call each (``call``) or in batches (``batch``)."""
    req = tenantvm.Request()
    s0, k0, c0 = vm.stats(), kvm.read() if kvm else {}, time.thread_time()
    done = 0
    while done < requests:
        if mode == "call":
            r = vm.call(req)
            assert r.body == b"Hello World!", r
            done += 1
        else:
            for r in vm.call_batch([req] * BATCH):
                assert isinstance(r, tenantvm.Response), r
                assert r.body == b"Hello World!", r
            done += BATCH
    cpu = time.thread_time() - c0
    s1, k1 = vm.stats(), kvm.read() if kvm else {}
    per = 1 / done
    syscalls = {k: (v - s0.syscalls.get(k, 0)) * per for k, v in s1.syscalls.items() if v != s0.syscalls.get(k, 0)}
    return {
        "cpu_us": cpu * per * 1e6,
        "exits": (s1.exits - s0.exits) * per,
        "syscalls": syscalls,
        "host_pages": (s1.pages_restored - s0.pages_restored) * per,
        "host_reset_us": (s1.reset_time - s0.reset_time) * per * 1e6,
        "guest_resets": (s1.guest_resets - s0.guest_resets) * per,
        "guest_pages": (s1.guest_pages_restored - s0.guest_pages_restored) * per,
        "guest_reprotected": (s1.guest_pages_reprotected - s0.guest_pages_reprotected) * per,
        "kvm": {k: (v - k0.get(k, 0)) * per for k, v in k1.items() if v != k0.get(k, 0)},
    }


def run(names: list[str], rounds: int, requests: int) -> dict[str, Any]:
    """Interleaved rounds; raw figures per tenant, mode and round."""
    bundled = {t.name for t in tconfig.load(tconfig.BUNDLED_CONFIG).tenants}
    names = [n for n in names if n == "c" or n in bundled]
    instances = {}
    for name in names:
        log(f"lang_breakdown: booting {name}")
        instances[name] = make_instance(name)
    out: dict[str, Any] = {"rounds": rounds, "requests": requests, "batch": BATCH, "tenants": {}}
    for name in names:
        out["tenants"][name] = {"call": [], "batch": []}
    for r in range(rounds):
        for name, (vm, kvm) in instances.items():
            for mode in ("call", "batch"):
                out["tenants"][name][mode].append(measure(vm, kvm, mode, requests))
        log(f"lang_breakdown: round {r + 1}/{rounds}")
    return out


def _row(name: str, mode: str, rounds: list[dict[str, Any]], ratio: Spread | None) -> list[str]:
    def spread(key: str, spec: str = ".1f") -> str:
        return Spread.of([x[key] for x in rounds]).fmt(spec)

    def kvm(key: str) -> str:
        return Spread.of([x["kvm"].get(key, 0.0) for x in rounds]).fmt(".2f")

    last = rounds[-1]
    host_calls = ", ".join(
        f"{k} {v:.2f}" for k, v in sorted(last["syscalls"].items(), key=lambda kv: -kv[1]) if v >= 0.01
    )
    pages = spread("host_pages") if mode == "call" else spread("guest_pages")
    reprotected = "" if mode == "call" else spread("guest_reprotected", ".2f")
    return [
        name,
        mode,
        spread("cpu_us", ".0f"),
        "" if ratio is None else ratio.fmt(".2f"),
        spread("exits", ".2f"),
        pages,
        reprotected,
        *(kvm(k) for k in KVM_SHOWN),
        host_calls,
    ]


def markdown(out: dict[str, Any]) -> str:
    """The figures as a table: medians (ranges) over rounds, per request."""
    head = [
        "tenant",
        "mode",
        "CPU µs/req",
        "batch / call CPU",
        "exits/req",
        "pages restored/req",
        "re-protected/req",
        *(f"KVM {k}/req" for k in KVM_SHOWN),
        "system calls/req (last round)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, modes in out["tenants"].items():
        ratio = Spread.of([b["cpu_us"] / c["cpu_us"] for c, b in zip(modes["call"], modes["batch"], strict=True)])
        for mode in ("call", "batch"):
            lines.append("| " + " | ".join(_row(name, mode, modes[mode], ratio if mode == "batch" else None)) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Prints the raw figures as JSON (and writes the table with ``--markdown``)."""
    parser = argparse.ArgumentParser(description="Where a language tenant's request goes, by counting.")
    parser.add_argument("names", nargs="*", default=["c", "python", "lua", "node", "deno"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=320, help="per mode and round (a multiple of 32)")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    out = run(args.names, args.rounds, args.requests)
    if args.markdown:
        args.markdown.write_text(markdown(out))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
