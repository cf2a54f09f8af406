"""The one-shot API, ``tenantvm.run``, on the guest programs in apps/ and on tiny hand-made ELFs."""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

import tenantvm
from tenantvm import (
    ConfigError,
    GuestError,
    GuestFault,
    GuestOutOfMemory,
    GuestTimeout,
    InvalidProgram,
    RunResult,
    TenantVMError,
)
from tenantvm.runner import _result

from .elfutil import elf_info, tiny_elf

LIBCS = ["glibc", "musl"]
MiB = 1 << 20


# --- hello from every toolchain ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("hello.glibc", b"Hello, world!\n"),
        ("hello.musl", b"Hello, world!\n"),
        ("hello.glibc-pie", b"Hello, world!\n"),
        ("hello.rust", b"Hello, world from Rust!\n"),
    ],
)
def test_hello(app, name, expected):
    result = tenantvm.run(app(name))
    assert isinstance(result, RunResult)
    assert result.exit_code == 0
    assert result.signal is None
    assert result.ok
    assert result.stdout == expected
    assert result.stderr == b""
    assert not result.output_truncated
    assert result.exits > 0
    assert result.elapsed > 0


def test_result_is_frozen(app):
    result = tenantvm.run(app("hello.musl"))
    with pytest.raises(AttributeError):
        result.exit_code = 1  # type: ignore[misc]


def test_syscall_counts_by_name(app):
    result = tenantvm.run(app("hello.glibc"))
    assert result.syscalls["write"] >= 1
    assert result.syscalls["exit_group"] == 1
    assert all(isinstance(k, str) and isinstance(v, int) and v > 0 for k, v in result.syscalls.items())
    assert result.unsupported_syscalls == {}


# --- argv, env and auxv -------------------------------------------------------------------------


def parse_showenv(stdout: bytes) -> dict:
    argv: dict[int, bytes] = {}
    env: list[bytes] = []
    auxv: dict[str, int] = {}
    named: dict[str, bytes] = {}
    lines = stdout.split(b"\n")
    assert lines[-2:] == [b"done", b""], stdout[-200:]
    for line in lines[:-2]:
        if m := re.fullmatch(rb"argv\[(\d+)\]=(.*)", line, re.S):
            argv[int(m.group(1))] = m.group(2)
        elif line.startswith(b"env="):
            env.append(line[4:])
        elif line.startswith(b"auxv "):
            _, _type, dec, _hex, name = line.split(b" ")
            auxv[name.decode()] = int(dec)
        elif line.startswith(b"argc="):
            named["argc"] = line[5:]
        elif m := re.fullmatch(rb"(AT_\w+)=(.*)", line, re.S):
            named[m.group(1).decode()] = m.group(2)
    return {"argv": [argv[i] for i in sorted(argv)], "env": env, "auxv": auxv, **named}


ARGS = ["a b", "  spaced  out ", "ünïcødé ☃", b"\xff\xfe raw bytes \x80", "-c", "", "--flag=x"]
ENV = {"FOO": "bar", "EMPTY": "", "WITH_EQUALS": "a=b=c", "UNI": "ü", b"RAW": b"\xfe\xff"}


@pytest.mark.parametrize("libc", LIBCS)
def test_argv_env_and_auxv(app, libc):
    path = app(f"showenv.{libc}")
    result = tenantvm.run(path, ARGS, ENV)
    assert result.exit_code == 0
    seen = parse_showenv(result.stdout)
    expected_argv = [os.fsencode(path)] + [a.encode() if isinstance(a, str) else a for a in ARGS]
    assert seen["argc"] == str(len(expected_argv)).encode()
    assert seen["argv"] == expected_argv
    assert sorted(seen["env"]) == sorted(
        [b"FOO=bar", b"EMPTY=", b"WITH_EQUALS=a=b=c", "UNI=ü".encode(), b"RAW=\xfe\xff"]
    )

    auxv = seen["auxv"]
    elf = elf_info(path)
    assert auxv["AT_PAGESZ"] == 4096
    assert auxv["AT_ENTRY"] == elf["entry"]
    first_load = min(vaddr for vaddr, _, _ in elf["loads"])
    assert auxv["AT_PHDR"] == first_load + elf["phoff"]
    assert auxv["AT_PHNUM"] == elf["phnum"]
    assert auxv["AT_PHENT"] == 56
    assert auxv["AT_SECURE"] == 0
    assert seen["AT_PLATFORM"] == b"x86_64"
    assert seen["AT_EXECFN"] == os.fsencode(path)
    random = bytes.fromhex(seen["AT_RANDOM"].decode())
    assert len(random) == 16
    assert random != bytes(16)


