"""tenantvm_guest: serve requests from a Python program running inside a tenantvm VM.

Pure Python over ``ctypes`` and ``libtenantvm.so`` (the request API as a C ABI, see
docs/guest-abi.md); it runs under any CPython 3.9+ (Debian's ``/usr/bin/python3`` as it ships).

A WSGI application (Flask, Bottle, a plain callable...) runs unchanged::

    python3 tenantvm_guest.py /app/hello.py:app         # FILE.py:NAME or MODULE:NAME

or from the program itself::

    import tenantvm_guest
    tenantvm_guest.serve(app)                          # never returns

Everything before the first request (imports, set-up, and the tenants file's ``warmup``
requests) is in the tenant's snapshot; an ephemeral tenant starts every request from it.  Each
request reseeds the ``random`` module from the request's fresh entropy (``Request.random``), so
its numbers differ per request; what cannot be reseeded is listed in docs/guest-abi.md.

The library is found at ``$TENANTVM_LIB``, else next to this file, else in ``../lib/`` (the
layout of the SDK that ``tenantvm sdk --path`` prints).
"""

from __future__ import annotations

# Everything a request may need is imported here, not when first needed: a request served on
# a restricted thread cannot open a module's file (docs/security.md); what init imported is in
# the snapshot (traceback for errors, urllib.parse for percent-encoded paths).
import ctypes
import gc
import io
import os
import struct
import sys
import traceback
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple
from urllib.parse import unquote

__all__ = [
    "ABI_VERSION",
    "KvError",
    "KvUnavailable",
    "Request",
    "abi_version",
    "kv_delete",
    "kv_get",
    "kv_incr",
    "kv_set",
    "respond",
    "serve",
    "serve_requests",
    "wait_for_request",
    "wsgi_environ",
]

#: The libtenantvm ABI this module speaks (``tvm_abi_version()`` must return it).
ABI_VERSION = 1

Headers = list[tuple[str, str]]
#: What a request handler returns: status, headers, body.
Answer = tuple[int, Headers, bytes]


class _HeaderIn(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("name_len", ctypes.c_uint64),
        ("value", ctypes.c_void_p),
        ("value_len", ctypes.c_uint64),
    ]


class _HeaderOut(ctypes.Structure):
    # c_char_p fields keep the assigned bytes alive and point at their buffers.
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("name_len", ctypes.c_uint64),
        ("value", ctypes.c_char_p),
        ("value_len", ctypes.c_uint64),
    ]


class _RawRequest(ctypes.Structure):
    _fields_ = [
        ("version", ctypes.c_uint32),
        ("header_count", ctypes.c_uint32),
        ("method", ctypes.c_void_p),
        ("method_len", ctypes.c_uint64),
        ("path", ctypes.c_void_p),
        ("path_len", ctypes.c_uint64),
        ("query", ctypes.c_void_p),
        ("query_len", ctypes.c_uint64),
        ("headers", ctypes.POINTER(_HeaderIn)),
        ("body", ctypes.c_void_p),
        ("body_len", ctypes.c_uint64),
        ("random", ctypes.c_uint8 * 32),
        ("reserved", ctypes.c_uint8 * 16),
    ]


assert ctypes.sizeof(_RawRequest) == 128
assert ctypes.sizeof(_HeaderIn) == 32


def _library_path() -> str:
    configured = os.environ.get("TENANTVM_LIB")
    if configured:
        return configured
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(here, "libtenantvm.so"), os.path.join(here, "..", "lib", "libtenantvm.so")):
        if os.path.exists(candidate):
            return candidate
    raise ImportError(f"libtenantvm.so not found next to {here} nor in ../lib (set TENANTVM_LIB)")


def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL(_library_path())
    lib.tvm_abi_version.restype = ctypes.c_uint
    lib.tvm_abi_version.argtypes = []
    lib.tvm_wait_for_request.restype = ctypes.c_void_p
    lib.tvm_wait_for_request.argtypes = []
    respond_args = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    lib.tvm_respond_and_wait.restype = ctypes.c_void_p
    lib.tvm_respond_and_wait.argtypes = respond_args
    lib.tvm_respond.restype = ctypes.c_long
    lib.tvm_respond.argtypes = respond_args
    lib.tvm_kv_get.restype = ctypes.c_long
    lib.tvm_kv_get.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t]
    lib.tvm_kv_set.restype = ctypes.c_long
    lib.tvm_kv_set.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint64]
    lib.tvm_kv_incr.restype = ctypes.c_long
    lib.tvm_kv_incr.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int64, ctypes.POINTER(ctypes.c_int64)]
    lib.tvm_kv_delete.restype = ctypes.c_long
    lib.tvm_kv_delete.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    version = lib.tvm_abi_version()
    if version != ABI_VERSION:
        raise ImportError(f"libtenantvm ABI {version}, this module speaks {ABI_VERSION}")
    return lib


