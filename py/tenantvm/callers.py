"""The ways a tenant call runs in the server, behind one shape: :class:`Caller`.

=====================  ==============================================================
:class:`InlineCaller`   on the event loop's thread (short time limits; a hello world takes
                        tens of microseconds, less than any hand-off to another thread)
:class:`BatchedCaller`  on the event loop, with the other requests for the same ephemeral
                        tenant that became ready in the same loop turn (:mod:`tenantvm.batcher`)
:class:`ThreadCaller`   on an ``anyio`` worker thread (an inline tenant whose call timed out
                        on the loop, for a while)
:class:`VcpuCaller`     on the instance's own vCPU thread (:mod:`tenantvm.aio`; long limits)
=====================  ==============================================================

A caller is started with :meth:`Caller.start`: a call that can run at once (on the loop, an
instance free) runs before ``start`` returns, with no coroutine made or awaited; otherwise
``start`` returns an awaitable for the result.

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
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio

from tenantvm.batcher import PROBE_EVERY, Batcher, NoInstance, RawResponse, native_call
from tenantvm.pool import Pool
from tenantvm.sandbox import restrict_current_thread
from tenantvm.tenant import NativeArgs, Request, TenantVM, with_native_args

__all__ = [
    "SECCOMP_ENV",
    "BatchedCaller",
    "Caller",
    "GuestAnswer",
    "InlineCaller",
    "ThreadCaller",
    "VcpuCaller",
    "restrict_once",
]

#: The guest's ``(status, headers, body)``, not validated yet.
GuestAnswer = tuple[int, list[tuple[bytes, bytes]], bytes]
#: What :meth:`Caller.start` returns: the native call's raw response (a tuple whose first three
#: items are the guest's answer) when the call ran at once, else an awaitable of the answer.
Started = RawResponse | GuestAnswer | Awaitable[GuestAnswer]

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
        return self._queued(request)

    async def _queued(self, request: NativeArgs) -> GuestAnswer:
        try:
            status, headers, body, *_ = await self.batcher.queue(request)
        except NoInstance:
            return await self.fallback.call(request)
        return status, headers, body