def test_argv0_and_empty_environment_by_default(app, monkeypatch):
    monkeypatch.setenv("TENANTVM_SECRET_FROM_HOST", "leak")
    result = tenantvm.run(app("showenv.musl"), argv0="custom-name")
    seen = parse_showenv(result.stdout)
    assert seen["argv"] == [b"custom-name"]
    assert seen["env"] == []
    assert b"TENANTVM_SECRET_FROM_HOST" not in result.stdout


def test_at_random_differs_between_runs(app):
    first = parse_showenv(tenantvm.run(app("showenv.glibc")).stdout)["AT_RANDOM"]
    second = parse_showenv(tenantvm.run(app("showenv.glibc")).stdout)["AT_RANDOM"]
    assert first != second


# --- exit codes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("libc", LIBCS)
@pytest.mark.parametrize("code", [0, 1, 42, 255])
def test_exit_code(app, libc, code):
    result = tenantvm.run(app(f"exitcode.{libc}"), [str(code)])
    assert result.exit_code == code
    assert result.signal is None
    assert result.ok == (code == 0)


@pytest.mark.parametrize("libc", LIBCS)
def test_exit_group_syscall(app, libc):
    result = tenantvm.run(app(f"exitcode.{libc}"), ["group", "17"])
    assert result.exit_code == 17
    assert result.syscalls.get("exit_group") == 1


def test_exit_status_is_truncated_to_a_byte(tmp_path):
    # exit_group(300): Linux keeps the low 8 bits, 44.
    prog = tmp_path / "exit300"
    prog.write_bytes(tiny_elf(bytes([0xB8, 231, 0, 0, 0, 0xBF, 0x2C, 1, 0, 0, 0x0F, 0x05])))
    result = tenantvm.run(prog)
    assert result.exit_code == 44


def test_killed_by_its_own_signal(tmp_path):
    # kill(0, SIGABRT), then exit(1) if it survives.
    code = bytes([0xB8, 62, 0, 0, 0, 0x31, 0xFF, 0xBE, 6, 0, 0, 0, 0x0F, 0x05])
    code += bytes([0xB8, 60, 0, 0, 0, 0xBF, 1, 0, 0, 0, 0x0F, 0x05])
    prog = tmp_path / "abort"
    prog.write_bytes(tiny_elf(code))
    result = tenantvm.run(prog)
    assert result.signal == 6
    assert result.exit_code == 128 + 6
    assert not result.ok


def test_tenantvm_syscalls_are_named(tmp_path):
    # Three tenantvm no-op calls (0x100ff), then exit_group(0).
    code = bytes([0xB8, 0xFF, 0x00, 0x01, 0x00, 0x0F, 0x05]) * 3
    code += bytes([0xB8, 231, 0, 0, 0, 0x31, 0xFF, 0x0F, 0x05])
    prog = tmp_path / "nops"
    prog.write_bytes(tiny_elf(code))
    result = tenantvm.run(prog)
    assert result.exit_code == 0
    assert result.syscalls == {"tenantvm_nop": 3, "exit_group": 1}


# --- stdin and stdout ---------------------------------------------------------------------------


@pytest.mark.parametrize("libc", LIBCS)
def test_stdin_round_trip_binary(app, libc):
    data = os.urandom(MiB)
    result = tenantvm.run(app(f"cat.{libc}"), stdin=data)
    assert result.exit_code == 0
    assert result.stdout == data
    assert result.stderr == f"cat: {len(data)} bytes\n".encode()


@pytest.mark.parametrize("stdin", [b"", bytearray(b"line one\nline two\x00\xff"), memoryview(b"view")])
def test_stdin_kinds(app, stdin):
    result = tenantvm.run(app("cat.musl"), stdin=stdin)
    assert result.stdout == bytes(stdin)
    assert result.stderr == f"cat: {len(stdin)} bytes\n".encode()


