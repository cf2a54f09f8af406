"""``GET /_tenantvm/stats``: the server's figures per tenant, as JSON, for the dashboard.

Built from the Prometheus metrics of the whole server (every worker, :mod:`tenantvm.metrics`)
and, for what only a worker knows (when and how fast it booted a tenant), from the answering
worker.  Counters are totals since the server started: a client gets rates by taking two
snapshots and dividing the differences by the difference of their ``time``, as the dashboard
does.  ``docs/http.md`` documents every field.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tenantvm.server import TenantServer

__all__ = ["QUANTILES", "quantile", "snapshot"]

#: The latency percentiles in each tenant's figures.
QUANTILES = (0.5, 0.9, 0.99)


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a histogram's cumulative ``(upper bound, count)`` buckets.

    Interpolated linearly within the bucket holding it, as Prometheus' ``histogram_quantile``;
    a quantile in the last (``+Inf``) bucket is that bucket's lower bound.  None when empty.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def _samples(families: list[Any]) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in families:
        for s in family.samples:
            out[s.name].append((s.labels, s.value))
    return out


def snapshot(
    server: TenantServer, families: list[Any], local: dict[str, dict[str, Any]], last_reload: Any = None
) -> dict[str, Any]:
    """The stats document from the metric ``families`` and this worker's ``local`` figures.

    ``last_reload``: the answering worker's last :class:`~tenantvm.control.ReloadOutcome`.
    """
    samples = _samples(families)
    names = list(server.tenants)
    tenants: dict[str, dict[str, Any]] = {}
    for name in names:
        rt = server.tenants[name]
        tenants[name] = {
            "hosts": list(rt.config.hosts),
            "mode": rt.config.mode,
            "version": rt.version,
            "requests": 0,
            "by_status": {},
            "errors": {"timeout": 0, "fault": 0, "5xx": 0},
            "guest_errors": {},
            "rejected": {},
            "resets": 0,
            "latency": {"count": 0, "sum": 0.0, "buckets": []},
            "pool": {"instances": 0, "busy": 0, "size_per_worker": rt.config.pool_size},
            **local.get(name, {}),
        }

    def each(metric: str) -> Any:
        for labels, value in samples.get(metric, ()):
            t = tenants.get(labels.get("tenant", ""))
            if t is not None:
                yield t, labels, value

    for t, labels, value in each("tenantvm_requests_total"):
        status = labels["status"]
        t["requests"] += int(value)
        t["by_status"][status] = t["by_status"].get(status, 0) + int(value)
        if status.startswith("5"):
            t["errors"]["5xx"] += int(value)
    for t, labels, value in each("tenantvm_guest_errors_total"):
        kind = labels["error"]
        t["guest_errors"][kind] = t["guest_errors"].get(kind, 0) + int(value)
        if kind in ("timeout", "fault"):
            t["errors"][kind] += int(value)
    for t, labels, value in each("tenantvm_rejected_total"):
        t["rejected"][labels["reason"]] = t["rejected"].get(labels["reason"], 0) + int(value)
    for t, _, value in each("tenantvm_resets_total"):
        t["resets"] += int(value)
    for t, _, value in each("tenantvm_pool_instances"):
        t["pool"]["instances"] += int(value)
    for t, _, value in each("tenantvm_pool_busy"):
        t["pool"]["busy"] += int(value)
    for t, _, value in each("tenantvm_tenant_version"):
        t["version"] = max(t["version"], int(value))
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for labels, value in samples.get("tenantvm_request_duration_seconds_bucket", ()):
        if labels.get("tenant") in tenants:
            buckets[labels["tenant"]][float(labels["le"])] += value
    for t, _, value in each("tenantvm_request_duration_seconds_count"):
        t["latency"]["count"] += int(value)
    for t, _, value in each("tenantvm_request_duration_seconds_sum"):
        t["latency"]["sum"] += value
    for name, by_bound in buckets.items():
        lat = tenants[name]["latency"]
        cumulative = sorted(by_bound.items())
        lat["buckets"] = [["+Inf" if math.isinf(b) else b, int(c)] for b, c in cumulative]
        for q in QUANTILES:
            lat[f"p{round(q * 100)}"] = quantile(q, cumulative)
    reloads = {labels["result"]: int(value) for labels, value in samples.get("tenantvm_reloads_total", ())}
    workers = sum(value for _, value in samples.get("tenantvm_workers", ()))
    return {
        "time": time.time(),
        "worker": os.getpid(),
        "workers": int(workers),
        "config": str(server.config.path),
        "reloads": reloads,
        "last_reload": None
        if last_reload is None
        else {"ok": last_reload.ok, "message": last_reload.message, "ms": last_reload.ms},
        "tenants": tenants,
    }
