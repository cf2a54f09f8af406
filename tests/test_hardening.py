"""Hardening: hostile guests cannot crash the host, escape the VM, or leave state behind.

The ``isolate`` tenant runs request-supplied machine code (``/code``) and request-supplied
system-call lists (``/syscalls``); its default path reports a digest of its whole state.  After
every attack the same instance must answer a normal request with exactly the snapshot's digest.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tenantvm
from tenantvm import Request, Tenant, TenantVM

pytestmark = pytest.mark.usefixtures("kvm")

EXAMPLES = int(os.environ.get("TENANTVM_FUZZ_EXAMPLES", "60"))
KBASE = 0xFFFF_FFFF_8000_0000  # guest kernel image (docs/guest-abi.md)
KVCPU = 0xFFFF_FFFF_C000_0000  # guest kernel's per-vCPU area
REQUEST_VA = 0x7F00_0000_0000
SCRATCH = 0xF00D_0000_0000_0000  # replaced by the guest with its scratch buffer (+ offset)


def movabs_rax(value: int) -> str:
    return "48b8" + struct.pack("<Q", value).hex()


def movabs_rsp(value: int) -> str:
    return "48bc" + struct.pack("<Q", value).hex()


# name -> (machine code, what must happen: an exception class, "returned", or "contained":
# either a GuestFault or "returned", for instructions whose handling is the host's choice)
ATTACKS: dict[str, tuple[str, type[Exception] | str]] = {
    "wrmsr": ("0f30", tenantvm.GuestFault),
    "rdmsr": ("0f32", tenantvm.GuestFault),
    "lgdt": ("0f0110", tenantvm.GuestFault),
    "lidt": ("0f0118", tenantvm.GuestFault),
    "mov cr0": ("0f22c0", tenantvm.GuestFault),
    "mov cr3": ("0f22d8", tenantvm.GuestFault),
    "mov cr4": ("0f22e0", tenantvm.GuestFault),
    "mov dr0": ("0f23c0", tenantvm.GuestFault),
    "cli": ("fa", tenantvm.GuestFault),
    "hlt": ("f4", tenantvm.GuestFault),
    "in": ("ec", tenantvm.GuestFault),
    "out": ("ee", tenantvm.GuestFault),
    "invlpg": ("0f0138", tenantvm.GuestFault),
    "xsetbv": ("0f01d1", tenantvm.GuestFault),
    "swapgs": ("0f01f8", tenantvm.GuestFault),
    "clts": ("0f06", tenantvm.GuestFault),
    "wbinvd": ("0f09", tenantvm.GuestFault),
    "sysretq": ("480f07", tenantvm.GuestFault),
    "iretq to ring 0": ("6a18549c6a10e80000000048cf", tenantvm.GuestFault),
    "int 0x80": ("cd80", tenantvm.GuestFault),
    "PVM hypercall int 0x1b": ("b80c100000cd1b", tenantvm.GuestFault),
    "PVM return int 0x19": ("cd19", tenantvm.GuestFault),
    "PVM return int 0x17": ("cd17", tenantvm.GuestFault),
    # PVM hosts have answered vmcall from user mode both ways (a #UD, or a no-op).
    "vmcall": ("0f01c1c3", "contained"),
    "write to kernel data": (movabs_rax(KBASE + 0x5000) + "c60001", tenantvm.GuestFault),
    "write to page tables": (movabs_rax(KBASE) + "c60001", tenantvm.GuestFault),
    "read kernel code": (movabs_rax(KBASE + 0x10000) + "8a00", tenantvm.GuestFault),
    "write to vCPU area": (movabs_rax(KVCPU + 0x1000) + "c60001", tenantvm.GuestFault),
    "write to request area": (movabs_rax(REQUEST_VA) + "c60001", tenantvm.GuestFault),
    "jump into kernel entry": (movabs_rax(KBASE + 0x10000) + "ffe0", tenantvm.GuestFault),
    "syscall on the kernel stack": (movabs_rsp(KVCPU + 0x7F00) + "b8e40000000f05c3", tenantvm.GuestFault),
    "syscall with a wild rsp": (movabs_rsp(0x10) + "b8270000000f05c3", tenantvm.GuestFault),
    "change FS base": (movabs_rax(0x1234_5678) + "f3480faed0c3", "returned"),
    "change GS base": (movabs_rax(0x1234_5678) + "f3480faed8c3", "returned"),
    "change MXCSR": ("68809f00000fae142458c3", "returned"),
    "change x87 control word": ("66c74424f87f0cd96c24f8c3", "returned"),
    "dirty AVX registers": ("c5fd76c0c5f576c9c3", "returned"),
    "vmmcall": ("0f01d9c3", "returned"),
    "spin until the deadline": ("ebfe", tenantvm.GuestTimeout),
    "int3": ("cc", tenantvm.GuestFault),
    "ud2": ("0f0b", tenantvm.GuestFault),
}


def respond_code(body: int, body_len: int, headers: int = 0, count: int = 0) -> str:
    """Machine code calling respond(200, headers, count, body, body_len) directly."""

    def q(v: int) -> str:
        return struct.pack("<Q", v % (1 << 64)).hex()

    # mov rax, 0x10001; mov edi, 200; movabs rsi/rdx/r10/r8; syscall; ret
    return "48c7c001000100bfc8000000" + f"48be{q(headers)}48ba{q(count)}49ba{q(body)}49b8{q(body_len)}" + "0f05c3"


KSNAP = 0xFFFF_C000_0000_0000  # the guest kernel's read-only view of the snapshot
# respond() pointed at memory the program must not read, through the path a batch takes
# (the guest kernel copies responses out itself there).
RESPOND_ATTACKS: dict[str, tuple[str, type[Exception] | str]] = {
    "respond from the snapshot window": (respond_code(KSNAP, 4096), tenantvm.GuestFault),
    "respond from the batch block": (respond_code(KVCPU + 0x3000, 64), tenantvm.GuestFault),
    "respond from kernel data": (respond_code(KBASE + 0x5000, 64), tenantvm.GuestFault),
    "respond from the kernel stack": (respond_code(KVCPU + 0x7000, 4096), tenantvm.GuestFault),
    "respond with headers in the kernel": (respond_code(0, 0, KBASE, 1), tenantvm.GuestFault),
    "respond with a header table wrapping around": (respond_code(0, 0, (1 << 64) - 32, 2), tenantvm.GuestFault),
    "respond with a body wrapping around": (respond_code((1 << 64) - 16, 64), tenantvm.GuestFault),
    "respond with a huge header count": (respond_code(0, 0, 0, 1 << 40), tenantvm.ResponseTooLarge),
    "respond with a huge body": (respond_code(0, 1 << 62), tenantvm.ResponseTooLarge),
    "respond with an empty body anywhere": (respond_code(0xDEAD_0000_0000, 0), "responded"),
}


@pytest.fixture(scope="module")
def probe(apps: Path) -> Tenant:
    return Tenant(apps / "isolate", timeout=0.3)


@pytest.fixture(scope="module")
def vm(probe: Tenant) -> TenantVM:
    return probe.instance()


@pytest.fixture(scope="module")
def clean(probe: Tenant) -> bytes:
    return probe.instance().call(Request()).body


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_is_contained_and_leaves_nothing_behind(vm: TenantVM, clean: bytes, name: str) -> None:
    code, expected = ATTACKS[name]
    request = Request(method="POST", path="/code", body=bytes.fromhex(code))
    if expected == "returned":
        assert vm.call(request).body == b"returned"
    elif expected == "contained":
        contained(vm, request)
    else:
        assert isinstance(expected, type)
        with pytest.raises(expected):
            vm.call(request)
    assert vm.call(Request()).body == clean
    assert vm.usable


def outcome(result: tenantvm.Response | Exception) -> tuple[str, str]:
    if isinstance(result, Exception):
        return type(result).__name__, str(result)
    return "Response", f"{result.status} {result.body[:64]!r}"


def test_attacks_in_a_batch_end_as_alone_and_leave_nothing_behind(probe: Tenant, clean: bytes) -> None:
    """Batched, each attack ends exactly as it does alone, and the next request starts clean."""
    attacks = {**ATTACKS, **RESPOND_ATTACKS}
    single = probe.instance()
    alone = {}
    for name, (code, expected) in attacks.items():
        try:
            alone[name] = outcome(single.call(Request(method="POST", path="/code", body=bytes.fromhex(code))))
        except tenantvm.TenantVMError as e:
            alone[name] = outcome(e)
        if isinstance(expected, type):
            assert alone[name][0] == expected.__name__, (name, alone[name])
    clean_memory = single.call(Request(method="POST", query="mem")).body
    requests = []
    memory_probe = Request(method="POST", query="mem")
    for code, _ in attacks.values():
        requests += [Request(method="POST", path="/code", body=bytes.fromhex(code)), memory_probe]
    vm = probe.instance()
    for _ in range(2):
        results = vm.call_batch(requests)
        for i, name in enumerate(attacks):
            assert outcome(results[2 * i]) == alone[name], name
            probe_after = results[2 * i + 1]
            assert isinstance(probe_after, tenantvm.Response), (name, probe_after)
            assert probe_after.body == clean_memory, f"{name} left something behind"
    assert vm.usable
    assert vm.call(Request()).body == clean
    assert vm.stats().guest_resets > 0


def test_exhausting_brk_and_mmap_leaves_nothing_behind(vm: TenantVM, clean: bytes) -> None:
    brk_huge = struct.pack("<7Q", 12, 1 << 40, 0, 0, 0, 0, 0)
    mmap_64m = struct.pack("<7Q", 9, 0, 64 << 20, 3, 0x22, (1 << 64) - 1, 0)
    mmap_all = struct.pack("<7Q", 9, 0, 1 << 47, 3, 0x22, (1 << 64) - 1, 0)
    out = vm.call(Request(method="POST", path="/syscalls", body=brk_huge + mmap_64m * 8 + mmap_all)).body
    results = struct.unpack(f"<{len(out) // 8}Q", out)
    assert results[0] != 1 << 40, "brk cannot grow past the VM's memory"
    # Mappings cost address space only (memory is taken when touched): 512 MiB of them fit.
    assert all(r < 1 << 47 for r in results[1:9]), results
    assert results[9] == (1 << 64) - 12, "mmap fails with ENOMEM when the address space is full"
    assert vm.call(Request()).body == clean


# System calls from the whole Linux range and tenantvm's, with edge-case arguments: null and
# wild pointers, read-only and kernel memory, the request area, huge and negative lengths/fds.
EDGE_VALUES = [
    0,
    1,
    2,
    3,
    64,
    4096,
    (1 << 64) - 1,
    (1 << 63) - 1,
    1 << 63,
    1 << 40,
    0x40_0000,
    0x40_1000,
    REQUEST_VA,
    REQUEST_VA + 0x100,
    0x7E00_0000_0000,
    KBASE,
    KBASE + 0x5000,
    KVCPU,
    KVCPU + 0x4000,
    SCRATCH,
    SCRATCH + 0x800,
    SCRATCH + 0xFFF8,
]
# Calls that only make the test slow without exercising anything new are left out:
# pause (would block until the deadline) is covered by the timeout tests.
SYSCALL_NUMBERS = st.one_of(
    st.integers(0, 460).filter(lambda n: n != 34),
    st.sampled_from([0x10000, 0x10001, 0x100FF]),
    st.integers(0, (1 << 64) - 1),
)
record = st.tuples(
    SYSCALL_NUMBERS, st.lists(st.sampled_from(EDGE_VALUES) | st.integers(0, (1 << 64) - 1), min_size=6, max_size=6)
)


def contained(vm: TenantVM, request: Request) -> None:
    """The request either returns normally or ends in a GuestFault (exactly that class)."""
    error: Exception | None = None
    try:
        body = vm.call(request).body
    except tenantvm.GuestError as e:
        error = e
    if error is None:
        assert body == b"returned"
    else:
        assert type(error) is tenantvm.GuestFault, f"{type(error).__name__}: {error}"


def ends_in_a_typed_error(vm: TenantVM, request: Request, allowed: tuple[type[tenantvm.GuestError], ...]) -> None:
    """Calls ``request``: a response, or exactly one of the ``allowed`` errors, with its details.

    The class must be one of ``allowed`` itself (not the GuestError base or another subclass),
    and what it carries must be what that outcome means, so an internal failure cannot pass
    for a refused request.
    """
    error: tenantvm.GuestError | None = None
    try:
        vm.call(request)
    except tenantvm.GuestError as e:
        error = e
    if error is None:
        return
    assert type(error) in allowed, f"{type(error).__name__}: {error}"
    if isinstance(error, tenantvm.GuestTimeout):
        assert error.timeout == pytest.approx(0.3)
    elif isinstance(error, tenantvm.NoResponse):
        assert re.search(r"exit|signal|deadlock|wait_for_request", str(error)), str(error)
    elif isinstance(error, tenantvm.GuestFault):
        assert error.kind, str(error)
        # A CPU fault says where it happened; a bad pointer given to the API, which pointer.
        assert error.rip is not None or error.address is not None, str(error)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=st.lists(record, min_size=1, max_size=8))
def test_fuzzed_syscalls_end_in_a_response_or_a_typed_error(vm: TenantVM, clean: bytes, calls: list) -> None:
    body = b"".join(struct.pack("<7Q", nr, *args) for nr, args in calls)
    numbers = {nr for nr, _ in calls}
    # What a list of system calls can end in, besides a response: exiting or killing itself,
    # deadlocking, waiting for a request without answering (NoResponse), sleeping past the
    # deadline, unmapping or write-protecting its own code or stack (GuestFault), and, only
    # through the request API, a bad or oversize response.
    allowed: tuple[type[tenantvm.GuestError], ...] = (
        tenantvm.NoResponse,
        tenantvm.GuestTimeout,
        tenantvm.GuestFault,
        tenantvm.GuestOutOfMemory,
    )
    if numbers & {0x10001, 0x10002}:
        allowed += (tenantvm.ResponseTooLarge,)
    ends_in_a_typed_error(vm, Request(method="POST", path="/syscalls", body=body), allowed)
    assert vm.call(Request()).body == clean


@pytest.mark.fuzz
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(code=st.binary(min_size=1, max_size=64))
def test_fuzzed_machine_code_ends_in_a_response_or_a_typed_error(vm: TenantVM, clean: bytes, code: bytes) -> None:
    allowed = (
        tenantvm.GuestFault,
        tenantvm.GuestTimeout,
        tenantvm.NoResponse,
        tenantvm.GuestOutOfMemory,
        tenantvm.ResponseTooLarge,
    )
    ends_in_a_typed_error(vm, Request(method="POST", path="/code", body=code), allowed)
    assert vm.call(Request()).body == clean


def test_host_resources_stay_bounded_under_attack(probe: Tenant, clean: bytes) -> None:
    vm = probe.instance()
    attacks = [(bytes.fromhex(c), expected) for c, expected in ATTACKS.values() if c != "ebfe"]

    def attack(code: bytes, expected: type[Exception] | str) -> None:
        request = Request(method="POST", path="/code", body=code)
        if isinstance(expected, type):
            with pytest.raises(expected) as e:
                vm.call(request)
            assert type(e.value) is expected
        elif expected == "contained":
            contained(vm, request)
        else:
            assert vm.call(request).body == b"returned"

    for code, expected in attacks:  # warm-up
        attack(code, expected)
    fds, threads = fd_count(), thread_count()
    for _ in range(5):
        for code, expected in attacks:
            attack(code, expected)
    assert (fd_count(), thread_count()) == (fds, threads)
    assert vm.call(Request()).body == clean
