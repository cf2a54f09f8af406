"""The HTTP server: a Starlette application that routes requests to tenants by Host name.

Run it with Granian's ASGI interface (``tenantvm serve`` does this)::

    TENANTVM_CONFIG=tenants.toml granian --interface asgi --workers 2 tenantvm.app:app

Each worker process reads the tenants file (``$TENANTVM_CONFIG``, default: the bundled
examples), boots every tenant and fills its pools in the ASGI lifespan, before it accepts
traffic; a bad file or a tenant that fails to boot stops the worker, and so the server.

Routes, for every host:

- ``/_tenantvm/metrics``: Prometheus metrics of the whole server (all workers).
- ``/_tenantvm/health``: JSON, this worker's pools; 503 when a pool has no instance.
- anything else under ``/_tenantvm/``: 404 (the prefix is reserved; no tenant sees it).
- every other path goes to the tenant serving the request's Host (port and case ignored), or
  to ``[server] default_tenant``, else 404.

``docs/http.md`` describes the request and response mapping, the status codes of failures, and
which calls run on the event loop and which in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tenantvm import config as tconfig
from tenantvm import rundir
from tenantvm.aio import AsyncTenantVM, CompletionQueue
from tenantvm.batcher import Batcher, NoInstance
from tenantvm.errors import (
    GuestError,
    GuestFault,
    GuestOutOfMemory,
    GuestTimeout,
    HostError,
    NoResponse,
    RequestTooLarge,
    ResponseTooLarge,
)
from tenantvm.pool import Pool, PoolBusy, PoolClosed
from tenantvm.sandbox import restrict_current_thread
from tenantvm.tenant import Request, Tenant, TenantVM, with_native_args
from tenantvm.tenant import Response as GuestResponse

if TYPE_CHECKING:
    # Imported when the server starts (see TenantServer.start), not with this module:
    # prometheus-client must not be imported before its multiprocess directory is chosen.
    from tenantvm.metrics import Metrics

__all__ = ["RESERVED_PREFIX", "TenantApp", "TenantServer", "app", "create_app"]

log = logging.getLogger("tenantvm")

#: Paths under this prefix belong to the server, for every host.
RESERVED_PREFIX = "/_tenantvm"
#: Most bytes of request header names and values accepted (431 beyond): no tenant needs more,
#: and the guest must never see a half-accepted request.
MAX_HEADER_BYTES = 32 * 1024
#: Most raw Host values whose tenant the router remembers.
ROUTE_CACHE_SIZE = 4096
#: After a call run on the event loop timed out, the tenant's calls run in threads this long (s).
INLINE_PENALTY = 60.0

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Control characters other than HTAB (CR, LF and NUL among them) are never valid in a value.
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# Set by the server (framing) or meaningful for one connection only: never taken from a guest.
_DROPPED = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)


#: Set to 0 to run guests without the seccomp filter on their threads (debugging only).
SECCOMP_ENV = "TENANTVM_SECCOMP"
_sandboxed = threading.local()


def _restrict_once() -> None:
    """Installs the seccomp filter on the calling thread, the first time it runs a guest."""
    if not getattr(_sandboxed, "done", False):
        if os.environ.get(SECCOMP_ENV, "1") != "0":
            restrict_current_thread()
        _sandboxed.done = True


def _guarded_call(vm: TenantVM, request: Request) -> GuestResponse:
    """A guest call on a thread that is (from now on) restricted by the seccomp filter."""
    _restrict_once()
    return vm.call(request)


class BadResponse(Exception):
    """The guest's response cannot be sent as HTTP (bad status, header name or value)."""


