"""Hostile HTTP input: every malformed request gets the right 4xx (or the connection is dropped)
and never reaches a guest half-parsed; the server keeps serving.  Raw sockets, because an HTTP
client library would refuse to send most of these.

Whether a request reached a guest is visible in a stateful request counter (``misbehave /count``
with one stateful instance): it only moves when a guest ran.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.httpserver import INTERFACES, Server, free_port, serve_command, server_env, start_server

TENANTS = """
[tenants.echo]
hosts = ["echo.test"]
program = "{apps}/echo"
max_request_bytes = 65536

[tenants.count]
hosts = ["count.test"]
program = "{apps}/misbehave"
mode = "stateful"
pool_size = 1
"""


@pytest.fixture(scope="module", params=INTERFACES)
def server(
    apps: Path, kvm: dict, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Server]:
    """`tenantvm serve`, once under each interface."""
    d = tmp_path_factory.mktemp(f"input-{request.param}")
    config = d / "tenants.toml"
    config.write_text(TENANTS.replace("{apps}", str(apps)))
    port = free_port()
    cmd = [*serve_command(config, port, interface=request.param), "--header-timeout-ms", "1000"]
    s = start_server(cmd, d / "server.log", env=server_env(), port=port, workers=1, interface=request.param)
    yield s
    s.stop()


def raw(server: Server, data: bytes, timeout: float = 5.0) -> bytes:
    """Sends ``data`` on a fresh connection and returns everything until the server closes or
    a complete response head and its body arrived."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
            head, sep, body = out.partition(b"\r\n\r\n")
            if sep:
                lengths = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")]
                if lengths and len(body) >= int(lengths[0].split(b":")[1]):
                    break
        return out


def status(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:100]
    return int(response[9:12])


def guest_calls(server: Server) -> int:
    r = raw(server, b"GET /count HTTP/1.1\r\nHost: count.test\r\nConnection: close\r\n\r\n")
    assert status(r) == 200
    return int(r.partition(b"\r\n\r\n")[2])


BAD_REQUESTS: dict[str, tuple[bytes, int]] = {
    "huge header value": (b"GET /count HTTP/1.1\r\nHost: count.test\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", 431),
    "many headers": (
        b"GET /count HTTP/1.1\r\nHost: count.test\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(500)) + b"\r\n",
        431,
    ),
    "control byte in a header value": (b"GET /count HTTP/1.1\r\nHost: count.test\r\nX-A: a\x01b\r\n\r\n", 400),
    "NUL in a header value": (b"GET /count HTTP/1.1\r\nHost: count.test\r\nX-A: a\x00b\r\n\r\n", 400),
    "space in the path": (b"GET /co unt HTTP/1.1\r\nHost: count.test\r\n\r\n", 400),
    "control byte in the path": (b"GET /co\x01unt HTTP/1.1\r\nHost: count.test\r\n\r\n", 400),
    "no Host": (b"GET /count HTTP/1.1\r\n\r\n", 404),
    "garbage Host": (b"GET /count HTTP/1.1\r\nHost: \xff\xfe::[]\r\n\r\n", 404),
    "two Host headers": (b"GET /count HTTP/1.1\r\nHost: count.test\r\nHost: count.test\r\n\r\n", 400),
    "not HTTP at all": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n", 400),
    "invalid Content-Length": (b"POST /count HTTP/1.1\r\nHost: count.test\r\nContent-Length: abc\r\n\r\n", 400),
    "two Content-Lengths": (
        b"POST /count HTTP/1.1\r\nHost: count.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        400,
    ),
    "body over the limit": (
        b"POST / HTTP/1.1\r\nHost: echo.test\r\nContent-Length: 70000\r\n\r\n" + b"x" * 70000,
        413,
    ),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_request_gets_the_right_4xx_and_never_reaches_a_guest(server: Server, name: str) -> None:
    data, expected = BAD_REQUESTS[name]
    before = guest_calls(server)
    assert status(raw(server, data)) == expected
    assert guest_calls(server) == before + 1, "only the probe itself may have reached the guest"


def test_slow_client_is_dropped_and_others_are_served(server: Server) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as slow:
        slow.sendall(b"GET /count HTTP/1.1\r\nHost: cou")
        # Meanwhile the server serves everyone else.
        before = guest_calls(server)
        assert guest_calls(server) == before + 1
        answer = slow.recv(65536)  # the server gives up on the headers and closes
    assert answer == b"" or status(answer) in (400, 408)
    assert time.monotonic() - started < 9


def test_server_still_serves_normally_after_all_that(server: Server) -> None:
    r = raw(server, b"POST /x?y=1 HTTP/1.1\r\nHost: echo.test\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
    assert status(r) == 200
    assert r.endswith(b"abc")
