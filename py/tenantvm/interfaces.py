"""HTTP conversion: an ASGI or RSGI request in, the :class:`~tenantvm.dispatch.Dispatcher`'s answer out.

Both interfaces give the dispatcher the same things: the method, the raw path, the raw query,
the header pairs as bytes (names lowercased) and a body reader that stops at a limit.  Where
Granian's RSGI interface gives less than ASGI, the guest sees the difference
(``docs/http.md``): RSGI's path is percent-decoded, so it is re-encoded (a path that differs
only in needless escapes, or in ``%2F``, reaches the guest in its plainest form), and RSGI omits
request header values that are not visible ASCII.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote

from tenantvm.answers import Answer, plain
from tenantvm.dispatch import BodyTooLarge, Dispatcher
from tenantvm.routing import RESERVED_PREFIX, is_reserved

__all__ = ["asgi_http", "rsgi_http", "rsgi_path"]

log = logging.getLogger("tenantvm")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_INTERNAL_ERROR = plain(500, "tenantvm: internal error\n", (b"x-tenantvm-error", b"host"))


# --- ASGI -------------------------------------------------------------------------------------


async def _asgi_body(receive: Receive, limit: int) -> bytes:
    """The request body; raises BodyTooLarge as soon as it exceeds ``limit`` bytes."""
    message = await receive()
    body = message.get("body", b"")
    size = len(body)
    if size > limit:
        raise BodyTooLarge
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BodyTooLarge  # nobody to answer
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def _asgi_send(send: Send, answer: Answer) -> None:
    status, headers, body = answer
    await send(
        {"type": "http.response.start", "status": status, "headers": [*headers, (b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


async def asgi_http(dispatcher: Dispatcher, scope: Scope, receive: Receive, send: Send) -> None:
    """Serves one ASGI ``http`` request."""
    path: str = scope["path"]
    method: str = scope["method"]
    try:
        if path.startswith(RESERVED_PREFIX) and is_reserved(path):
            answer = await dispatcher.reserved(method, path, scope["headers"], receive, _asgi_body)
        else:
            answer = dispatcher.tenant(
                method,
                scope.get("raw_path") or path.encode(),
                scope["query_string"],
                scope["headers"],
                scope.get("http_version") == "2",
                path,
                receive,
                _asgi_body,
            )
            if type(answer) is not tuple:
                answer = await answer  # type: ignore[misc]
    except Exception:
        log.exception("unexpected error serving %s %s", method, path[:200])
        # The response may have started: then the server ends the connection instead.
        with contextlib.suppress(Exception):
            await _asgi_send(send, _INTERNAL_ERROR)
        raise
    await _asgi_send(send, answer)  # type: ignore[arg-type]


# --- RSGI -------------------------------------------------------------------------------------

# Characters a path may carry unescaped (RFC 3986 pchar and "/"): such a decoded path is its
# own encoding.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9/._~!$&'()*+,;=:@-]*")
_PATH_SAFE = "/._~!$&'()*+,;=:@-"


def rsgi_path(decoded: str) -> bytes:
    """The raw path for the guest from RSGI's percent-decoded one: escaped where needed."""
    raw = _PATHS.get(decoded)
    if raw is None:
        raw = decoded.encode() if _PLAIN_PATH.fullmatch(decoded) else quote(decoded, safe=_PATH_SAFE).encode()
        if len(_PATHS) >= PATH_CACHE_SIZE:
            _PATHS.clear()
        _PATHS[decoded] = raw
    return raw


#: Most distinct paths whose raw form is remembered (paths recur: a look-up beats the regex).
PATH_CACHE_SIZE = 1024
_PATHS: dict[str, bytes] = {}


async def _rsgi_body(protocol: Any, limit: int) -> bytes:
    """The request body; raises BodyTooLarge as soon as it exceeds ``limit`` bytes."""
    chunks = []
    size = 0
    async for chunk in protocol:
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


#: Most distinct checked header lists whose text form is remembered.
TEXT_CACHE_SIZE = 256
_TEXT: dict[Any, list[tuple[str, str]]] = {}


def _as_text(headers: Any) -> list[tuple[str, str]]:
    """RSGI's form of answer headers.

    Names are tokens and values ASCII or UTF-8 (answers.final_headers): both decode.  Checked
    guest headers come as (hashable, mostly recurring) tuples: their text form is remembered.
    """
    if type(headers) is not tuple:
        return [(k.decode(), v.decode()) for k, v in headers]
    text = _TEXT.get(headers)
    if text is None:
        text = [(k.decode(), v.decode()) for k, v in headers]
        if len(_TEXT) >= TEXT_CACHE_SIZE:
            _TEXT.clear()
        _TEXT[headers] = text
    return text


def _rsgi_send(protocol: Any, answer: Answer) -> None:
    # Granian frames the body (Content-Length) itself.
    status, headers, body = answer
    protocol.response_bytes(status, _as_text(headers), body)


async def rsgi_http(dispatcher: Dispatcher, scope: Any, protocol: Any) -> None:
    """Serves one RSGI request (``http``; a websocket is refused)."""
    if scope.proto != "http":
        protocol.close(1003)
        return
    path: str = scope.path
    method: str = scope.method
    try:
        if path.startswith(RESERVED_PREFIX) and is_reserved(path):
            answer = await dispatcher.reserved(
                method,
                path,
                [(k.encode(), v.encode()) for k, v in scope.headers.items()],
                protocol,
                _rsgi_body,
            )
        else:
            answer = dispatcher.tenant(
                method,
                _PATHS.get(path) or rsgi_path(path),
                scope.query_string.encode(),
                [(k.encode(), v.encode()) for k, v in scope.headers.items()],
                scope.http_version == "2",
                path,
                protocol,
                _rsgi_body,
            )
            if type(answer) is not tuple:
                answer = await answer  # type: ignore[misc]
    except Exception:
        log.exception("unexpected error serving %s %s", method, path[:200])
        with contextlib.suppress(Exception):
            _rsgi_send(protocol, _INTERNAL_ERROR)
        raise
    status, headers, body = answer  # type: ignore[misc]
    # Granian frames the body (Content-Length) itself.
    protocol.response_bytes(status, _as_text(headers), body)
