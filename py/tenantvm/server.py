"""What one worker process serves: the tenants file, each tenant's snapshot, pool and caller.

:meth:`TenantServer.start` reads the tenants file, sets up the Prometheus metrics (in the
server's run directory, shared by the workers), boots every tenant and fills its pools;
:meth:`TenantServer.close` undoes it.  Which way a tenant's calls run (:mod:`tenantvm.callers`)
is decided here, per tenant, from its time limit (see ``docs/http.md``).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tenantvm import config as tconfig
from tenantvm import rundir
from tenantvm.aio import AsyncTenantVM, CompletionQueue
from tenantvm.batcher import Batcher
from tenantvm.callers import (
    BatchedCaller,
    Caller,
    InlineCaller,
    ThreadCaller,
    VcpuBatchedCaller,
    VcpuCaller,
    restrict_once,
)
from tenantvm.control import Control
from tenantvm.errors import SnapshotFileError
from tenantvm.pool import Pool
from tenantvm.routing import HostRouter
from tenantvm.tenant import Request, Tenant

if TYPE_CHECKING:
    # Imported when the server starts (see TenantServer.start), not with this module:
    # prometheus-client must not be imported before its multiprocess directory is chosen.
    from tenantvm.metrics import Metrics

__all__ = ["INLINE_PENALTY", "TenantRuntime", "TenantServer"]

log = logging.getLogger("tenantvm")

#: After a call run on the event loop timed out, the tenant's calls run in threads this long (s).
INLINE_PENALTY = 60.0


@dataclass(eq=False)
class TenantRuntime:
    """A tenant in this worker: its config, snapshot, pool, callers and metric children."""

    config: tconfig.TenantConfig
    tenant: Tenant
    pool: Pool
    #: Whether calls may run on the event loop (short time limit), else on vCPU threads.
    inline: bool
    metrics: Metrics
    batch_budget: float = 0.0
    inline_blocked_until: float = 0.0
    served: int = 0
    #: Requests routed to it and not answered yet.
    active: int = 0
    #: What the tenant is: its config, its program's digest and how its calls run.  A reload
    #: boots the tenant again only when this changes.
    identity: tuple[Any, ...] = ()
    #: 1 when the worker started, +1 each time a reload swapped a new snapshot in.
    version: int = 1
    #: When it was booted (time.time()) and how long booting took (s).
    booted_at: float = 0.0
    boot_seconds: float = 0.0
    _by_status: dict[int, Any] = field(default_factory=dict)
    #: Resets and lone batches not written to the metrics yet (written with the requests
    #: counted in the same turn: every reset and lone batch is followed by :meth:`count`).
    unwritten_resets: int = 0
    unwritten_lone_batches: int = 0

    def __post_init__(self) -> None:
        name = self.config.name
        self.buffer = self.metrics.buffer
        #: Requests answered and not written to the metrics yet: (status, seconds).
        self._answered: list[tuple[int, float]] = []
        self.latency = self.metrics.latency.labels(name)
        self.resets = self.metrics.resets.labels(name)
        self.busy = self.metrics.pool_busy.labels(name)
        self.batch_size = self.metrics.batch_size.labels(name)
        self.ephemeral = self.config.ephemeral
        self.max_request_bytes = self.config.max_request_bytes
        queue_timeout = self.config.queue_timeout_ms / 1000
        self.threaded: Caller = ThreadCaller(self.pool, queue_timeout, self._count_busy)
        self.primary: Caller
        if not self.inline:
            self.primary = VcpuCaller(self.pool, queue_timeout, self._count_busy)
            if self.ephemeral and self.batch_budget:
                self.primary = VcpuBatchedCaller(
                    self.pool, queue_timeout, self._count_busy, self.batch_budget, self._vcpu_batch_ended
                )
        else:
            self.primary = InlineCaller(self.pool, queue_timeout, self._count_busy)
            if self.ephemeral and self.batch_budget:
                batcher = Batcher(
                    self.pool,
                    self.batch_budget,
                    self._batch_started,
                    self._batch_ended,
                    self.runs_inline,
                    fallback=self.primary.call,
                )
                self.primary = BatchedCaller(batcher, self.primary)

    def caller(self) -> Caller:
        """How the next call runs: on the loop, unless it timed out there lately."""
        if self.inline_blocked_until and time.monotonic() < self.inline_blocked_until:
            return self.threaded
        return self.primary

    def runs_inline(self) -> bool:
        """Whether the next call runs on the event loop (see ``docs/http.md``)."""
        return self.inline and (not self.inline_blocked_until or time.monotonic() >= self.inline_blocked_until)

    def timed_out_inline(self) -> None:
        """A call timed out on the event loop: the next ones run in threads for a while."""
        self.inline_blocked_until = time.monotonic() + INLINE_PENALTY

    def count(self, status: int, started: float) -> None:
        """Counts a request answered with ``status``, ``started`` at this perf_counter.

        Recorded here and summed into the metrics once per loop turn (:meth:`_write`).
        """
        answered = self._answered
        if not answered:
            self.buffer.defer(self._write)
        answered.append((status, time.perf_counter() - started))

    def _write(self) -> None:
        """Sums this turn's answers, resets and lone batches into the loop's metric buffer."""
        answered, self._answered = self._answered, []
        buffer = self.buffer
        by_status: dict[int, int] = {}
        for status, _ in answered:
            by_status[status] = by_status.get(status, 0) + 1
        buffer.observe_each(self.latency, [seconds for _, seconds in answered])
        for status, n in by_status.items():
            child = self._by_status.get(status)
            if child is None:
                child = self._by_status[status] = self.metrics.requests.labels(self.config.name, str(status))
            buffer.inc(child, n)
        if self.unwritten_resets:
            buffer.inc(self.resets, self.unwritten_resets)
            self.unwritten_resets = 0
        if self.unwritten_lone_batches:
            buffer.observe(self.batch_size, 1, self.unwritten_lone_batches)
            self.unwritten_lone_batches = 0

    def _count_busy(self, delta: int) -> None:
        self.buffer.inc(self.busy, delta)

    def _batch_started(self) -> None:
        # A batch starts and ends within one loop turn: not counted in tenantvm_pool_busy.
        restrict_once()

    def _vcpu_batch_ended(self, served: int) -> None:
        # A job of a vCPU thread ended (on the loop, from its completion): its size, lone
        # calls included, in the same histogram as the inline batches.
        self.buffer.observe(self.batch_size, served)

    def _batch_ended(self, served: int) -> None:
        if served == 1:
            self.unwritten_lone_batches += 1  # written with the request's count
        else:
            self.buffer.observe(self.batch_size, served)


#: Requests a new instance of an ephemeral tenant serves before it joins the pool (see
#: :func:`priming_requests`).  A new CPython hello instance's first request takes 50-100 ms,
#: its second 10-30 ms, its third ~0.3 ms (``bench/first_calls.py``, docs/platform.md).
PRIME_CALLS = 3


def priming_requests(tc: tconfig.TenantConfig) -> list[Request]:
    """What a new instance of ``tc`` serves before it joins the pool (:meth:`TenantVM.prime`).

    The first :data:`PRIME_CALLS` of the tenant's warm-up requests (repeated when it has fewer):
    the requests its tenants file declares fit to run before serving.  None for a stateful
    tenant (priming would change its state) or one without warm-up requests.
    """
    if not tc.ephemeral or not tc.warmup:
        return []
    declared = [Request(w.method, w.path, w.query, list(w.headers), w.body) for w in tc.warmup]
    return [declared[i % len(declared)] for i in range(PRIME_CALLS)]


def _identity(tc: tconfig.TenantConfig, server: tconfig.ServerConfig, queue: CompletionQueue | None) -> tuple[Any, ...]:
    """What decides whether a reload must boot ``tc`` again (see TenantRuntime.identity)."""
    digest = hashlib.sha256()
    with open(tc.program, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    inline = tc.timeout_ms <= server.inline_timeout_ms or queue is None
    return (tc, digest.hexdigest(), inline, server.batch_budget_us)


#: This process's bridge to the key-value store, by ([server] kv, kv_timeout_ms): made once,
#: before any thread of the process runs a guest (its threads must not inherit the seccomp
#: filter), and kept for the process's life (a reload that changes ``kv`` needs a restart).
_kv_bridges: dict[tuple[str | None, int], Any] = {}


def _kv_bridge(server: tconfig.ServerConfig) -> Any:
    """The process's ``KvBridge`` for ``server``'s store (see :mod:`tenantvm.kv`)."""
    from tenantvm.kv import open_bridge

    key = (server.kv, server.kv_timeout_ms)
    if key not in _kv_bridges:
        if _kv_bridges:
            log.warning("[server] kv changed: the new store is used only after a restart")
            return next(iter(_kv_bridges.values()))
        _kv_bridges[key] = open_bridge(server.kv, timeout_ms=server.kv_timeout_ms)
    return _kv_bridges[key]


def _with_kv(tenant: Tenant, cfg: tconfig.TenantConfig, server: tconfig.ServerConfig) -> Tenant:
    """``tenant`` with the server's key-value store, its keys in the namespace ``cfg.name``."""
    return tenant.with_kv(_kv_bridge(server), cfg.name, max_ops=server.kv_max_ops, max_value=server.kv_max_value_bytes)


