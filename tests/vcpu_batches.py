"""Serving through the server's vCPU-thread combiner (tenantvm.callers.VcpuBatchedCaller) from
synchronous tests: the isolation properties run against batched serving with it.

:class:`BatchedServing` keeps an event loop on a thread of its own, with a pool of
:class:`~tenantvm.aio.AsyncTenantVM` instances (each on its vCPU thread) and the caller the
server gives a runtime tenant; :meth:`BatchedServing.serve` hands a list of requests to it in
one loop turn, so that they queue together and an instance serves them as one batch (``sizes``
records each job's size as the server's ``tenantvm_batch_size`` does).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from typing import Any

from tenantvm import Request, Response, Tenant
from tenantvm.aio import AsyncTenantVM, CompletionQueue
from tenantvm.callers import VcpuBatchedCaller
from tenantvm.pool import Pool


class BatchedServing:
    """A pool of ``size`` instances of ``tenant`` served by the combiner (call :meth:`close`)."""

    def __init__(
        self, tenant: Tenant, size: int = 1, budget: float = 1.0, queue_timeout: float = 60.0, **kwargs: Any
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="batched-serving", daemon=True)
        self.thread.start()
        #: Requests served by each job of a vCPU thread, in order.
        self.sizes: list[int] = []

        async def setup() -> tuple[CompletionQueue, Pool, VcpuBatchedCaller]:
            queue = CompletionQueue(asyncio.get_running_loop())
            pool = Pool("t", lambda: AsyncTenantVM(tenant, queue), size)
            caller = VcpuBatchedCaller(pool, queue_timeout, lambda n: None, budget, self.sizes.append, **kwargs)
            return queue, pool, caller

        self.queue, self.pool, self.caller = self.run(setup())

    def run(self, coro: Any) -> Any:
        """Runs ``coro`` on the serving loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=600)

    def serve(self, requests: Iterable[Request]) -> list[Response | BaseException]:
        """The answers to ``requests``, all queued in one loop turn (an exception per failure)."""

        async def all_at_once() -> list[Any]:
            calls = [self.caller.call(r._native_args()) for r in requests]
            return await asyncio.gather(*calls, return_exceptions=True)

        return [r if isinstance(r, BaseException) else Response(*r) for r in self.run(all_at_once())]

    def stats(self) -> list[Any]:
        """Every idle instance's counters."""

        async def idle() -> list[Any]:
            return [vm.stats() for vm in self.pool._idle]

        return self.run(idle())  # type: ignore[no-any-return]

    def close(self) -> None:
        """Closes the pool and the completion queue, and stops the loop."""

        async def down() -> None:
            self.pool.close()
            self.queue.close()

        self.run(down())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()
