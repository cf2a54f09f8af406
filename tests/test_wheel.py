"""The wheel, installed in a fresh virtual environment outside the source tree.

The wheel is built once per session the way ``pip install .`` builds it (through the build
backend of pyproject.toml, which builds the example guest programs first), or taken from
``$TENANTVM_TEST_WHEEL`` (a wheel built earlier in CI).  Installed in a venv in a temporary
directory, with the source tree out of every path: ``tenantvm serve`` run from another directory
serves the example tenants, and a tenant compiled against ``tenantvm sdk --path`` runs.

The tests that need the wheel are slow (a wheel build, a venv, a pip install; about half a
minute with a warm cargo target): ``-m 'not slow'`` leaves them out while iterating.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tenantvm import bundled, cli
from tests.httpserver import SCRUBBED, Server, free_port, start_server

REPO = Path(__file__).resolve().parent.parent
#: A wheel built elsewhere, tested instead of building one.
WHEEL_ENV = "TENANTVM_TEST_WHEEL"
#: Variables that could point the installed package back at the source tree.
LEAKY = (*SCRUBBED, "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "TENANTVM_APPS")


def _run(command: list[str], *, timeout: float, **kwargs: object) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)  # type: ignore[call-overload]
    assert p.returncode == 0, f"{shlex.join(command)} exited with {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p


def _build_wheel(out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``pip wheel`` of the source tree through its build backend (this venv's maturin, no download)."""
    command = [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-w", str(out)]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=1800, check=False, env={**os.environ, **env}, cwd=out
    )


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get(WHEEL_ENV)
    if given:
        return Path(given).resolve()
    out = tmp_path_factory.mktemp("wheelhouse")
    p = _build_wheel(out)
    assert p.returncode == 0, f"building the wheel failed:\n{p.stdout}\n{p.stderr}"
    (found,) = out.glob("tenantvm-*.whl")
    return found


@pytest.fixture(scope="session")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel (and its dependencies) installed; outside the source tree."""
    d = tmp_path_factory.mktemp("installed") / "venv"
    assert not d.is_relative_to(REPO)
    _run([sys.executable, "-m", "venv", str(d)], timeout=300)
    _run([str(d / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], timeout=900, cwd=d)
    return d


@pytest.fixture
def outside(venv: Path, tmp_path: Path) -> dict[str, Any]:
    """``subprocess`` arguments for running the venv's commands in a scratch directory."""
    env = {k: v for k, v in os.environ.items() if k not in LEAKY}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    return {"env": env, "cwd": cwd}


