"""The build backend of tenantvm: maturin, after building what the wheel carries besides Python.

maturin packs ``py/tenantvm`` and the native module, but cannot build the example guest programs
(C, compiled with ``gcc -static``) that the bundled tenants file serves.  This in-tree PEP 517
backend (``backend-path`` in pyproject.toml) runs ``make -C apps package`` first, which builds
them and copies them and the SDK header into ``py/tenantvm`` (see apps/Makefile), then hands
every hook to maturin; ``[tool.maturin] include`` puts the copies (ignored by git) in the wheel.

So ``pip install .`` from a clean clone works wherever the native module builds (Rust, gcc,
binutils) with ``make`` and a static C library (Debian: ``libc6-dev``); without them the build
stops with a message that says what to install, instead of producing a wheel that cannot serve.
``maturin build`` / ``maturin develop`` bypass this file: run ``make -C apps package`` first
(``make build`` does).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import maturin
from maturin import (  # noqa: F401  (re-exported PEP 517 hooks)
    build_sdist,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

ROOT = Path(__file__).resolve().parent.parent.parent
HELP = (
    "building tenantvm needs make and gcc with a static C library (for the example guest "
    "programs the package carries), besides a Rust toolchain.  On Debian: "
    "`apt-get install make gcc libc6-dev binutils` (or run tools/setup-host.sh from the source tree)."
)


class GuestProgramsBuildError(RuntimeError):
    """``make -C apps package`` could not build the example guest programs."""


def build_guest_programs() -> None:
    """Builds the example tenants and copies them and the SDK into ``py/tenantvm``."""
    make = shutil.which("make")
    if make is None:
        raise GuestProgramsBuildError(f"`make` was not found: {HELP}")
    cc = (shlex.split(os.environ.get("CC", "")) or ["gcc"])[0]  # apps/Makefile's compiler
    if shutil.which(cc) is None:
        raise GuestProgramsBuildError(f"the C compiler `{cc}` was not found: {HELP}")
    print("tenantvm: building the example guest programs (make -C apps package)", file=sys.stderr, flush=True)
    # make's output goes to stderr: the PEP 517 frontend may read stdout.
    result = subprocess.run([make, "-C", str(ROOT / "apps"), "package"], stdout=sys.stderr, check=False)
    if result.returncode != 0:
        raise GuestProgramsBuildError(f"`make -C apps package` failed (exit status {result.returncode}): {HELP}")


def build_wheel(
    wheel_directory: str,
    config_settings: Mapping[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    """PEP 517 hook: the guest programs, then maturin's wheel."""
    build_guest_programs()
    return maturin.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(
    wheel_directory: str,
    config_settings: Mapping[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    """PEP 517 hook: the guest programs (used in place, from py/tenantvm), then maturin's editable wheel."""
    build_guest_programs()
    return maturin.build_editable(wheel_directory, config_settings, metadata_directory)
