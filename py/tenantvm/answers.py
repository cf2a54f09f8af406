"""HTTP answers, independent of the interface: a guest's response made safe, and the server's own.

An :data:`Answer` is ``(status, headers, body)`` with byte-string header pairs; the interface
modules (:mod:`tenantvm.interfaces`) send it.  ``docs/http.md`` lists the rules and statuses.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tenantvm.errors import (
    GuestError,
    GuestFault,
    GuestOutOfMemory,
    GuestTimeout,
    HostError,
    NoResponse,
    ResponseTooLarge,
)

__all__ = ["Answer", "BadResponse", "classify", "error_answer", "final_headers", "plain"]

#: ``(status, headers, body)``; the headers are not to be modified (they may be shared).
Answer = tuple[int, Sequence[tuple[bytes, bytes]], bytes]

#: Most distinct guest header lists whose checked form is remembered.
CHECKED_CACHE_SIZE = 256

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Control characters other than HTAB (CR, LF and NUL among them) are never valid in a value.
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# Set by the server (framing) or meaningful for one connection only: never taken from a guest.
_DROPPED = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)


class BadResponse(Exception):
    """The guest's response cannot be sent as HTTP (bad status, header name or value)."""


def final_headers(status: int, headers: list[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    """The guest's headers made safe to send with ``status`` (names lowercased).

    A tenant answers with the same few header lists again and again: the checked form of
    each is remembered (at most :data:`CHECKED_CACHE_SIZE` of them), so a request pays one
    dictionary look-up instead of the checks.

    Raises:
        BadResponse: ``status`` is not 200-599, a name is not an HTTP token, or a value holds
            a control character or bytes that are neither ASCII nor UTF-8 (Granian's RSGI
            interface sends values as text: both interfaces apply the same rule).
    """
    if not 200 <= status <= 599:
        raise BadResponse(f"status {status} (a final response must be 200-599)")
    key = tuple(headers)
    checked = _CHECKED.get(key)
    if checked is None:
        checked = _check(headers)
        if len(_CHECKED) >= CHECKED_CACHE_SIZE:
            _CHECKED.clear()
        _CHECKED[key] = checked
    return checked


_CHECKED: dict[tuple[tuple[bytes, bytes], ...], tuple[tuple[bytes, bytes], ...]] = {}


def _check(headers: list[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    out: list[tuple[bytes, bytes]] = []
    dropped = _DROPPED
    for name, value in headers:
        if not _TOKEN.fullmatch(name):
            raise BadResponse(f"invalid header name {name[:64]!r}")
        if _BAD_VALUE.search(value):
            raise BadResponse(f"control character in the value of header {name.decode()!r}")
        if not value.isascii():
            try:
                value.decode()
            except UnicodeDecodeError:
                raise BadResponse(f"the value of header {name.decode()!r} is neither ASCII nor UTF-8") from None
        lname = name.lower()
        if lname in dropped:
            if lname == b"connection":
                # Headers the guest lists in Connection are hop-by-hop too.
                listed = {t.strip().lower() for t in value.split(b",")}
                dropped = dropped | listed
                out = [(n, v) for n, v in out if n not in listed]
            continue
        out.append((lname, value))
    return tuple(out)


def plain(status: int, text: str, *extra: tuple[bytes, bytes]) -> Answer:
    """A short plain-text answer of the server's own."""
    return status, [(b"content-type", b"text/plain; charset=utf-8"), *extra], text.encode()


_ERRORS: list[tuple[type[BaseException], int, str]] = [
    (GuestTimeout, 504, "timeout"),
    (GuestFault, 502, "fault"),
    (NoResponse, 502, "no_response"),
    (ResponseTooLarge, 502, "response_too_large"),
    (GuestOutOfMemory, 502, "out_of_memory"),
    (GuestError, 502, "guest_error"),
    (BadResponse, 502, "bad_response"),
    (HostError, 500, "host"),
]

_MESSAGES = {
    "timeout": "the tenant's program ran past its time limit",
    "fault": "the tenant's program crashed",
    "no_response": "the tenant's program stopped without responding",
    "response_too_large": "the tenant's response is over its size limit",
    "out_of_memory": "the tenant's program ran out of memory",
    "guest_error": "the tenant's program failed",
    "bad_response": "the tenant's response is not valid HTTP",
    "host": "internal error",
}


def classify(e: BaseException) -> tuple[int, str]:
    """The HTTP status and the kind of failure (``x-tenantvm-error``) of a failed call."""
    for cls, status, kind in _ERRORS:
        if isinstance(e, cls):
            return status, kind
    return 500, "host"


def error_answer(status: int, kind: str, *extra: tuple[bytes, bytes]) -> Answer:
    """The answer to a failed call of kind ``kind``."""
    return plain(status, f"tenantvm: {_MESSAGES.get(kind, kind)}\n", (b"x-tenantvm-error", kind.encode()), *extra)
