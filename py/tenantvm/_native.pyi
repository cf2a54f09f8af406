"""Type stubs of the native extension module (``crates/pyext``)."""

import os
from collections.abc import Mapping
from typing import Any, Literal, NotRequired, TypedDict, final

ExitKind = Literal["exited", "signaled", "fault", "timeout", "deadlock", "unexpected"]
FaultKind = Literal[
    "page_fault",
    "invalid_opcode",
    "general_protection",
    "divide_error",
    "exception",
    "triple_fault",
    "bad_pointer",
    "response_too_large",
    "vm",
]

class FaultInfo(TypedDict):
    """A guest fault: its kind, the VMM's message, and the variant's fields."""

    kind: FaultKind
    message: str
    address: NotRequired[int]
    rip: NotRequired[int]
    error_code: NotRequired[int]
    access: NotRequired[Literal["read", "write", "execute"]]
    vector: NotRequired[int]
    call: NotRequired[str]
    len: NotRequired[int]
    what: NotRequired[str]
    size: NotRequired[int]
    limit: NotRequired[int]

class TenantDefaults(TypedDict):
    """A tenant's configuration when not given (``vmm::TenantConfig::new``)."""

    memory_mb: int
    timeout: float
    boot_timeout: float
    ephemeral: bool
    max_request_bytes: int
    max_response_bytes: int
    max_response_headers: int
    max_response_header_bytes: int
    output_limit: int

#: The request API's system calls, number → ``tenantvm_<name>`` (from ``guest/layout.h``).
API_SYSCALLS: dict[int, str]
#: Most requests one ``Instance.call_batch`` runs per ``KVM_RUN``.
MAX_BATCH: int
TENANT_DEFAULTS: TenantDefaults

class RunDefaults(TypedDict):
    """A one-shot run's limits when not given (``RunConfig::new`` in the VMM)."""

    timeout: float
    memory_mb: int
    tmp_mb: int

RUN_DEFAULTS: RunDefaults

class DoctorReport(TypedDict):
    """The host's KVM as ``tenantvm doctor`` reports it."""

    platform: str
    guest_setup: str
    api_version: int
    capabilities: list[tuple[str, bool]]

class RoundTrip(TypedDict):
    """Median costs measured by :func:`measure_round_trip`, in microseconds."""

    exit_us: float
    vm_lifecycle_us: float

@final
class RunOutcome:
    """How a run ended (read-only)."""

    @property
    def exit_kind(self) -> ExitKind: ...
    @property
    def exit_code(self) -> int | None: ...
    @property
    def signal(self) -> int | None: ...
    @property
    def fault(self) -> FaultInfo | None: ...
    @property
    def message(self) -> str | None: ...
    @property
    def stdout(self) -> bytes: ...
    @property
    def stderr(self) -> bytes: ...
    @property
    def output_truncated(self) -> bool: ...
    @property
    def syscalls(self) -> dict[int, int]: ...
    @property
    def unsupported_syscalls(self) -> dict[int, int]: ...
    @property
    def elapsed(self) -> float: ...
    @property
    def exits(self) -> int: ...
    @property
    def memory_exhausted(self) -> bool: ...
    @property
    def out_of_memory(self) -> bool: ...
    @property
    def error(self) -> GuestError | None:
        """None after a normal exit; else the exception the failed run raises (not raised)."""

def run(
    path: str | os.PathLike[str],
    args: list[bytes],
    env: list[bytes],
    stdin: bytes | None,
    capture_output: bool,
    timeout: float,
    memory_mb: int,
    exe_path: bytes | None,
    allow_read: list[str] = ...,
    mounts: list[tuple[str, str]] = ...,
    tmp_mb: int = 16,
) -> RunOutcome:
    """Runs a static program in a fresh VM (GIL released); raises ``tenantvm.errors`` on host errors."""

def doctor_report() -> DoctorReport:
    """Describes the host's KVM; raises KvmUnavailable when there is none."""

def measure_round_trip(exits: int = 2000, samples: int = 5) -> RoundTrip:
    """Measures the cost of one VM exit round trip and of a minimal VM lifecycle (GIL released)."""

RawRequest = tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]], bytes]

class Tenant:
    """A booted tenant (vmm::Tenant): a snapshot that instances are made from."""

    def __init__(
        self,
        path: str,
        args: list[bytes],
        env: list[bytes],
        *,
        memory_mb: int,
        timeout: float,
        boot_timeout: float,
        ephemeral: bool,
        shared_memory: int,
        shared_memory_path: str | None,
        max_request: int,
        max_response_body: int,
        max_response_headers: int,
        max_response_header_bytes: int,
        warmup: list[RawRequest],
        output_limit: int,
        allow_read: list[str] = ...,
        mounts: list[tuple[str, str]] = ...,
        tmp_mb: int = 16,
    ) -> None: ...
    @staticmethod
    def from_snapshot_file(path: str | os.PathLike[str], shared_memory_path: str | None = None) -> Tenant: ...
    def write_snapshot_file(self, path: str | os.PathLike[str]) -> None: ...
    def instance(self) -> Instance: ...
    def worker(self, completions: Completions, sandbox: bool = True) -> Worker: ...
    @property
    def boot_time(self) -> float: ...
    @property
    def load_steps(self) -> list[tuple[str, float]]: ...
    @property
    def resident_pages(self) -> int: ...
    @property
    def ephemeral(self) -> bool: ...
    @property
    def timeout(self) -> float: ...
    @property
    def memory_mb(self) -> int: ...

