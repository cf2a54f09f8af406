"""Property: in ephemeral mode no request can see anything an earlier request left behind.

The ``isolate`` tenant (apps/examples/isolate.c) digests its whole state at the start of each
request (globals, heap, brk, mmap, stack, TLS, the scratch memory system calls write into, the
whole XSAVE register state, open fds, break, allocator state, signal mask, which threads exist
and the tid the next one gets, every signal disposition, pending signals, the alternate signal
stack), applies the request's writes (which may also leave threads waiting forever, install
handlers, block signals and leave them pending), and digests again.  For any sequence of
requests, every response of one
long-lived instance must equal the response a new instance of the snapshot gives to the same
request (never the answer of an instance that served earlier requests itself).

Requests may also make system calls that have the host (or the guest kernel) write into the
program's memory: every system call the VMM emulates, found by asking it (the numbers it does
not count as unsupported), so a new system call is covered the day it is added.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tenantvm
from tenantvm import Request, Response, Tenant, TenantVM
from tenantvm.runner import syscall_name

from .vcpu_batches import BatchedServing

pytestmark = pytest.mark.usefixtures("kvm")

EXAMPLES = int(os.environ.get("TENANTVM_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# kind, offset, data: see the op list at the top of isolate.c (kinds 1..25: 21-25 leave threads
# and signal state: a thread waiting forever, tids moved on, handlers, an alternate stack, a
# pending signal).
op = st.tuples(st.integers(1, 25), st.integers(0, 0xFFFF), st.binary(min_size=0, max_size=24))
request_body = st.lists(op, max_size=12).map(
    lambda ops: b"".join(bytes([k, off & 0xFF, off >> 8, len(d)]) + d for k, off, d in ops)
)


@pytest.fixture(scope="module")
def isolate(apps: Path) -> Tenant:
    return Tenant(apps / "isolate")


@pytest.fixture(scope="module")
def long_lived(isolate: Tenant) -> TenantVM:
    return isolate.instance()


class FreshAnswers:
    """What a new instance of the snapshot answers to a request (cached per request)."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self.cache: dict[tuple[str, str, bytes], bytes] = {}

    def __call__(self, request: Request) -> bytes:
        key = (request.path, request.query, request.body)
        if key not in self.cache:
            self.cache[key] = self.tenant.instance().call(request).body
        return self.cache[key]


@pytest.fixture(scope="module")
def fresh(isolate: Tenant) -> FreshAnswers:
    return FreshAnswers(isolate)


SCRATCH = 0xF00D_0000_0000_0000  # replaced by the probe with its scratch memory (+ offset)


@pytest.fixture(scope="module")
def emulated_syscalls(isolate: Tenant) -> list[int]:
    """Every system-call number below 470 the VMM emulates: each is called once with zero
    arguments, and those it counts as unsupported (-ENOSYS by default) are left out."""
    vm = isolate.instance()
    found = []
    for nr in range(470):
        name = syscall_name(nr)
        before = vm.stats().unsupported_syscalls.get(name, 0)
        # exit and the like end the request; the instance resets
        with contextlib.suppress(tenantvm.GuestError):
            vm.call(syscalls_request([(nr, (0,) * 6)]))
        if vm.stats().unsupported_syscalls.get(name, 0) == before:
            found.append(nr)
    assert len(found) >= 50, found
    return found


def syscalls_request(calls: list[tuple[int, tuple[int, ...]]]) -> Request:
    body = b"".join(struct.pack("<7Q", nr, *args) for nr, args in calls)
    return Request(method="POST", path="/syscalls", body=body)


# Arguments: small integers (fds, flags, clock ids, resources, sizes) and pointers into the
# probe's scratch memory (its first 32 KiB: with sizes up to 4 KiB, whatever a call writes
# lands in memory the probe digests).
SMALL = [0, 1, 2, 3, 4, 8, 16, 64, 128, 4096]
argument = st.one_of(st.sampled_from(SMALL), st.integers(0, 0x7FF8).map(lambda off: SCRATCH + off))


def test_instances_agree_and_boots_agree_on_everything_but_registers(apps: Path, isolate: Tenant) -> None:
    """Two instances of one snapshot answer alike.  Another boot of the program must agree on
    memory, descriptors, break, allocator and signal mask; its registers may differ: the
    snapshot's vector registers can hold what the program computed from boot randomness
    (seen on PVM: one byte of xmm2, in about one boot in 60), which is why every comparison
    here is with an instance of the same snapshot."""
    clean = isolate.instance().call(Request()).body
    assert isolate.instance().call(Request()).body == clean
    parts = Request(query="parts")
    mine = isolate.instance().call(parts).body.decode().split()
    other = Tenant(apps / "isolate").instance().call(parts).body.decode().split()
    assert [p for p in mine if not p.startswith("xstate=")] == [p for p in other if not p.startswith("xstate=")]


@pytest.mark.fuzz
@FUZZ
@given(bodies=st.lists(request_body, min_size=1, max_size=6))
def test_every_response_equals_a_fresh_vms(long_lived: TenantVM, fresh: FreshAnswers, bodies: list[bytes]) -> None:
    for body in bodies:
        request = Request(method="POST", body=body)
        assert long_lived.call(request).body == fresh(request)


