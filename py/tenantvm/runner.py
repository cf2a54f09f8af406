r"""The one-shot API: run a program to completion in a fresh VM.

>>> import tenantvm
>>> result = tenantvm.run("apps/build/hello.glibc")  # doctest: +SKIP
>>> result.stdout  # doctest: +SKIP
b'Hello, world!\n'
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tenantvm import _native
from tenantvm._syscall_names import LINUX_SYSCALLS
from tenantvm.errors import ConfigError, InvalidProgram

if TYPE_CHECKING:
    from tenantvm._native import RunOutcome

__all__ = ["MAX_MEMORY_MB", "MIN_MEMORY_MB", "RunResult", "run", "syscall_name"]

#: Smallest VM memory size accepted, in MiB.
MIN_MEMORY_MB = 8
#: Largest VM memory size accepted, in MiB.
MAX_MEMORY_MB = 32768

#: tenantvm's own system calls (the request API), numbered far above Linux's (from
#: ``guest/layout.h``, through the native module).
TENANTVM_SYSCALLS: dict[int, str] = dict(_native.API_SYSCALLS)

StrOrBytes = str | bytes


def syscall_name(number: int) -> str:
    """Names an x86-64 system call number.

    Args:
        number: The number the program put in ``rax``.

    Returns:
        The Linux name (``"write"``), a tenantvm name (``"tenantvm_respond"``), or
        ``"syscall_<number>"`` for numbers neither knows.
    """
    return LINUX_SYSCALLS.get(number) or TENANTVM_SYSCALLS.get(number) or f"syscall_{number}"


def _named(counts: Mapping[int, int]) -> dict[str, int]:
    return {syscall_name(nr): n for nr, n in sorted(counts.items())}


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a program run ended when it exited by itself (or was killed by its own signal).

    Attributes:
        exit_code: The exit status; ``128 + signal`` when the program was killed by a signal
            (as shells report it).
        signal: The signal that killed the program (e.g. 6 after ``abort()``), else None.
        stdout: What the program wrote to stdout (empty when output was not captured).
        stderr: What it wrote to stderr.
        syscalls: System calls handled, by name.
        unsupported_syscalls: System calls that got ``-ENOSYS`` because tenantvm does not
            emulate them, by name.
        elapsed: Wall time of the run in seconds, VM creation included.
        exits: Number of VM exits (returns from ``KVM_RUN``) during the run.
        output_truncated: True when output beyond the capture limit was dropped.
    """

    exit_code: int
    signal: int | None
    stdout: bytes = field(repr=False)
    stderr: bytes = field(repr=False)
    syscalls: dict[str, int] = field(repr=False)
    unsupported_syscalls: dict[str, int] = field(repr=False)
    elapsed: float
    exits: int
    output_truncated: bool

    @property
    def ok(self) -> bool:
        """True when the program exited with status 0."""
        return self.exit_code == 0 and self.signal is None


def _bytes_arg(value: object, what: str) -> bytes:
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogateescape")
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    else:
        raise ConfigError(f"{what} must be str or bytes, not {type(value).__name__}")
    if b"\0" in data:
        raise ConfigError(f"{what} contains a NUL byte: {data!r}")
    return data


def _args(args: Iterable[StrOrBytes]) -> list[bytes]:
    if isinstance(args, str | bytes | bytearray | memoryview):
        raise ConfigError("args must be a sequence of arguments, not a single string")
    try:
        items = list(args)
    except TypeError:
        raise ConfigError(f"args must be a sequence of str or bytes, not {type(args).__name__}") from None
    return [_bytes_arg(a, f"argument {i + 1}") for i, a in enumerate(items)]


def _env(env: Mapping[StrOrBytes, StrOrBytes] | None) -> list[bytes]:
    if env is None:
        return []
    if not isinstance(env, Mapping):
        raise ConfigError(f"env must be a mapping, not {type(env).__name__}")
    entries = []
    for key, value in env.items():
        k = _bytes_arg(key, "environment variable name")
        if not k or b"=" in k:
            raise ConfigError(f"invalid environment variable name {k!r}")
        entries.append(k + b"=" + _bytes_arg(value, f"environment variable {k!r}"))
    return entries


def _stdin(stdin: bytes | bytearray | memoryview | None) -> bytes | None:
    if stdin is None:
        return None
    if not isinstance(stdin, bytes | bytearray | memoryview):
        raise ConfigError(f"stdin must be bytes (or None to inherit the host's stdin), not {type(stdin).__name__}")
    return bytes(stdin)


def _timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ConfigError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if not math.isfinite(timeout) or timeout <= 0:
        raise ConfigError(f"timeout must be a positive, finite number of seconds, not {timeout!r}")
    return float(timeout)


def _memory_mb(memory_mb: int) -> int:
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int):
        raise ConfigError(f"memory_mb must be an int, not {type(memory_mb).__name__}")
    if not MIN_MEMORY_MB <= memory_mb <= MAX_MEMORY_MB:
        raise ConfigError(f"memory_mb must be between {MIN_MEMORY_MB} and {MAX_MEMORY_MB}, not {memory_mb}")
    return memory_mb


def _program_path(path: str | os.PathLike[str]) -> str:
    try:
        fspath = os.fspath(path)
    except TypeError:
        raise ConfigError(f"path must be str or os.PathLike, not {type(path).__name__}") from None
    if isinstance(fspath, bytes):
        fspath = os.fsdecode(fspath)
    if not os.path.exists(fspath):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), fspath)
    if not os.path.isfile(fspath):
        raise InvalidProgram(f"{fspath}: not a regular file")
    return fspath


