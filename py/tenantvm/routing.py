"""HTTP routing: where a request goes, whichever interface (ASGI or RSGI) brought it.

Two decisions, in this order:

1. A path under the reserved prefix (``/_tenantvm``, matched on the *decoded* path, so
   ``/%5Ftenantvm/...`` is reserved too) is the server's, for every Host; no tenant sees it:

   ========================  ====================================================
   ``GET /_tenantvm/``         the dashboard (:mod:`tenantvm.dashboard`)
   ``GET /_tenantvm/stats``    the dashboard's figures, JSON (:mod:`tenantvm.stats`)
   ``GET /_tenantvm/metrics``  Prometheus metrics of the whole server (all workers)
   ``GET /_tenantvm/health``   this worker's pools (JSON; 503 when a pool is empty)
   ``PUT /_tenantvm/tenants/NAME``  the admin API (:mod:`tenantvm.admin`; 404 when off)
   another method on those     405
   anything else under it      404
   ========================  ====================================================

2. Every other request goes to the tenant whose ``hosts`` list its ``Host`` (without port,
   case-insensitively), else to ``[server] default_tenant``, else it gets a 404
   (:class:`HostRouter`).
"""

from __future__ import annotations

from enum import Enum
from typing import Generic, TypeVar

from tenantvm.config import normalize_host

__all__ = [
    "RESERVED_PREFIX",
    "ROUTE_CACHE_SIZE",
    "TENANTS_PREFIX",
    "HostRouter",
    "Reserved",
    "is_reserved",
    "reserved_route",
]

#: Paths under this prefix belong to the server, for every host.
RESERVED_PREFIX = "/_tenantvm"
#: The admin API's path of a tenant: this + its name.
TENANTS_PREFIX = RESERVED_PREFIX + "/tenants/"
#: Most raw Host values whose tenant the router remembers.
ROUTE_CACHE_SIZE = 4096

_T = TypeVar("_T")


class Reserved(Enum):
    """What answers a request for a reserved path."""

    METRICS = "metrics"
    HEALTH = "health"
    DASHBOARD = "dashboard"
    STATS = "stats"
    TENANT_UPDATE = "tenant_update"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    NOT_FOUND = "not_found"


_ENDPOINTS = {
    f"{RESERVED_PREFIX}/metrics": Reserved.METRICS,
    f"{RESERVED_PREFIX}/health": Reserved.HEALTH,
    f"{RESERVED_PREFIX}/": Reserved.DASHBOARD,
    f"{RESERVED_PREFIX}/stats": Reserved.STATS,
}


def is_reserved(path: str) -> bool:
    """Whether the decoded ``path`` is under the reserved prefix (or is the prefix)."""
    return path.startswith(RESERVED_PREFIX) and (len(path) == len(RESERVED_PREFIX) or path[len(RESERVED_PREFIX)] == "/")


def reserved_route(method: str, path: str) -> Reserved:
    """What answers ``method path``, a reserved path."""
    endpoint = _ENDPOINTS.get(path)
    if endpoint is None:
        if path.startswith(TENANTS_PREFIX) and "/" not in path[len(TENANTS_PREFIX) :]:
            return Reserved.TENANT_UPDATE if method == "PUT" else Reserved.METHOD_NOT_ALLOWED
        return Reserved.NOT_FOUND
    if method not in ("GET", "HEAD"):
        return Reserved.METHOD_NOT_ALLOWED
    return endpoint


class HostRouter(Generic[_T]):
    """The tenant for a raw ``Host`` header value (port and case ignored), or the default.

    Clients send the port (``127.0.0.1:8080``): where a raw value went is remembered, in a
    table bounded against clients that send endless distinct values, so the normalising is
    paid once per distinct value.
    """

    def __init__(self, by_host: dict[str, _T], default: _T | None) -> None:
        """``by_host``: normalised host name -> tenant; ``default``: for every other host."""
        self._by_host = {h.encode("latin-1"): t for h, t in by_host.items()}
        self._default = default
        self._seen: dict[bytes, _T | None] = {}

    def route(self, host: bytes) -> _T | None:
        """The tenant serving ``host`` (a raw header value), else the default, else None."""
        t = self._by_host.get(host)
        if t is not None:
            return t
        seen = self._seen
        if host in seen:
            return seen[host]
        t = self._by_host.get(normalize_host(host.decode("latin-1")).encode("latin-1"), self._default)
        if len(seen) >= ROUTE_CACHE_SIZE:
            seen.clear()
        seen[host] = t
        return t

    def remembered(self) -> int:
        """How many raw values the table holds now."""
        return len(self._seen)
