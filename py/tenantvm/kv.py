"""Key-value stores for tenants: the backends of the request API's ``kv_*`` calls.

The VMM links no database: a server opens one backend per worker process (:func:`open_store`,
from the tenants file's ``[server] kv``) and hands it to ``tenantvm._native.KvBridge``, which
runs the backend on threads of its own (the vCPU threads that make the calls are seccomp-
restricted: no sockets, no file opens) and bounds every call with a time limit.  Each tenant's
instances reach the store through :meth:`tenantvm.Tenant.with_kv`, which binds it to the
tenant's namespace: the guest names only keys, so one tenant never reaches another's.

Backends (all with the same semantics, those of Redis's ``GET``/``SET PX``/``INCRBY``/``DEL``):

- :class:`SqliteKv` (``kv = "sqlite:///path"``; the default): one SQLite file in WAL mode,
  shared by every worker process of one machine.
- :class:`RedisKv` (``kv = "redis://host:port/db"``, also ``rediss://`` and ``valkey://``):
  Redis or Valkey, shared by several machines; a pool of connections with timeouts.

A backend method raises ``ValueError`` when ``incr`` meets a value that is not a decimal
integer, ``OverflowError`` when the sum leaves the signed 64-bit range, and
:class:`KvUnavailable` when the store cannot answer (the guest sees EIO and answers 503).
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "DEFAULT_TIMEOUT_MS",
    "KvStore",
    "KvUnavailable",
    "RedisKv",
    "SqliteKv",
    "default_sqlite_path",
    "open_bridge",
    "open_store",
]

#: Longest a guest's KV call waits for the store by default (``[server] kv_timeout_ms``).
DEFAULT_TIMEOUT_MS = 1000
_I64 = (-(1 << 63), (1 << 63) - 1)
# What INCR accepts as an integer (Redis's rule: no sign but '-', no leading zeros or spaces).
_INT_RE = re.compile(rb"0|-?[1-9][0-9]{0,19}")


class KvUnavailable(Exception):
    """The store cannot be reached or failed to answer."""


class KvStore(Protocol):
    """What ``KvBridge`` calls: operations on the keys of one namespace (a tenant)."""

    def get(self, ns: bytes, key: bytes) -> bytes | None:
        """The value of ``key``, or None if it is not set (or expired)."""
        ...

    def set(self, ns: bytes, key: bytes, value: bytes, ttl_ms: int) -> None:
        """Sets ``key``; it expires after ``ttl_ms`` milliseconds unless that is 0."""
        ...

    def incr(self, ns: bytes, key: bytes, delta: int) -> int:
        """Adds ``delta`` to the integer at ``key`` (missing: 0) atomically; the new value."""
        ...

    def delete(self, ns: bytes, key: bytes) -> bool:
        """Removes ``key``; whether it was set."""
        ...

    def close(self) -> None:
        """Releases connections."""
        ...


def _as_int(value: bytes) -> int:
    if not _INT_RE.fullmatch(value):
        raise ValueError("the value is not an integer")
    n = int(value)
    if not _I64[0] <= n <= _I64[1]:
        raise ValueError("the value is not a 64-bit integer")
    return n


def default_sqlite_path() -> Path:
    """Where the default store lives: ``$XDG_STATE_HOME/tenantvm/kv.sqlite3`` (or ~/.local/state)."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(state) / "tenantvm" / "kv.sqlite3"


class SqliteKv:
    """A store in one SQLite file (WAL mode), shared by the processes of one machine.

    Each thread has its own connection; ``incr`` runs in an immediate transaction, so
    increments from every process are atomic.  Expired keys read as missing and are removed
    now and then by ``set``.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 5.0) -> None:
        """Uses the database at ``path`` (made if missing); waits up to ``timeout`` s for locks."""
        self.path = Path(path)
        self.timeout = timeout
        self._local = threading.local()
        self._sets = 0

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS kv (ns BLOB NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,"
                    " expires REAL, PRIMARY KEY (ns, key)) WITHOUT ROWID"
                )
            except (sqlite3.Error, OSError) as e:
                raise KvUnavailable(f"cannot open the SQLite store {self.path}: {e}") from e
            self._local.db = db
        return db

    def _run(self, fn: Any) -> Any:
        try:
            return fn(self._db())
        except sqlite3.Error as e:
            raise KvUnavailable(f"SQLite store {self.path}: {e}") from e

    @staticmethod
    def _live(db: sqlite3.Connection, ns: bytes, key: bytes) -> tuple[bytes, float | None] | None:
        row = db.execute("SELECT value, expires FROM kv WHERE ns = ? AND key = ?", (ns, key)).fetchone()
        if row is None or (row[1] is not None and row[1] <= time.time()):
            return None
        return bytes(row[0]), row[1]

    def get(self, ns: bytes, key: bytes) -> bytes | None:
        """See :class:`KvStore`."""
        found = self._run(lambda db: self._live(db, ns, key))
        return None if found is None else found[0]

    def set(self, ns: bytes, key: bytes, value: bytes, ttl_ms: int) -> None:
        """See :class:`KvStore`."""
        expires = time.time() + ttl_ms / 1000 if ttl_ms else None
        self._sets += 1
        sweep = self._sets % 1024 == 0

        def run(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?)", (ns, key, value, expires))
            if sweep:
                db.execute("DELETE FROM kv WHERE expires IS NOT NULL AND expires <= ?", (time.time(),))

        self._run(run)

    def incr(self, ns: bytes, key: bytes, delta: int) -> int:
        """See :class:`KvStore`."""

        def run(db: sqlite3.Connection) -> int:
            db.execute("BEGIN IMMEDIATE")
            try:
                found = self._live(db, ns, key)
                old, expires = (0, None) if found is None else (_as_int(found[0]), found[1])
                new = old + delta
                if not _I64[0] <= new <= _I64[1]:
                    raise OverflowError("increment or decrement would overflow")
                db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?)", (ns, key, str(new).encode(), expires))
                db.execute("COMMIT")
                return new
            except BaseException:
                db.execute("ROLLBACK")
                raise

        return int(self._run(run))

    def delete(self, ns: bytes, key: bytes) -> bool:
        """See :class:`KvStore`."""

        def run(db: sqlite3.Connection) -> bool:
            row = db.execute("DELETE FROM kv WHERE ns = ? AND key = ? RETURNING expires", (ns, key)).fetchone()
            return row is not None and (row[0] is None or row[0] > time.time())

        return bool(self._run(run))

    def close(self) -> None:
        """Closes this thread's connection (other threads' close when they end)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


