r"""Tenants: boot a program once, snapshot it, serve requests from instances of the snapshot.

>>> from tenantvm import Request, Tenant
>>> tenant = Tenant("apps/build/hello")  # doctest: +SKIP
>>> vm = tenant.instance()  # doctest: +SKIP
>>> vm.call(Request(path="/")).body  # doctest: +SKIP
b'Hello World!'

A tenant program initialises, then loops on ``wait_for_request()`` / ``respond()`` (see
``docs/guest-abi.md``).  Its first ``wait_for_request`` freezes the VM: that state is the
snapshot.  In ephemeral mode (the default) every instance is reset to the snapshot after
every request; in stateful mode it keeps its state between requests (and is reset only
after a failed request).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tenantvm import _native
from tenantvm.errors import ConfigError, TenantVMError
from tenantvm.runner import (
    DEFAULT_TMP_MB,
    StrOrBytes,
    _args,
    _bytes_arg,
    _env,
    _fs_args,
    _memory_mb,
    _program_path,
    _timeout,
    syscall_name,
)

__all__ = ["InstanceStats", "Request", "Response", "Tenant", "TenantVM"]

Headers = Sequence[tuple[StrOrBytes, StrOrBytes]] | Mapping[StrOrBytes, StrOrBytes]


def _b(value: StrOrBytes) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise ConfigError(f"expected str or bytes, not {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class Request:
    """A request for a tenant program.

    Attributes:
        method: e.g. ``"GET"``.
        path: e.g. ``"/items/1"``.
        query: The query string, without the ``?``.
        headers: Names and values, in order (a mapping or a sequence of pairs; duplicates
            allowed in the sequence form).
        body: The body.
    """

    method: StrOrBytes = "GET"
    path: StrOrBytes = "/"
    query: StrOrBytes = b""
    headers: Headers = ()
    body: bytes = b""

    def _native_args(self) -> NativeArgs:
        """The arguments of the native call, converted as little as possible.

        A list or tuple of headers is passed as it is: the native side takes pairs of bytes
        and refuses anything else with TypeError (see :func:`with_native_args`).
        """
        m, p, q, h, body = self.method, self.path, self.query, self.headers, self.body
        return (
            m if type(m) is bytes else _b(m),
            p if type(p) is bytes else _b(p),
            q if type(q) is bytes else _b(q),
            h if type(h) is list or type(h) is tuple else self._headers(),
            body if type(body) is bytes else _b(body),
        )

    def _strict_native_args(self) -> NativeArgs:
        """The arguments of the native call, every value converted (ConfigError if it cannot be)."""
        return (_b(self.method), _b(self.path), _b(self.query), self._headers(), _b(self.body))

    def _headers(self) -> list[tuple[bytes, bytes]]:
        items = self.headers.items() if isinstance(self.headers, Mapping) else self.headers
        return [(_b(k), _b(v)) for k, v in items]


#: A request as the native calls take it: (method, path, query, headers, body).
NativeArgs = tuple[bytes, bytes, bytes, Any, bytes]
_T = TypeVar("_T")


def with_native_args(call: Callable[[Callable[[Request], NativeArgs]], _T]) -> _T:
    """Runs ``call(args)``, where ``args`` turns a :class:`Request` into native arguments.

    First with the cheap conversion; if the native side refuses the headers (TypeError,
    raised before anything ran or was submitted), again with the strict one, which raises
    ConfigError for values of no usable type.
    """
    try:
        return call(Request._native_args)
    except TypeError:
        return call(Request._strict_native_args)


@dataclass(frozen=True, slots=True)
class Response:
    """A tenant program's response.

    Attributes:
        status: The status code the program gave (not validated here).
        headers: Names and values, as the program gave them.
        body: The body.
        stdout: What the program wrote to stdout while handling the request.
        stderr: What it wrote to stderr.
        exits: VM exits during the call (1 for an ephemeral request that made no host calls).
    """

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = field(repr=False)
    stdout: bytes = field(default=b"", repr=False)
    stderr: bytes = field(default=b"", repr=False)
    exits: int = 0

    def header(self, name: str) -> bytes | None:
        """The first header named ``name`` (ASCII case-insensitive), or None."""
        wanted = name.lower().encode()
        for k, v in self.headers:
            if k.lower() == wanted:
                return v
        return None


#: A tenant's configuration when not given, from the VMM (``vmm::TenantConfig::new``): the one
#: source of these defaults for :class:`Tenant` and the tenants file.
DEFAULTS: dict[str, Any] = dict(_native.TENANT_DEFAULTS)

#: The :class:`InstanceStats` fields that count system calls (by number natively, by name here).
_SYSCALL_COUNTS = ("syscalls", "unsupported_syscalls", "host_syscalls")


@dataclass(frozen=True, slots=True)
class InstanceStats:
    """Counters of a :class:`TenantVM`.

    Attributes:
        calls: Requests served (successful or not).
        errors: Requests that failed.
        entries: ``KVM_RUN`` calls.
        exits: VM exits (returns from ``KVM_RUN``).
        last_call_exits: Exits during the last call.
        resets: Resets to the snapshot.
        pages_restored: Pages copied back from the snapshot by all resets.
        reset_time: Seconds spent resetting.
        last_reset: The last reset: ``pages_restored``, ``guest_pages``, ``kernel_pages``,
            ``hot_pages``, ``duration`` (s).
        syscalls: System calls by name (host and in-guest).
        unsupported_syscalls: System calls answered with ``-ENOSYS``, by name.
        host_syscalls: System calls the host answered, by name: each cost a VM exit (the
            guest kernel answers the others itself, see ``docs/platform.md``).
        create_time: Seconds it took to create the instance.
        create_steps: Each step of creating it as ``(name, seconds)``, in order (for
            benchmarks).
        batches: Batches run by :meth:`TenantVM.call_batch`.
        guest_resets: Resets done inside the VM between batched requests.
        guest_pages_restored: Pages those copied back.
        guest_pages_reprotected: Pages whose Dirty bit those cleared, so that the next write
            to each is seen (a trapped page-table write and a write fault under PVM).
        starvation_grants: Time limits moved because a light request's thread had waited for
            a CPU (the host was busy), see ``docs/platform.md``.
        host_stalls: Seconds of CPU time the host took on the instance's thread while it ran
            the guest (a stall of the hypervisor below, interrupt handling), not charged to
            any request's time limit (``docs/platform.md``).
    """

    calls: int
    errors: int
    entries: int
    exits: int
    last_call_exits: int
    resets: int
    pages_restored: int
    reset_time: float
    last_reset: dict[str, float]
    syscalls: dict[str, int]
    unsupported_syscalls: dict[str, int]
    host_syscalls: dict[str, int]
    create_time: float
    create_steps: list[tuple[str, float]]
    batches: int
    guest_resets: int
    guest_pages_restored: int
    guest_pages_reprotected: int
    starvation_grants: int
    host_stalls: float


def _positive_int(value: int, what: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{what} must be an int >= {minimum}, not {value!r}")
    return value


class Tenant:
    """A program booted to its first ``wait_for_request`` and frozen into a snapshot.

    Creating a Tenant boots the program (GIL released); :meth:`instance` makes VMs from it.
    Instances share the snapshot's memory copy-on-write.
    """

    def __init__(
        self,
        program: str | os.PathLike[str],
        args: Iterable[StrOrBytes] = (),
        env: Mapping[StrOrBytes, StrOrBytes] | None = None,
        *,
        memory_mb: int = DEFAULTS["memory_mb"],
        ephemeral: bool = DEFAULTS["ephemeral"],
        shared_memory_kb: int = 0,
        shared_memory_path: str | os.PathLike[str] | None = None,
        timeout: float = DEFAULTS["timeout"],
        boot_timeout: float = DEFAULTS["boot_timeout"],
        max_request_bytes: int = DEFAULTS["max_request_bytes"],
        max_response_bytes: int = DEFAULTS["max_response_bytes"],
        max_response_headers: int = DEFAULTS["max_response_headers"],
        max_response_header_bytes: int = DEFAULTS["max_response_header_bytes"],
        warmup: Iterable[Request] = (),
        output_limit: int = DEFAULTS["output_limit"],
        argv0: StrOrBytes | None = None,
        allow_read: Iterable[str | os.PathLike[str]] = (),
        mounts: Mapping[str | os.PathLike[str], str] | None = None,
        tmp_mb: int = DEFAULT_TMP_MB,
    ) -> None:
        """Boots ``program`` and snapshots it.

        Args:
            program: A Linux x86-64 executable (static or dynamically linked) that serves requests with the tenantvm
                API (``apps/sdk/tenantvm.h``).
            args: Arguments after ``argv[0]``.
            env: Environment (default: empty).
            memory_mb: Guest memory per instance, in MiB.
            ephemeral: Reset after every request (True) or keep state (False).
            shared_memory_kb: Memory shared by all instances (and processes using the same
                ``shared_memory_path``), mapped at ``0x7e0000000000``; 0 for none.
            shared_memory_path: File backing the shared memory (e.g. under ``/dev/shm``) so
                several processes share it; None keeps it private to this process.
            timeout: Time limit of one request, in seconds.
            boot_timeout: Time limit of booting (and warming up) to the snapshot.
            max_request_bytes: Largest encoded request (method, path, query, headers, body).
            max_response_bytes: Largest response body.
            max_response_headers: Most response headers.
            max_response_header_bytes: Largest total size of response header names and values.
            warmup: Requests served before the snapshot is taken (JIT and cache warm-up).
            output_limit: Most bytes of stdout/stderr kept per request.
            argv0: ``argv[0]``; default: the program path.
            allow_read: Host paths the program may read, at the same path (files it opens
                during init stay readable in every request; see docs/security.md).
            mounts: Host paths the program may read at another guest path (``{host: guest}``).
            tmp_mb: Size of the private in-memory ``/tmp`` in MiB (reset with the instance).

        Raises:
            FileNotFoundError, InvalidProgram, ConfigError: Bad program or arguments.
            GuestError: The program failed before its first ``wait_for_request``
                (:class:`~tenantvm.GuestFault`, :class:`~tenantvm.GuestTimeout`,
                :class:`~tenantvm.NoResponse` when it exited).
            KvmUnavailable, HostError: Host-side failures.
        """
        path = _program_path(program)
        argv = [_bytes_arg(argv0 if argv0 is not None else os.fspath(program), "argv0"), *_args(args)]
        self.program = path
        self.memory_mb = _memory_mb(memory_mb)
        self.ephemeral = bool(ephemeral)
        self.timeout = _timeout(timeout)
        shared_kb = _positive_int(shared_memory_kb, "shared_memory_kb", minimum=0)
        self._native = _native.Tenant(
            path,
            argv,
            _env(env),
            memory_mb=self.memory_mb,
            timeout=self.timeout,
            boot_timeout=_timeout(boot_timeout),
            ephemeral=self.ephemeral,
            shared_memory=shared_kb * 1024,
            shared_memory_path=os.fspath(shared_memory_path) if shared_memory_path is not None else None,
            max_request=_positive_int(max_request_bytes, "max_request_bytes", minimum=4096),
            max_response_body=_positive_int(max_response_bytes, "max_response_bytes", minimum=0),
            max_response_headers=_positive_int(max_response_headers, "max_response_headers", minimum=0),
            max_response_header_bytes=_positive_int(max_response_header_bytes, "max_response_header_bytes", minimum=0),
            warmup=[r._strict_native_args() for r in warmup],
            output_limit=_positive_int(output_limit, "output_limit", minimum=0),
            **_fs_args(allow_read, mounts, tmp_mb),
        )

    @classmethod
    def from_snapshot(
        cls, path: str | os.PathLike[str], *, shared_memory_path: str | os.PathLike[str] | None = None
    ) -> Tenant:
        """The tenant a snapshot file holds (see :meth:`write_snapshot`), started without booting.

        The file's RAM is mapped as the copy-on-write base of every instance; the tenant's
        settings are those it was booted with.  ``shared_memory_path`` replaces the file
        backing its shared memory (if it has any).

        Raises:
            SnapshotFileError: The file is not a snapshot file, is damaged or truncated, was made
                by another tenantvm build or on a host with CPU features this one lacks
                (``reason`` says which); nothing ran.
            KvmUnavailable, HostError: Host-side failures.
        """
        self = cls.__new__(cls)
        self._native = _native.Tenant.from_snapshot_file(
            os.fspath(path), os.fspath(shared_memory_path) if shared_memory_path is not None else None
        )
        self.program = os.fspath(path)
        self.memory_mb = int(self._native.memory_mb)
        self.ephemeral = bool(self._native.ephemeral)
        self.timeout = float(self._native.timeout)
        return self

    def with_kv(
        self,
        bridge: Any,
        namespace: str | bytes,
        *,
        max_key: int = 512,
        max_value: int = 65536,
        max_ops: int = 64,
    ) -> Tenant:
        """This tenant, whose instances made from now on reach the key-value store ``bridge``.

        ``bridge`` is a ``tenantvm._native.KvBridge`` (:func:`tenantvm.kv.open_bridge`); the
        keys of the guest's ``kv_*`` calls live in ``namespace`` (a server uses the tenant's
        name), so tenants with different namespaces never see each other's keys.  Limits:
        key and value sizes in bytes, KV calls per request (docs/guest-abi.md).
        """
        other = type(self).__new__(type(self))
        other.__dict__.update(self.__dict__)
        ns = namespace.encode() if isinstance(namespace, str) else bytes(namespace)
        other._native = self._native.with_kv(bridge, ns, max_key=max_key, max_value=max_value, max_ops=max_ops)
        return other

    def write_snapshot(self, path: str | os.PathLike[str]) -> None:
        """Writes the snapshot to the file ``path`` (whole, or not at all), for :meth:`from_snapshot`.

        Raises:
            SnapshotFileError: Its state cannot be written to a file, or writing failed.
        """
        self._native.write_snapshot_file(os.fspath(path))

    @property
    def boot_time(self) -> float:
        """Seconds it took to boot (and warm up) to the snapshot."""
        return float(self._native.boot_time)

    @property
    def load_steps(self) -> list[tuple[str, float]]:
        """Each step of loading this tenant from its snapshot file, as ``(name, seconds)``.

        In order, for benchmarks (``bench/snapshot_file.py``); empty for a booted tenant.
        """
        return list(self._native.load_steps)

    @property
    def resident_pages(self) -> int:
        """Pages of the snapshot that hold data."""
        return int(self._native.resident_pages)

    def instance(self) -> TenantVM:
        """Creates a VM at the snapshot's state (GIL released while it is created)."""
        return TenantVM(self, self._native.instance())

    def __repr__(self) -> str:
        mode = "ephemeral" if self.ephemeral else "stateful"
        return f"<Tenant {self.program!r} {mode} {self.memory_mb} MiB>"


