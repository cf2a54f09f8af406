"""Baseline (d): per-request isolation with ``os.fork()``.

Every request forks the worker; the child writes "Hello World!" to a pipe and ``_exit``s, the
parent reads the pipe to its end and reaps the child.  The fork runs on the event loop, as a
tenantvm inline call does.

``granian --interface asgi fork_hello:app`` (with ``bench/apps`` on ``PYTHONPATH``).
"""

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

BODY = b"Hello World!"


def run_once() -> bytes:
    """One isolated run in a forked child; its output read back."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer and leave without running any cleanup
        try:
            os.close(r)
            os.write(w, BODY)
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    try:
        while chunk := os.read(r, 4096):
            chunks.append(chunk)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return b"".join(chunks)


async def hello(request: Request) -> PlainTextResponse:
    """Answers with what a forked child wrote."""
    return PlainTextResponse(run_once())


app = Starlette(routes=[Route("/{path:path}", hello)])
