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
=============================================  =============================================
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE", "Metrics", "multiprocess_dir"]

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
            "Requests per batch of inline calls (one VM entry for the lot).",
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
        self.workers = Gauge("tenantvm_workers", "Live worker processes.", multiprocess_mode="livesum", registry=reg)

    def render(self) -> bytes:
        """The metrics of the whole server (every worker), in Prometheus text format."""
        if self._registry is not None:
            return generate_latest(self._registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self._dir)
        return generate_latest(registry)

    def process_exit(self) -> None:
        """Removes this process's live gauges (call when the worker stops)."""
        if self._dir:
            multiprocess.mark_process_dead(os.getpid(), self._dir)