class TenantVM:
    """One VM serving a tenant's requests, one at a time.

    :meth:`call` releases the GIL while the guest runs, so several threads can drive several
    instances in parallel.  Concurrent calls on the same instance are serialized.
    """

    def __init__(self, tenant: Tenant, native: Any) -> None:
        """Wraps a native instance (use :meth:`Tenant.instance`)."""
        self.tenant = tenant
        self._native = native

    def call(self, request: Request) -> Response:
        """Serves ``request`` and returns the program's response.

        Raises:
            RequestTooLarge: The request does not fit the tenant's limit (nothing ran).
            GuestTimeout: The request ran past the tenant's time limit.
            GuestFault: The program faulted, or passed bad memory to ``respond``.
            ResponseTooLarge: The response exceeded a limit.
            GuestOutOfMemory: The program ran out of memory and then failed.
            NoResponse: The program stopped (exited, was killed, waited again) without
                responding.
            HostError: The host failed; the instance is no longer usable.

        After any of these but HostError the instance is back at the snapshot and ready.
        """
        return Response(*with_native_args(lambda args: self._native.call(*args(request))))

    def call_batch(self, requests: Sequence[Request], budget: float | None = None) -> list[Response | TenantVMError]:
        """Serves ``requests`` in order, each exactly as :meth:`call` would, with fewer exits.

        For an ephemeral tenant the requests run up to 32 per ``KVM_RUN``: the guest kernel
        resets memory between them, and a batch of requests that only compute and respond
        costs one VM exit in all.  A request that makes a host system call, fails, or runs
        out of time is finished by the host as in :meth:`call`, and the batch goes on after
        it.  Each request keeps its own time limit.  Stateful tenants are served one call at
        a time.

        Args:
            requests: The requests, served in this order.
            budget: Seconds after which no further request starts (at least one always
                does): the returned list is then shorter, and the requests past its end did
                not run.  None: serve them all.

        Returns:
            One item per request served, in order: its :class:`Response`, or the exception
            :meth:`call` would have raised for it (returned, not raised).

        Raises:
            ValueError: ``budget`` is negative or not finite.
        """
        out: list[Response | TenantVMError] = []
        items = with_native_args(lambda args: self._native.call_batch([args(r) for r in requests], budget))
        for item in items:
            if isinstance(item, TenantVMError):
                out.append(item)
            else:
                status, headers, body, stdout, stderr, exits = item
                out.append(Response(status, headers, body, stdout, stderr, exits))
        return out

    def prime(self, requests: Iterable[Request]) -> None:
        """Serves ``requests`` once each and discards the results (ephemeral instances only).

        A new instance's first requests touch its pages for the first time (PVM's shadow page
        tables, the host's copy-on-write, the pages kept writable between resets): a CPython
        instance's first request costs tens of milliseconds, its third a fraction of one.
        Priming pays that before the instance serves.  The key-value store is off meanwhile,
        as during the warm-up before the snapshot; a stateful instance is left as it is.

        Raises:
            HostError: The host failed; the instance is no longer usable.  (Guest failures
                are ignored: the instance is reset after them.)
        """
        with_native_args(lambda args: self._native.prime([args(r) for r in requests]))

    def reset(self) -> None:
        """Restores the snapshot now (stateful instances)."""
        self._native.reset()

    @property
    def usable(self) -> bool:
        """False once a host-side failure made the instance unusable."""
        return bool(self._native.usable)

    def stats(self) -> InstanceStats:
        """The instance's counters."""
        return self._stats_from(self._native.stats())

    @staticmethod
    def _stats_from(s: dict[str, Any]) -> InstanceStats:
        # The native dict has exactly the dataclass's fields (tests check it); only the system
        # call counts change form, from numbers to names.
        named = {key: {syscall_name(k): v for k, v in sorted(s[key].items())} for key in _SYSCALL_COUNTS}
        return InstanceStats(**{**s, **named, "last_reset": dict(s["last_reset"])})

    def __repr__(self) -> str:
        return f"<TenantVM of {self.tenant!r}>"