@dataclass(eq=False)
class TenantRuntime:
    """A tenant in this worker: its config, snapshot, pool, and per-status metric children."""

    config: tconfig.TenantConfig
    tenant: Tenant
    pool: Pool
    inline: bool
    metrics: Metrics
    inline_blocked_until: float = 0.0
    served: int = 0
    limiter: Any = None
    batcher: Batcher | None = None
    _by_status: dict[int, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        name = self.config.name
        self.buffer = self.metrics.buffer
        self.limiter = anyio.CapacityLimiter(self.config.pool_size)
        self.latency = self.metrics.latency.labels(name)
        self.resets = self.metrics.resets.labels(name)
        self.busy = self.metrics.pool_busy.labels(name)
        self.batch_size = self.metrics.batch_size.labels(name)
        self.queue_timeout = self.config.queue_timeout_ms / 1000

    def count(self, status: int, started: float) -> None:
        """Counts a request answered with ``status``."""
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = self.metrics.requests.labels(self.config.name, str(status))
        self.buffer.inc(child)
        self.buffer.observe(self.latency, time.perf_counter() - started)

    def batch_started(self) -> None:
        """A batch of inline calls is about to run (on the loop thread)."""
        _restrict_once()
        self.buffer.inc(self.busy)

    def batch_ended(self, served: int) -> None:
        """A batch of inline calls served ``served`` requests."""
        self.buffer.inc(self.busy, -1)
        self.buffer.observe(self.batch_size, served)

    def runs_inline(self) -> bool:
        """Whether the next call runs on the event loop (see ``docs/http.md``)."""
        return self.inline and (not self.inline_blocked_until or time.monotonic() >= self.inline_blocked_until)


def _boot(cfg: tconfig.TenantConfig, run: rundir.RunDir | None) -> Tenant:
    shm = run.shared_memory_path(cfg.name) if run is not None and cfg.shared_memory_kb else None
    kwargs = cfg.tenant_kwargs(shm)
    return Tenant(kwargs.pop("program"), **kwargs)


class TenantServer:
    """Everything one worker process serves: the tenants file, the tenants and their pools."""

    def __init__(
        self,
        cfg: tconfig.TenantsFile,
        metrics: Metrics,
        tenants: dict[str, TenantRuntime],
        run: rundir.RunDir | None,
    ) -> None:
        self.config = cfg
        self.metrics = metrics
        self.tenants = tenants
        self.run = run
        self.by_host: dict[bytes, TenantRuntime] = {h.encode(): rt for rt in tenants.values() for h in rt.config.hosts}
        self.default = tenants[cfg.server.default_tenant] if cfg.server.default_tenant else None
        self._routes: dict[bytes, TenantRuntime | None] = {}
        self.retry_after = str(cfg.server.retry_after_s).encode()

    @classmethod
    def start(
        cls, config_file: str | os.PathLike[str] | None = None, queue: CompletionQueue | None = None
    ) -> TenantServer:
        """Reads the tenants file, boots every tenant and fills the pools (blocking).

        Raises:
            TenantsFileError: The file is invalid.
            RuntimeError: A tenant failed to boot (the message names it).
        """
        cfg = tconfig.load(tconfig.config_path(config_file))
        # The server's run directory: from `tenantvm serve`, else (started by a plain `granian`)
        # the one of our parent, the Granian master.  prometheus-client picks its multiprocess
        # mode when first imported: point it at the run directory first (unless the environment
        # already names a directory, or prometheus-client was imported: single-process mode).
        run_path = Path(os.environ.get(rundir.RUN_DIR_ENV) or rundir.server_dir(os.getppid()))
        if "prometheus_client" not in sys.modules:
            os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(run_path / "metrics"))
        from tenantvm.metrics import Metrics, multiprocess_dir

        run: rundir.RunDir | None = None
        try:
            rundir.clean_stale()
            run = rundir.RunDir.open(run_path)
            mp = multiprocess_dir()
            if mp:
                Path(mp).mkdir(parents=True, exist_ok=True)
            metrics = Metrics()
            tenants: dict[str, TenantRuntime] = {}
            inline_limit = cfg.server.inline_timeout_ms
            for tc in cfg.tenants:
                started = time.perf_counter()
                try:
                    tenant = _boot(tc, run)
                    inline = tc.timeout_ms <= inline_limit or queue is None
                    make: Callable[[], Any] = (
                        tenant.instance if inline else lambda t=tenant: AsyncTenantVM(t, queue)  # type: ignore[misc]
                    )
                    instances: list[Any] = [make() for _ in range(tc.pool_size)]
                except Exception as e:
                    raise RuntimeError(
                        f"tenant '{tc.name}' ({tc.program}) failed to boot: {type(e).__name__}: {e}"
                    ) from e
                replacements = metrics.replacements.labels(tc.name)
                pool = Pool(tc.name, make, tc.pool_size, instances, on_replace=replacements.inc)
                rt = TenantRuntime(tc, tenant, pool, inline, metrics)
                if inline and tc.ephemeral and cfg.server.batch_budget_us:
                    budget = cfg.server.batch_budget_us / 1e6
                    rt.batcher = Batcher(pool, budget, rt.batch_started, rt.batch_ended, rt.runs_inline)
                tenants[tc.name] = rt
                metrics.pool_instances.labels(tc.name).set(tc.pool_size)
                metrics.pool_busy.labels(tc.name).set(0)
                log.info(
                    "tenant %s: booted in %.1f ms, %d instance(s), %s, %s calls, hosts %s",
                    tc.name,
                    (time.perf_counter() - started) * 1000,
                    tc.pool_size,
                    tc.mode,
                    "inline" if rt.inline else "on vCPU threads",
                    ", ".join(tc.hosts),
                )
            metrics.workers.set(1)
        except BaseException:
            if run is not None:
                run.close()
            raise
        return cls(cfg, metrics, tenants, run)

    def close(self) -> None:
        """Closes the pools and releases the run directory (removed by the last worker)."""
        for rt in self.tenants.values():
            rt.pool.close()
        self.metrics.process_exit()
        if self.run is not None:
            self.run.close()

    def route(self, host: bytes) -> TenantRuntime | None:
        """The tenant for a Host header value (port and case ignored), or the default."""
        rt = self.by_host.get(host)
        if rt is not None:
            return rt
        # Clients send the port ("127.0.0.1:8080"): remember where a raw value went, in a
        # table bounded against clients that send endless distinct values.
        if host in self._routes:
            return self._routes[host]
        rt = self.by_host.get(tconfig.normalize_host(host.decode("latin-1")).encode("latin-1"), self.default)
        if len(self._routes) >= ROUTE_CACHE_SIZE:
            self._routes.clear()
        self._routes[host] = rt
        return rt

    def health(self) -> dict[str, Any]:
        """This worker's view: ``ok`` and every pool's state."""
        tenants = {}
        ok = True
        for name, rt in self.tenants.items():
            p = rt.pool
            tenant_ok = p.idle + p.busy > 0
            ok = ok and tenant_ok
            tenants[name] = {
                "ok": tenant_ok,
                "hosts": list(rt.config.hosts),
                "mode": rt.config.mode,
                "calls": "inline" if rt.runs_inline() else ("vcpu-thread" if not rt.inline else "threaded"),
                "size": p.size,
                "idle": p.idle,
                "busy": p.busy,
                "waiting": p.waiting,
                "missing": p.missing,
                "replaced": p.replaced,
                "served": rt.served,
            }
        return {"ok": ok, "worker": os.getpid(), "tenants": tenants}


