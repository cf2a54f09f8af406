"""Prometheus metrics of the HTTP server, aggregated over its worker processes.

With several workers a scrape is answered by one of them, yet must describe the whole server:
the metrics use prometheus-client's multiprocess mode, in which every process writes its
values to files in ``$PROMETHEUS_MULTIPROC_DIR`` and a scrape sums the files of all of them.
That variable must be set before :mod:`prometheus_client` is first imported in the process
(``tenantvm.app`` sets it, see :mod:`tenantvm.rundir`); without it, the metrics describe this
process only.

=============================================  =============================================
``tenantvm_requests_total{tenant,status}``     requests answered, by HTTP status
``tenantvm_request_duration_seconds{tenant}``  latency histogram (whole request, in the app)
``tenantvm_resets_total{tenant}``              resets of an instance to the snapshot
``tenantvm_guest_errors_total{tenant,error}``  failed calls: ``timeout``, ``fault``,
                                               ``no_response``, ``response_too_large``,
                                               ``out_of_memory``, ``bad_response``, ``host``
``tenantvm_rejected_total{tenant,reason}``     requests refused before the guest ran:
                                               ``pool_busy`` (503), ``too_large`` (413)
``tenantvm_instance_replacements_total``       instances replaced after a host-side failure
``tenantvm_pool_instances{tenant}``            instances (all workers)
``tenantvm_pool_busy{tenant}``                 instances serving a request (all workers)
``tenantvm_workers``                           live worker processes
``tenantvm_unrouted_requests_total``           requests for a host no tenant serves
``tenantvm_tenant_version{tenant}``            the version each tenant serves: 1 at start,
                                               +1 per reload that changed it (max of workers)
``tenantvm_reloads_total{result}``             reloads per worker: ``ok``, ``invalid`` (the
                                               tenants file), ``failed`` (a tenant's boot)
=============================================  =============================================
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE", "LoopBuffer", "Metrics", "multiprocess_dir"]

#: Content type of :meth:`Metrics.render`.
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Latency buckets (s): from tens of microseconds (an in-VM hello world) to the longest limits.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def multiprocess_dir() -> str | None:
    """The multiprocess directory this process writes to, or None (single-process mode)."""
    if values.ValueClass is values.MutexValue:
        return None
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")  # noqa: SIM112


class Metrics:
    """The server's metrics (one instance per process)."""

    #: Content type of :meth:`render`.
    content_type = CONTENT_TYPE

    def __init__(self) -> None:
        self._dir = multiprocess_dir()
        # In multiprocess mode the values live in files and a scrape reads them all; the
        # metric objects are not registered anywhere.  Otherwise: a private registry.
        self._registry: CollectorRegistry | None = None if self._dir else CollectorRegistry()
        reg = self._registry
        self.requests = Counter(
            "tenantvm_requests", "Requests answered, by HTTP status.", ["tenant", "status"], registry=reg
        )
        self.latency = Histogram(
            "tenantvm_request_duration_seconds",
            "Time to answer a request, from its arrival in the app to the response.",
            ["tenant"],
            buckets=BUCKETS,
            registry=reg,
        )
        self.batch_size = Histogram(
            "tenantvm_batch_size",
            "Requests per batch (one VM entry for the lot): of inline calls, or of calls on a vCPU thread.",
            ["tenant"],
            buckets=(1, 2, 4, 8, 16, 32),
            registry=reg,
        )
        self.resets = Counter("tenantvm_resets", "Resets of an instance to the snapshot.", ["tenant"], registry=reg)
        self.guest_errors = Counter(
            "tenantvm_guest_errors", "Failed calls, by kind of failure.", ["tenant", "error"], registry=reg
        )
        self.rejected = Counter(
            "tenantvm_rejected", "Requests refused before the guest ran, by reason.", ["tenant", "reason"], registry=reg
        )
        self.replacements = Counter(
            "tenantvm_instance_replacements",
            "Instances replaced after a host-side failure.",
            ["tenant"],
            registry=reg,
        )
        self.unrouted = Counter(
            "tenantvm_unrouted_requests", "Requests for a host name that no tenant serves.", registry=reg
        )
        self.pool_instances = Gauge(
            "tenantvm_pool_instances",
            "Instances in the pools of all live workers.",
            ["tenant"],
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.pool_busy = Gauge(
            "tenantvm_pool_busy",
            "Instances serving a request, in all live workers.",
            ["tenant"],
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.tenant_version = Gauge(
            "tenantvm_tenant_version",
            "Version of each tenant: 1 at start, +1 per reload that booted it again.",
            ["tenant"],
            multiprocess_mode="livemax",
            registry=reg,
        )
        self.reloads = Counter("tenantvm_reloads", "Reloads, by result.", ["result"], registry=reg)
        self.workers = Gauge("tenantvm_workers", "Live worker processes.", multiprocess_mode="livesum", registry=reg)
        #: Where the event loop records its updates (see :class:`LoopBuffer`).
        self.buffer = LoopBuffer()

    def render(self) -> bytes:
        """The metrics of the whole server (every worker), in Prometheus text format.

        Call :meth:`LoopBuffer.flush` on the loop first for this worker's latest updates.
        """
        if self._registry is not None:
            return generate_latest(self._registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self._dir)
        return generate_latest(registry)

    def families(self) -> list[Any]:
        """The metric families of the whole server (every worker), as :meth:`render` shows them."""
        if self._registry is not None:
            return list(self._registry.collect())
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self._dir)
        return list(registry.collect())

    def process_exit(self) -> None:
        """Removes this process's live gauges (call when the worker stops)."""
        if self._dir:
            multiprocess.mark_process_dead(os.getpid(), self._dir)


class _Observations:
    """Observations of one histogram child, counted per bucket until they are written."""

    __slots__ = ("bounds", "counts", "pending", "total", "values")

    def __init__(self, child: Any) -> None:
        # The child's buckets, to write a whole turn's observations with one update per
        # bucket.  Private attributes of prometheus-client: without them (another version),
        # the observations are kept and written one by one.
        self.bounds: list[float] | None = getattr(child, "_upper_bounds", None)
        if not (self.bounds and hasattr(child, "_buckets") and hasattr(child, "_sum")):
            self.bounds = None
        self.counts = [0] * len(self.bounds or ())
        self.total = 0.0
        self.values: list[float] = []
        #: Whether observations wait to be written.
        self.pending = False

    def add(self, value: float, times: int = 1) -> None:
        if self.bounds is None:
            self.values.extend([value] * times)
            return
        # Histogram.observe counts a value in the first bucket whose bound is >= it.
        self.counts[bisect_left(self.bounds, value)] += times
        self.total += value * times

    def add_each(self, values: list[float]) -> None:
        """Like :meth:`add` once per value (one call for a whole loop turn's)."""
        bounds = self.bounds
        if bounds is None:
            self.values.extend(values)
            return
        counts = self.counts
        for value in values:
            counts[bisect_left(bounds, value)] += 1
        self.total += sum(values)

    def write(self, child: Any) -> None:
        self.pending = False
        if self.bounds is None:
            for value in self.values:
                child.observe(value)
            self.values.clear()
            return
        child._sum.inc(self.total)
        self.total = 0.0
        counts = self.counts
        for i, (bucket, n) in enumerate(zip(child._buckets, counts, strict=True)):
            if n:
                bucket.inc(n)
                counts[i] = 0


class LoopBuffer:
    """Metric updates of the event loop's thread, written to the metrics once per loop turn.

    In multiprocess mode every update of a value is a locked write into a memory-mapped file
    (about 1 µs; 2 µs for a histogram observation), and a request makes five or more of them.
    The updates of one loop turn are summed here instead and written by a callback at the
    end of the turn, after the turn's responses went out: under load one write per value for
    many requests, and never on a request's own path.  A scrape may thus miss the updates of
    the turn in progress (a few hundred microseconds), never more.

    Callers with updates of their own to sum (a tenant's answered requests) register a
    function with :meth:`defer`; it runs at the start of the next flush.

    Only for the event loop's thread (not thread-safe).  Counters and histograms, and gauges
    (a gauge's net change over the turn is written, nothing when it balances).
    """

    def __init__(self) -> None:
        """An empty buffer."""
        self._counts: dict[Any, float] = {}
        # Kept from turn to turn (one per histogram child: bounded by tenants and metrics).
        self._observations: dict[Any, _Observations] = {}
        self._observed: list[tuple[Any, _Observations]] = []
        self._deferred: list[Callable[[], None]] = []
        self._scheduled = False

    def inc(self, child: Any, amount: float = 1.0) -> None:
        """Adds ``amount`` to a counter or gauge child (a gauge's amount may be negative)."""
        self._counts[child] = self._counts.get(child, 0.0) + amount
        if not self._scheduled:
            self._schedule()

    def observe(self, child: Any, value: float, times: int = 1) -> None:
        """Records ``times`` observations of ``value`` in a histogram child."""
        obs = self._observations.get(child)
        if obs is None:
            obs = self._observations[child] = _Observations(child)
        if not obs.pending:
            obs.pending = True
            self._observed.append((child, obs))
        obs.add(value, times)
        if not self._scheduled:
            self._schedule()

    def observe_each(self, child: Any, values: list[float]) -> None:
        """Records one observation of each of ``values`` in a histogram child."""
        obs = self._observations.get(child)
        if obs is None:
            obs = self._observations[child] = _Observations(child)
        if not obs.pending:
            obs.pending = True
            self._observed.append((child, obs))
        obs.add_each(values)
        if not self._scheduled:
            self._schedule()

    def defer(self, write: Callable[[], None]) -> None:
        """Calls ``write`` at the start of the next flush (it may record updates here)."""
        self._deferred.append(write)
        if not self._scheduled:
            self._schedule()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on an event loop: nothing would flush later
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Writes what was recorded (done at the end of each loop turn, and before a scrape)."""
        self._scheduled = True  # updates recorded by the deferred writers are written below
        try:
            deferred, self._deferred = self._deferred, []
            for write in deferred:
                write()
        finally:
            self._scheduled = False
        counts, self._counts = self._counts, {}
        observed, self._observed = self._observed, []
        for child, amount in counts.items():
            if amount:
                child.inc(amount)
        for child, obs in observed:
            obs.write(child)
