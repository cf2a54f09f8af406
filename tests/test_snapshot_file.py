"""Snapshot files from Python: Tenant.write_snapshot / Tenant.from_snapshot, `tenantvm snapshot`,
and a server starting a tenant from its file (or booting it when the file is refused).

The format and every kind of damage are tested in crates/vmm/tests/snapshot_file.rs; here, that
each refusal reaches Python as a SnapshotFileError with its reason.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import tenantvm
from tenantvm import Request, SnapshotFileError, Tenant
from tenantvm import config as tconfig
from tests.httpserver import free_port, serve_command, server_env, start_server


def test_a_tenant_from_its_file_serves_like_the_booted_one(app: Callable[[str], str], tmp_path: Path) -> None:
    booted = Tenant(app("state"), memory_mb=16, ephemeral=False, timeout=2)
    path = tmp_path / "state.snap"
    booted.write_snapshot(path)
    loaded = Tenant.from_snapshot(path)
    assert (loaded.memory_mb, loaded.ephemeral, loaded.timeout) == (16, False, 2.0)
    assert loaded.boot_time == booted.boot_time
    vm = loaded.instance()
    assert [vm.call(Request("GET", "/")).body for _ in range(3)] == [b"1", b"2", b"3"]
    assert loaded.instance().call(Request("GET", "/")).body == b"1"
    # Where the load's time went, for bench/snapshot_file.py: a file written just now is
    # checked whole; a booted tenant has no load steps.
    steps = dict(loaded.load_steps)
    assert "RAM: checksum" in steps
    assert all(s >= 0 for s in steps.values())
    assert booted.load_steps == []
    assert "guest kernel start (first KVM_RUN)" in dict(vm.stats().create_steps)


def test_refused_files_raise_snapshot_file_error_with_the_reason(app: Callable[[str], str], tmp_path: Path) -> None:
    good = tmp_path / "hello.snap"
    Tenant(app("hello"), memory_mb=16).write_snapshot(good)
    data = good.read_bytes()
    cases = {
        "not_a_snapshot": Path(app("hello")).read_bytes(),
        "truncated": data[: len(data) // 2],
        "corrupt": data[:200] + bytes([data[200] ^ 1]) + data[201:],
    }
    for reason, content in cases.items():
        bad = tmp_path / f"{reason}.snap"
        bad.write_bytes(content)
        with pytest.raises(SnapshotFileError) as e:
            Tenant.from_snapshot(bad)
        assert e.value.reason == reason
        assert e.value.path == str(bad)
        assert isinstance(e.value, tenantvm.TenantVMError)
    with pytest.raises(SnapshotFileError) as e:
        Tenant.from_snapshot(tmp_path / "missing.snap")
    assert e.value.reason == "io"


TENANTS = """
[tenants.hello]
hosts = ["localhost"]
program = "{apps}/hello"
memory_mb = 16
timeout_ms = 50
pool_size = 1
snapshot = "hello.snap"

[tenants.echo]
hosts = ["echo.test"]
program = "{apps}/echo"
memory_mb = 16
timeout_ms = 50
pool_size = 1
snapshot = "echo.snap"
"""


def test_snapshot_command_and_a_server_starting_from_the_files(apps: Path, kvm: dict, tmp_path: Path) -> None:
    config = tmp_path / "tenants.toml"
    config.write_text(TENANTS.replace("{apps}", str(apps)))
    result = subprocess.run(
        [sys.executable, "-m", "tenantvm", "snapshot", "--config", str(config), "hello", str(tmp_path / "hello.snap")],
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "ready from the file" in result.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "tenantvm", "snapshot", "--config", str(config), "nobody", str(tmp_path / "x.snap")],
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=120,
    )
    assert bad.returncode == 2
    assert "no tenant named 'nobody'" in bad.stderr
    # echo's file is damaged: the server boots echo instead, saying why.
    (tmp_path / "echo.snap").write_bytes(b"garbage")
    port = free_port()
    s = start_server(serve_command(config, port), tmp_path / "server.log", env=server_env(), port=port, workers=1)
    try:
        assert s.get("/", host="localhost").content == b"Hello World!"
        assert s.request("POST", "/", host="echo.test", content=b"hi").content == b"hi"
        out = s.output()
        assert "tenant hello: started from its snapshot file" in out
        assert "tenant echo: snapshot file refused (not_a_snapshot)" in out
    finally:
        s.stop()


def _compare(booted: Tenant, loaded: Tenant, requests: list[Request]) -> None:
    """Each request gets the same answer from an instance of either tenant."""
    a, b = booted.instance(), loaded.instance()
    for req in requests:
        x, y = a.call(req), b.call(req)
        assert (y.status, y.headers, y.body) == (x.status, x.headers, x.body), req


def test_a_pthread_tenant_from_its_file_serves_like_the_booted_one(app: Callable[[str], str], tmp_path: Path) -> None:
    # Its 4 workers wait on a condition variable (futexes) at the snapshot, each with its own
    # registers, thread pointer and FPU state; a request wakes them and starts another thread.
    for ephemeral in (True, False):
        booted = Tenant(app("thread_tenant"), memory_mb=128, ephemeral=ephemeral, timeout=20)
        path = tmp_path / f"threads-{ephemeral}.snap"
        booted.write_snapshot(path)
        _compare(booted, Tenant.from_snapshot(path), [Request("GET", "/")] * 4)


def test_the_node_example_from_its_file_serves_like_the_booted_one(kvm: dict, tmp_path: Path) -> None:
    # node.localhost: V8's and libuv's threads, epoll, eventfds, signal handlers.
    cfg = tconfig.load(tconfig.config_path(None))
    node = next((t for t in cfg.tenants if t.name == "node"), None)
    if node is None:
        why = dict(cfg.skipped).get("node", "not in the example tenants")
        pytest.skip(f"the node example is left out here: {why}")
    kwargs = node.tenant_kwargs()
    booted = Tenant(kwargs.pop("program"), **kwargs)
    path = tmp_path / "node.snap"
    booted.write_snapshot(path)
    loaded = Tenant.from_snapshot(path)
    assert loaded.boot_time == booted.boot_time
    _compare(booted, loaded, [Request("GET", "/"), Request("GET", "/x?y=1"), Request("POST", "/", body=b"hi")] * 2)
