"""The native module itself: the RunOutcome object, error mapping, the GIL, doctor functions."""

from __future__ import annotations

import errno
import math
import threading

import pytest

import tenantvm
from tenantvm import ConfigError, GuestTimeout, HostError, InvalidProgram, _native


def native_run(path: str, *, args: list[bytes] | None = None, stdin: bytes | None = b"", timeout: float = 5.0):
    return _native.run(path, args or [b"prog"], [], stdin, True, timeout, 64, None)


def test_outcome_of_a_normal_exit(app):
    out = native_run(app("exitcode.musl"), args=[b"exitcode", b"7"])
    assert out.exit_kind == "exited"
    assert out.exit_code == 7
    assert out.signal is None
    assert out.fault is None
    assert out.message is None
    assert isinstance(out.stdout, bytes)
    assert isinstance(out.stderr, bytes)
    assert out.output_truncated is False
    assert out.memory_exhausted is False
    assert out.out_of_memory is False
    assert out.exits > 0
    assert out.elapsed > 0
    assert 231 in out.syscalls  # exit_group, by number
    assert out.unsupported_syscalls == {}
    assert "exited 7" in repr(out)


def test_outcome_is_read_only(app):
    out = native_run(app("hello.musl"))
    for name in ("exit_kind", "exit_code", "stdout", "syscalls", "fault", "out_of_memory"):
        with pytest.raises(AttributeError):
            setattr(out, name, None)
    # Dicts are new on every access: changing one does not change the outcome.
    out.syscalls.clear()
    assert out.syscalls


def test_outcome_of_a_fault(app):
    out = native_run(app("nullwrite.musl"))
    assert out.exit_kind == "fault"
    assert out.exit_code is None
    fault = out.fault
    assert fault is not None
    assert fault["kind"] == "page_fault"
    assert fault["address"] == 0
    assert fault["access"] == "write"
    assert fault["error_code"] & 2  # the write bit of the #PF error code
    assert fault["message"] == f"page fault at address 0x0 (write) at rip {fault['rip']:#x}"
    assert fault is not out.fault


def test_outcome_of_a_timeout(app):
    out = native_run(app("loop.musl"), timeout=0.2)
    assert out.exit_kind == "timeout"
    assert out.exit_code is None
    assert out.fault is None


def test_host_errors_are_raised_as_python_classes(tmp_path):
    # Bypassing the Python-side checks: the Rust error is mapped at the boundary.
    with pytest.raises(HostError) as info:
        native_run(str(tmp_path / "missing"))
    assert info.value.errno == errno.ENOENT
    assert "reading the program" in str(info.value)

    script = tmp_path / "script"
    script.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(InvalidProgram, match="not an ELF"):
        native_run(str(script))


def test_unrepresentable_config_is_a_config_error(app):
    with pytest.raises(ConfigError, match="timeout"):
        native_run(app("hello.musl"), timeout=1e300)
    with pytest.raises(ConfigError, match="timeout"):
        native_run(app("hello.musl"), timeout=-1.0)
    with pytest.raises(ConfigError, match="memory"):
        _native.run(app("hello.musl"), [b"x"], [], b"", True, 1.0, 2**60, None)
    with pytest.raises(ConfigError):
        _native.run(app("hello.musl"), [b"x"], [], b"", True, 1.0, 1, None)


def test_argument_types_are_checked(app):
    with pytest.raises(TypeError):
        _native.run(app("hello.musl"), ["str is not bytes"], [], b"", True, 1.0, 64, None)  # type: ignore[list-item]
    with pytest.raises(TypeError):
        _native.run(app("hello.musl"), [b"x"], [], "text", True, 1.0, 64, None)  # type: ignore[arg-type]


def test_the_gil_is_released_while_a_vm_runs(app):
    # While one thread's VM spins until its time limit, this thread still gets to run VMs.
    errors: list[BaseException] = []

    def spin() -> None:
        try:
            tenantvm.run(app("loop.musl"), timeout=3)
        except GuestTimeout:
            pass
        except BaseException as e:
            errors.append(e)

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        for _ in range(5):
            assert tenantvm.run(app("hello.musl")).stdout == b"Hello, world!\n"
        assert spinner.is_alive(), "the looping run ended before the short runs: was the GIL held?"
    finally:
        spinner.join()
    assert errors == []


def test_doctor_report(kvm):
    report = _native.doctor_report()
    assert report["platform"] in {"pvm", "amd-svm", "intel-vmx", "hardware"}
    assert report["guest_setup"]
    assert report["api_version"] == 12
    caps = dict(report["capabilities"])
    assert caps["KVM_CAP_SYNC_REGS"] is True
    assert all(isinstance(name, str) and isinstance(v, bool) for name, v in report["capabilities"])


def test_measure_round_trip(kvm):
    # 2000 exits take tens of milliseconds, far more than the noise between the two runs whose
    # difference measures them: zero would mean the exits were not made or not counted.
    rt = _native.measure_round_trip(2000, 3)
    assert set(rt) == {"exit_us", "vm_lifecycle_us"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in rt.values())
    assert rt["exit_us"] > 0
    assert rt["vm_lifecycle_us"] > 0
