"""The ways a tenant call runs in the server, behind one shape: :class:`Caller`.

=====================  ==============================================================
:class:`InlineCaller`   on the event loop's thread (short time limits; a hello world takes
                        tens of microseconds, less than any hand-off to another thread)
:class:`BatchedCaller`  on the event loop, with the other requests for the same ephemeral
                        tenant that became ready in the same loop turn (:mod:`tenantvm.batcher`)
:class:`ThreadCaller`   on an ``anyio`` worker thread (an inline tenant whose call timed out
                        on the loop, for a while)
:class:`VcpuCaller`     on the instance's own vCPU thread (:mod:`tenantvm.aio`; long limits)
:class:`VcpuBatchedCaller`  on a vCPU thread, with the other requests for the same ephemeral
                        tenant that were waiting for an instance (one VM entry for the lot)
=====================  ==============================================================

A caller is started with :meth:`Caller.start`: a call that can run at once (on the loop, an
instance free) runs before ``start`` returns, with no coroutine made or awaited; otherwise
``start`` returns an awaitable for the result (a tuple whose first three items are the
guest's answer).

Every caller takes a request in the native calls' form (``(method, path, query, headers,
body)``, all bytes: no :class:`~tenantvm.Request` or :class:`~tenantvm.Response` objects on
the hot path), takes an instance from the tenant's pool (waiting at most ``queue_timeout``),
runs the request, gives the instance back (already reset by the VMM, also after a failure),
and returns the guest's ``(status, headers, body)`` or raises what the call raised:
:class:`~tenantvm.pool.PoolBusy` when no instance became free in time.  Every thread that runs
a guest restricts itself with tenantvm's seccomp filter first (:mod:`tenantvm.sandbox`).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio

from tenantvm.batcher import MAX_BATCH, PROBE_EVERY, Batcher, NoInstance, RawResponse, native_call
from tenantvm.pool import Pool, PoolBusy, PoolClosed
from tenantvm.sandbox import restrict_current_thread
from tenantvm.tenant import NativeArgs, Request, TenantVM, with_native_args

__all__ = [
    "SECCOMP_ENV",
    "BatchedCaller",
    "Caller",
    "GuestAnswer",
    "InlineCaller",
    "ThreadCaller",
    "VcpuBatchedCaller",
    "VcpuCaller",
    "restrict_once",
]

#: The guest's ``(status, headers, body)``, not validated yet.
GuestAnswer = tuple[int, list[tuple[bytes, bytes]], bytes]
#: What :meth:`Caller.start` returns: the native call's raw response (a tuple whose first three
#: items are the guest's answer) when the call ran at once, else an awaitable of such a tuple
#: (a raw response, or just the answer).
Started = RawResponse | GuestAnswer | Awaitable[RawResponse | GuestAnswer]

#: Set to 0 to run guests without the seccomp filter on their threads (debugging only).
SECCOMP_ENV = "TENANTVM_SECCOMP"
# Per thread, not per thread ident: an ident is reused by a later thread, which must install
# the filter itself.
_sandboxed = threading.local()


def restrict_once() -> None:
    """Installs the seccomp filter on the calling thread, the first time it runs a guest."""
    if not getattr(_sandboxed, "done", False):
        if os.environ.get(SECCOMP_ENV, "1") != "0":
            restrict_current_thread()
        _sandboxed.done = True


def _guarded_call(vm: TenantVM, request: NativeArgs) -> RawResponse:
    """A guest call on a thread that is (from now on) restricted by the seccomp filter."""
    restrict_once()
    return native_call(vm, request)


class Caller(Protocol):
    """Runs one request of one tenant on an instance of its pool."""

    #: Whether the call runs on the event loop's thread (a timeout there stalled the loop).
    inline: bool

    async def call(self, request: NativeArgs) -> GuestAnswer:
        """The guest's answer to ``request``; raises PoolBusy, PoolClosed or the call's error."""
        ...

    def start(self, request: NativeArgs) -> Started:
        """Runs ``request`` at once if it can, else returns an awaitable of :meth:`call`'s result.

        At once: returns the native call's raw response (a tuple), or raises what the call raised.
        """
        ...


class _Pooled:
    """A caller drawing instances from ``pool``; ``busy(±1)`` tracks instances in use."""

    inline = False

    def __init__(self, pool: Pool, queue_timeout: float, busy: Callable[[int], None]) -> None:
        self.pool = pool
        self.queue_timeout = queue_timeout
        self.busy = busy

    async def _acquire(self) -> Any:
        vm = self.pool.try_acquire()
        if vm is None:
            vm = await self.pool.acquire(self.queue_timeout)
        self.busy(1)
        return vm

    def _release(self, vm: Any) -> None:
        self.busy(-1)
        self.pool.release(vm)

    def start(self, request: NativeArgs) -> Started:
        """See :class:`Caller` (never at once: the call runs on another thread)."""
        return self.call(request)  # type: ignore[attr-defined,no-any-return]


class InlineCaller(_Pooled):
    """The call runs on the event loop's thread, which waits for it (GIL released).

    It starts and ends within one loop turn, so it is not counted in ``tenantvm_pool_busy``.
    """

    inline = True

    async def call(self, request: NativeArgs) -> GuestAnswer:
        """See :class:`Caller`."""
        pool = self.pool
        vm = pool.try_acquire()
        if vm is None:
            vm = await pool.acquire(self.queue_timeout)
        try:
            status, headers, body, *_ = _guarded_call(vm, request)
        finally:
            pool.release(vm)
        return status, headers, body

    def start(self, request: NativeArgs) -> Started:
        """See :class:`Caller`: at once when an instance is free."""
        pool = self.pool
        vm = pool.try_acquire()
        if vm is None:
            return self.call(request)
        try:
            return _guarded_call(vm, request)
        finally:
            pool.release(vm)


class ThreadCaller(_Pooled):
    """The call runs on an ``anyio`` worker thread (at most ``pool_size`` at a time)."""

    def __init__(self, pool: Pool, queue_timeout: float, busy: Callable[[int], None]) -> None:
        super().__init__(pool, queue_timeout, busy)
        self.limiter = anyio.CapacityLimiter(pool.size)

    async def call(self, request: NativeArgs) -> GuestAnswer:
        """See :class:`Caller`."""
        vm = await self._acquire()
        try:
            status, headers, body, *_ = await anyio.to_thread.run_sync(_guarded_call, vm, request, limiter=self.limiter)
        finally:
            self._release(vm)
        return status, headers, body


class VcpuCaller(_Pooled):
    """The call runs on the instance's own vCPU thread (:class:`tenantvm.aio.AsyncTenantVM`).

    The loop only waits.  If the waiting task is cancelled (the client went away), the call
    still runs to its end, and the instance goes back to the pool only then.
    """

    async def call(self, request: NativeArgs) -> GuestAnswer:
        """See :class:`Caller`."""
        vm = await self._acquire()
        try:
            try:
                future = vm.call_raw(*request)
            except TypeError:  # a value the native side does not take as it is
                future = with_native_args(lambda args: vm.call_raw(*args(Request(*request))))
        except BaseException:
            self._release(vm)
            raise
        try:
            status, headers, body, *_ = await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(lambda f: (f.cancelled() or f.exception(), self._release(vm)))
            raise
        except BaseException:
            self._release(vm)
            raise
        self._release(vm)
        return status, headers, body


#: A request waiting in a :class:`VcpuBatchedCaller`: the request, its result's future, and
#: the loop time after which it fails with PoolBusy if no instance took it.
_Waiting = tuple[NativeArgs, "asyncio.Future[RawResponse]", float]


class VcpuBatchedCaller(_Pooled):
    """The call runs on a vCPU thread, batched with the requests that wait for an instance.

    A combiner: requests join a queue, and an instance that is free (at the end of the loop
    turn the request arrived in) or comes back from a call takes every queued request, up to
    ``max_batch``, as one job for its vCPU thread (:meth:`AsyncTenantVM.call_batch_raw`,
    :meth:`TenantVM.call_batch`: the guest kernel resets memory between them, one VM entry
    for the lot when they make no host calls).  The loop only queues and hands out; the
    guests run on the vCPU threads, without the GIL.  Each request keeps its own time limit;
    a batch starts no request after ``budget`` seconds (the rest go back to the front of the
    queue, for the next instance free), so a request that runs to its limit holds up at most
    the one running.  A request that waits longer than ``queue_timeout`` for an instance
    fails with PoolBusy, as with :meth:`Pool.acquire`; one whose waiting task is cancelled
    before its batch starts does not run, and a batch under way always runs to its end (the
    instance goes back to the pool only then).

    ``after(n)`` is called with the number of requests each job served (1 for a lone call).
    """

    #: How late (s) a request past its wait limit may be failed (expiries are looked at in one
    #: go, not one timer each).
    EXPIRY_SLACK = 0.005

    def __init__(
        self,
        pool: Pool,
        queue_timeout: float,
        busy: Callable[[int], None],
        budget: float,
        after: Callable[[int], None] = lambda n: None,
        max_batch: int = MAX_BATCH,
    ) -> None:
        super().__init__(pool, queue_timeout, busy)
        self.budget = budget
        self.max_batch = max_batch
        self._after = after
        self._queue: deque[_Waiting] = deque()
        self._scheduled = False
        # The pool waiter that takes the next instance released while requests are queued.
        self._claim: asyncio.Future[Any] | None = None
        self._expiry: asyncio.TimerHandle | None = None

    @property
    def queued(self) -> int:
        """Requests waiting for an instance (some may have been cancelled)."""
        return len(self._queue)

    async def call(self, request: NativeArgs) -> GuestAnswer:
        """See :class:`Caller`."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RawResponse] = loop.create_future()
        self._queue.append((request, future, loop.time() + self.queue_timeout))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        status, headers, body, *_ = await future
        return status, headers, body

    def _flush(self) -> None:
        """Hands the queued requests to the free instances, a batch each (end of a loop turn)."""
        self._scheduled = False
        pool, queue = self.pool, self._queue
        while queue:
            if pool.closed:
                self._fail_all(PoolClosed(pool.name))
                return
            vm = pool.try_acquire()
            if vm is None:
                self._wait_for_instance()
                return
            self.busy(1)
            self._dispatch(vm)

    def _wait_for_instance(self) -> None:
        """Queued requests wait: the next instance released takes them; expiries are armed."""
        if self._claim is None or self._claim.done():
            self._claim = self.pool.claim()
            self._claim.add_done_callback(self._claimed)
        if self._expiry is None and self.queue_timeout > 0:
            self._expiry = asyncio.get_running_loop().call_at(self._queue[0][2], self._expire)

    def _claimed(self, claim: asyncio.Future[Any]) -> None:
        if self._claim is claim:
            self._claim = None
        if claim.cancelled():
            return
        error = claim.exception()
        if error is not None:  # the pool was closed
            self._fail_all(error)
            return
        self.busy(1)
        self._next(claim.result())

    def _next(self, vm: Any) -> None:
        """``vm`` is free: it serves the queued requests, or goes back to the pool."""
        if self._queue and vm.usable and not self.pool.closed:
            self._dispatch(vm)
            if self._queue:
                self._flush()
        else:
            self._release(vm)
            if self._queue and not self._scheduled:
                # An unusable instance went to be replaced: the queue waits for the next one.
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    def _dispatch(self, vm: Any) -> None:
        """Submits up to ``max_batch`` queued requests to ``vm`` (acquired) as one job."""
        queue = self._queue
        batch: list[_Waiting] = []
        while queue and len(batch) < self.max_batch:
            waiting = queue.popleft()
            if not waiting[1].done():  # cancelled while waiting, or expired
                batch.append(waiting)
        if not batch:
            self._release(vm)
            return
        try:
            job = self._submit(vm, batch)
        except BaseException as e:  # nothing was submitted
            self._release(vm)
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(e)
            return
        if job is None:  # every request was refused by the strict conversion
            self._release(vm)
            return
        job.add_done_callback(lambda done: self._done(vm, batch, done))

    def _submit(self, vm: Any, batch: list[_Waiting]) -> asyncio.Future[Any] | None:
        """Submits ``batch`` (one call when it holds one request).

        A request holding a value the native side does not take as it is gets the strict
        conversion; one that has none fails alone (ConfigError) and is left out of ``batch``
        (which is edited in place); None when no request is left.
        """
        try:
            if len(batch) == 1:
                return vm.call_raw(*batch[0][0])  # type: ignore[no-any-return]
            return vm.call_batch_raw([r for r, _, _ in batch], self.budget)  # type: ignore[no-any-return]
        except TypeError:
            pass
        kept: list[_Waiting] = []
        for request, future, deadline in batch:
            try:
                kept.append((Request(*request)._strict_native_args(), future, deadline))
            except Exception as e:
                future.set_exception(e)
        batch[:] = kept
        if not kept:
            return None
        if len(kept) == 1:
            return vm.call_raw(*kept[0][0])  # type: ignore[no-any-return]
        return vm.call_batch_raw([r for r, _, _ in kept], self.budget)  # type: ignore[no-any-return]

    def _done(self, vm: Any, batch: list[_Waiting], job: asyncio.Future[Any]) -> None:
        """A job of ``vm`` ended: its requests get their results, the unserved ones queue again."""
        if job.cancelled():  # the completion queue was closed (the loop is stopping)
            for _, future, _ in batch:
                future.cancel()
            self._release(vm)
            return
        error = job.exception()
        results: list[Any]
        if len(batch) == 1:
            results = [error if error is not None else job.result()]
        else:
            results = [error] * len(batch) if error is not None else job.result()
        served = len(results)
        self._after(served)
        for (_, future, _), result in zip(batch, results, strict=False):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        # Requests the budget left unstarted go first, with a new wait limit (they waited for
        # a batch that ran long, not for an instance).
        if served < len(batch):
            deadline = asyncio.get_running_loop().time() + self.queue_timeout
            for request, future, _ in reversed(batch[served:]):
                self._queue.appendleft((request, future, deadline))
        self._next(vm)

    def _expire(self) -> None:
        """Fails the requests that waited longer than ``queue_timeout`` (PoolBusy)."""
        self._expiry = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        kept: deque[_Waiting] = deque()
        for waiting in self._queue:
            future = waiting[1]
            if future.done():
                continue
            if waiting[2] <= now:
                future.set_exception(PoolBusy(self.pool.name))
            else:
                kept.append(waiting)
        self._queue = kept
        if kept:
            soonest = min(w[2] for w in kept)
            self._expiry = loop.call_at(max(soonest, now + self.EXPIRY_SLACK), self._expire)
        elif self._claim is not None:
            self._claim.cancel()  # nothing to serve: give the turn back

    def _fail_all(self, error: BaseException) -> None:
        queue, self._queue = self._queue, deque()
        for _, future, _ in queue:
            if not future.done():
                future.set_exception(error)


class BatchedCaller:
    """The call joins the batch of its loop turn (:class:`tenantvm.batcher.Batcher`).

    When the batcher has no free instance, or the tenant may no longer run on the loop, the
    request takes ``fallback`` (which waits for an instance).
    """

    inline = True

    def __init__(self, batcher: Batcher, fallback: Caller) -> None:
        self.batcher = batcher
        self.fallback = fallback

    async def call(self, request: NativeArgs) -> GuestAnswer:
        """See :class:`Caller`."""
        try:
            status, headers, body, *_ = await self.batcher.call(request)
        except NoInstance:
            return await self.fallback.call(request)
        return status, headers, body

    def start(self, request: NativeArgs) -> Started:
        """See :class:`Caller`: at once while batches are lone (see :meth:`Batcher.call`)."""
        batcher = self.batcher
        if batcher.lone():
            batcher.lone_calls += 1
            if batcher.lone_calls % PROBE_EVERY:
                try:
                    return batcher.call_now(request)
                except NoInstance:
                    return self.fallback.start(request)
        # The batcher's own future (its fallback is this caller's): no coroutine per request.
        return batcher.enqueue(request)
