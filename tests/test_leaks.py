"""Thousands of runs in one process leak no file descriptors, threads or memory.

Every run creates and destroys a KVM VM (fds for the VM and vCPU, guest memory mappings, a
timer): a leak of any of them shows up here long before it would in production.  The mix
includes faulting and timed-out runs, whose clean-up paths differ from a normal exit.

``TENANTVM_LEAK_RUNS`` overrides the number of runs (default 10,000).

The same for a dynamically linked program that uses what Linux programs use
(apps/tests/churn.c: ld.so mapping libc, files opened, read and mapped, a library loaded with
``dlopen``, a thread, a pipe, a file in /tmp): ``TENANTVM_DYN_LEAK_RUNS`` runs (default 250
here; ``make leaks`` runs 10,000).  Host descriptors and threads must come back to exactly
their count after the warm-up; RSS may move by allocator noise, at most ``RSS_SLACK_KIB``:
holding on to the files a run read (libc alone is ~2 MiB) would pass that within a few runs,
and 1 KiB per run within the 10,000 of ``make leaks``.
"""

from __future__ import annotations

import os

import pytest

import tenantvm

WARMUP = 200
RUNS = int(os.environ.get("TENANTVM_LEAK_RUNS", "10000"))
RSS_SLACK_KIB = 8 * 1024
DYN_WARMUP = 50
DYN_RUNS = int(os.environ.get("TENANTVM_DYN_LEAK_RUNS", "250"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/self/status")


def snapshot() -> dict[str, int]:
    return {"fds": open_fds(), "threads": status("Threads"), "rss_kib": status("VmRSS")}


def one_run(i: int, hello: str, nullwrite: str, loop: str) -> None:
    if i % 500 == 499:
        with pytest.raises(tenantvm.GuestTimeout):
            tenantvm.run(loop, timeout=0.05)
    elif i % 100 == 99:
        with pytest.raises(tenantvm.GuestFault):
            tenantvm.run(nullwrite)
    else:
        result = tenantvm.run(hello)
        assert result.stdout == b"Hello, world!\n"


@pytest.mark.slow
def test_no_leaks_over_many_runs(app):
    hello, nullwrite, loop = app("hello.glibc"), app("nullwrite.glibc"), app("loop.glibc")
    for i in range(WARMUP):
        one_run(i, hello, nullwrite, loop)
    before = snapshot()
    for i in range(RUNS):
        one_run(i, hello, nullwrite, loop)
    after = snapshot()
    assert after["fds"] <= before["fds"], (before, after)
    assert after["threads"] <= before["threads"], (before, after)
    assert after["rss_kib"] <= before["rss_kib"] + RSS_SLACK_KIB, (before, after)


def churn_once(churn: str, expected: bytes) -> None:
    result = tenantvm.run(churn, memory_mb=64, tmp_mb=1)
    assert (result.exit_code, result.stdout, result.stderr) == (0, expected, b"")


def test_dynamic_program_leaks_nothing(app):
    churn = app("churn.dyn")
    expected = tenantvm.run(churn).stdout
    assert expected.startswith(b"churn ok "), expected
    for _ in range(DYN_WARMUP):
        churn_once(churn, expected)
    before = snapshot()
    for _ in range(DYN_RUNS):
        churn_once(churn, expected)
    after = snapshot()
    assert after["fds"] == before["fds"], (before, after)
    assert after["threads"] == before["threads"], (before, after)
    assert after["rss_kib"] <= before["rss_kib"] + RSS_SLACK_KIB, (before, after)
