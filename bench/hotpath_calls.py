"""Python function calls per HTTP request through tenantvm's application: a count, not a time.

Timings on a shared machine move with the load; the number of Python (and C) function calls
the application makes per request does not.  This boots the ``hello`` tenant in process, then
serves requests through ``TenantApp`` under RSGI and ASGI with stand-ins for Granian's scope and
protocol (one request, then one loop turn, like a lone request in the server) and counts the
``call`` and ``c_call`` events of ``sys.setprofile`` from the interface's entry (``rsgi_http``,
``asgi_http``) to its return.  Granian's own glue and the end-of-turn metric flush are not
counted; the VM call counts as one C call.

``python bench/hotpath_calls.py [--requests 200] [--top 0]``; with ``PYTHONPATH=DIR`` (a
directory holding another copy of the ``tenantvm`` package, e.g. an older commit's, with its
built ``_native`` module) it counts that copy, for a before/after.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import threading
from types import FrameType, SimpleNamespace
from typing import Any

from http_load import hello_tenants

_ENTRIES = ("rsgi_http", "asgi_http")
_HEADERS = [("host", "127.0.0.1:8080"), ("user-agent", "wrk"), ("accept", "*/*")]


class FakeRSGI:
    """Granian's RSGI scope and protocol for a ``GET /`` without a body."""

    proto = "http"
    http_version = "1.1"
    method = "GET"
    path = "/"
    query_string = ""

    def __init__(self) -> None:
        self.headers = SimpleNamespace(items=lambda: list(_HEADERS))
        self.sent: tuple[int, Any, bytes] | None = None

    def __aiter__(self) -> Any:
        async def nothing() -> Any:
            return
            yield b""

        return nothing()

    def response_bytes(self, status: int, headers: Any, body: bytes) -> None:
        """Keeps the response."""
        self.sent = (status, headers, body)


def _counter(events: collections.Counter[str], names: collections.Counter[str], top: int) -> Any:
    """A profile function counting calls made between an interface's entry and its return."""
    depth = 0

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal depth
        if event == "call" and frame.f_code.co_name in _ENTRIES:
            depth += 1
        elif event == "return" and frame.f_code.co_name in _ENTRIES:
            depth -= 1
        if depth and event in ("call", "c_call"):
            events[event] += 1
            if top:
                code = frame.f_code
                where = f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_name}"
                names[where if event == "call" else f"C {getattr(arg, '__qualname__', arg)}"] += 1

    return profile


async def count(config: str, requests: int, top: int) -> dict[str, dict[str, float]]:
    """Calls per request under each interface (and the most frequent callees with ``top``)."""
    from tenantvm.app import TenantApp

    app = TenantApp(config)
    await app.startup()
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "headers": [(k.encode(), v.encode()) for k, v in _HEADERS],
    }
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    out: dict[str, dict[str, float]] = {}
    try:
        for interface in ("rsgi", "asgi"):
            fake = FakeRSGI()

            async def one(interface: str = interface, fake: FakeRSGI = fake) -> None:
                if interface == "rsgi":
                    await app.__rsgi__(fake, fake)
                    if fake.sent is None or fake.sent[0] != 200:
                        raise RuntimeError(f"rsgi answered {fake.sent}")
                else:
                    await app(scope, receive, send)
                    sent.clear()

            for _ in range(50):
                await one()
                await asyncio.sleep(0)
            events: collections.Counter[str] = collections.Counter()
            names: collections.Counter[str] = collections.Counter()
            sys.setprofile(_counter(events, names, top))
            try:
                for _ in range(requests):
                    await one()
                    await asyncio.sleep(0)
            finally:
                sys.setprofile(None)
            out[interface] = {"python_calls": events["call"] / requests, "c_calls": events["c_call"] / requests}
            for name, n in names.most_common(top):
                out[interface][name] = n / requests
    finally:
        await app.shutdown()
    return out


def main() -> None:
    """Prints the counts per request."""
    parser = argparse.ArgumentParser(description="Python function calls per request (RSGI and ASGI).")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--top", type=int, default=0, help="also list the N most frequent callees")
    args = parser.parse_args()
    result: dict[str, dict[str, float]] = {}
    with hello_tenants() as config:
        # On a thread of its own: the thread that runs guests restricts itself (seccomp), and
        # this one must still remove the temporary tenants file.
        worker = threading.Thread(
            target=lambda: result.update(asyncio.run(count(str(config), args.requests, args.top)))
        )
        worker.start()
        worker.join()
    for interface, figures in result.items():
        print(
            f"{interface}: {figures['python_calls']:.1f} Python calls and {figures['c_calls']:.1f} C calls per request"
        )
        for name, n in figures.items():
            if name not in ("python_calls", "c_calls"):
                print(f"    {n:6.2f}  {name}")


if __name__ == "__main__":
    main()