#: A one-shot run's limits when not given, from the VMM (its ``RunConfig::new``).
_RUN_DEFAULTS = _native.RUN_DEFAULTS
#: Default size of the guest's private /tmp, in MiB.
DEFAULT_TMP_MB: int = _RUN_DEFAULTS["tmp_mb"]


def _fs_args(
    allow_read: Iterable[str | os.PathLike[str]],
    mounts: Mapping[str | os.PathLike[str], str] | None,
    tmp_mb: int,
) -> dict[str, Any]:
    """Validates the file-system view arguments into the native ones."""
    if isinstance(allow_read, (str, bytes, os.PathLike)):
        raise ConfigError("allow_read must be a list of paths, not a single path")
    paths = []
    for p in allow_read:
        if not isinstance(p, (str, os.PathLike)):
            raise ConfigError(f"allow_read entries must be paths, not {type(p).__name__}")
        paths.append(os.fspath(p))
    pairs = []
    for host, guest in (mounts or {}).items():
        if not isinstance(host, (str, os.PathLike)) or not isinstance(guest, str):
            raise ConfigError("mounts must map host paths to guest paths (str)")
        if not guest.startswith("/"):
            raise ConfigError(f"mount target {guest!r} must be an absolute guest path")
        pairs.append((os.fspath(host), guest))
    if isinstance(tmp_mb, bool) or not isinstance(tmp_mb, int) or not 0 <= tmp_mb <= MAX_MEMORY_MB:
        raise ConfigError(f"tmp_mb must be an int between 0 and {MAX_MEMORY_MB}, not {tmp_mb!r}")
    return {"allow_read": paths, "mounts": pairs, "tmp_mb": tmp_mb}


def run(
    path: str | os.PathLike[str],
    args: Iterable[StrOrBytes] = (),
    env: Mapping[StrOrBytes, StrOrBytes] | None = None,
    stdin: bytes | bytearray | memoryview | None = b"",
    *,
    timeout: float = _RUN_DEFAULTS["timeout"],
    memory_mb: int = _RUN_DEFAULTS["memory_mb"],
    capture_output: bool = True,
    argv0: StrOrBytes | None = None,
    allow_read: Iterable[str | os.PathLike[str]] = (),
    mounts: Mapping[str | os.PathLike[str], str] | None = None,
    tmp_mb: int = DEFAULT_TMP_MB,
) -> RunResult:
    """Runs a Linux x86-64 program in a fresh VM and waits for it to end.

    The program sees a Linux process with the given arguments, environment and stdin, and of
    the host only the files allowed here (read-only), a private ``/tmp`` and ``/dev/null``-like
    devices (docs/guest-abi.md): no network, no host environment variables.

    Args:
        path: The executable (static, static-PIE, or dynamically linked: its interpreter,
            ``/lib``, ``/lib64``, ``/usr/lib``, ``/usr/lib64`` and ``/etc/ld.so.cache`` are
            then visible too).
        args: The program's arguments after ``argv[0]`` (str or bytes; str is UTF-8 encoded).
        env: The environment; default: empty (nothing leaks from the host's environment).
        stdin: What the program reads on fd 0 (then end of file); None inherits the host's
            stdin.
        timeout: Wall-clock limit in seconds, VM start-up included.
        memory_mb: Guest memory in MiB (8 to 32768); the program's heap, mmaps and stack all
            come out of it.
        capture_output: Collect stdout/stderr into the result (True) or write them to the
            host's stdout/stderr as the program runs (False).
        argv0: ``argv[0]``; default: ``path`` as given.
        allow_read: Host paths the program may read, at the same path.
        mounts: Host paths the program may read, at another guest path (``{host: guest}``).
        tmp_mb: Size of the private in-memory ``/tmp``, in MiB.

    Returns:
        The :class:`RunResult` of a program that exited (or killed itself with a signal).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        InvalidProgram: ``path`` is not a program tenantvm can run (the message says why).
        ConfigError: An argument is invalid, or the program does not fit in ``memory_mb``.
        GuestFault: The program caused a CPU exception (e.g. a segmentation fault).
        GuestTimeout: The program ran past ``timeout``, or could never finish.
        GuestOutOfMemory: The program failed after running out of memory.
        GuestError: The run ended in another abnormal way.
        KvmUnavailable: ``/dev/kvm`` cannot be used.
        HostError: A host-side operation failed.
    """
    program = _program_path(path)
    argv = [_bytes_arg(argv0 if argv0 is not None else os.fspath(path), "argv0"), *_args(args)]
    outcome = _native.run(
        program,
        argv,
        _env(env),
        _stdin(stdin),
        bool(capture_output),
        _timeout(timeout),
        _memory_mb(memory_mb),
        None,
        **_fs_args(allow_read, mounts, tmp_mb),
    )
    return _result(outcome)


def _result(out: RunOutcome) -> RunResult:
    """Turns the native outcome into a RunResult, or raises the GuestError the VMM classified.

    The one-shot run's own facts (time, system calls by name, exits) are added to the error
    here: the native layer reports system calls by number.
    """
    syscalls = _named(out.syscalls)
    unsupported = _named(out.unsupported_syscalls)
    error = out.error
    if error is not None:
        error.elapsed = out.elapsed
        error.syscalls = syscalls
        error.unsupported_syscalls = unsupported
        error.exits = out.exits
        raise error
    signal = out.signal if out.exit_kind == "signaled" else None
    return RunResult(
        exit_code=128 + signal if signal is not None else int(out.exit_code or 0),
        signal=signal,
        stdout=out.stdout,
        stderr=out.stderr,
        syscalls=syscalls,
        unsupported_syscalls=unsupported,
        elapsed=out.elapsed,
        exits=out.exits,
        output_truncated=out.output_truncated,
    )
