"""Linux programs as they ship: dynamic linking, the file-system view and its reset.

The guest's view of files is in docs/guest-abi.md ("Files"); the errnos here are Linux's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import tenantvm
from tenantvm import ConfigError, Request, Tenant

from .test_cli import tenantvm as cli

LD_SO = Path("/lib64/ld-linux-x86-64.so.2")
needs_ld_so = pytest.mark.skipif(not LD_SO.exists(), reason="no glibc dynamic linker on this host")


def lines(result: tenantvm.RunResult) -> list[str]:
    assert result.exit_code == 0, result.stderr
    return result.stdout.decode().splitlines()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tmp_path/allowed/{a.txt, out -> ../secret.txt}, tmp_path/secret.txt."""
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "a.txt").write_text("allowed content")
    (tmp_path / "secret.txt").write_text("TOP SECRET")
    (tmp_path / "allowed" / "out").symlink_to("../secret.txt")
    (tmp_path / "allowed" / "abs").symlink_to(tmp_path / "secret.txt")
    return tmp_path


@needs_ld_so
def test_dynamic_c_hello_and_bin_true(app):
    assert lines(tenantvm.run(app("hello.dyn"))) == ["Hello, world!"]
    assert tenantvm.run("/bin/true").exit_code == 0


@needs_ld_so
def test_dynamic_cpp_exception_is_thrown_and_caught(app):
    assert lines(tenantvm.run(app("exception.dyncpp"))) == ["ok=30", "too big: 3=1", "too big: 4=1"]


@needs_ld_so
def test_debian_python3_hashlib_json_stdin(kvm):
    python = Path("/usr/bin/python3")
    if not python.is_file():
        pytest.skip("no Debian python3")
    code = (
        "import hashlib, json, sys; data = sys.stdin.buffer.read();"
        "print(json.dumps({'sha256': hashlib.sha256(data).hexdigest()[:16], 'n': len(data)}))"
    )
    r = tenantvm.run(python, ["-c", code], stdin=b"tenantvm" * 100, memory_mb=256)
    assert lines(r) == [
        '{"sha256": "' + __import__("hashlib").sha256(b"tenantvm" * 100).hexdigest()[:16] + '", "n": 800}'
    ]


@needs_ld_so
def test_perl_e(kvm):
    perl = shutil.which("perl")
    if perl is None:
        pytest.skip("no perl")
    r = tenantvm.run(perl, ["-e", 'my %h = (a => 6, b => 7); print $h{a} * $h{b}, "\\n"'], memory_mb=128)
    assert lines(r) == ["42"]


@needs_ld_so
def test_lua_e(kvm):
    lua = shutil.which("lua5.4")
    if lua is None:
        pytest.skip("no lua5.4")
    r = tenantvm.run(lua, ["-e", "local t = {} for i = 1, 10 do t[#t + 1] = i * i end print(#t, t[10])"])
    assert lines(r) == ["10\t100"]


def test_mounts_remap_and_escapes_are_enoent(app, tree: Path):
    secret = tree / "secret.txt"
    paths = ["/app/a.txt", "/app/out", "/app/abs", "/app/../secret.txt", str(secret), "/proc/self/root" + str(secret)]
    argv = [x for p in paths for x in ("read", p)]
    r = tenantvm.run(app("fsops.glibc"), argv, mounts={tree / "allowed": "/app"})
    got = lines(r)
    assert got[0] == "read /app/a.txt = allowed content"
    assert got[1:] == [f"read {p} = -2" for p in paths[1:]]
    assert b"SECRET" not in r.stdout