@st.composite
def syscall_requests(draw: st.DrawFn, numbers: list[int]) -> Request:
    calls = draw(st.lists(st.tuples(st.sampled_from(numbers), st.tuples(*[argument] * 6)), min_size=1, max_size=16))
    return syscalls_request(calls)


@pytest.mark.fuzz
@FUZZ
@given(data=st.data())
def test_memory_the_host_writes_for_a_request_never_reaches_the_next(
    long_lived: TenantVM, fresh: FreshAnswers, emulated_syscalls: list[int], data: st.DataObject
) -> None:
    """Requests of random emulated system calls (their answers vary: times, random bytes),
    each followed by a probe request that must answer as on a new instance."""
    for _ in range(data.draw(st.integers(1, 4), label="rounds")):
        with contextlib.suppress(tenantvm.NoResponse, tenantvm.GuestTimeout, tenantvm.GuestFault):
            long_lived.call(data.draw(syscall_requests(emulated_syscalls), label="system calls"))
        probe = Request(method="POST", body=data.draw(request_body, label="probe"))
        assert long_lived.call(probe).body == fresh(probe)


@pytest.mark.fuzz
@FUZZ
@given(data=st.data())
def test_memory_the_host_writes_for_a_batched_request_never_reaches_the_next(
    long_lived: TenantVM, fresh: FreshAnswers, emulated_syscalls: list[int], data: st.DataObject
) -> None:
    """The same in batches: the probe requests after them may be reset by the guest kernel."""
    requests = []
    for _ in range(data.draw(st.integers(1, 6), label="rounds")):
        requests.append(data.draw(syscall_requests(emulated_syscalls), label="system calls"))
        requests.append(Request(method="POST", query=data.draw(st.sampled_from(["mem", ""])), body=b""))
    got = long_lived.call_batch(requests)
    for i in range(1, len(requests), 2):
        assert isinstance(got[i], Response), got[i]
        assert got[i].body == fresh(requests[i]), f"after {requests[i - 1].body!r}"


def test_the_probe_can_see_state_when_it_is_kept(isolate: Tenant, apps: Path) -> None:
    """Stateful mode keeps state, so the probe must notice: the property above is not vacuous."""
    stateful = Tenant(apps / "isolate", ephemeral=False).instance()
    clean = stateful.call(Request()).body
    flags = Path("/proc/cpuinfo").read_text().split()
    unavailable = {19: "avx", 20: "avx512f", 14: "avx"}
    for kind in range(1, 26):
        if kind in unavailable and unavailable[kind] not in flags:
            continue
        stateful.reset()
        stateful.call(Request(body=bytes([kind, 5, 0, 3, 1, 2, 3])))
        assert stateful.call(Request()).body != clean, f"state kind {kind} was not visible to the next request"


# Operations that change memory and registers only (no system calls): with the query "mem"
# the probe makes none either, so the guest kernel itself resets such requests in a batch.
memory_op = st.tuples(
    st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 9, 14, 17, 18, 19, 20]), st.integers(0, 0xFFFF), st.binary(max_size=24)
)
memory_body = st.lists(memory_op, max_size=12).map(
    lambda ops: b"".join(bytes([k, off & 0xFF, off >> 8, len(d)]) + d for k, off, d in ops)
)
probe_request = st.tuples(st.one_of(memory_body, request_body), st.booleans()).map(
    lambda r: Request(method="POST", query="mem" if r[1] else "", body=r[0])
)


@pytest.mark.fuzz
@FUZZ
@given(requests=st.lists(probe_request, min_size=2, max_size=12))
def test_every_batched_response_equals_a_fresh_vms(
    long_lived: TenantVM, fresh: FreshAnswers, requests: list[Request]
) -> None:
    """The same property for batches, where the guest kernel does the resets."""
    got = long_lived.call_batch(requests)
    assert len(got) == len(requests)
    for request, response in zip(requests, got, strict=True):
        assert isinstance(response, Response), response
        assert response.body == fresh(request)


def test_batches_are_reset_in_the_guest(isolate: Tenant) -> None:
    """The property above covers in-guest resets: memory-only requests never leave the VM."""
    vm = isolate.instance()
    requests = [Request(method="POST", query="mem", body=bytes([1, i, 0, 2, i, i])) for i in range(20)]
    before = vm.stats()
    assert all(isinstance(r, Response) for r in vm.call_batch(requests))
    after = vm.stats()
    assert after.guest_resets - before.guest_resets == 20
    assert after.exits - before.exits == 1


@pytest.fixture(scope="module")
def combined(isolate: Tenant) -> Iterator[BatchedServing]:
    """The isolate tenant served as the server serves a runtime tenant: by the vCPU-thread
    combiner, requests that wait together run as one batch."""
    serving = BatchedServing(isolate)
    yield serving
    serving.close()


@pytest.mark.fuzz
@FUZZ
@given(requests=st.lists(probe_request, min_size=1, max_size=12))
def test_every_response_served_by_the_vcpu_combiner_equals_a_fresh_vms(
    combined: BatchedServing, fresh: FreshAnswers, requests: list[Request]
) -> None:
    """The same property through the combiner the server uses for tenants on vCPU threads."""
    sizes = len(combined.sizes)
    got = combined.serve(requests)
    assert combined.sizes[sizes:] == [len(requests)]  # one job for the lot
    for request, response in zip(requests, got, strict=True):
        assert isinstance(response, Response), response
        assert response.body == fresh(request)
