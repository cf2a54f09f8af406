"""The event loop's batcher (tenantvm.batcher): inline calls gathered per loop turn."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tenantvm import GuestFault, GuestTimeout, Request, Tenant
from tenantvm.batcher import PROBE_EVERY, Batcher, NoInstance
from tenantvm.pool import Pool
from tenantvm.tenant import NativeArgs

pytestmark = pytest.mark.usefixtures("kvm")


@pytest.fixture(scope="module")
def misbehave(apps: Path) -> Tenant:
    return Tenant(apps / "misbehave", timeout=0.2, memory_mb=32)


class Recorder:
    """before/after hooks that record the batches."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.open = 0

    def before(self) -> None:
        self.open += 1

    def after(self, n: int) -> None:
        self.open -= 1
        self.sizes.append(n)


def make(tenant: Tenant, size: int = 1, budget: float = 1.0) -> tuple[Batcher, Pool, Recorder]:
    pool = Pool("t", tenant.instance, size)
    rec = Recorder()
    return Batcher(pool, budget, rec.before, rec.after), pool, rec


def path(p: str) -> NativeArgs:
    """A GET request in the batcher's (the native calls') form."""
    head, _, query = p.partition("?")
    return Request(path=head, query=query)._native_args()


class Raw:
    """A raw response's fields by name."""

    def __init__(self, raw: tuple) -> None:
        self.status, self.headers, self.body, self.stdout, self.stderr, self.exits = raw


async def gather(batcher: Batcher, requests: list[NativeArgs]) -> list[Raw | BaseException]:
    results = await asyncio.gather(*(batcher.call(r) for r in requests), return_exceptions=True)
    return [r if isinstance(r, BaseException) else Raw(r) for r in results]


def test_requests_of_one_loop_turn_run_as_one_batch(misbehave: Tenant) -> None:
    batcher, pool, rec = make(misbehave)

    async def main() -> None:
        # While idle, the first request of a turn runs at once; the others of that turn have
        # company and wait for the turn's batch...
        results = await gather(batcher, [path("/count") for _ in range(20)])
        assert [r.body for r in results] == [b"1"] * 20  # type: ignore[union-attr]
        assert rec.sizes == [1, 19]
        # ...and from then on, a turn's requests run as one batch.
        results = await gather(batcher, [path("/count") for _ in range(20)])
        assert [r.body for r in results] == [b"1"] * 20  # type: ignore[union-attr]

    asyncio.run(main())
    assert rec.sizes[-1] == 20
    assert rec.open == 0
    assert (pool.idle, pool.busy) == (1, 0)
    vm = pool.try_acquire()
    assert vm is not None
    assert vm.stats().batches == 2  # type: ignore[attr-defined]


def test_failures_in_a_batch_raise_in_their_own_request(misbehave: Tenant) -> None:
    batcher, pool, _ = make(misbehave)
    requests = [path(p) for p in ["/count", "/fault", "/count", "/spin", "/count", "/illegal", "/count"]]
    results = asyncio.run(gather(batcher, requests))
    assert isinstance(results[1], GuestFault)
    assert isinstance(results[3], GuestTimeout)
    assert isinstance(results[5], GuestFault)
    assert [r.body for r in results[::2]] == [b"1"] * 4  # type: ignore[union-attr]
    assert pool.idle == 1


def test_the_budget_moves_the_rest_to_the_next_batch(misbehave: Tenant) -> None:
    batcher, _, rec = make(misbehave, budget=0.005)

    async def main() -> list[Raw | BaseException]:
        await gather(batcher, [path("/count") for _ in range(20)])  # crowded: calls wait a turn
        del rec.sizes[:]
        return await gather(batcher, [path("/busy?ms=3") for _ in range(6)])

    results = asyncio.run(main())
    assert [r.body for r in results] == [b"ok"] * 6  # type: ignore[union-attr]
    assert sum(rec.sizes) == 6
    assert len(rec.sizes) >= 2, f"a 5 ms budget cannot hold six 3 ms requests in one batch: {rec.sizes}"


def test_no_free_instance_sends_every_waiting_request_elsewhere(misbehave: Tenant) -> None:
    batcher, pool, rec = make(misbehave)

    async def main() -> list[Raw | BaseException]:
        held = pool.try_acquire()
        try:
            return await gather(batcher, [path("/count") for _ in range(3)])
        finally:
            assert held is not None
            pool.release(held)

    results = asyncio.run(main())
    assert all(isinstance(r, NoInstance) for r in results)
    assert rec.sizes == []


def test_lone_requests_run_at_once_and_probe_for_company(misbehave: Tenant) -> None:
    batcher, _, rec = make(misbehave)

    async def main() -> None:
        for _ in range(PROBE_EVERY * 3):
            assert Raw(await batcher.call(path("/count"))).body == b"1"

    asyncio.run(main())
    assert rec.sizes == [1] * (PROBE_EVERY * 3)


def test_a_cancelled_request_is_not_run(misbehave: Tenant) -> None:
    batcher, _, rec = make(misbehave)

    async def main() -> None:
        await gather(batcher, [path("/count") for _ in range(20)])  # crowded: calls wait a turn
        task = asyncio.ensure_future(batcher.call(path("/count")))
        other = asyncio.ensure_future(batcher.call(path("/count")))
        await asyncio.sleep(0)  # both queued, the flush not yet run
        task.cancel()
        assert Raw(await other).body == b"1"
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert rec.sizes[-1] == 1


def test_queued_requests_leave_the_loop_once_calls_are_not_allowed_there(misbehave: Tenant) -> None:
    pool = Pool("t", misbehave.instance, 1)
    allowed = [True]
    batcher = Batcher(pool, 1.0, allowed=lambda: allowed[0])

    async def main() -> list[Raw | BaseException]:
        await gather(batcher, [path("/count") for _ in range(20)])  # crowded
        allowed[0] = False
        return await gather(batcher, [path("/count") for _ in range(3)])

    assert all(isinstance(r, NoInstance) for r in asyncio.run(main()))


def test_queued_requests_take_the_fallback_when_the_batch_finds_no_instance(misbehave: Tenant) -> None:
    # The server's path under load: the batcher's own future, settled by the fallback (the
    # tenant's ordinary caller) when calls may no longer run on the loop or no instance is free.
    pool = Pool("t", misbehave.instance, 1)
    allowed = [True]
    served: list[NativeArgs] = []

    async def fallback(request: NativeArgs) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        served.append(request)
        await asyncio.sleep(0)
        if request[1] == b"/fail":
            raise GuestTimeout("from the fallback")
        return 299, [], b"fallback"

    batcher = Batcher(pool, 1.0, allowed=lambda: allowed[0], fallback=fallback)

    async def main() -> list[object]:
        first = await asyncio.gather(batcher.enqueue(path("/count")), batcher.enqueue(path("/count")))
        assert [Raw(r).body for r in first] == [b"1", b"1"]  # served by the batch, each from the snapshot
        allowed[0] = False
        futures = [batcher.enqueue(path("/count")), batcher.enqueue(path("/fail"))]
        return await asyncio.gather(*futures, return_exceptions=True)

    answer, failure = asyncio.run(main())
    assert answer == (299, [], b"fallback")
    assert isinstance(failure, GuestTimeout)
    assert [r[1] for r in served] == [b"/count", b"/fail"]
