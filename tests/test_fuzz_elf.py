"""Mutated and truncated ELF files never crash, hang or confuse the VMM.

Every run of a corrupted hello.musl either returns a RunResult or raises one of the errors a
bad program can cause (InvalidProgram, GuestFault, GuestTimeout, GuestOutOfMemory), never
another exception: not a HostError or KvmUnavailable (an internal failure must not pass for a
refused program), and a normal run still works afterwards.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tenantvm
from tenantvm import RunResult, TenantVMError

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("TENANTVM_FUZZ_EXAMPLES", "200"))
# What a corrupted program can end in: exactly these classes (not their bases, not HostError,
# KvmUnavailable or ConfigError: the configuration is valid and the host is fine).
PROGRAM_ERRORS = (tenantvm.InvalidProgram, tenantvm.GuestFault, tenantvm.GuestTimeout, tenantvm.GuestOutOfMemory)


@pytest.fixture(scope="module")
def hello_musl(app) -> bytes:
    return Path(app("hello.musl")).read_bytes()


def mutations(size: int):
    """A list of (offset, byte) writes, biased towards the ELF and program headers."""
    offset = st.one_of(st.integers(0, 63), st.integers(64, min(size, 64 + 56 * 8) - 1), st.integers(0, size - 1))
    return st.lists(st.tuples(offset, st.integers(0, 255)), min_size=1, max_size=8)


def run_corrupted(data: bytes) -> None:
    with tempfile.NamedTemporaryFile(prefix="fuzz-", suffix=".elf") as f:
        f.write(data)
        f.flush()
        error: TenantVMError | None = None
        try:
            result = tenantvm.run(f.name, timeout=2, memory_mb=32)
        except TenantVMError as e:
            error = e
        if error is None:
            assert isinstance(result, RunResult)
        else:
            assert type(error) in PROGRAM_ERRORS, f"{type(error).__name__}: {error}"


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_elf(hello_musl, data):
    image = bytearray(hello_musl)
    for offset, value in data.draw(mutations(len(image)), label="writes"):
        image[offset] = value
    if data.draw(st.booleans(), label="truncate"):
        image = image[: data.draw(st.integers(0, len(image)), label="length")]
    run_corrupted(bytes(image))


@settings(
    max_examples=max(EXAMPLES // 4, 10), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(length=st.integers(0, 4096))
def test_truncated_elf(hello_musl, length):
    run_corrupted(hello_musl[:length])


def test_still_healthy_afterwards(app, hello_musl):
    result = tenantvm.run(app("hello.musl"))
    assert result.stdout == b"Hello, world!\n"
