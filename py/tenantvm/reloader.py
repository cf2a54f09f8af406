"""Live update in one worker: re-read the tenants file, boot what changed, swap it in.

Each worker runs one :class:`Reloader` thread, started with the server (before any thread
is seccomp-restricted: it reads files and creates VMs).  It watches the generation file of
the server's control directory (:mod:`tenantvm.control`) and, when it rises, reloads:

1. reads and validates the tenants file (with the admin API's overrides); invalid: nothing
   changes, the problems are logged and reported;
2. boots the tenants that are new or changed (:meth:`TenantServer.stage`), here, while the
   event loop goes on serving the old ones; a boot fails: the others booted for this reload
   are freed, nothing changes;
3. on the event loop, swaps them in at once (:meth:`TenantServer.swap`): new requests go to
   the new snapshots, requests under way finish on the old ones, which are then drained and
   freed;
4. writes the outcome to its status file, which ``tenantvm reload`` waits for.

Reloads are serialized: the admin API's (:meth:`Reloader.reload_now`) run on the same thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tenantvm import config as tconfig
from tenantvm.control import POLL_INTERVAL, Control, ReloadOutcome, WorkerStatus
from tenantvm.server import TenantRuntime, TenantServer

__all__ = ["WORKERS_TIMEOUT", "Reloader"]

#: How long an admin API change waits for the other workers to follow (s).
WORKERS_TIMEOUT = 60.0

log = logging.getLogger("tenantvm")


@dataclass
class _Request:
    """A reload asked for on the loop (admin API); ``done`` gets the outcome.

    ``change`` runs first (on the reload thread, under the control lock) and returns how to
    undo itself; after a failed reload it is undone, after a successful one every other
    worker is told to reload too.
    """

    done: concurrent.futures.Future[ReloadOutcome]
    change: Callable[[], Callable[[], None]] | None = None


class Reloader:
    """The reload thread of one worker serving ``server`` on ``loop``."""

    def __init__(self, server: TenantServer, control: Control, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.control = control
        self.loop = loop
        self.config_path = Path(server.config.path)
        self.generation = control.generation()
        self.last: ReloadOutcome | None = None
        self._stamp = control.generation_stamp()
        self._requests: queue.Queue[_Request | None] = queue.Queue()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="tenantvm-reload", daemon=True)

    def start(self) -> None:
        """Publishes this worker's status and starts watching."""
        self._publish()
        self._thread.start()

    def stop(self) -> None:
        """Stops watching and forgets the worker (a reload under way is abandoned)."""
        self._stopped = True
        self._requests.put(None)
        self.control.remove_status(os.getpid())

    async def reload_now(self, change: Callable[[], Callable[[], None]] | None = None) -> ReloadOutcome:
        """Applies ``change`` (see _Request) and reloads this worker now; the outcome."""
        done: concurrent.futures.Future[ReloadOutcome] = concurrent.futures.Future()
        self._requests.put(_Request(done, change))
        return await asyncio.wrap_future(done)

    def _publish(self) -> None:
        versions = {name: rt.version for name, rt in self.server.tenants.items()}
        self.control.write_status(WorkerStatus(os.getpid(), self.generation, self.last, versions))

    def _run(self) -> None:
        while True:
            try:
                request = self._requests.get(timeout=POLL_INTERVAL)
            except queue.Empty:
                stamp = self.control.generation_stamp()
                if stamp == self._stamp:
                    continue
                self._stamp = stamp
                generation = self.control.generation()
                if generation <= self.generation:
                    continue
                self.generation = generation
                self._reload()
                continue
            if request is None:
                return
            try:
                request.done.set_result(self._requested(request))
            except BaseException as e:
                request.done.set_exception(e)

    def _requested(self, request: _Request) -> ReloadOutcome:
        if request.change is None:
            return self._reload()
        with self.control.locked():
            undo = request.change()
            outcome = self._reload()
            if not outcome.ok:
                undo()
                return outcome
            # The other workers follow; this one is there already.
            self.generation = self.control.request_reload(holding_lock=True)
            self._stamp = self.control.generation_stamp()
        self._publish()
        # Answer once every worker serves the change (or refused it: then say so).
        statuses = self.control.wait(self.generation, WORKERS_TIMEOUT) or []
        refused = [s for s in statuses if s.outcome is not None and not s.outcome.ok and s.pid != os.getpid()]
        if refused:
            outcome.ok = False
            outcome.message += "; " + "; ".join(
                f"worker {s.pid} refused: {s.outcome.message}" for s in refused if s.outcome
            )
        return outcome

    def _reload(self) -> ReloadOutcome:
        """One reload (on this thread); never raises."""
        started = time.perf_counter()
        try:
            outcome = self._attempt()
        except Exception as e:  # a bug rather than the operator's mistake: still reported
            log.exception("reload failed")
            outcome = ReloadOutcome(False, f"reload failed: {type(e).__name__}: {e}")
        outcome.ms = round((time.perf_counter() - started) * 1000, 1)
        result = "ok" if outcome.ok else ("invalid" if outcome.problems else "failed")
        self.server.metrics.reloads.labels(result).inc()
        self.last = outcome
        try:
            self._publish()
        except OSError as e:
            log.error("cannot write this worker's reload status: %s", e)
        return outcome

    def _attempt(self) -> ReloadOutcome:
        try:
            cfg = tconfig.load(self.config_path, self.control.overrides())
        except tconfig.TenantsFileError as e:
            for problem in e.problems:
                log.error("%s", problem)
            log.error("reload refused: the tenants file %s is invalid; still serving the previous one", e.path)
            return ReloadOutcome(False, f"the tenants file {e.path} is invalid", problems=list(e.problems))
        try:
            staged = self.server.stage(cfg)
        except Exception as e:
            log.error("reload refused: %s; still serving the previous tenants", e)
            return ReloadOutcome(False, str(e))
        if self._stopped:
            for rt in staged.values():
                rt.pool.close()
            return ReloadOutcome(False, "the worker is stopping")
        removed = asyncio.run_coroutine_threadsafe(self._swap(cfg, staged), self.loop).result()
        booted = sorted(staged)
        message = f"reloaded {cfg.path}: booted {', '.join(booted) or 'nothing'}"
        if removed:
            message += f"; removed {', '.join(removed)}"
        log.info("%s", message)
        return ReloadOutcome(True, message, booted=booted, removed=removed)

    async def _swap(self, cfg: tconfig.TenantsFile, staged: dict[str, TenantRuntime]) -> list[str]:
        return self.server.swap(cfg, staged)