# --------------------------------------------------------------------------------------------
# Tenant requests


async def _plain(send: Send, status: int, text: str, *extra: tuple[bytes, bytes]) -> None:
    body = text.encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _error_header(kind: str) -> tuple[bytes, bytes]:
    return (b"x-tenantvm-error", kind.encode())


class _TooLarge(Exception):
    pass


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The request body; raises _TooLarge as soon as it exceeds ``limit`` bytes."""
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise _TooLarge
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _TooLarge  # nobody to answer
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _response_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The guest's headers made safe to send; raises BadResponse."""
    out: list[tuple[bytes, bytes]] = []
    dropped = _DROPPED
    for name, value in headers:
        if not _TOKEN.fullmatch(name):
            raise BadResponse(f"invalid header name {name[:64]!r}")
        if _BAD_VALUE.search(value):
            raise BadResponse(f"control character in the value of header {name.decode()!r}")
        lname = name.lower()
        if lname in dropped:
            if lname == b"connection":
                # Headers the guest lists in Connection are hop-by-hop too.
                listed = {t.strip().lower() for t in value.split(b",")}
                dropped = dropped | listed
                out = [(n, v) for n, v in out if n not in listed]
            continue
        out.append((lname, value))
    return out


def _final_response(status: int, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The guest's headers made safe to send with ``status``; raises BadResponse."""
    if not 200 <= status <= 599:
        raise BadResponse(f"status {status} (a final response must be 200-599)")
    return _response_headers(headers)


_ERRORS: list[tuple[type[BaseException], int, str]] = [
    (GuestTimeout, 504, "timeout"),
    (GuestFault, 502, "fault"),
    (NoResponse, 502, "no_response"),
    (ResponseTooLarge, 502, "response_too_large"),
    (GuestOutOfMemory, 502, "out_of_memory"),
    (GuestError, 502, "guest_error"),
    (BadResponse, 502, "bad_response"),
    (HostError, 500, "host"),
]


def _classify(e: Exception) -> tuple[int, str]:
    """The HTTP status and the kind of failure of a failed call."""
    for cls, status, kind in _ERRORS:
        if isinstance(e, cls):
            return status, kind
    return 500, "host"


_MESSAGES = {
    "timeout": "the tenant's program ran past its time limit",
    "fault": "the tenant's program crashed",
    "no_response": "the tenant's program stopped without responding",
    "response_too_large": "the tenant's response is over its size limit",
    "out_of_memory": "the tenant's program ran out of memory",
    "guest_error": "the tenant's program failed",
    "bad_response": "the tenant's response is not valid HTTP",
    "host": "internal error",
}


class TenantEndpoint:
    """The ASGI endpoint of tenant traffic (everything outside the reserved prefix)."""

    def __init__(self) -> None:
        self.server: TenantServer | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        server = self.server
        if server is None:  # no lifespan (e.g. granian --interface asginl)
            await _plain(send, 503, "tenantvm: the server is not started\n")
            return
        host = b""
        hosts = 0
        length = None
        chunked = False
        header_bytes = 0
        for k, v in scope["headers"]:
            header_bytes += len(k) + len(v)
            if k == b"host":
                host = v
                hosts += 1
            elif k == b"content-length":
                length = v
            elif k == b"transfer-encoding":
                chunked = True
        if header_bytes > MAX_HEADER_BYTES:
            server.metrics.unrouted.inc()
            await _plain(send, 431, f"tenantvm: request headers over {MAX_HEADER_BYTES} bytes\n")
            return
        if hosts > 1:
            server.metrics.unrouted.inc()
            await _plain(send, 400, "tenantvm: more than one Host header\n")
            return
        rt = server.route(host)
        if rt is None:
            server.metrics.unrouted.inc()
            shown = host.decode("latin-1")[:200]
            await _plain(send, 404, f"tenantvm: no tenant serves the host name {shown!r}\n")
            return
        name = rt.config.name
        limit = rt.config.max_request_bytes
        try:
            if length is not None:
                try:
                    n = int(length)
                except ValueError:
                    await _plain(send, 400, "tenantvm: invalid Content-Length\n")
                    rt.count(400, started)
                    return
                if n > limit:
                    raise _TooLarge
            # An HTTP/1 request without Content-Length or Transfer-Encoding has no body: do not
            # wait for one (receive() is a round trip through the server's I/O thread).
            if length is None and not chunked and scope.get("http_version", "1.1") in ("1.1", "1.0"):
                body = b""
            else:
                body = await _read_body(receive, limit)
        except _TooLarge:
            rt.metrics.rejected.labels(name, "too_large").inc()
            await _plain(send, 413, f"tenantvm: the request body is over this tenant's limit ({limit} bytes)\n")
            rt.count(413, started)
            return
        method = scope["method"]
        request = Request(method, scope.get("raw_path") or scope["path"], scope["query_string"], scope["headers"], body)

        if rt.batcher is not None and rt.runs_inline():
            await self._batched(rt, request, scope, send, started)
            return
        await self._call(rt, request, scope, send, started)

    async def _batched(self, rt: TenantRuntime, request: Request, scope: Scope, send: Send, started: float) -> None:
        """An inline call of an ephemeral tenant, in a batch with those of the same loop turn."""
        assert rt.batcher is not None
        rt.served += 1
        try:
            response = await rt.batcher.call(request)
        except NoInstance:
            await self._call(rt, request, scope, send, started)
            return
        except Exception as e:
            await self._answer_error(rt, e, not isinstance(e, HostError), scope, send, started, True)
            return
        rt.buffer.inc(rt.resets)
        try:
            headers = _final_response(response.status, response.headers)
        except BadResponse as e:
            await self._answer_error(rt, e, True, scope, send, started, True)
            return
        await self._send(rt, response.status, headers, response.body, send, started)

    async def _call(self, rt: TenantRuntime, request: Request, scope: Scope, send: Send, started: float) -> None:
        """One call on an instance of the pool: inline, in a thread, or on a vCPU thread."""
        server = self.server
        assert server is not None
        name = rt.config.name
        pool = rt.pool
        vm: Any = pool.try_acquire()
        if vm is None:
            try:
                vm = await pool.acquire(rt.queue_timeout)
            except (PoolBusy, PoolClosed):
                rt.metrics.rejected.labels(name, "pool_busy").inc()
                log.warning("tenant %s: no free instance within %d ms (503)", name, rt.config.queue_timeout_ms)
                await _plain(
                    send,
                    503,
                    "tenantvm: the tenant is busy, retry later\n",
                    (b"retry-after", server.retry_after),
                    _error_header("pool_busy"),
                )
                rt.count(503, started)
                return
        rt.buffer.inc(rt.busy)
        rt.served += 1
        inline = rt.inline and rt.runs_inline()
        error: Exception | None = None
        usable = True
        released = False
        try:
            if not rt.inline:
                # On the instance's vCPU thread: the loop only waits.  If this task is
                # cancelled (the client went away) the call still runs to its end, and the
                # instance goes back to the pool only then.
                future = with_native_args(lambda args: vm.call_raw(*args(request)))
                try:
                    status, gheaders, body, *_ = await asyncio.shield(future)
                except asyncio.CancelledError:
                    released = True
                    future.add_done_callback(lambda f: (f.exception(), rt.buffer.inc(rt.busy, -1), pool.release(vm)))
                    raise
            else:
                if inline:
                    response = _guarded_call(vm, request)
                else:
                    response = await anyio.to_thread.run_sync(_guarded_call, vm, request, limiter=rt.limiter)
                status, gheaders, body = response.status, response.headers, response.body
            if rt.config.ephemeral:
                rt.buffer.inc(rt.resets)
            headers = _final_response(status, gheaders)
        except Exception as e:
            error = e
            usable = vm.usable
        finally:
            # Back to the pool (already reset by the VMM after a failure) before answering.
            if not released:
                rt.buffer.inc(rt.busy, -1)
                pool.release(vm)
        if error is not None:
            await self._answer_error(rt, error, usable, scope, send, started, inline)
            return
        await self._send(rt, status, headers, body, send, started)

    @staticmethod
    async def _send(
        rt: TenantRuntime, status: int, headers: list[tuple[bytes, bytes]], body: bytes, send: Send, started: float
    ) -> None:
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        rt.count(status, started)

    async def _answer_error(
        self, rt: TenantRuntime, error: Exception, usable: bool, scope: Scope, send: Send, started: float, inline: bool
    ) -> None:
        if isinstance(error, RequestTooLarge):
            rt.metrics.rejected.labels(rt.config.name, "too_large").inc()
            log.info("tenant %s: %s (413)", rt.config.name, error)
            await _plain(send, 413, f"tenantvm: the request is over this tenant's limit ({error.limit} bytes)\n")
            rt.count(413, started)
            return
        await self._failed(rt, usable, error, scope, send, started, inline)

    async def _failed(
        self, rt: TenantRuntime, usable: bool, e: Exception, scope: Scope, send: Send, started: float, inline: bool
    ) -> None:
        name = rt.config.name
        status, kind = _classify(e)
        if isinstance(e, GuestError):
            rt.buffer.inc(rt.resets)  # the VMM reset the instance after the failure (stateful ones too)
        rt.metrics.guest_errors.labels(name, kind).inc()
        where = f"{scope['method']} {scope['path'][:200]}"
        if status == 500:
            log.error("tenant %s: %s: host failure (instance usable: %s): %r", name, where, usable, e)
        else:
            log.warning("tenant %s: %s: %s (%d): %s", name, where, kind.replace("_", " "), status, e)
        if isinstance(e, GuestTimeout) and inline:
            rt.inline_blocked_until = time.monotonic() + INLINE_PENALTY
            log.warning(
                "tenant %s: timed out on the event loop; its calls run in threads for %.0f s", name, INLINE_PENALTY
            )
        await _plain(send, status, f"tenantvm: {_MESSAGES[kind]}\n", _error_header(kind))
        rt.count(status, started)


# --------------------------------------------------------------------------------------------
# The application


def _setup_logging() -> None:
    if log.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(levelname)s] tenantvm: %(message)s"))
    log.addHandler(handler)
    log.setLevel(os.environ.get("TENANTVM_LOG_LEVEL", "INFO").upper())
    log.propagate = False


