"""Lua tenants: Debian's lua5.4 serving requests through the SDK's C module (apps/sdk/lua).

The bundled tenants file's lua.localhost runs the hello; tests/guest/luaprobe.lua probes the
request table, response headers, reseeding, isolation and failures.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tenantvm import GuestOutOfMemory, GuestTimeout, Request, Response, Tenant, bundled
from tenantvm import config as tconfig

from .vcpu_batches import BatchedServing

LUA = shutil.which("lua5.4")
GUEST_APPS = Path(__file__).resolve().parent / "guest"
MODULE = bundled.SDK_DIR / "lua" / "tenantvm.so"
pytestmark = [
    pytest.mark.usefixtures("kvm"),
    pytest.mark.skipif(LUA is None, reason="no Debian lua5.4 (tools/setup-host.sh installs it)"),
]


@pytest.fixture(scope="module")
def module() -> Path:
    if not MODULE.is_file():
        pytest.fail(f"{MODULE} is missing: install liblua5.4-dev and run `make -C apps package`", pytrace=False)
    return MODULE


def probe_tenant(module: Path, **kwargs: object) -> Tenant:
    return Tenant(
        LUA or "lua5.4",
        ["/app/luaprobe.lua"],
        {"LUA_CPATH": "/opt/tenantvm/lua/?.so"},
        mounts={module.parent: "/opt/tenantvm/lua", GUEST_APPS: "/app"},
        memory_mb=32,
        warmup=[Request(path="/state"), Request(path="/echo"), Request(path="/random")] * 5,
        **{"timeout": 2.0, **kwargs},
    )


@pytest.fixture(scope="module")
def probe(module: Path) -> Tenant:
    return probe_tenant(module)


@pytest.mark.usefixtures("module")
def test_lua_hello_is_one_exit_per_request() -> None:
    kwargs = tconfig.load(tconfig.BUNDLED_CONFIG).tenant("lua").tenant_kwargs()
    vm = Tenant(kwargs.pop("program"), **kwargs).instance()
    for _ in range(20):
        r = vm.call(Request())
        assert (r.status, r.body, r.header("content-type")) == (200, b"Hello World!", b"text/plain")
        assert vm.stats().last_call_exits == 1
    assert vm.stats().syscalls == {"tenantvm_respond_and_wait": 20}


def test_the_request_table_and_response_headers(probe: Tenant) -> None:
    r = probe.instance().call(Request("POST", "/echo", "q=1", [("X-A", "1"), ("x-b", "two")], b"body"))
    assert (r.status, r.body) == (201, b"POST|/echo|q=1|body|x-a=1|2")
    assert r.headers == [(b"content-type", b"text/plain"), (b"x-echo-x-a", b"1"), (b"x-echo-x-b", b"two")]


def test_lua_state_is_reset_in_ephemeral_mode_and_kept_in_stateful_mode(probe: Tenant, module: Path) -> None:
    eph = probe.instance()
    first = eph.call(Request(path="/state", body=b"a")).body
    assert [eph.call(Request(path="/state", body=k)).body for k in (b"b", b"c")] == [first, first]
    st = probe_tenant(module, ephemeral=False).instance()
    assert [st.call(Request(path="/state", body=k)).body for k in (b"a", b"b", b"a")] == [
        first,
        first.replace(b"count=5 cache=1", b"count=6 cache=2"),
        first.replace(b"count=5 cache=1", b"count=7 cache=3"),
    ]
    assert first == b"count=5 cache=1"  # the 5 warm-up /state requests are in the snapshot


def test_math_random_is_reseeded_from_the_request(probe: Tenant) -> None:
    vm = probe.instance()
    answers = [vm.call(Request(path="/random")).body.split() for _ in range(3)]
    answers.append(probe.instance().call(Request(path="/random")).body.split())
    assert len({a[0] for a in answers}) == len({a[1] for a in answers}) == len({a[3] for a in answers}) == 4
    assert len({a[2] for a in answers}) == 1  # a value drawn at start-up is in the snapshot


def test_lua_errors_are_500s(probe: Tenant) -> None:
    vm = probe.instance()
    clean = vm.call(Request(path="/state")).body
    r = vm.call(Request(path="/error"))
    assert (r.status, r.body) == (500, b"Internal Server Error")
    assert b"the probe raised" in r.stderr
    r = vm.call(Request(path="/badheaders"))
    assert r.status == 500
    assert b"the value must be a string" in r.stderr
    assert vm.call(Request(path="/state")).body == clean


@pytest.mark.parametrize(
    ("path", "error", "timeout"),
    # Filling memory touches every page of it: slow on a loaded host, so the limit is generous.
    [("/loop", GuestTimeout, 0.5), ("/oom", GuestOutOfMemory, 30.0)],
)
def test_a_failing_lua_request_is_a_typed_error_and_the_next_is_served(
    module: Path, path: str, error: type, timeout: float
) -> None:
    vm = probe_tenant(module, timeout=timeout).instance()
    clean = vm.call(Request(path="/state")).body
    with pytest.raises(error):
        vm.call(Request(path=path))
    assert vm.call(Request(path="/state")).body == clean


def test_the_binding_reaches_the_key_value_store(module: Path, tmp_path: Path) -> None:
    # tenantvm.kv_get/kv_set/kv_incr/kv_delete (tests/guest/luakv.lua); errors are error
    # objects with code and errno; an unhandled store-down error answers 503.
    from tests.kvstores import KV_PROBE_WARMUP, check_kv_binding

    tenant = Tenant(
        LUA or "lua5.4",
        ["/app/luakv.lua"],
        {"LUA_CPATH": "/opt/tenantvm/lua/?.so"},
        mounts={module.parent: "/opt/tenantvm/lua", GUEST_APPS: "/app"},
        memory_mb=32,
        timeout=5.0,
        warmup=[Request(path=p.partition("?")[0], query=p.partition("?")[2]) for p in KV_PROBE_WARMUP] * 3,
    )
    check_kv_binding(tenant, tmp_path)


def test_lua_state_is_reset_between_batched_requests(probe: Tenant) -> None:
    """Served as the server serves a runtime tenant (the vCPU-thread combiner: one batch)."""
    serving = BatchedServing(probe, budget=10.0)
    try:
        answers = serving.serve([Request(path="/state", body=k) for k in (b"a", b"b", b"c", b"a", b"d")])
        assert serving.sizes == [5]
    finally:
        serving.close()
    assert [a.body if isinstance(a, Response) else a for a in answers] == [b"count=5 cache=1"] * 5