class Completions:
    """Results of calls submitted to workers; readable fileno() means results are waiting."""

    def __init__(self) -> None: ...
    def fileno(self) -> int: ...
    def drain(self) -> list[tuple[int, bool, Any]]: ...

class Worker:
    """An instance on its own vCPU thread."""

    def submit(
        self, token: int, method: bytes, path: bytes, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None: ...
    def submit_batch(
        self,
        token: int,
        requests: list[tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]], bytes]],
        budget: float | None = None,
    ) -> None: ...
    @property
    def usable(self) -> bool: ...
    def reset(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...

class Instance:
    """One VM serving a tenant (vmm::Instance); calls are serialized."""

    def call(
        self, method: bytes, path: bytes, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, bytes, bytes, int]: ...
    def call_batch(
        self, requests: list[tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]], bytes]], budget: float | None = None
    ) -> list[tuple[int, list[tuple[bytes, bytes]], bytes, bytes, bytes, int] | Exception]: ...
    def reset(self) -> None: ...
    @property
    def usable(self) -> bool: ...
    def stats(self) -> dict[str, Any]: ...

def restrict_current_thread() -> None:
    """Installs the VMM's seccomp filter on the calling thread (irreversible)."""

# --- exceptions (made in crates/pyext/src/errors.rs; import them from tenantvm.errors) ----------

class TenantVMError(Exception):
    """Base class of every error tenantvm raises."""

class ConfigError(TenantVMError, ValueError):
    """An argument or configuration value is invalid (out of range, wrong type, too large)."""

class InvalidProgram(TenantVMError, ValueError):
    """The program file is not something tenantvm can run; the message says why."""

class KvmUnavailable(TenantVMError, OSError):
    """``/dev/kvm`` is missing, cannot be opened, or lacks a capability tenantvm needs."""

class HostError(TenantVMError, OSError):
    """A host-side operation failed; :attr:`errno` is set when it came with an OS error number."""

class RequestTooLarge(TenantVMError, ValueError):
    """A request does not fit the tenant's request-size limit; it was not run."""

    #: Its encoded size in bytes.
    size: int
    #: The limit.
    limit: int

class GuestError(TenantVMError):
    """The guest program ended in a way that is not a normal exit."""

    #: What the program wrote to stdout before it stopped (empty when not captured).
    stdout: bytes
    #: What it wrote to stderr.
    stderr: bytes
    #: Wall time of a one-shot run in seconds, else None.
    elapsed: float | None
    #: System calls a one-shot run made, by name, else None.
    syscalls: Mapping[str, int] | None
    #: System calls that got ``-ENOSYS`` because tenantvm does not emulate them, by name.
    unsupported_syscalls: Mapping[str, int] | None
    #: VM exits during a one-shot run, else None.
    exits: int | None

class GuestFault(GuestError):
    """The program caused a CPU exception, or passed bad memory to the request API."""

    #: ``"page_fault"``, ``"invalid_opcode"``, ``"general_protection"``, ``"divide_error"``,
    #: ``"exception"``, ``"triple_fault"``, ``"bad_pointer"`` or ``"vm"``.
    kind: FaultKind
    #: The faulting address (page faults, bad pointers), else None.
    address: int | None
    #: The instruction pointer, when known.
    rip: int | None
    #: The exception vector for ``"exception"``, else None.
    vector: int | None
    #: The CPU's error code, when there is one.
    error_code: int | None
    #: ``"read"``, ``"write"`` or ``"execute"`` for page faults, else None.
    access: str | None
    #: Every field the VMM reported about the fault.
    details: FaultInfo

class GuestTimeout(GuestError):
    """The program did not finish in time, or would never finish (e.g. waits on itself)."""

    #: The time limit in seconds.
    timeout: float
    #: True when the VMM found that the program could never finish.
    deadlock: bool

class GuestOutOfMemory(GuestError):
    """The program ended abnormally after its memory requests were refused."""

    #: The VM's memory size in MiB.
    memory_mb: int
    #: Its exit status if it exited by itself (e.g. after malloc failed), else None.
    exit_code: int | None

class NoResponse(GuestError):
    """A request handler stopped without responding."""

class SnapshotFileError(TenantVMError, ValueError):
    """A snapshot file was refused (or could not be written); nothing ran."""

    #: ``not_a_snapshot``, ``version``, ``truncated``, ``corrupt``, ``host``, ``unsupported``, ``io``.
    reason: str
    #: The file (None when not about one).
    path: str | None

class ResponseTooLarge(GuestError):
    """A response exceeded a configured limit."""

    #: ``"body"``, ``"headers"`` or ``"header count"``.
    what: str
    size: int
    limit: int