def create_app(config_file: str | os.PathLike[str] | None = None) -> TenantApp:
    """The Starlette application serving the tenants of ``config_file``.

    ``config_file`` defaults as :func:`tenantvm.config.config_path` says; the tenants are
    booted in the application's lifespan.
    """
    endpoint = TenantEndpoint()
    # Scrapes read every worker's metric files: they run on a thread of their own, created
    # before any thread is restricted (the threads that run guests cannot open files).
    admin: list[ThreadPoolExecutor] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        _setup_logging()
        try:
            queue = CompletionQueue(asyncio.get_running_loop())
            server = await anyio.to_thread.run_sync(TenantServer.start, config_file, queue)
        except tconfig.TenantsFileError as e:
            for problem in e.problems:
                log.error("%s", problem)
            log.error("refusing to start: the tenants file %s is invalid", e.path)
            raise
        except Exception as e:
            log.error("refusing to start: %s", e)
            raise
        executor = ThreadPoolExecutor(1, thread_name_prefix="tenantvm-admin")
        executor.submit(lambda: None).result()
        admin.append(executor)
        endpoint.server = server
        app.state.tenantvm = server
        log.info("worker %d ready: %d tenant(s) from %s", os.getpid(), len(server.tenants), server.config.path)
        try:
            yield
        finally:
            endpoint.server = None
            server.metrics.buffer.flush()
            # Removing the run directory needs file system calls this (restricted) thread
            # no longer has: do it on the admin thread.
            executor = admin.pop()
            await asyncio.get_running_loop().run_in_executor(executor, server.close)
            executor.shutdown(wait=False)
            queue.close()

    async def metrics(request: HTTPRequest) -> Response:
        server = endpoint.server
        if server is None:
            return PlainTextResponse("tenantvm: the server is not started\n", status_code=503)
        server.metrics.buffer.flush()
        text = await asyncio.get_running_loop().run_in_executor(admin[0], server.metrics.render)
        return Response(
            text,
            media_type=server.metrics.content_type,
            headers={"x-tenantvm-worker": str(os.getpid())},
        )

    async def health(request: HTTPRequest) -> Response:
        server = endpoint.server
        if server is None:
            return JSONResponse({"ok": False, "worker": os.getpid(), "tenants": {}}, status_code=503)
        data = server.health()
        return JSONResponse(
            data, status_code=200 if data["ok"] else 503, headers={"x-tenantvm-worker": str(os.getpid())}
        )

    routes = [
        Route(f"{RESERVED_PREFIX}/metrics", metrics, methods=["GET"]),
        Route(f"{RESERVED_PREFIX}/health", health, methods=["GET"]),
        Route(RESERVED_PREFIX, _reserved),
        Route(RESERVED_PREFIX + "/{rest:path}", _reserved),
    ]
    return TenantApp(endpoint, routes=routes, lifespan=lifespan)


