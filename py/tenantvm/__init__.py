r"""tenantvm: run untrusted Linux x86-64 programs inside tiny KVM VMs.

>>> import tenantvm
>>> result = tenantvm.run("apps/build/hello.glibc")  # doctest: +SKIP
>>> result.exit_code, result.stdout  # doctest: +SKIP
(0, b'Hello, world!\n')

What a program does wrong is raised as a :class:`GuestError` (:class:`GuestFault`,
:class:`GuestTimeout`, :class:`GuestOutOfMemory`); host-side problems as
:class:`InvalidProgram`, :class:`ConfigError`, :class:`KvmUnavailable` or
:class:`HostError`.  All are :class:`TenantVMError`.
"""

from importlib import metadata as _metadata

from tenantvm.errors import (
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
from tenantvm.runner import RunResult, run
from tenantvm.tenant import InstanceStats, Request, Response, Tenant, TenantVM

try:
    __version__: str = _metadata.version("tenantvm")
except _metadata.PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = [
    "ConfigError",
    "GuestError",
    "GuestFault",
    "GuestOutOfMemory",
    "GuestTimeout",
    "HostError",
    "InstanceStats",
    "InvalidProgram",
    "KvmUnavailable",
    "NoResponse",
    "Request",
    "RequestTooLarge",
    "Response",
    "ResponseTooLarge",
    "RunResult",
    "SnapshotFileError",
    "Tenant",
    "TenantVM",
    "TenantVMError",
    "__version__",
    "run",
]
