"""Inline calls of an ephemeral tenant gathered into batches.

Under load, several requests for the same tenant become ready in one turn of the event loop.
Run one by one, each costs a VM entry and exit (~25 µs on PVM hosts) on the loop's thread; a
:class:`Batcher` collects those that arrive in the same turn and runs them as one
:meth:`TenantVM.call_batch` (one exit for the lot when they make no host system calls).  While
requests come one at a time they run at once (waiting a turn would only add latency).

A batch runs on the event loop, like any inline call, so it is bounded: it stops starting
requests once ``budget`` seconds have passed (the rest go into the next batch), and inline
tenants have short time limits (see ``docs/http.md``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from tenantvm import _native
from tenantvm.errors import HostError
from tenantvm.pool import Pool
from tenantvm.tenant import NativeArgs, Request, TenantVM

#: A served request as the native calls return it: ``(status, headers, body, stdout, stderr,
#: exits)``.
RawResponse = tuple[int, list[tuple[bytes, bytes]], bytes, bytes, bytes, int]

#: Most requests per batch (the VMM's limit).
MAX_BATCH: int = _native.MAX_BATCH
#: While batches are lone, one request in this many still waits a turn for company.
PROBE_EVERY = 8


class NoInstance(Exception):
    """Nothing ran: the caller takes the ordinary path.

    No instance was free, or the tenant's calls may no longer run on the event loop.
    """


class Batcher:
    """Runs the inline calls of one ephemeral tenant in batches, one batch per loop turn."""

    def __init__(
        self,
        pool: Pool,
        budget: float,
        before: Callable[[], None] = lambda: None,
        after: Callable[[int], None] = lambda n: None,
        allowed: Callable[[], bool] = lambda: True,
        fallback: Callable[[NativeArgs], Awaitable[Any]] | None = None,
    ) -> None:
        """A batcher drawing instances from ``pool``.

        Args:
            pool: The tenant's instances (:class:`TenantVM`).
            budget: Seconds after which a batch starts no more requests.
            before: Called on the loop thread before each batch (the server installs its
                seccomp filter and counts the instance busy there).
            after: Called after each batch with the number of requests it served (also
                when the host failed).
            allowed: Whether calls may still run on the loop; when it turns false (the
                server moves a tenant that timed out to threads), queued requests get
                :class:`NoInstance` and take the ordinary path.
            fallback: That ordinary path for queued requests (:meth:`enqueue`): what serves
                them when the batch finds no instance free or calls no longer allowed on the
                loop.  Without it their futures fail with :class:`NoInstance`.
        """
        self._pool = pool
        self._budget = budget
        self._before = before
        self._after = after
        self._allowed = allowed
        self._fallback = fallback
        self._pending: list[tuple[NativeArgs, asyncio.Future[Any]]] = []
        self._scheduled = False
        self._crowded = False
        #: Requests that found batches lone (every PROBE_EVERY-th of them waits a turn).
        self.lone_calls = 0
        # Whether a request ran at once in this loop turn: another one in the same turn has
        # company, so it waits for the turn's batch.
        self._ran_in_turn = False

    def lone(self) -> bool:
        """Whether a request runs at once (the last batch was lone, none is queued, none ran this turn)."""
        return not self._pending and not self._crowded and not self._ran_in_turn

    def _turn_over(self) -> None:
        self._ran_in_turn = False

    async def call(self, request: NativeArgs) -> RawResponse:
        """Serves ``request`` in the next batch, or at once when batches have been lone.

        ``request`` is in the native calls' form, ``(method, path, query, headers, body)``, all
        bytes (what the server builds; see :meth:`tenantvm.Request._native_args`).

        Waiting a loop turn for company costs a lone request more than batching saves, so
        while the last batch held one request, requests run at once, and only every
        :data:`PROBE_EVERY`-th waits a turn to see whether load has come back.  A request
        that finds another one ran at once in the same loop turn has company: it waits for
        the turn's batch (under load, a turn's requests cost two exits, not one each).

        Raises:
            NoInstance: No instance was free (nothing ran).
            TenantVMError: What :meth:`TenantVM.call` would raise.
        """
        if self.lone():
            self.lone_calls += 1
            if self.lone_calls % PROBE_EVERY:
                return self.call_now(request)
        return await self.queue(request)

    async def queue(self, request: NativeArgs) -> RawResponse:
        """Serves ``request`` in the next batch (see :meth:`call`)."""
        return await self.enqueue(request)  # type: ignore[no-any-return]

    def enqueue(self, request: NativeArgs) -> asyncio.Future[Any]:
        """Queues ``request`` for the next batch; its future gives the raw response.

        Or the fallback's answer (see ``fallback``), or raises what the call raised.  The
        server awaits this future itself (no coroutine per request: under load every request
        of a batch takes this path).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((request, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def call_now(self, request: NativeArgs) -> RawResponse:
        """Serves ``request`` at once, alone (raises NoInstance when no instance is free)."""
        vm: TenantVM | None = self._pool.try_acquire() if self._allowed() else None  # type: ignore[assignment]
        if vm is None:
            raise NoInstance
        if not self._ran_in_turn:
            self._ran_in_turn = True
            asyncio.get_running_loop().call_soon(self._turn_over)
        served = 0
        try:
            self._before()
            served = 1
            return native_call(vm, request)
        finally:
            self._pool.release(vm)
            self._after(served)

    def _flush(self) -> None:
        self._scheduled = False
        batch = [(r, f) for r, f in self._pending[:MAX_BATCH] if not f.cancelled()]
        del self._pending[:MAX_BATCH]
        if self._pending:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        if not batch:
            return
        self._crowded = len(batch) > 1
        vm: TenantVM | None = self._pool.try_acquire() if self._allowed() else None  # type: ignore[assignment]
        if vm is None:
            for request, future in batch:
                if not future.done():
                    self._fall_back(request, future)
            return
        results: list[RawResponse | Exception] = []
        try:
            self._before()
            results = native_call_batch(vm, [r for r, _ in batch], self._budget)
        except Exception as e:  # the host failed: every request of the batch fails with it
            results = [e if isinstance(e, HostError) else HostError(repr(e))] * len(batch)
        finally:
            self._pool.release(vm)
            self._after(len(results))
        for (_, future), result in zip(batch[: len(results)], results, strict=True):
            if not future.done():
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        # Requests the budget left unstarted go first in the next batch.
        rest = batch[len(results) :]
        if rest:
            self._pending[:0] = rest
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    def _fall_back(self, request: NativeArgs, future: asyncio.Future[Any]) -> None:
        """Settles ``future`` with what the fallback makes of ``request`` (or NoInstance)."""
        if self._fallback is None:
            future.set_exception(NoInstance())
            return
        task = asyncio.ensure_future(self._fallback(request))

        def settle(done: asyncio.Future[Any]) -> None:
            if done.cancelled():
                if not future.done():
                    future.cancel()
            elif future.done():
                done.exception()  # retrieved: nobody waits for it any more
            elif done.exception() is not None:
                future.set_exception(done.exception())  # type: ignore[arg-type]
            else:
                future.set_result(done.result())

        task.add_done_callback(settle)
        # The client went away: the fallback (waiting for an instance) need not go on.
        future.add_done_callback(lambda f: task.cancel() if f.cancelled() else None)


def native_call(vm: TenantVM, request: NativeArgs) -> RawResponse:
    """:meth:`TenantVM.call` without the Request and Response objects (the server's hot path)."""
    try:
        return vm._native.call(*request)  # type: ignore[no-any-return]
    except TypeError:  # a value the native side does not take as it is: the strict conversion
        r = vm.call(Request(*request))
        return r.status, r.headers, r.body, r.stdout, r.stderr, r.exits


def native_call_batch(vm: TenantVM, requests: list[NativeArgs], budget: float) -> list[Any]:
    """:meth:`TenantVM.call_batch` without the Request and Response objects.

    Returns a raw response or an exception per request served.
    """
    try:
        return list(vm._native.call_batch(requests, budget))
    except TypeError:
        out: list[Any] = []
        for r in vm.call_batch([Request(*args) for args in requests], budget):
            out.append(r if isinstance(r, Exception) else (r.status, r.headers, r.body, r.stdout, r.stderr, r.exits))
        return out
