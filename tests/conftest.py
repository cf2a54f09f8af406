"""Shared fixtures: where the guest programs are, and the KVM policy.

- Guest programs come from ``apps/build`` (``make -C apps``) or from ``$TENANTVM_APPS``; a
  missing directory fails the tests that need it, with a message saying how to build it.
- Tests that run a VM use the ``app`` (or ``kvm``) fixture.  When ``/dev/kvm`` is unusable
  they are skipped, or fail when ``TENANTVM_REQUIRE_KVM=1`` (as in CI).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tenantvm import KvmUnavailable, _native

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def apps() -> Path:
    """The directory of the built guest programs."""
    configured = os.environ.get("TENANTVM_APPS")
    d = Path(configured) if configured else REPO / "apps" / "build"
    if not (d / "hello.glibc").is_file():
        where = f"TENANTVM_APPS={configured}" if configured else str(d)
        pytest.fail(f"guest programs not found in {where}: build them with `make -C apps`", pytrace=False)
    return d


@pytest.fixture(scope="session")
def kvm() -> dict:
    """The host's KVM report; skips (or fails, with TENANTVM_REQUIRE_KVM=1) without KVM."""
    try:
        return dict(_native.doctor_report())
    except KvmUnavailable as e:
        if os.environ.get("TENANTVM_REQUIRE_KVM") == "1":
            pytest.fail(f"KVM is required (TENANTVM_REQUIRE_KVM=1) but unusable: {e}", pytrace=False)
        pytest.skip(f"KVM unusable: {e}")


@pytest.fixture(scope="session")
def app(apps: Path, kvm: dict) -> Callable[[str], str]:
    """Path of a guest program by name (e.g. ``app("hello.glibc")``), for tests that run VMs."""

    def path(name: str) -> str:
        p = apps / name
        if not p.is_file():
            pytest.fail(f"{p} is missing: rebuild the guest programs with `make -C apps`", pytrace=False)
        return str(p)

    return path
