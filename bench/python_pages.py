"""Which part of a CPython request dirties which pages (issue 12), by counting.

CPython 3.11 writes the reference count of every object a request touches, so the pages a
reset copies back grow with the Python code a request runs.  This boots Debian's python3 with
five guest programs that each add one layer of the bundled binding (``tenantvm_guest``) and
counts the pages restored per request, served one per call and 32 per batch, with no headers
and with three (as curl sends):

- ``loop``:    a bare loop calling ``tvm_respond_and_wait`` through ctypes;
- ``read``:    + the binding reading the request (``_read``);
- ``headers``: + the binding laying out one response header (``_header_array``);
- ``handler``: ``serve_requests`` with a handler answering a constant;
- ``wsgi``:    ``serve`` with the bundled hello's WSGI application.

Counts do not depend on the machine's load.  ``python bench/python_pages.py [--sdk DIR]``
(``--sdk``: another SDK directory, e.g. one holding an older ``python/tenantvm_guest.py`` and
``lib/``, to compare).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import tenantvm

SDK = Path(tenantvm.__file__).parent / "sdk"
PYTHON = Path("/usr/bin/python3")
HEADERS = [("host", "python.localhost"), ("user-agent", "curl/7.88.1"), ("accept", "*/*")]

_PRELUDE = 'import sys\nsys.path.insert(0, "/opt/tenantvm/python")\nimport gc\nimport tenantvm_guest as g\n'
_RAW = "lib = g._lib\ngc.collect()\ngc.freeze()\naddr = lib.tvm_wait_for_request()\n"
PROGRAMS = {
    "loop": _RAW + "while True:\n    addr = lib.tvm_respond_and_wait(200, None, 0, b'Hello World!', 12)\n",
    "read": _RAW
    + "while True:\n    g._read(addr)\n    addr = lib.tvm_respond_and_wait(200, None, 0, b'Hello World!', 12)\n",
    "headers": _RAW
    + "H = [('content-type', 'text/plain')]\n"
    + "while True:\n    a, n = g._header_array(H)\n"
    + "    addr = lib.tvm_respond_and_wait(200, g._address(a), n, b'Hello World!', 12)\n",
    "handler": "H = [('content-type', 'text/plain')]\ng.serve_requests(lambda r: (200, H, b'Hello World!'))\n",
    "wsgi": "def app(environ, start_response):\n"
    + "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
    + "    return [b'Hello World!']\n\ng.serve(app)\n",
}


def pages(sdk: Path, program: Path, calls: int = 200, batches: int = 8) -> dict[str, float]:
    """Pages restored per request for one guest program, without and with headers."""
    warm = [tenantvm.Request(headers=HEADERS)] * 20
    tenant = tenantvm.Tenant(
        program=PYTHON,
        args=["-I", "-B", "/app/" + program.name],
        memory_mb=64,
        mounts={sdk: "/opt/tenantvm", program.parent: "/app"},
        warmup=warm,
    )
    vm = tenant.instance()
    out: dict[str, float] = {}
    for label, headers in (("bare", []), ("3 headers", HEADERS)):
        req = tenantvm.Request(headers=headers)
        for _ in range(100):
            vm.call(req)
        s0 = vm.stats()
        for _ in range(calls):
            r = vm.call(req)
            assert r.body == b"Hello World!", r
        s1 = vm.stats()
        for _ in range(batches):
            for r in vm.call_batch([req] * 32):
                assert isinstance(r, tenantvm.Response), r
                assert r.body == b"Hello World!", r
        s2 = vm.stats()
        out[f"call, {label}"] = (s1.pages_restored - s0.pages_restored) / calls
        out[f"batch, {label}"] = (s2.guest_pages_restored - s1.guest_pages_restored) / (batches * 32)
    return out


def main() -> None:
    """Prints a markdown table: pages restored per request, program by program."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdk", type=Path, default=SDK)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="python_pages-") as d:
        rows = []
        for name, body in PROGRAMS.items():
            program = Path(d) / f"{name}.py"
            program.write_text(_PRELUDE + body)
            rows.append((name, pages(args.sdk, program)))
    columns = list(rows[0][1])
    print("| program | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, counts in rows:
        print(f"| {name} | " + " | ".join(f"{counts[c]:.1f}" for c in columns) + " |")


if __name__ == "__main__":
    main()