def _boot(cfg: tconfig.TenantConfig, run: rundir.RunDir | None) -> Tenant:
    shm = run.shared_memory_path(cfg.name) if run is not None and cfg.shared_memory_kb else None
    if cfg.snapshot is not None:
        tenant = _from_snapshot(cfg, shm)
        if tenant is not None:
            return tenant
    kwargs = cfg.tenant_kwargs(shm)
    return Tenant(kwargs.pop("program"), **kwargs)


def _from_snapshot(cfg: tconfig.TenantConfig, shm: Path | None) -> Tenant | None:
    """The tenant from its snapshot file, or None (then it boots) when there is none fit to use."""
    assert cfg.snapshot is not None
    if not cfg.snapshot.exists():
        log.warning(
            "tenant %s: no snapshot file %s: booting (make it with `tenantvm snapshot`)", cfg.name, cfg.snapshot
        )
        return None
    try:
        tenant = Tenant.from_snapshot(cfg.snapshot, shared_memory_path=shm)
    except SnapshotFileError as e:
        log.warning("tenant %s: snapshot file refused (%s): %s; booting", cfg.name, e.reason, e)
        return None
    made = (tenant.memory_mb, tenant.ephemeral, round(tenant.timeout * 1000))
    wanted = (cfg.memory_mb, cfg.ephemeral, cfg.timeout_ms)
    if made != wanted:
        log.warning(
            "tenant %s: snapshot file %s was made with other settings (memory_mb, ephemeral, timeout_ms: %s, "
            "not %s): booting",
            cfg.name,
            cfg.snapshot,
            made,
            wanted,
        )
        return None
    log.info("tenant %s: started from its snapshot file %s", cfg.name, cfg.snapshot)
    return tenant