_lib = _load()
_string_at = ctypes.string_at


def abi_version() -> int:
    """The ABI version of the loaded libtenantvm."""
    return int(_lib.tvm_abi_version())


class Request(NamedTuple):
    """One request, copied out of the request area.

    Attributes:
        method: The HTTP method.
        path: The path as sent (percent-encoding kept), decoded as latin-1.
        query: The query string without the ``?``.
        headers: (name, value) pairs in order, names as sent, decoded as latin-1.
        body: The body.
        random: 32 bytes of fresh entropy for this request.
    """

    method: str
    path: str
    query: str
    headers: Headers
    body: bytes
    random: bytes

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive), or None."""
        name = name.lower()
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None


# The request is read with ``struct`` from one view of the request area made at start-up, and
# the response's headers are laid out in one buffer made at start-up: a request then creates a
# handful of objects instead of a ctypes object per field and header.  CPython 3.11 writes the
# reference count of every object it touches, so each object a request touches is a page the
# reset copies back (docs/guest-abi.md, "What a request dirties").
_AREA = 0x7F00_0000_0000  # where every request is (docs/guest-abi.md)
_AREA_VIEW = 1 << 32  # larger than any request-size limit; only the bytes a request names are read
_area = memoryview((ctypes.c_ubyte * _AREA_VIEW).from_address(_AREA)).cast("B")
_REQUEST = struct.Struct("<IIQQQQQQQQQ32s16x")
_HEADER = struct.Struct("<QQQQ")
assert _REQUEST.size == ctypes.sizeof(_RawRequest)
assert _HEADER.size == ctypes.sizeof(_HeaderIn)


def _read(address: int) -> Request:
    if address != _AREA:
        return _read_fields(address)
    area = _area
    (_, n, method, method_len, path, path_len, query, query_len, h, body, body_len, random) = _REQUEST.unpack_from(
        area, 0
    )
    headers = []
    if n:
        h -= _AREA
        for name, name_len, value, value_len in _HEADER.iter_unpack(area[h : h + n * 32]):
            name -= _AREA
            value -= _AREA
            headers.append(
                (str(area[name : name + name_len], "latin-1"), str(area[value : value + value_len], "latin-1"))
            )
    method -= _AREA
    path -= _AREA
    query -= _AREA
    body -= _AREA
    return Request(
        str(area[method : method + method_len], "latin-1"),
        str(area[path : path + path_len], "latin-1"),
        str(area[query : query + query_len], "latin-1"),
        headers,
        bytes(area[body : body + body_len]) if body_len else b"",
        random,
    )


def _read_fields(address: int) -> Request:
    # A request somewhere other than the documented area (a future ABI): read it field by field.
    raw = _RawRequest.from_address(address)
    headers = []
    h = raw.headers
    for i in range(raw.header_count):
        e = h[i]
        headers.append(
            (_string_at(e.name, e.name_len).decode("latin-1"), _string_at(e.value, e.value_len).decode("latin-1"))
        )
    return Request(
        _string_at(raw.method, raw.method_len).decode("latin-1"),
        _string_at(raw.path, raw.path_len).decode("latin-1"),
        _string_at(raw.query, raw.query_len).decode("latin-1"),
        headers,
        _string_at(raw.body, raw.body_len) if raw.body_len else b"",
        bytes(raw.random),
    )


def _reseed(entropy: bytes) -> None:
    # A PRNG seeded before the snapshot would repeat its sequence in every request: reseed
    # the ones the program has imported (importing them here would cost every tenant).
    random = sys.modules.get("random")
    if random is not None:
        random.seed(entropy)


def wait_for_request() -> Request:
    """Blocks until the next request (the first call is where the snapshot is taken)."""
    request = _read(_lib.tvm_wait_for_request())
    _reseed(request.random)
    return request


def respond(status: int, headers: Headers, body: bytes) -> None:
    """Sends the response; in an ephemeral tenant the VM is reset and this never returns."""
    array, n = _header_array(headers)
    _lib.tvm_respond(status, _address(array), n, body, len(body))


#: Where the response's header array and its names and values are laid out (a response whose
#: headers do not fit gets ctypes objects of its own).
_OUT_SIZE = 16 * 1024
_out = ctypes.create_string_buffer(_OUT_SIZE)
_out_address = ctypes.addressof(_out)
_out_view = memoryview(_out).cast("B")


def _header_array(headers: Headers) -> tuple[Any, int]:
    """The headers as the C ABI's array: (its address or None, count)."""
    n = len(headers)
    if n == 0:
        return None, 0
    view = _out_view
    base = _out_address
    pack = _HEADER.pack_into
    at = n * 32
    for i, (name, value) in enumerate(headers):
        nb = name.encode("latin-1")
        vb = value.encode("latin-1")
        end = at + len(nb) + len(vb)
        if end > _OUT_SIZE:
            return _header_objects(headers)
        view[at : at + len(nb)] = nb
        view[at + len(nb) : end] = vb
        pack(view, i * 32, base + at, len(nb), base + at + len(nb), len(vb))
        at = end
    return base, n


