"""The HTTP application: ``tenantvm.app:app``, for Granian's RSGI interface (its default) and ASGI.

Run it with ``tenantvm serve`` (RSGI), or with Granian directly::

    TENANTVM_CONFIG=tenants.toml granian --workers 2 tenantvm.app:app
    TENANTVM_CONFIG=tenants.toml granian --interface asgi --workers 2 tenantvm.app:app

Any ASGI server (e.g. uvicorn) runs it too.  Each worker process reads the tenants file
(``$TENANTVM_CONFIG``, default: the bundled examples), boots every tenant and fills its pools
at start-up — the ASGI lifespan, or RSGI's ``__rsgi_init__`` — before it accepts traffic; a bad
file or a tenant that fails to boot stops the worker, and so the server.  At shutdown
(lifespan end, ``__rsgi_del__``) the pools close and the run directory is released.

Where requests go is :mod:`tenantvm.routing`; the interfaces' conversion is
:mod:`tenantvm.interfaces`; one request's flow :mod:`tenantvm.dispatch`; what a worker serves
:mod:`tenantvm.server`; the ways a call runs :mod:`tenantvm.callers`.  ``docs/http.md``
describes the request and response mapping and the statuses of failures.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio

from tenantvm import config as tconfig
from tenantvm import rundir
from tenantvm.admin import AdminAPI, load_token
from tenantvm.aio import CompletionQueue
from tenantvm.control import Control
from tenantvm.dispatch import Dispatcher
from tenantvm.errors import ConfigError
from tenantvm.interfaces import Receive, Scope, Send, asgi_http, rsgi_http
from tenantvm.reloader import Reloader
from tenantvm.routing import RESERVED_PREFIX
from tenantvm.server import TenantServer

__all__ = ["RESERVED_PREFIX", "TenantApp", "app", "create_app"]

log = logging.getLogger("tenantvm")


def _setup_logging() -> None:
    if log.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(levelname)s] tenantvm: %(message)s"))
    log.addHandler(handler)
    log.setLevel(os.environ.get("TENANTVM_LOG_LEVEL", "INFO").upper())
    log.propagate = False


class TenantApp:
    """The server's application: an ASGI callable with RSGI's entry points.

    Granian picks ``__rsgi__`` (and calls ``__rsgi_init__`` / ``__rsgi_del__`` around the
    worker's life) under its RSGI interface, and calls the object itself under ASGI.
    """

    def __init__(self, config_file: str | os.PathLike[str] | None = None) -> None:
        """The application for the tenants of ``config_file`` (see :func:`create_app`)."""
        self.config_file = config_file
        self.dispatcher = Dispatcher()
        self._queue: CompletionQueue | None = None
        # Granian looks ``__rsgi__`` up on the object: the instance's own entry point is the
        # interface function itself, bound to the dispatcher (no extra coroutine per request).
        self.__rsgi__ = functools.partial(rsgi_http, self.dispatcher)  # type: ignore[method-assign]

    @property
    def server(self) -> TenantServer | None:
        """What this worker serves, between start-up and shutdown."""
        return self.dispatcher.server

    async def startup(self) -> None:
        """Boots the tenants (in a thread; the loop keeps running) and starts serving them.

        Raises:
            TenantsFileError: The tenants file is invalid (the problems are logged).
            Exception: A tenant failed to boot (logged).
        """
        _setup_logging()
        queue = CompletionQueue(asyncio.get_running_loop())
        try:
            server = await anyio.to_thread.run_sync(TenantServer.start, self.config_file, queue)
        except tconfig.TenantsFileError as e:
            queue.close()
            for problem in e.problems:
                log.error("%s", problem)
            log.error("refusing to start: the tenants file %s is invalid", e.path)
            raise
        except Exception as e:
            queue.close()
            log.error("refusing to start: %s", e)
            raise
        # Scrapes read every worker's metric files on a thread of their own, made now, before
        # any thread is restricted (the threads that run guests cannot open files).
        admin = ThreadPoolExecutor(1, thread_name_prefix="tenantvm-admin")
        admin.submit(lambda: None).result()
        try:
            control = Control(server.run.path if server.run is not None else rundir.server_dir(os.getppid()))
            control.create()
            control.set_config(server.config.path)
            token = load_token(server.config.server)
        except (OSError, ConfigError) as e:
            log.error("refusing to start: %s", e)
            admin.shutdown(wait=False)
            server.close()
            queue.close()
            raise
        reloader = Reloader(server, control, asyncio.get_running_loop())
        reloader.start()
        self._queue = queue
        self.dispatcher.admin = admin
        self.dispatcher.reloader = reloader
        if token is not None:
            self.dispatcher.admin_api = AdminAPI(token, server.config.server.admin_max_upload_bytes, control)
            log.info("the admin API is on (PUT %s/tenants/NAME)", RESERVED_PREFIX)
        self.dispatcher.server = server
        log.info("worker %d ready: %d tenant(s) from %s", os.getpid(), len(server.tenants), server.config.path)

    async def shutdown(self) -> None:
        """Stops serving: closes the pools and releases the run directory."""
        dispatcher = self.dispatcher
        server, admin, reloader = dispatcher.server, dispatcher.admin, dispatcher.reloader
        dispatcher.server = dispatcher.admin = dispatcher.reloader = dispatcher.admin_api = None
        if server is None or admin is None:
            return
        if reloader is not None:
            await asyncio.get_running_loop().run_in_executor(admin, reloader.stop)
        server.metrics.buffer.flush()
        # Removing the run directory needs file system calls the (restricted) loop thread may
        # no longer make: done on the admin thread.
        await asyncio.get_running_loop().run_in_executor(admin, server.close)
        admin.shutdown(wait=False)
        if self._queue is not None:
            self._queue.close()
            self._queue = None

    # --- ASGI ---------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point."""
        kind = scope["type"]
        if kind == "http":
            await asgi_http(self.dispatcher, scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except BaseException as e:
                    await send({"type": "lifespan.startup.failed", "message": f"{type(e).__name__}: {e}"})
                    raise
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- RSGI ---------------------------------------------------------------------------------

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """RSGI start-up: Granian calls it in each worker, before it serves, loop not running."""
        try:
            loop.run_until_complete(self.startup())
        except Exception:
            # Logged by startup(); the worker exits and Granian stops with a non-zero status.
            raise SystemExit(1) from None

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        """RSGI shutdown: after the worker stopped serving."""
        loop.run_until_complete(self.shutdown())

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        """The RSGI entry point (each instance replaces it by :func:`rsgi_http` bound to its dispatcher)."""
        await rsgi_http(self.dispatcher, scope, protocol)


def create_app(config_file: str | os.PathLike[str] | None = None) -> TenantApp:
    """The application serving the tenants of ``config_file``.

    ``config_file`` defaults as :func:`tenantvm.config.config_path` says; the tenants are
    booted when a worker starts.
    """
    return TenantApp(config_file)


#: The application (``granian tenantvm.app:app``, RSGI; or ``--interface asgi``).
app = create_app()