class TenantServer:
    """Everything one worker process serves: the tenants file, the tenants and their pools."""

    def __init__(
        self,
        cfg: tconfig.TenantsFile,
        metrics: Metrics,
        tenants: dict[str, TenantRuntime],
        run: rundir.RunDir | None,
    ) -> None:
        self.metrics = metrics
        self.run = run
        #: Where the vCPU threads of new instances complete (None: every call inline).
        self.queue: CompletionQueue | None = None
        self._use(cfg, tenants)
        #: Completed reloads (swaps) in this worker.
        self.reloads = 0
        self._draining: set[asyncio.Task[None]] = set()

    def _use(self, cfg: tconfig.TenantsFile, tenants: dict[str, TenantRuntime]) -> None:
        """Serves ``tenants`` from now on (one assignment per attribute: atomic on the loop)."""
        default = tenants[cfg.server.default_tenant] if cfg.server.default_tenant else None
        router: HostRouter[TenantRuntime] = HostRouter(
            {h: rt for rt in tenants.values() for h in rt.config.hosts}, default
        )
        self.config = cfg
        self.tenants = tenants
        self.router = router
        self.route = router.route
        self.retry_after = str(cfg.server.retry_after_s).encode()

    @classmethod
    def start(
        cls, config_file: str | os.PathLike[str] | None = None, queue: CompletionQueue | None = None
    ) -> TenantServer:
        """Reads the tenants file, boots every tenant and fills the pools (blocking).

        Without ``queue`` every tenant's calls run on the event loop.

        Raises:
            TenantsFileError: The file is invalid.
            RuntimeError: A tenant failed to boot (the message names it).
        """
        cfg = tconfig.load(tconfig.config_path(config_file))
        for name, why in cfg.skipped:
            log.warning("tenant %s is left out (optional): %s", name, why)
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
            # Changes made through the admin API last as long as the server: a worker started
            # later (Granian respawned one) serves them too.
            overrides = Control(run.path).overrides()
            if overrides:
                cfg = tconfig.load(cfg.path, overrides)
            mp = multiprocess_dir()
            if mp:
                Path(mp).mkdir(parents=True, exist_ok=True)
            metrics = Metrics()
            _kv_bridge(cfg.server)
            tenants: dict[str, TenantRuntime] = {}
            for tc in cfg.tenants:
                tenants[tc.name] = cls._start_tenant(tc, cfg.server, run, metrics, queue)
                metrics.tenant_version.labels(tc.name).set(1)
                metrics.pool_busy.labels(tc.name).set(0)
            metrics.workers.set(1)
        except BaseException:
            if run is not None:
                run.close()
            raise
        server = cls(cfg, metrics, tenants, run)
        server.queue = queue
        return server

    def stage(self, cfg: tconfig.TenantsFile) -> dict[str, TenantRuntime]:
        """Boots the tenants of ``cfg`` that are new or changed (blocking, off the loop).

        Returns them by name; nothing changes in what the worker serves until :meth:`swap`.

        Raises:
            RuntimeError: A tenant failed to boot (the message names it); the others booted
                for this reload are closed.
        """
        staged: dict[str, TenantRuntime] = {}
        try:
            for tc in cfg.tenants:
                try:
                    identity = _identity(tc, cfg.server, self.queue)
                except OSError as e:
                    raise RuntimeError(f"tenant '{tc.name}': cannot read {tc.program}: {e.strerror or e}") from e
                old = self.tenants.get(tc.name)
                if old is not None and old.identity == identity:
                    continue
                assert self.run is not None
                rt = self._start_tenant(tc, cfg.server, self.run, self.metrics, self.queue, identity)
                rt.version = old.version + 1 if old is not None else 1
                staged[tc.name] = rt
        except BaseException:
            for rt in staged.values():
                rt.pool.close()
            raise
        return staged

    def swap(self, cfg: tconfig.TenantsFile, staged: dict[str, TenantRuntime]) -> list[str]:
        """Serves ``cfg`` with the ``staged`` tenants (call on the event loop); returns removed names.

        New requests go to the new runtimes at once; requests under way finish on the old
        ones, which are drained and closed in the background (:meth:`_drain`).
        """
        tenants = {tc.name: staged.get(tc.name) or self.tenants[tc.name] for tc in cfg.tenants}
        replaced = [rt for name, rt in self.tenants.items() if tenants.get(name) is not rt]
        removed = [name for name in self.tenants if name not in tenants]
        self._use(cfg, tenants)
        self.reloads += 1
        for rt in staged.values():
            self.metrics.tenant_version.labels(rt.config.name).set(rt.version)
        for name in removed:
            self.metrics.pool_instances.labels(name).set(0)
        loop = asyncio.get_running_loop()
        for rt in replaced:
            task = loop.create_task(self._drain(rt))
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)
        return removed

    #: How often a drain looks whether the old instances are all back (s).
    DRAIN_POLL = 0.02

    async def _drain(self, rt: TenantRuntime) -> None:
        """Waits until no request uses ``rt``'s instances any more, then frees them."""
        pool = rt.pool
        while rt.active or pool.busy or pool.waiting:
            await asyncio.sleep(self.DRAIN_POLL)
        pool.close()
        log.info("tenant %s: version %d drained and freed", rt.config.name, rt.version)
        del rt, pool
        # The runtime's callers refer back to it (cycles): collect them now, so that the VMs'
        # memory and file descriptors go back at once rather than at some later collection.
        gc.collect()

    @property
    def draining(self) -> int:
        """Old tenant versions still finishing their requests."""
        return len(self._draining)

    @staticmethod
    def _start_tenant(
        tc: tconfig.TenantConfig,
        server: tconfig.ServerConfig,
        run: rundir.RunDir,
        metrics: Metrics,
        queue: CompletionQueue | None,
        identity: tuple[Any, ...] | None = None,
    ) -> TenantRuntime:
        started = time.perf_counter()
        inline = tc.timeout_ms <= server.inline_timeout_ms or queue is None
        try:
            if identity is None:
                identity = _identity(tc, server, queue)
            tenant = _with_kv(_boot(tc, run), tc, server)
            priming = priming_requests(tc)

            def make(primed: bool = not inline) -> Any:
                # Inline instances are primed only here, on the thread that booted the tenant
                # (its warm-up ran there too); a replacement is made on a worker thread, which
                # must not run guest code before it restricts itself.  A vCPU thread primes its
                # own instance, under its seccomp filter.
                vm = tenant.instance() if inline else AsyncTenantVM(tenant, queue)  # type: ignore[arg-type]
                if primed and priming:
                    vm.prime(priming)
                return vm

            instances: list[Any] = [make(True) for _ in range(tc.pool_size)]
        except Exception as e:
            raise RuntimeError(f"tenant '{tc.name}' ({tc.program}) failed to boot: {type(e).__name__}: {e}") from e
        replacements = metrics.replacements.labels(tc.name)
        pool = Pool(tc.name, make, tc.pool_size, instances, on_replace=replacements.inc)
        rt = TenantRuntime(
            tc,
            tenant,
            pool,
            inline,
            metrics,
            batch_budget=server.batch_budget_us / 1e6,
            identity=identity,
            booted_at=time.time(),
            boot_seconds=time.perf_counter() - started,
        )
        metrics.pool_instances.labels(tc.name).set(tc.pool_size)
        log.info(
            "tenant %s: booted in %.1f ms, %d instance(s), %s, %s calls, hosts %s",
            tc.name,
            (time.perf_counter() - started) * 1000,
            tc.pool_size,
            tc.mode,
            "inline" if inline else "on vCPU threads",
            ", ".join(tc.hosts),
        )
        return rt

    def close(self) -> None:
        """Closes the pools and releases the run directory (removed by the last worker)."""
        for rt in self.tenants.values():
            rt.pool.close()
        self.metrics.process_exit()
        if self.run is not None:
            self.run.close()

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
