"""Deno tenants: an unmodified deno (PyPI's ``deno``) serving requests through the SDK's
TypeScript binding (apps/sdk/deno/tenantvm.ts: ``Deno.dlopen`` of libtenantvm.so, a
web-standard ``Request`` in, a ``Response`` out, as ``Deno.serve`` has it).

tests/guest/denoprobe.ts probes the request object, module state across requests, randomness
(Math.random and Deno's crypto, both seeded before the snapshot), async handlers and failures.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tenantvm import GuestFault, GuestOutOfMemory, GuestTimeout, Request, Response, Tenant, bundled

from .vcpu_batches import BatchedServing

GUEST_APPS = Path(__file__).resolve().parent / "guest"
EXAMPLES = bundled.EXAMPLES_DIR / "deno"
pytestmark = [
    pytest.mark.usefixtures("kvm"),
    pytest.mark.skipif(importlib.util.find_spec("deno") is None, reason="no deno (the `runtimes` extra)"),
]
#: Address space is free (reservations cost nothing): this is what deno touches, with room.
MEMORY_MB = 256
#: What the bundled tenants file gives deno (see py/tenantvm/examples/tenants.toml).
ENV = {
    "HOME": "/tmp",
    "DENO_DIR": "/tmp/deno",
    "DENO_NO_UPDATE_CHECK": "1",
    "DENO_V8_FLAGS": "--single-threaded,--single-threaded-gc,--max-old-space-size=64",
}


@pytest.fixture(scope="module")
def deno() -> Path:
    from deno._find_deno import find_deno_bin  # type: ignore[import-not-found]

    if not (bundled.SDK_DIR / "deno" / "tenantvm.ts").is_file():
        pytest.fail(f"{bundled.SDK_DIR}/deno/tenantvm.ts is missing: run `make -C apps package`", pytrace=False)
    return Path(find_deno_bin())


def deno_tenant(deno: Path, script: str, app_dir: Path, warmup: list[Request], **kwargs: object) -> Tenant:
    return Tenant(
        deno,
        ["run", "--allow-all", f"/app/{script}"],
        ENV,
        mounts={bundled.SDK_DIR: "/opt/tenantvm", app_dir: "/app"},
        memory_mb=MEMORY_MB,
        tmp_mb=64,
        boot_timeout=180,
        warmup=warmup,
        **{"timeout": 5.0, **kwargs},
    )


WARM = [Request(path="/state"), Request(path="/echo"), Request(path="/random"), Request(path="/async")] * 10


@pytest.fixture(scope="module")
def probe(deno: Path) -> Tenant:
    return deno_tenant(deno, "denoprobe.ts", GUEST_APPS, WARM)


def test_deno_hello_is_one_exit_per_request(deno: Path) -> None:
    # Warmed up as the bundled tenants file does (GET / without headers), then asked as the
    # server asks (a Host header, as every HTTP/1.1 request has): a request the warm-up did not
    # see takes paths of deno that ran no request before the snapshot (it called gettid).
    vm = deno_tenant(deno, "hello.ts", EXAMPLES, [Request()] * 50).instance()
    http = Request(headers=[("host", "deno.localhost"), ("user-agent", "curl/8"), ("accept", "*/*")])
    exits = []
    before = vm.stats().host_syscalls
    for _ in range(20):
        r = vm.call(http)
        assert (r.status, r.body, r.header("content-type")) == (200, b"Hello World!", b"text/plain")
        exits.append(vm.stats().last_call_exits)
    # The response's exit and nothing else: what deno asks of the kernel in a request (clocks,
    # gettid, getrandom) the guest kernel answers (docs/guest-abi.md, "Deno").
    assert exits == [1] * 20, exits
    after = vm.stats().host_syscalls
    host = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    assert host == {"tenantvm_respond_and_wait": 20}, host


def test_the_request_object_and_response_headers(probe: Tenant) -> None:
    r = probe.instance().call(Request("POST", "/echo", "a=1", [("X-A", "1"), ("x-a", "2")], b"hi"))
    assert r.status == 201
    assert json.loads(r.body) == {"method": "POST", "url": "/echo?a=1", "headers": {"x-a": "1, 2"}, "body": "hi"}
    assert r.headers == [(b"content-type", b"application/json"), (b"x-echo-x-a", b"1, 2")]


def test_module_state_and_globals_are_reset_in_ephemeral_mode(probe: Tenant, deno: Path) -> None:
    # POST: a web Request has no body with GET.
    vm = probe.instance()
    first = json.loads(vm.call(Request("POST", "/state", body=b"a")).body)
    assert first == {"counter": 10, "cache": 1, "global": ""}  # the warm-up's /state calls
    for body in (b"b", b"c", b"d"):
        assert json.loads(vm.call(Request("POST", "/state", body=body)).body) == first
    st = deno_tenant(deno, "denoprobe.ts", GUEST_APPS, WARM, ephemeral=False).instance()
    seen = [json.loads(st.call(Request("POST", "/state", body=b)).body) for b in (b"a", b"b")]
    assert seen == [first, {"counter": 11, "cache": 2, "global": "a"}]


def test_randomness_is_fresh_in_every_request(probe: Tenant) -> None:
    vm = probe.instance()
    answers = [json.loads(vm.call(Request(path="/random")).body) for _ in range(3)]
    answers.append(json.loads(probe.instance().call(Request(path="/random")).body))
    for key in ("math", "uuid", "values"):
        assert len({json.dumps(a[key]) for a in answers}) == len(answers), key
    assert len({a["drawnAtInit"] for a in answers}) == 1  # drawn before the snapshot: repeats


def test_requests_that_grow_the_heap_are_each_served_from_the_snapshot(deno: Path) -> None:
    # Every /grow makes V8 take pages and page tables from the pool and give some back
    # (munmap and MADV_DONTNEED of whole 2 MiB blocks); the reset puts the snapshot's page
    # tables back and makes PVM's shadow MMU forget the ones the request linked.  Before, the
    # third or so such request ran through stale translations: a page fault in V8, or the
    # host reading page tables outside RAM.
    vm = deno_tenant(deno, "denoprobe.ts", GUEST_APPS, [Request(path="/state")] * 10).instance()
    expected = str(sum(i + len(f"x{i}") for i in range(100000))).encode()
    for _ in range(8):
        r = vm.call(Request(path="/grow"))
        assert (r.status, r.body) == (200, expected)
    assert vm.call(Request(path="/state")).status == 200


@pytest.mark.parametrize(
    ("path", "error", "timeout"),
    # /oom fills memory, touching every page: slow on a loaded host
    [("/loop", GuestTimeout, 0.5), ("/oom", GuestOutOfMemory, 60.0), ("/fault", GuestFault, 5.0)],
)
def test_a_failing_deno_request_is_a_typed_error_and_the_next_is_served(
    deno: Path, path: str, error: type[Exception], timeout: float
) -> None:
    vm = deno_tenant(deno, "denoprobe.ts", GUEST_APPS, [Request(path="/state")] * 10, timeout=timeout).instance()
    clean = vm.call(Request(path="/state")).body
    with pytest.raises(error):
        vm.call(Request(path=path))
    assert vm.call(Request(path="/state")).body == clean


def test_async_handlers_and_throws(probe: Tenant) -> None:
    vm = probe.instance()
    assert vm.call(Request(path="/async")).body == b"awaited"
    r = vm.call(Request(path="/throw"))
    assert (r.status, r.body) == (500, b"Internal Server Error")
    assert b"Error: the probe threw" in r.stderr


def test_the_typescript_json_api(deno: Path) -> None:
    warm = [Request(path="/items"), Request("POST", "/quote", body=b'{"items":[{"id":"tea","qty":1}]}')] * 10
    vm = deno_tenant(deno, "api.ts", EXAMPLES, warm).instance()
    items = json.loads(vm.call(Request(path="/items")).body)
    assert [i["id"] for i in items] == ["tea", "cake", "soup"]
    assert json.loads(vm.call(Request(path="/items/cake")).body)["cents"] == 320
    assert vm.call(Request(path="/items/nope")).status == 404
    r = vm.call(Request("POST", "/quote", body=b'{"items":[{"id":"tea","qty":2},{"id":"soup","qty":1}]}'))
    assert (r.status, json.loads(r.body)) == (200, {"total_cents": 1510, "lines": 2})
    assert vm.call(Request("POST", "/quote", body=b"not json")).status == 400
    ids = {json.loads(vm.call(Request(path="/id")).body)["id"] for _ in range(3)}
    assert len(ids) == 3


def test_the_binding_reaches_the_key_value_store(deno: Path, tmp_path: Path) -> None:
    # kv.get/set/incr/delete (tests/guest/denokv.ts), as the Node binding's; errors are KvErrors
    # with code and errno; an unhandled store-down error answers 503.
    from tests.kvstores import KV_PROBE_WARMUP, check_kv_binding

    warm = [Request(path=p.partition("?")[0], query=p.partition("?")[2]) for p in KV_PROBE_WARMUP] * 3
    check_kv_binding(deno_tenant(deno, "denokv.ts", GUEST_APPS, warm), tmp_path)


def test_the_binding_and_its_tenants_type_check(deno: Path, tmp_path: Path) -> None:
    # `deno run` does not type-check: an FFI call with a wrong argument type only shows up when
    # that call runs.  `deno check`, with /opt/tenantvm/deno/ mapped to the SDK's binding.
    import subprocess

    sdk = bundled.SDK_DIR / "deno"
    (tmp_path / "map.json").write_text(json.dumps({"imports": {"/opt/tenantvm/deno/": f"{sdk}/"}}))
    files = [sdk / "tenantvm.ts", GUEST_APPS / "denoprobe.ts", GUEST_APPS / "denokv.ts", *EXAMPLES.glob("*.ts")]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DENO_DIR": str(tmp_path / "deno"), "NO_COLOR": "1"}
    r = subprocess.run(
        [deno, "check", "--quiet", f"--import-map={tmp_path / 'map.json'}", *map(str, files)],
        capture_output=True,
        text=True,
        env={**env, "DENO_NO_UPDATE_CHECK": "1"},
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_module_state_globals_and_randomness_are_reset_between_batched_requests(probe: Tenant) -> None:
    """Served as the server serves a runtime tenant (the vCPU-thread combiner: one batch)."""
    first = json.loads(probe.instance().call(Request("POST", "/state", body=b"a")).body)
    serving = BatchedServing(probe, budget=10.0)
    try:
        paths = ["/state", "/random", "/state", "/state", "/random", "/state"]
        answers = serving.serve([Request("POST", p, body=b"x") for p in paths])
        assert serving.sizes == [len(paths)]
    finally:
        serving.close()
    assert all(isinstance(a, Response) for a in answers), answers
    assert [a.status for a in answers] == [200] * len(paths)
    for i in (0, 2, 3, 5):
        assert json.loads(answers[i].body) == first
    randoms = [json.loads(answers[i].body) for i in (1, 4)]
    assert randoms[0] != randoms[1]
