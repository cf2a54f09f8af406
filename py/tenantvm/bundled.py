"""What the package carries besides code: the example tenants and the guest SDK.

Both are built from ``apps/`` by ``make -C apps package``, which the build backend runs before
the wheel is packed (``pip install .``) and ``make build`` runs in the source tree::

    tenantvm/examples/tenants.toml   the bundled tenants file (``tenantvm serve`` without --config)
    tenantvm/examples/bin/           its programs: the example tenants, static x86-64 executables
    tenantvm/sdk/tenantvm.h          the C SDK header (``tenantvm sdk --path``)
    tenantvm/sdk/lib/                libtenantvm.so and libtenantvm.a: the request API as a C ABI
    tenantvm/sdk/examples/           the examples' sources, to start a tenant from

Build a tenant against the installed SDK with::

    gcc -static -O2 $(tenantvm sdk --cflags) -o mytenant mytenant.c
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["EXAMPLES_DIR", "SDK_DIR", "SDK_HEADER", "SDK_LIB_DIR", "MissingPackageData", "sdk_dir"]

_PACKAGE_DIR = Path(__file__).resolve().parent
#: The example tenants: their tenants file, and their programs in ``bin/``.
EXAMPLES_DIR = _PACKAGE_DIR / "examples"
#: The guest SDK: ``tenantvm.h`` (and, in time, libraries and language bindings).
SDK_DIR = _PACKAGE_DIR / "sdk"
#: The C SDK header.
SDK_HEADER = SDK_DIR / "tenantvm.h"
#: ``libtenantvm.so`` and ``libtenantvm.a``, for languages' FFIs and C tenants that link them.
SDK_LIB_DIR = SDK_DIR / "lib"

_BUILD_HINT = (
    "this tenantvm was installed without its build step: in a source tree run `make -C apps package` "
    "(or `make build`); otherwise reinstall with `pip install`, which builds it"
)


class MissingPackageData(FileNotFoundError):
    """A file the package should carry is missing (an in-tree checkout that was never built)."""


def sdk_dir() -> Path:
    """The directory of the installed guest SDK (it holds ``tenantvm.h``).

    Raises:
        MissingPackageData: The SDK was not copied into the package.
    """
    if not SDK_HEADER.is_file():
        raise MissingPackageData(f"{SDK_HEADER} is missing: {_BUILD_HINT}")
    return SDK_DIR
