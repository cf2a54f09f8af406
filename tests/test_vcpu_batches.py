"""The vCPU-thread combiner (tenantvm.callers.VcpuBatchedCaller): requests of a runtime tenant
that wait for an instance run as one batch on its vCPU thread, each with its own answer, time
limit and wait limit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenantvm import GuestFault, GuestTimeout, Request, Response, Tenant
from tenantvm.aio import AsyncTenantVM, CompletionQueue
from tenantvm.callers import VcpuBatchedCaller
from tenantvm.pool import Pool, PoolBusy, PoolClosed

from .vcpu_batches import BatchedServing

pytestmark = pytest.mark.usefixtures("kvm")

LIMIT = 0.3  # the misbehave tenant's time limit (s)


@pytest.fixture(scope="module")
def misbehave(apps: Path) -> Tenant:
    return Tenant(apps / "misbehave", timeout=LIMIT, memory_mb=32)


@pytest.fixture
def serving(misbehave: Tenant) -> Iterator[BatchedServing]:
    s = BatchedServing(misbehave, budget=0.15)
    yield s
    s.close()


def bodies(answers: list) -> list:
    return [a.body if isinstance(a, Response) else type(a) for a in answers]


def test_requests_queued_together_run_as_one_batch_each_from_the_snapshot(serving: BatchedServing) -> None:
    before = serving.stats()[0]
    answers = serving.serve([Request(path="/count")] * 12)
    # Every request sees the snapshot's counter (+1 for itself), as a new VM would.
    assert bodies(answers) == [b"1"] * 12
    assert serving.sizes == [12]
    after = serving.stats()[0]
    assert after.batches - before.batches == 1
    assert after.guest_resets - before.guest_resets >= 11  # reset in the guest, not by exits
    assert after.exits - before.exits == 1


def test_failures_in_a_batch_are_per_request_and_a_spinning_one_ends_at_its_limit(serving: BatchedServing) -> None:
    paths = ["/count", "/fault", "/count", "/spin", "/count", "/dirty?kb=64", "/count"]
    answers = serving.serve([Request(path=p) for p in paths])
    assert bodies(answers) == [b"1", GuestFault, b"1", GuestTimeout, b"1", b"ok", b"1"]
    # The spin ran to its limit (longer than the batch's budget): the requests after it ran in
    # another job, after going back to the front of the queue.
    assert sum(serving.sizes) == len(paths)
    assert len(serving.sizes) >= 2
    assert serving.sizes[0] <= 4


def test_a_request_waits_for_an_instance_at_most_its_wait_limit(misbehave: Tenant) -> None:
    serving = BatchedServing(misbehave, queue_timeout=0.05)
    try:

        async def main() -> list:
            spin = asyncio.ensure_future(serving.caller.call(Request(path="/spin")._native_args()))
            await asyncio.sleep(0.02)  # the spin took the only instance
            waiting = [serving.caller.call(Request(path="/count")._native_args()) for _ in range(3)]
            return await asyncio.gather(spin, *waiting, return_exceptions=True)

        answers = serving.run(main())
        assert [type(a) for a in answers] == [GuestTimeout, PoolBusy, PoolBusy, PoolBusy]
        assert bodies(serving.serve([Request(path="/count")])) == [b"1"]  # the instance serves again
        assert serving.caller.queued == 0
    finally:
        serving.close()


def test_a_request_cancelled_while_it_waits_does_not_run(serving: BatchedServing) -> None:
    async def main() -> list:
        busy = asyncio.ensure_future(serving.caller.call(Request(path="/sleep", query="ms=100")._native_args()))
        await asyncio.sleep(0.02)
        gone = asyncio.ensure_future(serving.caller.call(Request(path="/count")._native_args()))
        kept = asyncio.ensure_future(serving.caller.call(Request(path="/count")._native_args()))
        await asyncio.sleep(0)
        gone.cancel()
        return await asyncio.gather(busy, kept)

    before = serving.stats()[0].calls
    answers = serving.run(main())
    assert [a[2] for a in answers] == [b"ok", b"1"]
    assert serving.stats()[0].calls - before == 2
    assert serving.sizes == [1, 1]


def test_queued_requests_fail_when_the_pool_closes(misbehave: Tenant) -> None:
    async def main() -> list:
        queue = CompletionQueue(asyncio.get_running_loop())
        pool = Pool("t", lambda: AsyncTenantVM(misbehave, queue), 1)
        caller = VcpuBatchedCaller(pool, 60.0, lambda n: None, 1.0)
        busy = asyncio.ensure_future(caller.call(Request(path="/sleep", query="ms=100")._native_args()))
        await asyncio.sleep(0.02)
        waiting = asyncio.ensure_future(caller.call(Request(path="/count")._native_args()))
        await asyncio.sleep(0.01)
        pool.close()
        answers = await asyncio.gather(busy, waiting, return_exceptions=True)
        late = await asyncio.gather(caller.call(Request(path="/count")._native_args()), return_exceptions=True)
        queue.close()
        return [*answers, *late]

    busy, waiting, late = asyncio.run(main())
    assert busy[2] == b"ok"  # a call under way runs to its end
    assert isinstance(waiting, PoolClosed)
    assert isinstance(late, PoolClosed)


def test_several_instances_share_the_queue_and_every_request_is_answered_once(misbehave: Tenant) -> None:
    serving = BatchedServing(misbehave, size=3, max_batch=4)
    try:
        answers = serving.serve([Request(path="/count", query=f"i={i}") for i in range(30)])
        assert bodies(answers) == [b"1"] * 30
        assert sum(serving.sizes) == 30
        assert max(serving.sizes) <= 4
        assert sum(s.calls for s in serving.stats()) >= 30
    finally:
        serving.close()