class RedisKv:
    """A store in Redis or Valkey (``redis://host:port/db``), through the ``redis`` package.

    Connections come from a blocking pool (``max_connections``); connecting, each command and
    waiting for a free connection are all bounded by ``timeout`` seconds.  A tenant's key
    ``k`` is the Redis key ``tvm:<len(ns)>:<ns>:<k>`` (the length makes every (ns, k) pair
    distinct whatever bytes the names hold).
    """

    def __init__(self, url: str, *, timeout: float = 1.0, max_connections: int = 16) -> None:
        """Connects lazily to ``url`` (``valkey://`` is read as ``redis://``)."""
        try:
            import redis
        except ImportError as e:  # pragma: no cover - depends on the install
            raise KvUnavailable("the redis package is not installed: pip install 'tenantvm[redis]'") from e
        self._redis = redis
        if url.startswith("valkey://"):
            url = "redis://" + url[len("valkey://") :]
        elif url.startswith("valkeys://"):
            url = "rediss://" + url[len("valkeys://") :]
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url = url
        # No retries: a command retried after a timeout may run twice (an INCR counted twice).
        # A failure is the guest's to see (EIO: 503), and the next call uses a new connection.
        no_retry = Retry(NoBackoff(), 0)
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=no_retry,
        )
        self._client = redis.Redis(connection_pool=pool, retry=no_retry)

    @staticmethod
    def _key(ns: bytes, key: bytes) -> bytes:
        return b"tvm:%d:%s:%s" % (len(ns), ns, key)

    def _run(self, fn: Any) -> Any:
        redis = self._redis
        try:
            return fn(self._client)
        except redis.ResponseError as e:
            msg = str(e)
            if "overflow" in msg:
                raise OverflowError(msg) from e
            if "not an integer" in msg:
                raise ValueError(msg) from e
            raise KvUnavailable(f"Redis {self.url}: {msg}") from e
        except redis.RedisError as e:
            raise KvUnavailable(f"Redis {self.url}: {type(e).__name__}: {e}") from e

    def get(self, ns: bytes, key: bytes) -> bytes | None:
        """See :class:`KvStore`."""
        return self._run(lambda r: r.get(self._key(ns, key)))  # type: ignore[no-any-return]

    def set(self, ns: bytes, key: bytes, value: bytes, ttl_ms: int) -> None:
        """See :class:`KvStore`."""
        self._run(lambda r: r.set(self._key(ns, key), value, px=ttl_ms or None))

    def incr(self, ns: bytes, key: bytes, delta: int) -> int:
        """See :class:`KvStore`."""
        return int(self._run(lambda r: r.incrby(self._key(ns, key), delta)))

    def delete(self, ns: bytes, key: bytes) -> bool:
        """See :class:`KvStore`."""
        return bool(self._run(lambda r: r.delete(self._key(ns, key))))

    def close(self) -> None:
        """Closes the pool's connections."""
        self._client.close()


def open_store(url: str | None, *, timeout: float = DEFAULT_TIMEOUT_MS / 1000, base: Path | None = None) -> KvStore:
    """The backend ``url`` names (None: the default SQLite file).

    ``sqlite`` (the default file), ``sqlite:///abs/path``, ``sqlite:rel/path`` (relative to
    ``base``, the tenants file's directory), ``redis://``, ``rediss://``, ``valkey://``.
    """
    if url is None or url == "sqlite":
        return SqliteKv(default_sqlite_path(), timeout=max(timeout, 1.0))
    if url.startswith("sqlite:"):
        rest = url[len("sqlite:") :]
        path = Path(rest[2:] if rest.startswith("//") else rest)
        if not path.is_absolute() and base is not None:
            path = base / path
        return SqliteKv(path, timeout=max(timeout, 1.0))
    if url.startswith(("redis://", "rediss://", "valkey://", "valkeys://", "unix://")):
        return RedisKv(url, timeout=timeout)
    raise ValueError(f"unknown key-value store {url!r}: use sqlite:///path or redis://host:port/db")


def check_url(url: str) -> str | None:
    """Why ``url`` is not a store the server can use, or None."""
    if url == "sqlite" or url.startswith(("sqlite:", "redis://", "rediss://", "valkey://", "valkeys://", "unix://")):
        return None
    return "must be 'sqlite', 'sqlite:///path' or 'redis://host:port/db' (also rediss://, valkey://)"


def open_bridge(url: str | None, *, timeout_ms: int = DEFAULT_TIMEOUT_MS, base: Path | None = None) -> Any:
    """A ``tenantvm._native.KvBridge`` serving the store ``url`` names (see :func:`open_store`).

    Call it before the calling thread runs any guest: the bridge's threads inherit the seccomp
    filter of the thread that starts them.
    """
    from tenantvm import _native

    store = open_store(url, timeout=timeout_ms / 1000, base=base)
    return _native.KvBridge(store, timeout=timeout_ms / 1000)
