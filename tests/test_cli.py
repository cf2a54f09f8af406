"""The ``tenantvm`` command, run as a subprocess (``python -m tenantvm`` and the console script)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("tenantvm")


def tenantvm(*args: str | Path, stdin: bytes = b"", timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "tenantvm", *map(str, args)],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def test_run_passes_stdin_through_to_stdout(app):
    data = os.urandom(200_000) + b"\x00binary, and no newline at the end"
    p = tenantvm("run", app("cat.glibc"), stdin=data)
    assert p.returncode == 0, p.stderr
    assert p.stdout == data
    assert p.stderr == f"cat: {len(data)} bytes\n".encode()


def test_console_script(app):
    if not SCRIPT.exists():
        pytest.skip(f"the tenantvm script is not installed next to {sys.executable}")
    p = subprocess.run([SCRIPT, "run", app("hello.musl")], capture_output=True, timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"Hello, world!\n"


def test_run_propagates_the_exit_code(app):
    p = tenantvm("run", app("exitcode.musl"), "42")
    assert p.returncode == 42
    assert p.stderr == b""


def test_program_flags_pass_through(app):
    p = tenantvm("run", app("showenv.glibc"), "-c", "--timeout", "5", "-h", "--env", "X=Y", "--", "a b")
    assert p.returncode == 0, p.stderr
    argv = [line for line in p.stdout.split(b"\n") if line.startswith(b"argv[")]
    assert argv[1:] == [
        b"argv[1]=-c",
        b"argv[2]=--timeout",
        b"argv[3]=5",
        b"argv[4]=-h",
        b"argv[5]=--env",
        b"argv[6]=X=Y",
        b"argv[7]=--",
        b"argv[8]=a b",
    ]
    assert b"env=" not in p.stdout


def test_run_options(app):
    p = tenantvm("run", "--env", "A=1", "--env", "B=x=y", "--argv0", "prog", "--memory-mb", "32", app("showenv.musl"))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.split(b"\n")
    assert b"argv[0]=prog" in lines
    assert [line for line in lines if line.startswith(b"env=")] == [b"env=A=1", b"env=B=x=y"]


def test_host_environment_does_not_leak(app):
    p = subprocess.run(
        [sys.executable, "-m", "tenantvm", "run", app("showenv.musl")],
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, "TENANTVM_HOST_SECRET": "x"},
    )
    assert p.returncode == 0
    assert b"TENANTVM_HOST_SECRET" not in p.stdout


def test_fault_exits_139_with_one_line(app):
    p = tenantvm("run", app("nullwrite.glibc"))
    assert p.returncode == 139
    lines = p.stderr.decode().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("tenantvm: page fault at address 0x0 (write) at rip 0x")


def test_timeout_exits_124(app):
    p = tenantvm("run", "--timeout", "0.5", app("loop.musl"))
    assert p.returncode == 124
    assert p.stderr.decode().startswith("tenantvm: ")
    assert "0.5 s" in p.stderr.decode()


def test_out_of_memory_exits_137(app):
    # Memory is taken when touched (overcommit): the touch that finds none left stops it.
    p = tenantvm("run", "--memory-mb", "32", app("memhog.musl"))
    assert p.returncode == 137
    assert b"tenantvm: the program ran out of its 32 MiB" in p.stderr
    assert b"page fault" in p.stderr


def test_non_elf_exits_126(tmp_path):
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    p = tenantvm("run", script)
    assert p.returncode == 126
    assert b"not an ELF" in p.stderr
    assert p.stdout == b""


def test_missing_program_exits_127(tmp_path):
    p = tenantvm("run", tmp_path / "missing")
    assert p.returncode == 127
    assert b"no such file" in p.stderr


@pytest.mark.parametrize("args", [[], ["run"], ["run", "--timeout", "0", "x"], ["run", "--memory-mb", "1", "x"]])
def test_usage_errors_exit_2(args):
    p = tenantvm(*args)
    assert p.returncode == 2
    assert b"usage:" in p.stderr


def test_version():
    import tenantvm as package

    p = tenantvm("--version")
    assert p.returncode == 0
    assert p.stdout.decode().strip() == f"tenantvm {package.__version__}"


def test_doctor(kvm):
    p = tenantvm("doctor")
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    platform = [line for line in out.splitlines() if line.startswith("platform:")]
    assert len(platform) == 1
    expected = (
        "PVM (paravirtual KVM, no hardware virtualization)" if kvm["platform"] == "pvm" else "hardware KVM (AMD-V/VT-x)"
    )
    assert expected in platform[0]
    assert "guest set-up:" in out
    assert "KVM_CAP_SYNC_REGS" in out
    assert "one VM exit round trip:" in out
    assert " µs" in out
    assert "VM lifecycle:" in out


def test_doctor_json(kvm):
    p = tenantvm("doctor", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["platform"] == kvm["platform"]
    assert data["api_version"] == 12
    assert data["capabilities"]["KVM_CAP_USER_MEMORY"] is True
    assert all(isinstance(v, bool) for v in data["capabilities"].values())
    # The median of 5 runs of 2000 exits each (tens of milliseconds): zero would mean the exits
    # were not made or not counted.
    assert data["round_trip"]["exit_us"] > 0
    assert data["round_trip"]["vm_lifecycle_us"] > 0
    assert data["round_trip"]["exits"] == 2000


def _without_kvm(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    """Runs the command with /dev/kvm replaced by /dev/null in a private mount namespace."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or not Path("/dev/kvm").exists():
        pytest.skip("needs root, unshare(1) and /dev/kvm to hide /dev/kvm")
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount --bind /dev/null /dev/kvm"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.decode().strip()}")
    command = " ".join(f"'{a}'" for a in [sys.executable, "-m", "tenantvm", *map(str, args)])
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount --bind /dev/null /dev/kvm && exec {command}"],
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_doctor_without_kvm_exits_1():
    p = _without_kvm("doctor")
    assert p.returncode == 1
    assert b"tenantvm: KVM is not available" in p.stderr
    assert b"/dev/kvm is unusable" in p.stderr
    assert p.stdout == b""


def test_run_without_kvm_exits_1(apps):
    p = _without_kvm("run", apps / "hello.glibc")
    assert p.returncode == 1
    assert p.stderr.startswith(b"tenantvm: KVM is not available")


def test_ctrl_c_ends_a_running_program(app):
    # Started as a terminal starts it, with SIGINT at its default action: under a shell without
    # job control (`make test &`, nohup, some CI runners) children inherit SIGINT ignored, and
    # Python then rightly installs no KeyboardInterrupt handler (this test hung for 30 s so).
    p = subprocess.Popen(
        ["env", "--default-signal=INT", sys.executable, "-m", "tenantvm", "run", "--timeout", "60", app("loop.musl")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1.0)  # let it start the VM
        p.send_signal(signal.SIGINT)
        # Far less than the program's 60 s limit: a hang guard, not a timing check.
        p.communicate(timeout=30)
    finally:
        p.kill()
        p.wait()
    assert p.returncode == 130
