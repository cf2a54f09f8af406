"""Diagnostics: ``tenantvm.app:app`` with every ``TenantVM.call`` timed (benchmarks only).

Wraps the server's VM calls (``tenantvm.batcher.native_call``, and ``native_call_batch``: each
request of a batch gets an equal share of its time and exits) to record each call's wall time and
VM exits, and answers
``GET /_bench/calls`` with what was recorded since the last such request (then forgets it).
Everything else goes to the tenantvm application unchanged.  Used by ``bench/profiling.py``
to see what a VM call costs inside the server under different loads.

``TENANTVM_CONFIG=... granian [--interface asgi] timed_tenantvm:app`` (``bench/apps`` on
``PYTHONPATH``); RSGI or ASGI, like the application it wraps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tenantvm import app as tenantvm_app
from tenantvm import batcher, callers

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_calls: list[tuple[int, float]] = []  # (ns, exits)
_call = batcher.native_call
_call_batch = batcher.native_call_batch


def _timed_call(vm: Any, request: Any) -> Any:
    t0 = time.perf_counter_ns()
    response = _call(vm, request)
    _calls.append((time.perf_counter_ns() - t0, response[5]))
    return response


def _timed_call_batch(vm: Any, requests: Any, budget: float) -> list[Any]:
    t0 = time.perf_counter_ns()
    results = _call_batch(vm, requests, budget)
    if results:
        share = (time.perf_counter_ns() - t0) // len(results)
        exits = sum(r[5] for r in results if isinstance(r, tuple)) / len(results)
        _calls.extend((share, exits) for _ in results)  # type: ignore[misc]
    return results


# The server's calls go through these two functions (the VM's raw call and batch).
batcher.native_call = callers.native_call = _timed_call
batcher.native_call_batch = _timed_call_batch
_inner = tenantvm_app.app


def _recorded() -> bytes:
    recorded = list(_calls)
    _calls.clear()
    return json.dumps({"ns": [ns for ns, _ in recorded], "exits": [e for _, e in recorded]}).encode()


class TimedApp:
    """The tenantvm application (ASGI and RSGI), plus ``GET /_bench/calls``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI."""
        if scope["type"] == "http" and scope["path"] == "/_bench/calls":
            body = _recorded()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await _inner(scope, receive, send)

    def __rsgi_init__(self, loop: Any) -> None:
        _inner.__rsgi_init__(loop)

    def __rsgi_del__(self, loop: Any) -> None:
        _inner.__rsgi_del__(loop)

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        """RSGI."""
        if scope.proto == "http" and scope.path == "/_bench/calls":
            protocol.response_bytes(200, [("content-type", "application/json")], _recorded())
            return
        await _inner.__rsgi__(scope, protocol)


app = TimedApp()