@pytest.mark.slow
def test_the_wheel_carries_the_example_programs_and_the_sdk(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for program in ("hello", "counter", "echo", "calc"):
        assert f"tenantvm/examples/bin/{program}" in names
    assert "tenantvm/examples/tenants.toml" in names
    assert "tenantvm/sdk/tenantvm.h" in names
    assert "tenantvm/sdk/examples/hello.c" in names
    assert {"tenantvm/sdk/lib/libtenantvm.so", "tenantvm/sdk/lib/libtenantvm.a"} <= names
    assert {"tenantvm/sdk/python/tenantvm_guest.py", "tenantvm/sdk/lua/tenantvm.so"} <= names
    assert {"tenantvm/examples/python/hello.py", "tenantvm/examples/lua/hello.lua"} <= names


@pytest.mark.slow
def test_the_installed_package_is_the_venvs_own(venv: Path, outside: dict[str, Any]) -> None:
    script = textwrap.dedent("""\
        import tenantvm, tenantvm.config as c
        print(tenantvm.__file__)
        print(c.BUNDLED_CONFIG)
        for t in c.load(c.BUNDLED_CONFIG).tenants:
            # A language runtime is the system's (/usr/bin/python3); what it runs is the package's.
            if not str(t.program).startswith("/usr/"):
                print(t.program)
            for host, _ in t.mounts:
                print(host)
    """)
    p = _run([str(venv / "bin" / "python"), "-c", script], timeout=60, **outside)
    lines = p.stdout.splitlines()
    assert len(lines) >= 6  # the module, the tenants file, its (at least four) programs
    for line in lines:
        path = Path(line).resolve()
        assert path.is_relative_to(venv.resolve()), line
        assert not path.is_relative_to(REPO), line


@pytest.mark.slow
def test_serve_from_anywhere_serves_the_example_tenants(
    venv: Path, outside: dict[str, Any], tmp_path: Path, kvm: dict
) -> None:
    port = free_port()
    command = [str(venv / "bin" / "tenantvm"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    server: Server = start_server(command, tmp_path / "serve.log", env=outside["env"], port=port)  # type: ignore[arg-type]
    try:
        hello = server.get("/", host="localhost")
        assert (hello.status_code, hello.text) == (200, "Hello World!")
        first = server.get("/", host="counter.localhost")
        second = server.get("/", host="counter.localhost")
        assert first.status_code == second.status_code == 200
        n = int(first.text.removeprefix("Hello ").removesuffix(" World!"))
        assert second.text == f"Hello {n + 1} World!"
        assert server.get("/", host="nobody.localhost").status_code == 404
    finally:
        status = server.stop()
    assert status == 0, server.output()


@pytest.mark.slow
def test_sdk_path_holds_the_header_and_builds_a_tenant(
    venv: Path, outside: dict[str, Any], tmp_path: Path, kvm: dict
) -> None:
    sdk = Path(_run(["tenantvm", "sdk", "--path"], timeout=60, **outside).stdout.strip())
    assert (sdk / "tenantvm.h").is_file()
    assert sdk.resolve().is_relative_to(venv.resolve())
    cflags = _run(["tenantvm", "sdk", "--cflags"], timeout=60, **outside).stdout.split()
    assert cflags == [f"-I{sdk}"]

    src = tmp_path / "tiny.c"
    src.write_text(
        textwrap.dedent("""\
            #include <string.h>
            #include "tenantvm.h"
            int main(void)
            {
                static char body[256];
                for (;;) {
                    struct tvm_request req;
                    wait_for_request(&req);
                    size_t n = req.path_len < 200 ? req.path_len : 200;
                    memcpy(body, "tiny:", 5);
                    memcpy(body + 5, req.path, n);
                    respond(200, "text/plain", body, 5 + n);
                }
            }
        """)
    )
    program = tmp_path / "tiny"
    _run(["gcc", "-static", "-O2", *cflags, "-o", str(program), str(src)], timeout=120, **outside)
    script = textwrap.dedent("""\
        import sys, tenantvm
        tenant = tenantvm.Tenant(sys.argv[1])
        response = tenant.instance().call(tenantvm.Request(path="/from-the-wheel"))
        print(response.status, response.body.decode())
    """)
    p = _run([str(venv / "bin" / "python"), "-c", script, str(program)], timeout=120, **outside)
    assert p.stdout.strip() == "200 tiny:/from-the-wheel"


@pytest.mark.slow
def test_building_without_a_c_compiler_stops_with_a_clear_message(tmp_path: Path) -> None:
    if os.environ.get(WHEEL_ENV):
        pytest.skip(f"{WHEEL_ENV} is set: no wheel is built here")
    assert shutil.which("no-such-cc") is None
    p = _build_wheel(tmp_path, CC="no-such-cc")
    assert p.returncode != 0
    output = p.stdout + p.stderr
    assert "the C compiler `no-such-cc` was not found" in output, output
    assert "apt-get install" in output, output
    assert not list(tmp_path.glob("*.whl"))


def test_sdk_command_without_the_sdk_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(bundled, "SDK_HEADER", tmp_path / "sdk" / "tenantvm.h")
    assert cli.main(["sdk", "--path"]) == cli.EXIT_HOST
    err = capsys.readouterr().err
    assert "tenantvm.h is missing" in err
    assert "make -C apps package" in err


def test_sdk_command_prints_the_package_sdk(capsys: pytest.CaptureFixture[str]) -> None:
    if not bundled.SDK_HEADER.is_file():
        pytest.fail("the SDK is not in the package: run `make -C apps package`", pytrace=False)
    assert cli.main(["sdk", "--path"]) == 0
    assert capsys.readouterr().out == f"{bundled.SDK_DIR}\n"
    assert cli.main(["sdk", "--cflags"]) == 0
    assert capsys.readouterr().out == f"-I{bundled.SDK_DIR}\n"
    assert cli.main(["sdk", "--libs"]) == 0
    assert capsys.readouterr().out == f"-L{bundled.SDK_LIB_DIR} -ltenantvm\n"
    assert cli.main(["sdk"]) == 0
    assert str(bundled.SDK_HEADER) in capsys.readouterr().out