def _header_objects(headers: Headers) -> tuple[Any, int]:
    # c_char_p fields keep each name and value alive until the call has copied them.
    n = len(headers)
    array = (_HeaderOut * n)()
    for i, (name, value) in enumerate(headers):
        nb = name.encode("latin-1")
        vb = value.encode("latin-1")
        e = array[i]
        e.name = nb
        e.name_len = len(nb)
        e.value = vb
        e.value_len = len(vb)
    return array, n


def _address(array: Any) -> int | None:
    if array is None or isinstance(array, int):
        return array
    return ctypes.addressof(array)


def _respond_and_wait(status: int, headers: Headers, body: bytes) -> int:
    array, n = _header_array(headers)
    return _lib.tvm_respond_and_wait(status, _address(array), n, body, len(body))


def _freeze_heap() -> None:
    # Everything allocated so far lives as long as the snapshot: moving it out of the
    # collector's generations keeps collections from walking (and writing to) all of it in
    # every request, which would dirty most of the heap's pages.
    gc.collect()
    gc.freeze()


def _out_of_memory() -> None:
    # Out of memory inside the VM: end the program, so that the host reports it as the
    # tenant running out of memory (502) with the instance reset, as for any other program.
    os._exit(70)


def serve_requests(handler: Callable[[Request], Answer]) -> None:
    """Serves every request with ``handler(request) -> (status, headers, body)``; never returns.

    An exception in the handler answers 500 (traceback on stderr), :class:`KvUnavailable` 503;
    ``MemoryError`` ends the
    program instead (the host answers 502, out of memory, and resets the instance).
    """
    _freeze_heap()
    address = _lib.tvm_wait_for_request()
    while True:
        request = _read(address)
        _reseed(request.random)
        try:
            status, headers, body = handler(request)
        except MemoryError:
            _out_of_memory()
            raise
        except KvUnavailable as e:
            print(f"tenantvm_guest: {e}", file=sys.stderr)
            status, headers, body = 503, [("content-type", "text/plain")], b"Service Unavailable\n"
        except Exception:
            traceback.print_exc()
            status, headers, body = 500, [("content-type", "text/plain")], b"Internal Server Error"
        address = _respond_and_wait(status, headers, body)


class KvError(OSError):
    """A key-value call failed; ``errno`` is the code (docs/guest-abi.md, "Key-value storage")."""


class KvUnavailable(KvError):
    """The store is unavailable or too slow (EIO, ETIMEDOUT): :func:`serve_requests` answers 503."""


_EIO, _ETIMEDOUT, _ENOENT = 5, 110, 2
_kv_buffer = ctypes.create_string_buffer(1 << 16)
_kv_result = ctypes.c_int64()


def _kv_check(rc: int, what: str) -> int:
    if rc >= 0:
        return rc
    errno = -rc
    cls = KvUnavailable if errno in (_EIO, _ETIMEDOUT) else KvError
    raise cls(errno, f"{what}: {os.strerror(errno)}")


