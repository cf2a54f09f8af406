"""The seccomp filter of guest-running threads: guests keep working, host escapes are refused."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

import tenantvm
from tenantvm import Request, Tenant
from tenantvm.sandbox import restrict_current_thread

pytestmark = pytest.mark.usefixtures("kvm")


def in_restricted_thread(fn: object) -> None:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            restrict_current_thread()
            fn()  # type: ignore[operator]
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if errors:
        raise errors[0]


def test_guests_run_and_host_escapes_are_refused(apps: Path, tmp_path: Path) -> None:
    tenant = Tenant(apps / "misbehave", timeout=0.3)

    def escapes() -> None:
        # Creating instances, serving, timing out, faulting and resetting all work...
        vm = tenant.instance()
        assert vm.call(Request(path="/count")).body == b"1"
        with pytest.raises(tenantvm.GuestTimeout):
            vm.call(Request(path="/spin"))
        with pytest.raises(tenantvm.GuestFault):
            vm.call(Request(path="/fault"))
        assert vm.call(Request(path="/count")).body == b"1"
        # ...and what a compromised thread would want is refused.
        with pytest.raises(PermissionError) as e:
            open(tmp_path / "x", "w")  # noqa: SIM115
        assert e.value.errno == errno.EPERM
        with pytest.raises(PermissionError):
            socket.socket()
        with pytest.raises(OSError):  # noqa: PT011 - fork is refused, whatever errno glibc maps
            subprocess.run(["/bin/true"], check=False)
        with pytest.raises(PermissionError):
            os.kill(1, 0)
        # Threads can still be created (the server's executors need them).
        done: list[int] = []
        t = threading.Thread(target=lambda: done.append(1))
        t.start()
        t.join()
        assert done == [1]

    in_restricted_thread(escapes)
    # Other threads are not affected.
    with open(tmp_path / "y", "w") as f:
        f.write("ok")
