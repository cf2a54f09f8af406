"""libtenantvm: the request API as a plain C ABI (apps/sdk/libtenantvm.c, docs/guest-abi.md).

A C tenant linked against the shared and the static library serves requests; the library has no
undefined symbols (it loads into any process) and exports exactly the documented, versioned
functions; its header lookup behaves as documented (checked from the host through ctypes, the
same FFI the Python binding uses).
"""

from __future__ import annotations

import ctypes
import re
import subprocess
from pathlib import Path

import pytest

from tenantvm import GuestError, Request, Tenant, bundled

REPO = Path(__file__).resolve().parent.parent
EXPORTED = {
    "tvm_abi_version",
    "tvm_wait_for_request",
    "tvm_respond",
    "tvm_respond_and_wait",
    "tvm_respond_simple",
    "tvm_header",
    "tvm_shared",
}
#: Added in TENANTVM_1.1 (the key-value calls).
EXPORTED_1_1 = {"tvm_kv_get", "tvm_kv_set", "tvm_kv_incr", "tvm_kv_delete"}


@pytest.fixture(scope="module")
def lib(apps: Path) -> Path:
    return apps / "libtenantvm.so"


def linked_tenant(apps: Path, kind: str, lib: Path, **kwargs: object) -> Tenant:
    if kind == "dyn":
        return Tenant(apps / "libhello.dyn", allow_read=[lib], **kwargs)
    return Tenant(apps / "libhello.static", **kwargs)


@pytest.mark.usefixtures("kvm")
@pytest.mark.parametrize("kind", ["dyn", "static"])
@pytest.mark.parametrize("ephemeral", [True, False])
def test_a_tenant_linked_against_the_library_serves_in_one_exit(apps: Path, lib: Path, kind: str, ephemeral: bool):
    vm = linked_tenant(apps, kind, lib, ephemeral=ephemeral).instance()
    r = vm.call(Request("POST", "/p", "q=1", [("X-Name", "bob"), ("X-Status", "201")], b"body"))
    assert (r.status, r.body) == (201, b"libtenantvm 1: POST /p?q=1 x-name=bob")
    assert r.headers == [(b"content-type", b"text/plain"), (b"x-lib", b"1")]
    for name in ("ann", "eve"):
        r = vm.call(Request("GET", "/", headers=[("x-name", name)]))
        assert (r.status, r.body) == (200, f"libtenantvm 1: GET /? x-name={name}".encode())
        assert vm.stats().last_call_exits == 1


@pytest.mark.usefixtures("kvm")
def test_the_shared_library_must_be_readable_by_the_tenant(apps: Path) -> None:
    # Without allow_read, ld.so cannot open libtenantvm.so and the program exits at start.
    with pytest.raises(GuestError, match="exited with status 127"):
        Tenant(apps / "libhello.dyn")


def test_the_library_needs_nothing_and_exports_exactly_the_documented_abi(lib: Path) -> None:
    undefined = subprocess.run(["nm", "-D", "--undefined-only", lib], capture_output=True, text=True, check=True)
    assert undefined.stdout.strip() == ""
    defined = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True, check=True)
    symbols = {line.split()[-1] for line in defined.stdout.splitlines()}
    assert symbols == {f"{name}@@TENANTVM_1" for name in EXPORTED} | {"TENANTVM_1"} | {
        f"{name}@@TENANTVM_1.1" for name in EXPORTED_1_1
    } | {"TENANTVM_1.1"}
    abi = (REPO / "docs" / "guest-abi.md").read_text()
    section = abi[abi.index("## libtenantvm") :]
    every = EXPORTED | EXPORTED_1_1
    assert {name for name in every if re.search(rf"`[^`]*\b{name}\(", section)} == every


class Header(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("name_len", ctypes.c_uint64),
        ("value", ctypes.c_char_p),
        ("value_len", ctypes.c_uint64),
    ]


class RawRequest(ctypes.Structure):
    _fields_ = [
        ("version", ctypes.c_uint32),
        ("header_count", ctypes.c_uint32),
        ("strings", ctypes.c_uint64 * 6),
        ("headers", ctypes.POINTER(Header)),
        ("body", ctypes.c_void_p),
        ("body_len", ctypes.c_uint64),
        ("random", ctypes.c_uint8 * 48),
    ]


def test_header_lookup_and_constants_through_an_ffi(lib: Path) -> None:
    c = ctypes.CDLL(str(lib))
    assert c.tvm_abi_version() == 1
    c.tvm_shared.restype = ctypes.c_void_p
    assert c.tvm_shared() == 0x7E00_0000_0000
    c.tvm_header.restype = ctypes.POINTER(Header)
    c.tvm_header.argtypes = [ctypes.POINTER(RawRequest), ctypes.c_char_p]
    pairs = [(b"Host", b"a"), (b"X-Name", b"first"), (b"x-name", b"second"), (b"X-Names", b"longer")]
    headers = (Header * len(pairs))(*[Header(n, len(n), v, len(v)) for n, v in pairs])
    req = RawRequest(version=1, header_count=len(pairs), headers=headers)

    def lookup(name: bytes) -> bytes | None:
        found = c.tvm_header(ctypes.byref(req), name)
        return found.contents.value if found else None

    assert lookup(b"x-NAME") == b"first"
    assert lookup(b"host") == b"a"
    assert lookup(b"x-names") == b"longer"
    assert lookup(b"x-nam") is None
    assert lookup(b"") is None
    req.header_count = 1  # only the first header_count entries are searched
    assert lookup(b"x-name") is None


def test_the_package_sdk_carries_the_libraries() -> None:
    if not bundled.SDK_HEADER.is_file():
        pytest.fail("the SDK is not in the package: run `make -C apps package`", pytrace=False)
    for name in ("libtenantvm.so", "libtenantvm.a"):
        assert (bundled.SDK_DIR / "lib" / name).is_file()