def _key(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else bytes(key)


def kv_get(key: str | bytes) -> bytes | None:
    """The value of ``key`` in the tenant's key-value store, or None if it is not set."""
    global _kv_buffer
    k = _key(key)
    while True:
        rc = _lib.tvm_kv_get(k, len(k), _kv_buffer, len(_kv_buffer))
        if rc == -_ENOENT:
            return None
        n = _kv_check(rc, "kv_get")
        if n <= len(_kv_buffer):
            return _kv_buffer.raw[:n]
        _kv_buffer = ctypes.create_string_buffer(n)


def kv_set(key: str | bytes, value: bytes, ttl_ms: int = 0) -> None:
    """Sets ``key`` to ``value`` (expiring after ``ttl_ms`` milliseconds unless 0)."""
    k = _key(key)
    _kv_check(_lib.tvm_kv_set(k, len(k), bytes(value), len(value), ttl_ms), "kv_set")


def kv_incr(key: str | bytes, delta: int = 1) -> int:
    """Adds ``delta`` to the integer at ``key`` (missing: 0), atomically; returns the new value."""
    k = _key(key)
    _kv_check(_lib.tvm_kv_incr(k, len(k), delta, ctypes.byref(_kv_result)), "kv_incr")
    return int(_kv_result.value)


def kv_delete(key: str | bytes) -> bool:
    """Removes ``key``; whether it was set."""
    k = _key(key)
    return bool(_kv_check(_lib.tvm_kv_delete(k, len(k)), "kv_delete"))


def _unquote(path: str) -> str:
    return unquote(path, "latin-1") if "%" in path else path


def wsgi_environ(request: Request) -> dict:
    """The WSGI (PEP 3333) environ of a request."""
    host = request.header("host") or "localhost"
    name, _, port = host.rpartition(":") if host.rfind(":") > host.rfind("]") else (host, "", "80")
    environ = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": _unquote(request.path),
        "QUERY_STRING": request.query,
        "SERVER_NAME": name,
        "SERVER_PORT": port or "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_LENGTH": str(len(request.body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(request.body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "tenantvm.random": request.random,
    }
    for hname, value in request.headers:
        key = hname.upper().replace("-", "_")
        if "_" in hname:
            continue  # as gunicorn and nginx: "X_Foo" could pose as "X-Foo"
        if key == "CONTENT_TYPE":
            environ[key] = value
        elif key != "CONTENT_LENGTH":
            key = "HTTP_" + key
            environ[key] = environ[key] + "," + value if key in environ else value
    return environ


def _call_wsgi(app: Callable[..., Iterable[bytes]], request: Request) -> Answer:
    started: list[Any] = []
    chunks: list[bytes] = []

    def start_response(status: str, headers: Headers, exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None and started and chunks:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status, headers]
        return chunks.append

    result = app(wsgi_environ(request), start_response)
    try:
        for chunk in result:
            if chunk:
                chunks.append(chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if not started:
        raise RuntimeError("the WSGI application returned without calling start_response")
    status, headers = started
    return int(status[:3]), list(headers), b"".join(chunks)


def serve(app: Callable[..., Iterable[bytes]]) -> None:
    """Serves a WSGI application (``app(environ, start_response)``) for every request; never returns."""
    serve_requests(lambda request: _call_wsgi(app, request))


def _load_app(spec: str) -> Callable[..., Iterable[bytes]]:
    """``FILE.py:NAME`` or ``MODULE:NAME`` (NAME defaults to ``app``)."""
    import importlib  # at start-up only

    target, _, attr = spec.partition(":")
    if target.endswith(".py"):
        directory, filename = os.path.split(os.path.abspath(target))
        sys.path.insert(0, directory)
        target = filename[:-3]
    module = importlib.import_module(target)
    return getattr(module, attr or "app")


def main(argv: list[str] | None = None) -> None:
    """``python3 tenantvm_guest.py FILE.py:NAME|MODULE:NAME``: serves that WSGI application."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: tenantvm_guest.py FILE.py:NAME | MODULE:NAME  (a WSGI application)\n")
        sys.exit(2)
    serve(_load_app(args[0]))


if __name__ == "__main__":
    # The application's own `import tenantvm_guest` gets this module, not a second copy.
    sys.modules.setdefault("tenantvm_guest", sys.modules[__name__])
    main()
