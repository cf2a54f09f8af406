"""One request, from its parsed head to the answer, whichever interface brought it.

:class:`Dispatcher` checks the request head (header size, one Host, Content-Length against
the tenant's body limit), routes it (:mod:`tenantvm.routing`), reads the body, runs the call
through the tenant's :class:`~tenantvm.callers.Caller`, and turns the outcome into an
:data:`~tenantvm.answers.Answer` (the guest's response made safe, or the status of the
failure); it also answers the reserved paths.  Sending is the interface's business
(:mod:`tenantvm.interfaces`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from time import perf_counter
from typing import Any

from tenantvm import dashboard, stats
from tenantvm.admin import AdminAPI
from tenantvm.answers import Answer, classify, error_answer, final_headers, plain
from tenantvm.callers import Caller
from tenantvm.errors import GuestError, GuestTimeout, RequestTooLarge
from tenantvm.pool import PoolBusy, PoolClosed
from tenantvm.reloader import Reloader
from tenantvm.routing import RESERVED_PREFIX, TENANTS_PREFIX, Reserved, reserved_route
from tenantvm.server import TenantRuntime, TenantServer

__all__ = ["MAX_HEADER_BYTES", "BodyTooLarge", "Dispatcher", "ReadBody"]

log = logging.getLogger("tenantvm")

#: Most bytes of request header names and values accepted (431 beyond): no tenant needs more,
#: and the guest must never see a half-accepted request.
MAX_HEADER_BYTES = 32 * 1024


class BodyTooLarge(Exception):
    """The body is over the limit (or the client went away before sending all of it)."""


#: ``read_body(source, limit)`` reads the request body from ``source`` (the interface's
#: receive callable or protocol object), raising BodyTooLarge as soon as it exceeds ``limit``.
ReadBody = Callable[[Any, int], Awaitable[bytes]]

#: The native form of the usual methods (one look-up instead of an encoding per request).
_METHODS = {m: m.encode() for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}

_NOT_STARTED = "tenantvm: the server is not started\n"
_PAGE = dashboard.PAGE.encode()
_CSP = (b"content-security-policy", dashboard.CSP.encode())
_CLOSE = (b"connection", b"close")


class Dispatcher:
    """Answers requests for the :class:`TenantServer` of this worker (None until started)."""

    def __init__(self) -> None:
        self.server: TenantServer | None = None
        #: Runs scrapes (reading every worker's metric files); made before any thread is
        #: restricted, since the threads that run guests cannot open files.
        self.admin: ThreadPoolExecutor | None = None
        #: This worker's live updates (None: not started).
        self.reloader: Reloader | None = None
        #: The admin API (None: off).
        self.admin_api: AdminAPI | None = None

    async def _tenant_update(
        self, name: str, headers: list[tuple[bytes, bytes]], source: Any, read_body: ReadBody | None
    ) -> Answer:
        """``PUT /_tenantvm/tenants/NAME`` (see :mod:`tenantvm.admin`)."""
        api, server, reloader = self.admin_api, self.server, self.reloader
        if api is None or server is None or reloader is None or read_body is None:
            return plain(404, "tenantvm: the admin API is off ([server] admin_token_file or admin_token_env)\n")
        length = next((v for k, v in headers if k == b"content-length"), None)
        content_type = next((v for k, v in headers if k == b"content-type"), b"")
        unread = (length is not None and length != b"0") or any(k == b"transfer-encoding" for k, _ in headers)

        def early(answer: Answer) -> Answer:
            # Answered without reading the body: the connection cannot carry another request.
            return (answer[0], [*answer[1], _CLOSE], answer[2]) if unread and _CLOSE not in answer[1] else answer

        refused = api.refused(headers)
        if refused is not None:
            return early(refused)
        if name not in server.tenants:
            return early(api.not_found(name))
        if length is not None and (not length.isdigit() or int(length) > api.max_upload):
            return early(api.too_large(api.max_upload))
        try:
            body = await read_body(source, api.max_upload)
        except BodyTooLarge:
            return api.too_large(api.max_upload)
        change = api.change(name, content_type, body)
        if not callable(change):
            return change
        outcome = await reloader.reload_now(change)
        rt = self.server.tenants.get(name) if self.server is not None else None
        return api.outcome_answer(name, outcome, rt.version if rt else None, reloader.generation)

    def tenant(
        self,
        method: str,
        raw_path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        h2: bool,
        shown_path: str,
        source: Any,
        read_body: ReadBody,
    ) -> Answer | Coroutine[Any, Any, Answer]:
        """The answer to a request outside the reserved prefix, or a coroutine that gives it.

        The hot path: a request without a body whose call can run at once (an inline tenant
        with a free instance) is answered before this returns, with no coroutine made or
        awaited; anything that must wait (the body, an instance, a batch, another thread)
        returns a coroutine for the interface to await.

        ``headers`` are the request's, names lowercased; ``shown_path`` is for the log;
        ``h2``: an HTTP/2 request may have a body without either framing header;
        ``read_body(source, limit)`` reads the body.
        """
        started = perf_counter()
        server = self.server
        if server is None:  # no lifespan (e.g. granian --interface asginl)
            return plain(503, _NOT_STARTED)
        host = b""
        hosts = 0
        length = None
        chunked = False
        size = 0
        for k, v in headers:
            size += len(k) + len(v)
            if k == b"host":
                host = v
                hosts += 1
            elif k == b"content-length":
                length = v
            elif k == b"transfer-encoding":
                chunked = True
        if size > MAX_HEADER_BYTES:
            server.metrics.unrouted.inc()
            return plain(431, f"tenantvm: request headers over {MAX_HEADER_BYTES} bytes\n")
        if hosts > 1:
            server.metrics.unrouted.inc()
            return plain(400, "tenantvm: more than one Host header\n")
        rt = server.route(host)
        if rt is None:
            server.metrics.unrouted.inc()
            shown = host.decode("latin-1")[:200]
            return plain(404, f"tenantvm: no tenant serves the host name {shown!r}\n")
        if length is not None or chunked or h2:
            return self._with_body(
                rt,
                server,
                method,
                raw_path,
                query,
                headers,
                source,
                read_body,
                h2,
                length,
                chunked,
                shown_path,
                started,
            )
        # No body: an HTTP/1 request without Content-Length or Transfer-Encoding has none (do
        # not wait for one: reading is a round trip through the server's I/O thread).
        caller = rt.caller()
        rt.served += 1
        try:
            outcome = caller.start((_METHODS.get(method) or method.encode(), raw_path, query, headers, b""))
            if type(outcome) is not tuple:
                return self._awaited(rt, server, caller, outcome, method, shown_path, started)  # type: ignore[arg-type]
            status = outcome[0]
            if rt.ephemeral:
                rt.unwritten_resets += 1
            answer: Answer = (status, final_headers(status, outcome[1]), outcome[2])
        except Exception as e:
            answer = self._refused(rt, server, caller, e, method, shown_path)
        rt.count(answer[0], started)
        return answer

    async def _awaited(
        self,
        rt: TenantRuntime,
        server: TenantServer,
        caller: Caller,
        outcome: Awaitable[tuple[Any, ...]],
        method: str,
        shown_path: str,
        started: float,
    ) -> Answer:
        """The answer once a call that could not run at once is done."""
        # Counted while under way: a reload drains this runtime only once none of its
        # requests is (some wait for an instance).
        rt.active += 1
        try:
            # A raw response (6 items) or the guest's answer (3): the first three are the answer.
            result = await outcome
            status, gheaders, gbody = result[0], result[1], result[2]
            if rt.ephemeral:
                rt.unwritten_resets += 1
            answer: Answer = (status, final_headers(status, gheaders), gbody)
        except Exception as e:
            answer = self._refused(rt, server, caller, e, method, shown_path)
        finally:
            rt.active -= 1
        rt.count(answer[0], started)
        return answer

    async def _with_body(
        self,
        rt: TenantRuntime,
        server: TenantServer,
        method: str,
        raw_path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        source: Any,
        read_body: ReadBody,
        h2: bool,
        length: bytes | None,
        chunked: bool,
        shown_path: str,
        started: float,
    ) -> Answer:
        """A request that may have a body: read it (within the limit), then call."""
        # Counted from routing on: a reload drains this runtime only once none of its requests
        # is under way (some wait for their body, not yet for an instance).
        rt.active += 1
        try:
            answer = await self._read_and_call(
                rt, server, method, raw_path, query, headers, source, read_body, h2, length, chunked, shown_path
            )
        finally:
            rt.active -= 1
        rt.count(answer[0], started)
        return answer

    async def _read_and_call(
        self,
        rt: TenantRuntime,
        server: TenantServer,
        method: str,
        raw_path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        source: Any,
        read_body: ReadBody,
        h2: bool,
        length: bytes | None,
        chunked: bool,
        shown_path: str,
    ) -> Answer:
        limit = rt.max_request_bytes
        body = b""
        try:
            if length is not None:
                try:
                    n = int(length)
                except ValueError:
                    return plain(400, "tenantvm: invalid Content-Length\n")
                if n > limit:
                    raise BodyTooLarge
                if n or chunked or h2:
                    body = await read_body(source, limit)
                    if len(body) != n and not chunked:
                        raise BodyTooLarge  # the client went away mid-body: nobody to answer
            else:
                body = await read_body(source, limit)
        except BodyTooLarge:
            # The rest of the body is left unread: the connection cannot carry another request.
            return self._too_large(rt, limit, "the request body is over this tenant's limit", _CLOSE)
        caller = rt.caller()
        rt.served += 1
        try:
            outcome = caller.start((_METHODS.get(method) or method.encode(), raw_path, query, headers, body))
            if type(outcome) is tuple:
                status, gheaders, gbody = outcome[0], outcome[1], outcome[2]
            else:
                result = await outcome  # type: ignore[misc]
                status, gheaders, gbody = result[0], result[1], result[2]
            if rt.ephemeral:
                rt.unwritten_resets += 1
            return status, final_headers(status, gheaders), gbody
        except Exception as e:
            return self._refused(rt, server, caller, e, method, shown_path)

    def _refused(
        self, rt: TenantRuntime, server: TenantServer, caller: Caller, e: Exception, method: str, shown_path: str
    ) -> Answer:
        """The answer to a call that raised ``e``."""
        if isinstance(e, PoolBusy | PoolClosed):
            name = rt.config.name
            rt.metrics.rejected.labels(name, "pool_busy").inc()
            log.warning("tenant %s: no free instance within %d ms (503)", name, rt.config.queue_timeout_ms)
            return error_answer(503, "pool_busy", (b"retry-after", server.retry_after))
        if isinstance(e, RequestTooLarge):
            log.info("tenant %s: %s (413)", rt.config.name, e)
            return self._too_large(rt, e.limit, "the request is over this tenant's limit")
        return self._failed(rt, e, caller.inline, f"{method} {shown_path[:200]}")

    @staticmethod
    def _too_large(rt: TenantRuntime, limit: int, what: str, *extra: tuple[bytes, bytes]) -> Answer:
        rt.metrics.rejected.labels(rt.config.name, "too_large").inc()
        return plain(413, f"tenantvm: {what} ({limit} bytes)\n", *extra)

    @staticmethod
    def _failed(rt: TenantRuntime, e: Exception, inline: bool, where: str) -> Answer:
        name = rt.config.name
        status, kind = classify(e)
        if isinstance(e, GuestError):
            rt.unwritten_resets += 1  # the VMM reset the instance after the failure (stateful ones too)
        rt.metrics.guest_errors.labels(name, kind).inc()
        if status == 500:
            log.error("tenant %s: %s: host failure: %r", name, where, e)
        else:
            log.warning("tenant %s: %s: %s (%d): %s", name, where, kind.replace("_", " "), status, e)
        if isinstance(e, GuestTimeout) and inline:
            rt.timed_out_inline()
            log.warning("tenant %s: timed out on the event loop; its calls run in threads for a while", name)
        return error_answer(status, kind)

    async def reserved(
        self,
        method: str,
        path: str,
        headers: list[tuple[bytes, bytes]] | None = None,
        source: Any = None,
        read_body: ReadBody | None = None,
    ) -> Answer:
        """The answer to a request under the reserved prefix (see :mod:`tenantvm.routing`)."""
        route = reserved_route(method, path)
        if route is Reserved.NOT_FOUND:
            return plain(404, f"tenantvm: no such endpoint under {RESERVED_PREFIX}/\n")
        if route is Reserved.METHOD_NOT_ALLOWED:
            allow = b"PUT" if path.startswith(TENANTS_PREFIX) else b"GET, HEAD"
            return plain(405, "tenantvm: method not allowed\n", (b"allow", allow))
        if route is Reserved.TENANT_UPDATE:
            return await self._tenant_update(path[len(TENANTS_PREFIX) :], headers or [], source, read_body)
        worker = (b"x-tenantvm-worker", str(os.getpid()).encode())
        server = self.server
        if route is Reserved.METRICS:
            if server is None or self.admin is None:
                return plain(503, _NOT_STARTED)
            server.metrics.buffer.flush()
            text = await asyncio.get_running_loop().run_in_executor(self.admin, server.metrics.render)
            return 200, [(b"content-type", server.metrics.content_type.encode()), worker], text
        if route is Reserved.DASHBOARD:
            return 200, [(b"content-type", b"text/html; charset=utf-8"), _CSP, worker], _PAGE
        if route is Reserved.STATS:
            if server is None or self.admin is None:
                return plain(503, _NOT_STARTED)
            server.metrics.buffer.flush()
            local = {
                name: {"boot_ms": round(rt.boot_seconds * 1000, 2), "booted_at": rt.booted_at}
                for name, rt in server.tenants.items()
            }
            last = self.reloader.last if self.reloader is not None else None
            data = await asyncio.get_running_loop().run_in_executor(
                self.admin, lambda: stats.snapshot(server, server.metrics.families(), local, last)
            )
            body = json.dumps(data, separators=(",", ":")).encode()
            return 200, [(b"content-type", b"application/json"), (b"cache-control", b"no-store"), worker], body
        data = server.health() if server is not None else {"ok": False, "worker": os.getpid(), "tenants": {}}
        body = json.dumps(data, separators=(",", ":")).encode()
        status = 200 if data["ok"] else 503
        return status, [(b"content-type", b"application/json"), worker], body
