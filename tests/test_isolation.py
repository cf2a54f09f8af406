"""Property: in ephemeral mode no request can see anything an earlier request left behind.

The ``isolate`` tenant (apps/examples/isolate.c) digests its whole state at the start of each
request (globals, heap, brk, mmap, stack, TLS, SSE/AVX registers, MXCSR, x87 control word,
open fds, break, allocator state, signal mask), applies the request's writes, and digests
again.  For any sequence of requests, every response of one long-lived instance must equal the
response a fresh VM gives to the same request.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantvm import Request, Response, Tenant, TenantVM

pytestmark = pytest.mark.usefixtures("kvm")

EXAMPLES = int(os.environ.get("TENANTVM_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# kind, offset, data: see the op list at the top of isolate.c (kinds 1..17).
op = st.tuples(st.integers(1, 17), st.integers(0, 0xFFFF), st.binary(min_size=0, max_size=24))
request_body = st.lists(op, max_size=12).map(
    lambda ops: b"".join(bytes([k, off & 0xFF, off >> 8, len(d)]) + d for k, off, d in ops)
)


@pytest.fixture(scope="module")
def isolate(apps: Path) -> Tenant:
    return Tenant(apps / "isolate")


@pytest.fixture(scope="module")
def long_lived(isolate: Tenant) -> TenantVM:
    return isolate.instance()


def test_a_fresh_boot_and_a_fresh_instance_agree(apps: Path, isolate: Tenant) -> None:
    clean = isolate.instance().call(Request()).body
    assert Tenant(apps / "isolate").instance().call(Request()).body == clean
    before, after = clean.split()
    assert before.replace(b"before", b"") == after.replace(b"after", b"")


@pytest.mark.fuzz
@FUZZ
@given(bodies=st.lists(request_body, min_size=1, max_size=6))
def test_every_response_equals_a_fresh_vms(isolate: Tenant, long_lived: TenantVM, bodies: list[bytes]) -> None:
    for body in bodies:
        got = long_lived.call(Request(method="POST", body=body)).body
        expected = isolate.instance().call(Request(method="POST", body=body)).body
        assert got == expected


def test_the_probe_can_see_state_when_it_is_kept(isolate: Tenant, apps: Path) -> None:
    """Stateful mode keeps state, so the probe must notice: the property above is not vacuous."""
    stateful = Tenant(apps / "isolate", ephemeral=False).instance()
    clean = stateful.call(Request()).body
    for kind in range(1, 18):
        stateful.reset()
        stateful.call(Request(body=bytes([kind, 5, 0, 3, 1, 2, 3])))
        assert stateful.call(Request()).body != clean, f"state kind {kind} was not visible to the next request"


# Operations that change memory and registers only (no system calls): with the query "mem"
# the probe makes none either, so the guest kernel itself resets such requests in a batch.
memory_op = st.tuples(
    st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 9, 14, 17]), st.integers(0, 0xFFFF), st.binary(max_size=24)
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
    isolate: Tenant, long_lived: TenantVM, requests: list[Request]
) -> None:
    """The same property for batches, where the guest kernel does the resets."""
    got = long_lived.call_batch(requests)
    assert len(got) == len(requests)
    fresh = isolate.instance()
    for request, response in zip(requests, got, strict=True):
        assert isinstance(response, Response), response
        assert response.body == fresh.call(request).body


def test_batches_are_reset_in_the_guest(isolate: Tenant) -> None:
    """The property above covers in-guest resets: memory-only requests never leave the VM."""
    vm = isolate.instance()
    requests = [Request(method="POST", query="mem", body=bytes([1, i, 0, 2, i, i])) for i in range(20)]
    before = vm.stats()
    assert all(isinstance(r, Response) for r in vm.call_batch(requests))
    after = vm.stats()
    assert after.guest_resets - before.guest_resets == 20
    assert after.exits - before.exits == 1