def rwbig_stream(n: int) -> bytes:
    pattern = bytes(range(251))
    return (pattern * (n // 251 + 1))[:n]


@pytest.mark.parametrize("libc", LIBCS)
def test_large_output_exact(app, libc):
    result = tenantvm.run(app(f"rwbig.{libc}"), ["4m"])
    assert result.exit_code == 0
    assert len(result.stdout) == 8 * MiB
    assert result.stdout == rwbig_stream(8 * MiB)
    assert not result.output_truncated


def test_output_beyond_the_capture_limit_is_truncated(app):
    # 2 x 9 MiB written; the capture keeps the first 16 MiB.
    result = tenantvm.run(app("rwbig.glibc"), ["9m"], memory_mb=128)
    assert result.exit_code == 0
    assert result.output_truncated
    assert len(result.stdout) == 16 * MiB
    assert result.stdout == rwbig_stream(16 * MiB)


# --- memory ------------------------------------------------------------------------------------


@pytest.mark.parametrize("libc", LIBCS)
def test_alloc_100mb_in_pieces(app, libc):
    # What is checked is that the allocations work, not how fast: a loaded host takes seconds.
    result = tenantvm.run(app(f"alloc.{libc}"), memory_mb=256, timeout=120)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(b"alloc ok ")


@pytest.mark.parametrize("libc", LIBCS)
def test_memhog_runs_out_of_memory(app, libc):
    with pytest.raises(GuestOutOfMemory) as info:
        tenantvm.run(app(f"memhog.{libc}"), memory_mb=32)
    e = info.value
    assert e.memory_mb == 32
    # malloc never fails (memory is taken when touched, as with Linux's overcommit): the
    # write that finds no memory left ends the program, as an OOM kill would.
    assert e.exit_code is None
    assert "page fault" in str(e)
    assert "32 MiB" in str(e)
    assert e.syscalls
    assert e.exits


# --- time limits --------------------------------------------------------------------------------


@pytest.mark.parametrize("libc", LIBCS)
def test_loop_stopped_at_the_time_limit(app, libc):
    with pytest.raises(GuestTimeout) as info:
        tenantvm.run(app(f"loop.{libc}"), timeout=0.5)
    assert info.value.timeout == 0.5
    assert not info.value.deadlock
    assert "0.5 s" in str(info.value)
    assert info.value.elapsed is not None


def test_deadlock_is_a_timeout_that_explains_itself(tmp_path):
    # futex(FUTEX_WAIT) on a zero word with nobody to wake it.
    code = bytes([0x6A, 0x00, 0x48, 0x89, 0xE7, 0x31, 0xF6, 0x31, 0xD2, 0x45, 0x31, 0xD2])
    code += bytes([0xB8, 202, 0, 0, 0, 0x0F, 0x05, 0xB8, 60, 0, 0, 0, 0xBF, 1, 0, 0, 0, 0x0F, 0x05])
    prog = tmp_path / "deadlock"
    prog.write_bytes(tiny_elf(code))
    with pytest.raises(GuestTimeout) as info:
        tenantvm.run(prog, timeout=5)
    assert info.value.deadlock
    assert "never finish" in str(info.value)
    assert "futex" in str(info.value)


# --- faults -------------------------------------------------------------------------------------


def executable_ranges(path: str) -> list[range]:
    return [range(vaddr, vaddr + memsz) for vaddr, memsz, flags in elf_info(path)["loads"] if flags & 1]


@pytest.mark.parametrize("libc", LIBCS)
def test_nullwrite_page_fault(app, libc):
    path = app(f"nullwrite.{libc}")
    with pytest.raises(GuestFault) as info:
        tenantvm.run(path)
    e = info.value
    assert e.kind == "page_fault"
    assert e.address == 0
    assert e.access == "write"
    assert any(e.rip in r for r in executable_ranges(path))
    assert f"{e.rip:#x}" in str(e)
    assert e.details["kind"] == "page_fault"


@pytest.mark.parametrize("libc", LIBCS)
def test_illegal_instruction(app, libc):
    path = app(f"illegal.{libc}")
    with pytest.raises(GuestFault) as info:
        tenantvm.run(path)
    e = info.value
    assert e.kind == "invalid_opcode"
    assert e.address is None
    assert any(e.rip in r for r in executable_ranges(path))
    assert f"{e.rip:#x}" in str(e)


@pytest.mark.parametrize("libc", LIBCS)
def test_stack_overflow_hits_the_guard(app, libc):
    # Where the stack ends: the strings at the top of the initial stack (AT_EXECFN points
    # there) are in its last page.  The default stack is 8 MiB with 64 MiB of memory.
    seen = parse_showenv(tenantvm.run(app(f"showenv.{libc}"), memory_mb=64).stdout)
    top = -(-seen["auxv"]["AT_EXECFN"] // 4096) * 4096
    stack_bottom = top - 8 * MiB
    with pytest.raises(GuestFault) as info:
        tenantvm.run(app(f"stackoverflow.{libc}"), memory_mb=64)
    e = info.value
    assert e.kind == "page_fault"
    assert e.access == "write"
    assert e.address is not None
    assert stack_bottom - 64 * 1024 <= e.address < stack_bottom, (hex(e.address), hex(stack_bottom))


@pytest.mark.parametrize("libc", LIBCS)
def test_divide_error(app, libc):
    path = app(f"divzero.{libc}")
    with pytest.raises(GuestFault) as info:
        tenantvm.run(path)
    assert info.value.kind == "divide_error"
    assert any(info.value.rip in r for r in executable_ranges(path))


# What each privileged instruction gives from user mode on this host (PVM): #GP with error
# code 0 for all of them; int3 is #BP (vector 3), reported as a generic exception.
@pytest.mark.parametrize("libc", LIBCS)
@pytest.mark.parametrize(
    ("insn", "kind", "vector"),
    [
        ("hlt", "general_protection", None),
        ("cli", "general_protection", None),
        ("out", "general_protection", None),
        ("in", "general_protection", None),
        ("wrmsr", "general_protection", None),
        ("lgdt", "general_protection", None),
        ("mov-cr3", "general_protection", None),
        ("int3", "exception", 3),
    ],
)
def test_privileged_instructions_fault(app, libc, insn, kind, vector):
    path = app(f"fault_gp.{libc}")
    with pytest.raises(GuestFault) as info:
        tenantvm.run(path, [insn])
    e = info.value
    assert e.kind == kind
    assert e.vector == vector
    if kind == "general_protection":
        assert e.error_code == 0
    assert e.rip is not None
    assert f"rip {e.rip:#x}" in str(e)
    assert any(e.rip in r for r in executable_ranges(path))
    assert e.stderr == f"fault_gp: executing {insn}\n".encode()
    assert b"did not fault" not in e.stderr


def test_guest_errors_are_tenantvm_errors():
    for cls in (GuestFault, GuestTimeout, GuestOutOfMemory):
        assert issubclass(cls, GuestError)
        assert issubclass(cls, TenantVMError)


# --- programs that cannot run -------------------------------------------------------------------


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("random", lambda apps: os.urandom(4096), "not an ELF"),
        ("empty", lambda apps: b"", "not an ELF"),
        ("truncated", lambda apps: (apps / "hello.glibc").read_bytes()[:100], "truncated"),
        ("script.sh", lambda apps: b"#!/bin/sh\necho hello\n", "not an ELF"),
        ("elf32", lambda apps: b"\x7fELF\x01\x01\x01" + bytes(57), "x86-64"),
    ],
)
def test_invalid_programs(apps, tmp_path, name, make, reason):
    prog = _write(tmp_path, name, make(apps))
    prog.chmod(0o755)
    with pytest.raises(InvalidProgram) as info:
        tenantvm.run(prog)
    assert reason in str(info.value)
    assert isinstance(info.value, ValueError)


def test_dynamically_linked_program_runs_with_its_interpreter():
    true = Path("/bin/true")
    if not true.is_file() or b"ld-linux" not in true.read_bytes()[:4096]:
        pytest.skip("/bin/true is not a dynamically linked ELF here")
    assert tenantvm.run(true).exit_code == 0


def test_directory_is_not_a_program(tmp_path):
    with pytest.raises(InvalidProgram, match="not a regular file"):
        tenantvm.run(tmp_path)


# --- Linux semantics of the emulated system calls -----------------------------------------------


def parse_syscalls(stdout: bytes) -> dict[str, str]:
    lines = stdout.decode().splitlines()
    assert lines[-1] == "done", lines[-5:]
    return dict(line.split("=", 1) for line in lines[:-1])


@pytest.mark.parametrize("libc", LIBCS)
def test_syscall_semantics(app, libc):
    result = tenantvm.run(app(f"syscalls.{libc}"))
    assert result.exit_code == 0
    r = parse_syscalls(result.stdout)

    # Unknown numbers fail with ENOSYS and are counted.
    assert r["syscall_999"] == "-ENOSYS"
    assert result.unsupported_syscalls.get("syscall_999") == 1
    # The standard streams are pipes: no seeking, no terminal.
    assert r["lseek_stdin"] == "-ESPIPE"
    assert r["ioctl_stdout_tcgets"] == "-ENOTTY"
    assert r["ioctl_stdout_tiocgwinsz"] == "-ENOTTY"
    assert r["fstat_stdout"] == "0"
    assert r["fstat_stdout_isfifo"] == "1"
    assert r["write_fd42"] == "-EBADF"
    # Bad pointers are EFAULT, never a crash.
    assert r["write_stdout_badptr"] == "-EFAULT"
    assert r["uname_badptr"] == "-EFAULT"
    # Empty stdin is at end of file: Linux returns 0 before touching the buffer.
    assert r["read_stdin_badptr"] in {"0", "skipped"}
    # pipe2 is not emulated (-ENOSYS); if it ever is, reading into a bad pointer must fault.
    assert r["pipe2"] in {"0", "-ENOSYS"}
    if r["pipe2"] == "0":
        assert r["read_pipe_badptr"] == "-EFAULT"
    # Identity.
    assert r["uname"] == "0"
    assert r["uname_sysname"] == "Linux"
    assert r["uname_machine"] == "x86_64"
    assert r["getrandom_32"] == "32"
    assert r["getrandom_nonzero"] == "1"
    assert r["readlink_proc_self_exe_path"].startswith("/")
    assert int(r["readlink_proc_self_exe"]) == len(r["readlink_proc_self_exe_path"])
    # Time.
    for flag in [
        "clock_realtime_plausible",
        "clock_realtime_raw_plausible",
        "clock_monotonic_nondecreasing",
        "clock_monotonic_raw_nondecreasing",
        "gettimeofday_plausible",
        "time_plausible",
        "clock_getres_monotonic_sane",
        "nanosleep_elapsed_ge_1ms",
    ]:
        assert r[flag] == "1", flag
    assert r["nanosleep_1ms"] == "0"
    # Process.
    assert r["sched_getaffinity"] == "0"
    assert r["sched_getaffinity_count"] == "1"
    assert r["sched_yield"] == "0"
    assert r["prlimit64_stack"] == "0"
    assert int(r["prlimit64_stack_cur"]) == 8 * MiB
    # Memory.
    assert r["mmap_anon_1m"] == "ok"
    assert r["mmap_anon_zeroed"] == "1"
    assert r["mprotect_read"] == "0"
    assert r["mprotect_read_contents"] == "1"
    assert r["munmap_1m"] == "0"
    assert r["mremap_grow"] == "ok"
    assert r["mremap_grow_preserved"] == "1"
    assert r["munmap_mremapped"] == "0"
    assert r["madvise_dontneed"] == "0"
    assert r["madvise_dontneed_reads_zero"] == "1"
    assert r["brk_query_nonzero"] == "1"
    assert r["brk_grow"] == "1"
    assert r["brk_shrink"] == "1"
    # Signals (dispositions and masks only).
    assert r["sigaction_sigint_readback"] == "1"
    assert r["sigprocmask_usr1_blocked"] == "1"
    assert r["sigaltstack_readback"] == "1"


@pytest.mark.parametrize("libc", LIBCS)
def test_read_into_a_bad_pointer_with_data_waiting_is_efault(app, libc):
    result = tenantvm.run(app(f"syscalls.{libc}"), stdin=b"data waiting on stdin")
    assert parse_syscalls(result.stdout)["read_stdin_badptr"] == "-EFAULT"


# --- argument validation ------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [0, -1, 0.0, float("nan"), float("inf"), "1", None, True])
def test_invalid_timeout(apps, timeout):
    with pytest.raises(ConfigError, match="timeout"):
        tenantvm.run(apps / "hello.glibc", timeout=timeout)


@pytest.mark.parametrize("memory_mb", [1, 7, 32769, 64.0, "64", True, None])
def test_invalid_memory(apps, memory_mb):
    with pytest.raises(ConfigError, match="memory_mb"):
        tenantvm.run(apps / "hello.glibc", memory_mb=memory_mb)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"args": "a single string"}, "single string"),
        ({"args": ["ok", 3]}, "argument 2"),
        ({"args": ["nul\0inside"]}, "NUL"),
        ({"args": 42}, "sequence"),
        ({"env": ["A=B"]}, "mapping"),
        ({"env": {"A=B": "c"}}, "name"),
        ({"env": {"": "c"}}, "name"),
        ({"env": {"A": "nul\0"}}, "NUL"),
        ({"stdin": "text"}, "stdin"),
        ({"argv0": 5}, "argv0"),
    ],
)
def test_invalid_arguments(apps, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        tenantvm.run(apps / "hello.glibc", **kwargs)


def test_nonexistent_program(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        tenantvm.run(tmp_path / "missing")
    assert info.value.filename == str(tmp_path / "missing")


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)
    assert issubclass(InvalidProgram, ValueError)
    assert issubclass(tenantvm.KvmUnavailable, OSError)
    assert issubclass(tenantvm.HostError, OSError)


def test_program_that_does_not_fit_in_memory(kvm, tmp_path):
    # A 20 MiB image (mostly bss) cannot fit in 8 MiB of guest memory.
    prog = tmp_path / "huge"
    prog.write_bytes(tiny_elf(bytes([0xB8, 231, 0, 0, 0, 0x31, 0xFF, 0x0F, 0x05]), bss=20 * MiB))
    with pytest.raises(ConfigError, match="memory"):
        tenantvm.run(prog, memory_mb=8)
    assert tenantvm.run(prog, memory_mb=64).exit_code == 0


# --- outcome mapping (no VM needed) -------------------------------------------------------------


def outcome(**fields) -> SimpleNamespace:
    base = {
        "exit_kind": "exited",
        "exit_code": 0,
        "signal": None,
        "fault": None,
        "message": None,
        "stdout": b"out",
        "stderr": b"err",
        "output_truncated": False,
        "syscalls": {1: 2, 231: 1},
        "unsupported_syscalls": {999: 1},
        "elapsed": 0.25,
        "exits": 7,
        "memory_exhausted": False,
        "out_of_memory": False,
        "error": None,
    }
    base.update(fields)
    return SimpleNamespace(**base)


def test_mapping_a_failed_run_raises_its_error_with_the_run_facts():
    # Which GuestError a failure is, is decided in the VMM (RunEnd::failure, with its own
    # tests); the one-shot run adds what only it knows.
    error = GuestError("the program stopped unexpectedly: WaitForRequest")
    with pytest.raises(GuestError) as info:
        _result(outcome(exit_kind="unexpected", exit_code=None, error=error))
    assert info.value is error
    assert info.value.syscalls == {"write": 2, "exit_group": 1}
    assert info.value.unsupported_syscalls == {"syscall_999": 1}
    assert info.value.exits == 7
    assert info.value.elapsed == 0.25


def test_mapping_successful_run_with_exhausted_memory_is_a_result():
    result = _result(outcome(memory_exhausted=True))
    assert result.exit_code == 0
    assert result.syscalls == {"write": 2, "exit_group": 1}


def test_mapping_a_signal_is_reported_as_a_shell_would():
    result = _result(outcome(exit_kind="signaled", exit_code=None, signal=6))
    assert (result.exit_code, result.signal) == (134, 6)