def test_writes_outside_tmp_are_erofs_and_tmp_is_private_and_bounded(app, tree: Path):
    big = "x" * 700_000
    r = tenantvm.run(
        app("fsops.glibc"),
        ["write", "/app/a.txt", "y", "write", "/app/new", "y", "write", "/tmp/f", big, "write", "/tmp/g", big],
        mounts={tree / "allowed": "/app"},
        tmp_mb=1,
    )
    assert lines(r) == ["write /app/a.txt = -30", "write /app/new = -30", "write /tmp/f = 700000", "write /tmp/g = -28"]
    assert (tree / "allowed" / "a.txt").read_text() == "allowed content"
    assert not (tree / "allowed" / "new").exists()


def test_view_configuration_errors(app, tree: Path):
    with pytest.raises(ConfigError, match="/tmp"):
        tenantvm.run(app("hello.glibc"), allow_read=[tree])
    with pytest.raises(ConfigError, match="absolute"):
        tenantvm.run(app("hello.glibc"), mounts={tree: "relative"})
    with pytest.raises(ConfigError, match="does-not-exist"):
        tenantvm.run(app("hello.glibc"), mounts={tree / "does-not-exist": "/x"})
    with pytest.raises(ConfigError, match="tmp_mb"):
        tenantvm.run(app("hello.glibc"), tmp_mb=-1)


def test_cli_allow_read_mount_and_tmp_mb(app, tree: Path):
    p = cli(
        "run",
        "--mount",
        f"{tree / 'allowed'}:/app",
        "--tmp-mb",
        "1",
        app("fsops.glibc"),
        "read",
        "/app/a.txt",
        "ls",
        "/",
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().splitlines() == ["read /app/a.txt = allowed content", "ls / = app dev proc sys tmp"]
    bad = cli("run", "--mount", "nocolon", app("fsops.glibc"))
    assert bad.returncode != 0
    assert b"HOST:GUEST" in bad.stderr


@pytest.mark.parametrize("ephemeral", [True, False])
def test_tenant_files_opened_during_init_are_reset_per_request(app, tree: Path, ephemeral: bool):
    t = Tenant(app("fsprobe"), ["/app/a.txt"], mounts={tree / "allowed": "/app"}, ephemeral=ephemeral, timeout=10)
    vm = t.instance()
    first = vm.call(Request("GET", "/")).body.decode()
    assert first == "fds=6 cwd=/tmp/initdir tmp=init.txt,initdir, kept=4:allo pipe=1:x"
    second = vm.call(Request("GET", "/")).body.decode()
    if ephemeral:
        assert second == first, "fds, cwd, /tmp, offsets and pipes come back from the snapshot"
    else:
        assert second == "fds=9 cwd=/ tmp=initdir,request.txt, kept=4:wed  pipe=-1:"


def test_tenants_file_view_keys_are_relative_and_validated(tmp_path: Path, apps: Path) -> None:
    from tenantvm import config

    (tmp_path / "code").mkdir()
    good = (
        "[tenants.t]\n"
        'hosts = ["t"]\n'
        f'program = "{apps / "fsprobe"}"\n'
        'allow_read = ["code"]\n'
        'mounts = ["code:/app"]\n'
        "tmp_mb = 2\n"
    )
    path = tmp_path / "t.toml"
    path.write_text(good)
    t = config.load(path).tenant("t")
    assert t.allow_read == (tmp_path / "code",)
    assert t.mounts == ((tmp_path / "code", "/app"),)
    kw = t.tenant_kwargs()
    assert (kw["allow_read"], kw["mounts"], kw["tmp_mb"]) == ([tmp_path / "code"], {tmp_path / "code": "/app"}, 2)
    for bad, message in [
        ('allow_read = ["missing"]', "does not exist"),
        ('mounts = ["code"]', "HOST:GUEST"),
        ('mounts = ["code:relative"]', "HOST:GUEST"),
        ("tmp_mb = -1", "tmp_mb"),
        ('allow_read = "code"', "array"),
    ]:
        path.write_text(good.replace('allow_read = ["code"]\nmounts = ["code:/app"]\ntmp_mb = 2\n', bad + "\n"))
        with pytest.raises(config.TenantsFileError, match=message):
            config.load(path)
