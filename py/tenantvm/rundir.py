"""The run directory of one server: its metrics files and its tenants' shared-memory files.

Every worker process of a server must see the same files: the Prometheus multiprocess
directory (so that a scrape describes the whole server) and one shared-memory file per tenant
(so that a tenant's shared memory is shared by its instances in every worker).  They live in
one directory per server, ``/dev/shm/tenantvm-<master pid>-<master start time>/``::

    lock          every process using the directory holds a shared flock on it
    metrics/      PROMETHEUS_MULTIPROC_DIR
    shm/<tenant>  shared memory of each tenant that has some

The server is identified by its master process: ``tenantvm serve`` creates the directory for
itself and passes it to its workers in ``$TENANTVM_RUN_DIR``; workers started by a plain
``granian`` derive it from their parent (``os.getppid()``), the Granian master.  The start time
(from ``/proc``) makes the name unique even when a pid is reused.

Clean-up: the last process to close the directory (it gets the exclusive lock) removes it, so
a server leaves nothing behind when it stops; directories of servers that died without
cleaning up (killed) are removed by :func:`clean_stale`, which every server start calls.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from pathlib import Path

__all__ = ["RUN_DIR_ENV", "RunDir", "base_dir", "clean_stale", "running_servers", "server_dir"]

#: Environment variable with the run directory (set by ``tenantvm serve`` for its workers).
RUN_DIR_ENV = "TENANTVM_RUN_DIR"
_PREFIX = "tenantvm-"
_NAME_RE = re.compile(r"^tenantvm-(\d+)-(\d+)$")


def base_dir() -> Path:
    """Where run directories are made: ``/dev/shm`` (memory), else the temporary directory."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return Path(tempfile.gettempdir())


def _start_time(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks after boot), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) is in parentheses and may contain spaces: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[19])  # field 22 of the whole line


def server_dir(master_pid: int, base: Path | None = None) -> Path:
    """The run directory of the server whose master process is ``master_pid``."""
    start = _start_time(master_pid)
    return (base or base_dir()) / f"{_PREFIX}{master_pid}-{start or 0}"


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class RunDir:
    """A run directory in use by this process (holds a shared lock on it until :meth:`close`).

    Attributes:
        path: The directory.
        metrics: Its Prometheus multiprocess directory.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.metrics = path / "metrics"
        self._fd: int | None = fd

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RunDir:
        """Creates ``path`` if needed and takes a shared lock on it."""
        p = Path(path)
        for _ in range(100):
            p.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                fd = os.open(p / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:  # removed by its last user between mkdir and open
                continue
            fcntl.flock(fd, fcntl.LOCK_SH)
            # The last user may have removed the directory while we waited for the lock: make
            # sure the lock we hold is on the file that is there now.
            try:
                st = os.stat(p / "lock")
            except FileNotFoundError:
                os.close(fd)
                continue
            own = os.fstat(fd)
            if (own.st_dev, own.st_ino) != (st.st_dev, st.st_ino):
                os.close(fd)
                continue
            for sub in ("metrics", "shm"):
                (p / sub).mkdir(mode=0o700, exist_ok=True)
            return cls(p, fd)
        raise OSError(f"cannot lock the run directory {p}")

    def shared_memory_path(self, tenant: str) -> Path:
        """The file backing ``tenant``'s shared memory."""
        return self.path / "shm" / tenant

    def close(self, *, remove_if_last: bool = True) -> bool:
        """Releases the directory; removes it if no other process uses it.  True if removed."""
        fd, self._fd = self._fd, None
        if fd is None:
            return False
        removed = False
        try:
            if remove_if_last:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass
                else:
                    _remove(self.path)
                    removed = True
        finally:
            os.close(fd)
        return removed


def running_servers(base: Path | None = None) -> list[tuple[int, Path]]:
    """The run directories of servers whose master process runs: (master pid, directory)."""
    root = base or base_dir()
    found = []
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return found
    for d in entries:
        m = _NAME_RE.match(d.name)
        if m and d.is_dir() and not d.is_symlink() and _start_time(int(m.group(1))) == int(m.group(2)):
            found.append((int(m.group(1)), d))
    return found


def clean_stale(base: Path | None = None) -> list[Path]:
    """Removes stale run directories; returns them.

    A directory is stale when its server's master process is gone and no process uses it.
    """
    root = base or base_dir()
    removed: list[Path] = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for d in entries:
        m = _NAME_RE.match(d.name)
        if not m or not d.is_dir() or d.is_symlink():
            continue
        pid, start = int(m.group(1)), int(m.group(2))
        if _start_time(pid) == start:
            continue  # its server is running
        try:
            fd = os.open(d / "lock", os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            _remove(d)
            removed.append(d)
            continue
        except OSError:
            continue  # not ours (permissions): leave it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # a worker of that server still runs
        else:
            _remove(d)
            removed.append(d)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
    return removed
