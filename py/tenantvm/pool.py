"""Pools of tenant instances, one per tenant in each worker process.

A :class:`Pool` holds ``pool_size`` instances of one booted tenant.  A request takes one with
:meth:`Pool.acquire` (waiting at most ``queue_timeout``, first come first served, else
:class:`PoolBusy`, answered with 503) and gives it back with :meth:`Pool.release` once the call
is over, failed or not: the VMM has already reset a failed instance to its snapshot.  An
instance that the host could not drive any more (``HostError``: not ``usable``) is dropped and
a new one is made in a worker thread; until it is ready the pool is one instance short.

The pool lives on the event loop: every method is called from the loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Protocol

import anyio

__all__ = ["Instance", "Pool", "PoolBusy", "PoolClosed"]

log = logging.getLogger("tenantvm.pool")


class Instance(Protocol):
    """What the pool needs of an instance (a :class:`tenantvm.TenantVM`)."""

    @property
    def usable(self) -> bool:
        """False once the instance cannot serve any more."""
        ...


class PoolBusy(Exception):
    """No instance became free within the wait limit."""


class PoolClosed(Exception):
    """The pool was closed (the worker is stopping)."""


class Pool:
    """``size`` interchangeable instances made by ``factory``.

    Args:
        name: The tenant's name (for messages).
        factory: Makes an instance (blocking; called in a worker thread for replacements).
        size: The number of instances.
        instances: Instances already made (default: ``size`` made now, blocking).
        on_replace: Called after an unusable instance was replaced.
    """

    #: Waits between attempts to replace an instance after a failed one (s), doubling to the max.
    RETRY_DELAY = 0.5
    RETRY_MAX = 30.0

    def __init__(
        self,
        name: str,
        factory: Callable[[], Instance],
        size: int,
        instances: list[Instance] | None = None,
        on_replace: Callable[[], None] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("a pool needs at least one instance")
        self.name = name
        self.size = size
        self._factory = factory
        self._on_replace = on_replace
        self._idle: deque[Instance] = deque(instances if instances is not None else (factory() for _ in range(size)))
        self._waiters: deque[asyncio.Future[Instance]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        #: Instances currently handed out.
        self.busy = 0
        #: Instances being replaced (the pool is short of them).
        self.missing = size - len(self._idle)
        #: Instances replaced so far.
        self.replaced = 0

    @property
    def idle(self) -> int:
        """Instances ready to serve."""
        return len(self._idle)

    @property
    def waiting(self) -> int:
        """Requests waiting for an instance."""
        return sum(1 for w in self._waiters if not w.done())

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def claim(self) -> asyncio.Future[Instance]:
        """A future of the next instance released, with no time limit.

        For a caller that queues requests itself and fails them after its own wait limit
        (:class:`tenantvm.callers.VcpuBatchedCaller`).  It takes its turn among the waiters of
        :meth:`acquire`; cancel it to give up the turn.
        Fails with PoolClosed when the pool is closed.
        """
        waiter: asyncio.Future[Instance] = asyncio.get_running_loop().create_future()
        if self._closed:
            waiter.set_exception(PoolClosed(self.name))
        else:
            self._waiters.append(waiter)
        return waiter

    def try_acquire(self) -> Instance | None:
        """An idle instance if there is one and nobody is waiting before us, else None."""
        if self._idle and not self._waiters:
            self.busy += 1
            return self._idle.popleft()
        return None

    async def acquire(self, timeout: float) -> Instance:
        """An instance, waiting at most ``timeout`` seconds for one to be released.

        Raises:
            PoolBusy: None was free in time.
            PoolClosed: The pool is closed.
        """
        if self._closed:
            raise PoolClosed(self.name)
        vm = self.try_acquire()
        if vm is not None:
            return vm
        if timeout <= 0:
            raise PoolBusy(self.name)
        waiter: asyncio.Future[Instance] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            # wait_for returns the instance even when the timeout (or a cancellation) comes
            # after release() handed it over; it cancels the waiter otherwise.
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise PoolBusy(self.name) from None
        finally:
            if not waiter.done():
                waiter.cancel()
            if waiter.cancelled():
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def release(self, vm: Instance) -> None:
        """Gives ``vm`` back after a call (replacing it if it became unusable)."""
        self.busy -= 1
        if self._closed:
            return
        if not vm.usable:
            log.error("tenant %s: an instance became unusable; replacing it", self.name)
            self.missing += 1
            task = asyncio.get_running_loop().create_task(self._replace())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self._put(vm)

    def _put(self, vm: Instance) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(vm)
                self.busy += 1
                return
        self._idle.append(vm)

    async def _replace(self) -> None:
        delay = self.RETRY_DELAY
        while not self._closed:
            try:
                vm = await anyio.to_thread.run_sync(self._factory)
            except Exception as e:
                log.error("tenant %s: cannot make a new instance (retrying in %.1f s): %s", self.name, delay, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.RETRY_MAX)
                continue
            if self._closed:
                return
            self.missing -= 1
            self.replaced += 1
            if self._on_replace is not None:
                self._on_replace()
            self._put(vm)
            return

    def close(self) -> None:
        """Drops the idle instances and fails the waiting requests."""
        self._closed = True
        self._idle.clear()
        for task in self._tasks:
            task.cancel()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(PoolClosed(self.name))

    def __repr__(self) -> str:
        return f"<Pool {self.name} size={self.size} idle={self.idle} busy={self.busy} missing={self.missing}>"
