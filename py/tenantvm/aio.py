"""Instances for asyncio: each on a vCPU thread of its own, so the event loop never runs guests.

>>> queue = CompletionQueue(asyncio.get_running_loop())  # doctest: +SKIP
>>> vm = AsyncTenantVM(tenant, queue)  # doctest: +SKIP
>>> (await vm.call(Request())).body  # doctest: +SKIP
b'Hello World!'

A call is handed to the instance's thread without blocking; the result comes back through one
eventfd per event loop (the :class:`CompletionQueue`), which the loop watches like a socket and
drains in one go however many calls finished.  The loop pays a few microseconds per call; the
VM exits, the guest's run and the reset happen on the vCPU thread, on another core.  That
thread restricts itself with tenantvm's seccomp filter (see :mod:`tenantvm.sandbox`) before it
creates its VM.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterable
from typing import Any

from tenantvm import _native
from tenantvm.tenant import InstanceStats, NativeArgs, Request, Response, Tenant, TenantVM, with_native_args

__all__ = ["AsyncTenantVM", "CompletionQueue"]

#: Set to 0 to create vCPU threads without the seccomp filter (debugging only).
SECCOMP_ENV = "TENANTVM_SECCOMP"

RawResult = tuple[int, list[tuple[bytes, bytes]], bytes, bytes, bytes, int]


class CompletionQueue:
    """Where the calls of every :class:`AsyncTenantVM` of one event loop complete."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """Starts watching the queue's eventfd on ``loop``."""
        self._loop = loop
        self._native = _native.Completions()
        self._futures: dict[int, asyncio.Future[RawResult]] = {}
        self._tokens = itertools.count()
        loop.add_reader(self._native.fileno(), self._on_ready)

    def _expect(self) -> tuple[int, asyncio.Future[RawResult]]:
        token = next(self._tokens)
        future: asyncio.Future[RawResult] = self._loop.create_future()
        self._futures[token] = future
        return token, future

    def _forget(self, token: int) -> None:
        self._futures.pop(token, None)

    def _on_ready(self) -> None:
        futures = self._futures
        for token, ok, payload in self._native.drain():
            future = futures.pop(token, None)
            if future is None or future.done():
                continue
            if ok:
                future.set_result(payload)
            else:
                future.set_exception(payload)

    def close(self) -> None:
        """Stops watching the eventfd; pending calls never complete."""
        self._loop.remove_reader(self._native.fileno())
        for future in self._futures.values():
            future.cancel()
        self._futures.clear()


class AsyncTenantVM:
    """A tenant instance on its own vCPU thread, called with ``await``.

    One call at a time per instance (a pool hands it out); a call that is cancelled keeps
    running to its end on the vCPU thread — :meth:`call_raw`'s future says when.
    """

    def __init__(self, tenant: Tenant, queue: CompletionQueue, *, sandbox: bool | None = None) -> None:
        """Creates the instance on a new vCPU thread (blocking; GIL released meanwhile)."""
        if sandbox is None:
            sandbox = os.environ.get(SECCOMP_ENV, "1") != "0"
        self.tenant = tenant
        self._queue = queue
        self._native: Any = tenant._native.worker(queue._native, sandbox)

    def call_raw(
        self, method: bytes, path: bytes, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> asyncio.Future[RawResult]:
        """Submits a call without waiting for it.

        Returns a future of ``(status, headers, body, stdout, stderr, exits)``, which fails with
        the same exceptions as :meth:`TenantVM.call`.  Must be called on the queue's event loop.
        """
        token, future = self._queue._expect()
        try:
            self._native.submit(token, method, path, query, headers, body)
        except BaseException:
            self._queue._forget(token)
            raise
        return future

    def call_batch_raw(
        self, requests: list[NativeArgs], budget: float | None = None
    ) -> asyncio.Future[list[RawResult | Exception]]:
        """Submits ``requests`` as one batch (see :meth:`TenantVM.call_batch`) without waiting.

        Returns a future of the list :meth:`TenantVM.call_batch` would return in the native
        form: per request served, its ``(status, headers, body, stdout, stderr, exits)`` or the
        exception its call would have raised; shorter than ``requests`` when ``budget``
        (seconds) ran out (the rest did not run).  Must be called on the queue's event loop.
        Raises TypeError (nothing submitted) when a request holds a value the native side does
        not take as it is.
        """
        token, future = self._queue._expect()
        try:
            self._native.submit_batch(token, requests, budget)
        except BaseException:
            self._queue._forget(token)
            raise
        return future  # type: ignore[return-value]

    async def call(self, request: Request) -> Response:
        """Serves ``request`` (see :meth:`TenantVM.call` for the exceptions)."""
        future = with_native_args(lambda args: self.call_raw(*args(request)))
        return Response(*await future)

    @property
    def usable(self) -> bool:
        """False once a host-side failure made the instance unusable."""
        return bool(self._native.usable)

    def prime(self, requests: Iterable[Request]) -> None:
        """See :meth:`TenantVM.prime` (blocking, on the vCPU thread, after the queued calls)."""
        with_native_args(lambda args: self._native.prime([args(r) for r in requests]))

    def reset(self) -> None:
        """Restores the snapshot (blocking until the queued calls are done)."""
        self._native.reset()

    def stats(self) -> InstanceStats:
        """The instance's counters (blocking until the queued calls are done)."""
        return TenantVM._stats_from(self._native.stats())

    def __repr__(self) -> str:
        return f"<AsyncTenantVM of {self.tenant!r}>"
