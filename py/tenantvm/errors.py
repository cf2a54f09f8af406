"""Exceptions raised by tenantvm.

Two families, mirroring the split in the VMM:

- host-side problems: the VM could not be built or driven (:class:`ConfigError`,
  :class:`InvalidProgram`, :class:`KvmUnavailable`, :class:`HostError`);
- what the guest program did (:class:`GuestError` and its subclasses), each carrying what is
  known about the run: its output, how long it took, which system calls it made.

Everything tenantvm raises on purpose is a :class:`TenantVMError`.  The native extension
raises the host-side classes defined here; it does not define exception classes of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict, Unpack

__all__ = [
    "ConfigError",
    "GuestError",
    "GuestFault",
    "GuestOutOfMemory",
    "GuestTimeout",
    "HostError",
    "InvalidProgram",
    "KvmUnavailable",
    "NoResponse",
    "RequestTooLarge",
    "ResponseTooLarge",
    "TenantVMError",
]


class TenantVMError(Exception):
    """Base class of every error tenantvm raises."""


class ConfigError(TenantVMError, ValueError):
    """An argument or configuration value is invalid (out of range, wrong type, too large)."""


class InvalidProgram(TenantVMError, ValueError):
    """The program file is not something tenantvm can run.

    For example: not an ELF file, truncated, not x86-64, or dynamically linked (tenantvm runs
    statically linked programs only).  The message says why.
    """


class KvmUnavailable(TenantVMError, OSError):
    """``/dev/kvm`` is missing, cannot be opened, or lacks a capability tenantvm needs."""


class HostError(TenantVMError, OSError):
    """A host-side operation failed (a KVM ioctl, mmap, a timer...).

    When the failure came with an OS error number it is in :attr:`errno`.
    """


class RequestTooLarge(TenantVMError, ValueError):
    """A request does not fit the tenant's request-size limit; it was not run.

    Attributes:
        size: Its encoded size in bytes.
        limit: The limit.
    """

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class RunInfo(TypedDict, total=False):
    """What is known about a run that ended in a :class:`GuestError` (keyword arguments)."""

    stdout: bytes
    stderr: bytes
    elapsed: float | None
    syscalls: Mapping[str, int] | None
    unsupported_syscalls: Mapping[str, int] | None
    exits: int | None


class GuestError(TenantVMError):
    """The guest program ended in a way that is not a normal exit.

    Attributes:
        stdout: What the program wrote to stdout before it stopped (empty when not captured).
        stderr: What it wrote to stderr.
        elapsed: Wall time of the run in seconds, or None when unknown.
        syscalls: System calls made, by name, or None when unknown.
        unsupported_syscalls: System calls that got ``-ENOSYS`` because tenantvm does not
            emulate them, by name, or None when unknown.
        exits: Number of VM exits during the run, or None when unknown.
    """

    def __init__(
        self,
        message: str,
        *,
        stdout: bytes = b"",
        stderr: bytes = b"",
        elapsed: float | None = None,
        syscalls: Mapping[str, int] | None = None,
        unsupported_syscalls: Mapping[str, int] | None = None,
        exits: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.stdout = stdout
        self.stderr = stderr
        self.elapsed = elapsed
        self.syscalls = dict(syscalls) if syscalls is not None else None
        self.unsupported_syscalls = dict(unsupported_syscalls) if unsupported_syscalls is not None else None
        self.exits = exits


class GuestFault(GuestError):
    """The program caused a CPU exception (page fault, illegal instruction, #GP, #DE...).

    Attributes:
        kind: ``"page_fault"``, ``"invalid_opcode"``, ``"general_protection"``,
            ``"divide_error"``, ``"exception"`` (another vector), ``"triple_fault"``,
            ``"bad_pointer"`` (a tenantvm API call was given memory the program cannot access)
            or ``"vm"`` (KVM could not run the guest).
        address: The faulting address (page faults, bad pointers), else None.
        rip: The instruction pointer, when known.
        vector: The exception vector for ``"exception"``, else None.
        error_code: The CPU's error code, when there is one.
        access: ``"read"``, ``"write"`` or ``"execute"`` for page faults, else None.
        details: Every field the VMM reported about the fault.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        address: int | None = None,
        rip: int | None = None,
        vector: int | None = None,
        error_code: int | None = None,
        access: str | None = None,
        details: Mapping[str, object] | None = None,
        **run_info: Unpack[RunInfo],
    ) -> None:
        super().__init__(message, **run_info)
        self.kind = kind
        self.address = address
        self.rip = rip
        self.vector = vector
        self.error_code = error_code
        self.access = access
        self.details = dict(details) if details is not None else {}


class GuestTimeout(GuestError):
    """The program did not finish in time, or would never finish (e.g. waits on itself).

    Attributes:
        timeout: The time limit in seconds.
        deadlock: True when the VMM found that the program could never finish, rather than
            stopping it at the time limit.
    """

    def __init__(self, message: str, *, timeout: float, deadlock: bool = False, **run_info: Unpack[RunInfo]) -> None:
        super().__init__(message, **run_info)
        self.timeout = timeout
        self.deadlock = deadlock


class GuestOutOfMemory(GuestError):
    """The program ended abnormally after its memory requests were refused.

    Attributes:
        memory_mb: The VM's memory size in MiB.
        exit_code: The program's exit status if it exited by itself (e.g. after malloc
            failed), else None.
    """

    def __init__(
        self, message: str, *, memory_mb: int, exit_code: int | None = None, **run_info: Unpack[RunInfo]
    ) -> None:
        super().__init__(message, **run_info)
        self.memory_mb = memory_mb
        self.exit_code = exit_code


class NoResponse(GuestError):
    """A request handler stopped without responding (request API)."""


class ResponseTooLarge(GuestError):
    """A response exceeded a configured limit (request API).

    Attributes:
        what: Which part: ``"body"``, ``"headers"`` or ``"header count"``.
        size: Its size.
        limit: The limit.
    """

    def __init__(self, message: str, *, what: str, size: int, limit: int, **run_info: Unpack[RunInfo]) -> None:
        super().__init__(message, **run_info)
        self.what = what
        self.size = size
        self.limit = limit
