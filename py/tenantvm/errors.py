"""Exceptions raised by tenantvm.

Two families, mirroring the split in the VMM:

- host-side problems: the VM could not be built or driven (:class:`ConfigError`,
  :class:`InvalidProgram`, :class:`KvmUnavailable`, :class:`HostError`), and a request that
  does not fit (:class:`RequestTooLarge`);
- what the guest program did (:class:`GuestError` and its subclasses), each carrying what is
  known about the run: its output and, for one-shot runs, how long it took and which system
  calls it made.

Everything tenantvm raises on purpose is a :class:`TenantVMError`.  The classes are defined
once, in the native extension (``crates/pyext/src/errors.rs``), where the VMM's errors are
converted into them in one function; this module is where users import them from.  Their
attributes are documented in ``tenantvm/_native.pyi``:

- :class:`RequestTooLarge`: ``size``, ``limit``;
- :class:`GuestError`: ``stdout``, ``stderr``, ``elapsed``, ``syscalls``,
  ``unsupported_syscalls``, ``exits`` (None when unknown);
- :class:`GuestFault`: ``kind``, ``address``, ``rip``, ``vector``, ``error_code``, ``access``,
  ``details``;
- :class:`GuestTimeout`: ``timeout``, ``deadlock``;
- :class:`GuestOutOfMemory`: ``memory_mb``, ``exit_code``;
- :class:`ResponseTooLarge`: ``what``, ``size``, ``limit``;
- :class:`SnapshotFileError`: ``reason`` (``not_a_snapshot``, ``version``, ``truncated``,
  ``corrupt``, ``host``, ``unsupported``, ``io``), ``path``.
"""

from __future__ import annotations

from tenantvm._native import (
    ConfigError,
    GuestError,
    GuestFault,
    GuestOutOfMemory,
    GuestTimeout,
    HostError,
    InvalidProgram,
    KvmUnavailable,
    NoResponse,
    RequestTooLarge,
    ResponseTooLarge,
    SnapshotFileError,
    TenantVMError,
)

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
    "SnapshotFileError",
    "TenantVMError",
]
