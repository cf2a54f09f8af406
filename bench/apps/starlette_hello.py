"""Baseline (b): a plain Starlette hello world on Granian, no isolation.

``granian --interface asgi starlette_hello:app`` (with ``bench/apps`` on ``PYTHONPATH``).
"""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

BODY = "Hello World!"


async def hello(request: Request) -> PlainTextResponse:
    """Answers every request with the same text."""
    return PlainTextResponse(BODY)


app = Starlette(routes=[Route("/{path:path}", hello)])