class TenantApp(Starlette):
    """The server's Starlette application, with tenant traffic taken straight to its endpoint.

    Starlette serves the lifespan and the reserved paths.  Every other HTTP request goes to
    the :class:`TenantEndpoint` without Starlette's middleware and router: they would add
    two wrappers around each ``send`` and a regex match per route to every request, about a
    sixth of the event loop's time per request under load, for nothing the endpoint uses.
    The endpoint answers its own errors; an unexpected exception still gets a 500.
    """

    def __init__(self, endpoint: TenantEndpoint, **kwargs: Any) -> None:
        """A Starlette application (``kwargs`` as for Starlette) in front of ``endpoint``."""
        super().__init__(**kwargs)
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point."""
        if scope["type"] != "http" or _is_reserved(scope["path"]):
            await super().__call__(scope, receive, send)
            return
        try:
            await self.endpoint(scope, receive, send)
        except Exception:
            log.exception("unexpected error serving %s %s", scope.get("method"), scope["path"][:200])
            # The response may have started: then the server ends the connection instead.
            with contextlib.suppress(Exception):
                await _plain(send, 500, "tenantvm: internal error\n", _error_header("host"))
            raise


def _is_reserved(path: str) -> bool:
    return path.startswith(RESERVED_PREFIX) and (len(path) == len(RESERVED_PREFIX) or path[len(RESERVED_PREFIX)] == "/")


class _Reserved:
    """Any other path under the reserved prefix, whatever the method: 404.

    An ASGI app rather than a function, so that Starlette's route accepts every method.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] in (f"{RESERVED_PREFIX}/metrics", f"{RESERVED_PREFIX}/health"):
            await _plain(send, 405, "tenantvm: method not allowed\n", (b"allow", b"GET, HEAD"))
            return
        await _plain(send, 404, f"tenantvm: no such endpoint under {RESERVED_PREFIX}/\n")


_reserved = _Reserved()


#: The application (``granian --interface asgi tenantvm.app:app``).
app = create_app()
