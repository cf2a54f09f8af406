"""Tenants through the Python API: snapshot, instances, per-request reset, typed failures."""

from __future__ import annotations

import dataclasses
import inspect
import threading
from pathlib import Path

import pytest

import tenantvm
import tenantvm.batcher
import tenantvm.config
import tenantvm.runner
import tenantvm.tenant
from tenantvm import Request, Tenant, _native

pytestmark = pytest.mark.usefixtures("kvm")


def test_hello_one_exit_per_request(apps: Path) -> None:
    vm = Tenant(apps / "hello").instance()
    for _ in range(100):
        r = vm.call(Request())
        assert (r.status, r.body, r.header("Content-Type")) == (200, b"Hello World!", b"text/plain")
    stats = vm.stats()
    assert stats.last_call_exits == 1
    assert stats.resets == 100
    assert stats.syscalls == {"tenantvm_respond": 100}
    assert stats.last_reset["pages_restored"] <= 4  # kernel-area pages are counted apart


def test_priming_serves_and_resets_ephemeral_instances_and_leaves_stateful_ones_alone(apps: Path) -> None:
    eph = Tenant(apps / "state").instance()
    eph.prime([Request()] * 3)
    assert (eph.stats().calls, eph.stats().resets) == (3, 3)
    assert eph.call(Request()).body == b"1"
    st = Tenant(apps / "state", ephemeral=False).instance()
    st.prime([Request()] * 3)  # would change its state: not primed
    assert st.stats().calls == 0
    assert [st.call(Request()).body for _ in range(2)] == [b"1", b"2"]


def test_state_is_reset_in_ephemeral_mode_and_kept_in_stateful_mode(apps: Path) -> None:
    eph = Tenant(apps / "state").instance()
    assert [eph.call(Request()).body for _ in range(3)] == [b"1", b"1", b"1"]
    st = Tenant(apps / "state", ephemeral=False).instance()
    assert [st.call(Request()).body for _ in range(3)] == [b"1", b"2", b"3"]
    st.reset()
    assert st.call(Request()).body == b"1"


def test_counter_is_shared_by_instances_and_threads(apps: Path) -> None:
    tenant = Tenant(apps / "counter", shared_memory_kb=4)
    per_thread, threads = 200, 4

    def work() -> None:
        vm = tenant.instance()
        for _ in range(per_thread):
            vm.call(Request())

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    body = tenant.instance().call(Request()).body
    assert body == f"Hello {per_thread * threads + 1} World!".encode()


def test_shared_memory_file_is_shared_between_tenants(apps: Path, tmp_path: Path) -> None:
    path = tmp_path / "counter.shm"
    a = Tenant(apps / "counter", shared_memory_kb=4, shared_memory_path=path).instance()
    b = Tenant(apps / "counter", shared_memory_kb=4, shared_memory_path=path).instance()
    assert a.call(Request()).body == b"Hello 1 World!"
    assert b.call(Request()).body == b"Hello 2 World!"


def test_echo_round_trips_every_part_binary_safe(apps: Path) -> None:
    vm = Tenant(apps / "echo").instance()
    body = bytes(range(256)) * 300
    r = vm.call(Request("PUT", "/x/y", "a=1&b", [("X-One", "1"), ("X-Bin", b"\xff\x00")], body))
    assert r.body == body
    assert r.header("x-echo-method") == b"PUT"
    assert r.header("x-echo-path") == b"/x/y"
    assert r.header("x-echo-query") == b"a=1&b"
    assert r.header("x-echo-h-X-Bin") == b"\xff\x00"
    assert vm.call(Request(body=b"z")).body == b"z"


HEADER_FORMS = [
    [("X-One", "1"), (b"X-Two", "2")],  # str among bytes: converted
    ((b"X-One", b"1"), (b"X-Two", b"2")),  # a tuple of bytes pairs: passed as it is
    {"X-One": "1", b"X-Two": bytearray(b"2")},
    [(b"X-One", memoryview(b"1")), (b"X-Two", b"2")],
]


@pytest.mark.parametrize("headers", HEADER_FORMS)
def test_every_header_form_reaches_the_guest_alike(apps: Path, headers: object) -> None:
    vm = Tenant(apps / "echo").instance()
    request = Request("GET", "/", "", headers, b"")  # type: ignore[arg-type]
    for r in [vm.call(request), *vm.call_batch([request, request])]:
        assert isinstance(r, tenantvm.Response)
        assert (r.header("x-echo-h-X-One"), r.header("x-echo-h-X-Two")) == (b"1", b"2")
    with pytest.raises(tenantvm.ConfigError, match="not int"):
        vm.call(Request(headers=[(b"X-One", 1)]))  # type: ignore[list-item]
    with pytest.raises(tenantvm.ConfigError, match="not int"):
        vm.call_batch([request, Request(headers=[(b"X-One", 1)])])  # type: ignore[list-item]
    assert vm.call(request).status == 200, "nothing ran for the refused requests"


