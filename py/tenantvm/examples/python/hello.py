"""python.localhost: the smallest WSGI application, served by tenantvm_guest (Debian's python3)."""

from __future__ import annotations

from collections.abc import Callable, Iterable


def app(environ: dict, start_response: Callable[..., object]) -> Iterable[bytes]:
    """Answers every request with ``Hello World!``."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello World!"]
