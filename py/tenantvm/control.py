"""The control files of a running server: how ``tenantvm reload`` reaches every worker.

A server has several worker processes (forked by Granian); a reload must reach all of them,
whoever asks for it (``tenantvm reload``, SIGHUP to ``tenantvm serve``, the admin API in one
of the workers).  Signals cannot be relied on for that (Granian owns the workers' signal
handling), so the request goes through files in the server's run directory
(:mod:`tenantvm.rundir`)::

    control/config           the tenants file the server serves (its absolute path)
    control/generation       a number, raised by one for every reload request
    control/workers/<pid>    each live worker's state (JSON, see WorkerStatus)
    control/overrides/<t>    per-tenant changes made through the admin API (JSON)
    control/uploads/<file>   programs uploaded through the admin API
    control/lock             flock: one writer of generation and overrides at a time

Every worker watches ``generation`` (a ``stat`` every :data:`POLL_INTERVAL`) and, when it
rises, re-reads the tenants file and reloads (:mod:`tenantvm.reloader`), then writes its
status with the generation it reached and the outcome.  ``tenantvm reload`` raises the
generation and waits until every live worker reports it.  Every file is written whole to a
temporary name and renamed over the old one, so a reader sees the old or the new content.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "POLL_INTERVAL",
    "Control",
    "ReloadOutcome",
    "WorkerStatus",
    "atomic_write",
]

#: How often a worker looks at the generation file (s).
POLL_INTERVAL = 0.2


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Writes ``data`` to ``path`` whole: a reader sees the old file or the new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass
class ReloadOutcome:
    """What one worker's reload did.

    Attributes:
        ok: True if the worker now serves the new tenants file (or nothing changed).
        message: What happened, one line (the reason when it failed).
        booted: Tenants booted and swapped in (new or changed).
        removed: Tenants no longer served.
        problems: The tenants file's problems, when it was invalid.
        ms: How long the reload took.
    """

    ok: bool
    message: str
    booted: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    ms: float = 0.0


@dataclass
class WorkerStatus:
    """A worker's state, as written to ``control/workers/<pid>``.

    Attributes:
        pid: The worker process.
        generation: The last generation it handled.
        outcome: What its last reload did (None before the first).
        versions: Each tenant's version in this worker (1 at start, +1 per swap).
    """

    pid: int
    generation: int
    outcome: ReloadOutcome | None = None
    versions: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerStatus:
        """The status from its JSON form."""
        outcome = data.get("outcome")
        return cls(
            pid=int(data["pid"]),
            generation=int(data["generation"]),
            outcome=ReloadOutcome(**outcome) if outcome else None,
            versions={str(k): int(v) for k, v in data.get("versions", {}).items()},
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Control:
    """The control files of the server whose run directory is ``run_dir``."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(run_dir) / "control"
        self.generation_file = self.dir / "generation"
        self.config_file = self.dir / "config"
        self.workers_dir = self.dir / "workers"
        self.overrides_dir = self.dir / "overrides"
        self.uploads_dir = self.dir / "uploads"

    def create(self) -> None:
        """Makes the directories (idempotent; every worker calls it)."""
        for d in (self.dir, self.workers_dir, self.overrides_dir, self.uploads_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)

    def exists(self) -> bool:
        """Whether a server set up these files."""
        return self.dir.is_dir()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Holds the control lock (across processes) for the block."""
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # --- the tenants file ---------------------------------------------------------------------

    def set_config(self, path: Path) -> None:
        """Records the tenants file the server serves."""
        atomic_write(self.config_file, str(path).encode())

    def config(self) -> Path | None:
        """The tenants file the server serves, or None if not recorded."""
        try:
            return Path(self.config_file.read_text())
        except OSError:
            return None

    # --- generation ---------------------------------------------------------------------------

    def generation(self) -> int:
        """The current generation (0 before the first reload request)."""
        try:
            return int(self.generation_file.read_text() or 0)
        except (OSError, ValueError):
            return 0

    def generation_stamp(self) -> tuple[int, int] | None:
        """A cheap change detector of the generation file (inode, mtime), None if absent."""
        try:
            st = os.stat(self.generation_file)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns

    def request_reload(self, *, holding_lock: bool = False) -> int:
        """Raises the generation by one (every worker then reloads); returns the new one.

        ``holding_lock``: the caller holds :meth:`locked` already (flock is per open file: taking
        it again here would wait for ourselves).
        """
        with contextlib.nullcontext() if holding_lock else self.locked():
            g = self.generation() + 1
            atomic_write(self.generation_file, str(g).encode())
            return g

    # --- workers ------------------------------------------------------------------------------

    def write_status(self, status: WorkerStatus) -> None:
        """Publishes a worker's state."""
        atomic_write(self.workers_dir / str(status.pid), json.dumps(asdict(status)).encode())

    def remove_status(self, pid: int) -> None:
        """Forgets a worker (it stops)."""
        with contextlib.suppress(OSError):
            (self.workers_dir / str(pid)).unlink()

    def statuses(self) -> list[WorkerStatus]:
        """The states of the live workers."""
        out = []
        try:
            entries = list(self.workers_dir.iterdir())
        except OSError:
            return out
        for p in entries:
            if not p.name.isdigit() or not _alive(int(p.name)):
                continue
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                out.append(WorkerStatus.from_json(json.loads(p.read_text())))
        return sorted(out, key=lambda s: s.pid)

    def wait(self, generation: int, timeout: float) -> list[WorkerStatus] | None:
        """The live workers' states once all of them handled ``generation``; None on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            statuses = self.statuses()
            if statuses and all(s.generation >= generation for s in statuses):
                return statuses
            if time.monotonic() >= deadline:
                return None
            time.sleep(POLL_INTERVAL / 2)

    # --- admin API overrides ------------------------------------------------------------------

    def overrides(self) -> dict[str, dict[str, Any]]:
        """Per-tenant settings set through the admin API (tenant -> tenants-file keys)."""
        out: dict[str, dict[str, Any]] = {}
        try:
            entries = list(self.overrides_dir.iterdir())
        except OSError:
            return out
        for p in entries:
            if p.name.startswith("."):
                continue
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(p.read_text())
                if isinstance(data, dict):
                    out[p.name] = data
        return out

    def override(self, tenant: str) -> dict[str, Any] | None:
        """One tenant's override, or None."""
        return self.overrides().get(tenant)

    def set_override(self, tenant: str, settings: dict[str, Any] | None) -> None:
        """Replaces (None: removes) a tenant's override."""
        path = self.overrides_dir / tenant
        if settings is None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        else:
            atomic_write(path, json.dumps(settings).encode())

    def store_upload(self, tenant: str, data: bytes) -> Path:
        """Writes an uploaded program (atomically, read+execute only); returns its path."""
        import hashlib

        path = self.uploads_dir / f"{tenant}-{hashlib.sha256(data).hexdigest()[:16]}"
        if not path.exists():
            atomic_write(path, data, mode=0o500)
        return path
