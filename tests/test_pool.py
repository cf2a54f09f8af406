"""Instance pools (no VMs: fake instances)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tenantvm.pool import Pool, PoolBusy, PoolClosed


class Fake:
    ids = itertools.count()

    def __init__(self) -> None:
        self.id = next(self.ids)
        self.usable = True


def run(coro):
    return asyncio.run(coro)


def test_acquire_release_counts() -> None:
    async def main() -> None:
        pool = Pool("t", Fake, 2)
        a = await pool.acquire(0)
        b = await pool.acquire(0)
        assert a is not b
        assert (pool.busy, pool.idle) == (2, 0)
        with pytest.raises(PoolBusy):
            await pool.acquire(0)
        with pytest.raises(PoolBusy):
            await pool.acquire(0.05)
        pool.release(a)
        assert (pool.busy, pool.idle, pool.waiting) == (1, 1, 0)
        assert await pool.acquire(0) is a

    run(main())


def test_waiters_are_served_in_order() -> None:
    async def main() -> None:
        pool = Pool("t", Fake, 1)
        vm = pool.try_acquire()
        assert vm is not None
        order: list[int] = []

        async def waiter(i: int) -> None:
            got = await pool.acquire(5)
            order.append(i)
            await asyncio.sleep(0)
            pool.release(got)

        tasks = [asyncio.create_task(waiter(i)) for i in range(5)]
        await asyncio.sleep(0.01)
        assert pool.waiting == 5
        assert pool.try_acquire() is None  # no jumping the queue
        pool.release(vm)
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2, 3, 4]
        assert (pool.busy, pool.idle, pool.waiting) == (0, 1, 0)

    run(main())


def test_cancelled_and_timed_out_waiters_leak_nothing() -> None:
    async def main() -> None:
        pool = Pool("t", Fake, 1)
        vm = await pool.acquire(0)
        cancelled = asyncio.create_task(pool.acquire(5))
        timed_out = asyncio.create_task(pool.acquire(0.01))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        with pytest.raises(PoolBusy):
            await timed_out
        assert pool.waiting == 0
        pool.release(vm)
        assert (pool.busy, pool.idle) == (0, 1)
        assert await pool.acquire(0) is vm

    run(main())


def test_unusable_instances_are_replaced() -> None:
    async def main() -> None:
        replaced: list[int] = []
        pool = Pool("t", Fake, 1, on_replace=lambda: replaced.append(1))
        vm = await pool.acquire(0)
        vm.usable = False
        waiter = asyncio.create_task(pool.acquire(5))
        await asyncio.sleep(0)
        pool.release(vm)
        assert pool.missing == 1
        new = await waiter
        assert new is not vm
        assert new.usable
        assert (pool.missing, pool.replaced, replaced) == (0, 1, [1])

    run(main())


def test_replacement_retries_after_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Pool, "RETRY_DELAY", 0.01)
    attempts: list[int] = []

    def flaky() -> Fake:
        attempts.append(1)
        if len(attempts) < 3:
            raise OSError("no memory")
        return Fake()

    async def main() -> None:
        pool = Pool("t", flaky, 1, instances=[Fake()])
        vm = await pool.acquire(0)
        vm.usable = False
        pool.release(vm)
        new = await pool.acquire(5)
        assert new is not vm
        assert len(attempts) == 3

    run(main())


def test_close_fails_waiters() -> None:
    async def main() -> None:
        pool = Pool("t", Fake, 1)
        await pool.acquire(0)
        waiter = asyncio.create_task(pool.acquire(5))
        await asyncio.sleep(0)
        pool.close()
        with pytest.raises(PoolClosed):
            await waiter
        with pytest.raises(PoolClosed):
            await pool.acquire(0)

    run(main())
