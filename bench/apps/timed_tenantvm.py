"""Diagnostics: ``tenantvm.app:app`` with every ``TenantVM.call`` timed (benchmarks only).

Wraps ``TenantVM.call`` to record each call's wall time and VM exits (and
``TenantVM.call_batch``: each request of a batch gets an equal share of its time and exits), and answers
``GET /_bench/calls`` with what was recorded since the last such request (then forgets it).
Everything else goes to the tenantvm application unchanged.  Used by ``bench/profiling.py``
to see what a VM call costs inside the server under different loads.

``TENANTVM_CONFIG=... granian --interface asgi timed_tenantvm:app`` (``bench/apps`` on
``PYTHONPATH``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tenantvm import app as tenantvm_app
from tenantvm.tenant import Request, Response, TenantVM

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_calls: list[tuple[int, float]] = []  # (ns, exits)
_call = TenantVM.call


def _timed_call(self: TenantVM, request: Request) -> Response:
    t0 = time.perf_counter_ns()
    response = _call(self, request)
    _calls.append((time.perf_counter_ns() - t0, response.exits))
    return response


_call_batch = TenantVM.call_batch


def _timed_call_batch(self: TenantVM, requests: Any, budget: float | None = None) -> list[Any]:
    t0 = time.perf_counter_ns()
    results = _call_batch(self, requests, budget)
    if results:
        share = (time.perf_counter_ns() - t0) // len(results)
        exits = sum(r.exits for r in results if isinstance(r, Response)) / len(results)
        _calls.extend((share, exits) for _ in results)  # type: ignore[misc]
    return results


TenantVM.call = _timed_call  # type: ignore[method-assign]
TenantVM.call_batch = _timed_call_batch  # type: ignore[method-assign]
_inner = tenantvm_app.app


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The tenantvm application, plus ``GET /_bench/calls``."""
    if scope["type"] == "http" and scope["path"] == "/_bench/calls":
        recorded = list(_calls)
        _calls.clear()
        body = json.dumps({"ns": [ns for ns, _ in recorded], "exits": [e for _, e in recorded]}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await _inner(scope, receive, send)