@pytest.mark.parametrize("ephemeral", [True, False])
def test_every_failure_is_typed_and_leaves_the_instance_ready(apps: Path, ephemeral: bool) -> None:
    vm = Tenant(apps / "misbehave", ephemeral=ephemeral, timeout=0.5).instance()
    cases: list[tuple[str, type[tenantvm.TenantVMError]]] = [
        ("/fault", tenantvm.GuestFault),
        ("/illegal", tenantvm.GuestFault),
        ("/spin", tenantvm.GuestTimeout),
        ("/exit", tenantvm.NoResponse),
        ("/abort", tenantvm.NoResponse),
        ("/wait", tenantvm.NoResponse),
        ("/big", tenantvm.ResponseTooLarge),
        ("/badptr", tenantvm.GuestFault),
        ("/oom", tenantvm.GuestOutOfMemory),
    ]
    for path, error in cases:
        with pytest.raises(error):
            vm.call(Request(path=path))
        assert vm.call(Request(path="/count")).body == b"1", path
        if not ephemeral:
            vm.reset()
    assert vm.usable


def test_fault_details_and_output_reach_python(apps: Path) -> None:
    vm = Tenant(apps / "misbehave").instance()
    with pytest.raises(tenantvm.GuestFault) as info:
        vm.call(Request(path="/fault"))
    assert (info.value.kind, info.value.address, info.value.access) == ("page_fault", 0, "write")
    with pytest.raises(tenantvm.GuestFault) as info:
        vm.call(Request(path="/badptr"))
    assert info.value.kind == "bad_pointer"
    assert info.value.address == 0x10


def test_oversize_request_is_refused_before_running(apps: Path) -> None:
    vm = Tenant(apps / "echo", max_request_bytes=8192).instance()
    with pytest.raises(tenantvm.RequestTooLarge) as info:
        vm.call(Request(body=b"x" * 10000))
    assert info.value.limit == 8192
    assert vm.stats().calls == 0
    assert vm.call(Request(body=b"ok")).body == b"ok"


def test_boot_failures_are_typed(apps: Path, tmp_path: Path) -> None:
    with pytest.raises(tenantvm.NoResponse, match="status"):
        Tenant(apps / "exitcode.musl", args=["5"])
    with pytest.raises(tenantvm.GuestFault):
        Tenant(apps / "nullwrite.glibc")
    with pytest.raises(tenantvm.GuestTimeout):
        Tenant(apps / "loop.musl", boot_timeout=0.2)
    (tmp_path / "script").write_text("#!/bin/sh\necho not an ELF\n")
    with pytest.raises(tenantvm.InvalidProgram):
        Tenant(tmp_path / "script")
    with pytest.raises(tenantvm.NoResponse, match="status 0"):
        Tenant("/bin/true")  # dynamically linked: runs, and exits without serving


def test_warmup_requests_run_before_the_snapshot(apps: Path) -> None:
    tenant = Tenant(apps / "state", warmup=[Request(), Request()])
    assert tenant.instance().call(Request()).body == b"3"


def test_gil_is_released_while_a_guest_runs(apps: Path) -> None:
    slow = Tenant(apps / "misbehave", timeout=5).instance()
    fast = Tenant(apps / "hello").instance()
    done = threading.Event()
    fast_calls_while_slow_ran: list[bool] = []

    def sleeper() -> None:
        slow.call(Request(path="/sleep", query="ms=400"))
        done.set()

    t = threading.Thread(target=sleeper)
    t.start()
    try:
        while not t.is_alive():
            pass
        for _ in range(20):
            fast.call(Request())
            fast_calls_while_slow_ran.append(not done.is_set())
    finally:
        t.join()
    assert all(fast_calls_while_slow_ran), "calls on another instance must proceed while one guest runs"


def test_invalid_configuration_is_refused(apps: Path) -> None:
    with pytest.raises(tenantvm.ConfigError):
        Tenant(apps / "hello", memory_mb=1)
    with pytest.raises(tenantvm.ConfigError):
        Tenant(apps / "hello", timeout=0)
    with pytest.raises(tenantvm.ConfigError):
        Tenant(apps / "hello", max_request_bytes=10)


def test_native_stats_have_exactly_the_fields_of_instance_stats(apps: Path) -> None:
    # The counters come from vmm::InstanceStats through the extension's dict; the Python
    # dataclass is built from that dict, so the two lists of names must agree.
    vm = Tenant(apps / "hello").instance()
    vm.call(Request())
    native = vm._native.stats()
    assert set(native) == {f.name for f in dataclasses.fields(tenantvm.InstanceStats)}
    assert vm.stats().syscalls == {tenantvm.runner.syscall_name(k): v for k, v in sorted(native["syscalls"].items())}


def test_shared_constants_come_from_the_vmm() -> None:
    # One source: guest/layout.h and the VMM's defaults, exported by the native module.
    assert tenantvm.runner.syscall_name(0x10001) == "tenantvm_respond"
    assert tenantvm.batcher.MAX_BATCH == _native.MAX_BATCH == 32
    defaults = tenantvm.tenant.DEFAULTS
    assert defaults["memory_mb"] == 64
    assert defaults["max_request_bytes"] == 1 << 20
    settings = tenantvm.config.TenantConfig(name="t", hosts=("t",), program=Path("p"))
    assert settings.timeout_ms == round(defaults["timeout"] * 1000)
    assert settings.max_response_bytes == defaults["max_response_bytes"]
    # A one-shot run's defaults: the signature of tenantvm.run shows the VMM's.
    run_defaults = inspect.signature(tenantvm.run).parameters
    assert run_defaults["timeout"].default == _native.RUN_DEFAULTS["timeout"] == 10.0
    assert run_defaults["memory_mb"].default == _native.RUN_DEFAULTS["memory_mb"] == 64
    assert run_defaults["tmp_mb"].default == _native.RUN_DEFAULTS["tmp_mb"] == 16
