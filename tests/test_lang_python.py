"""CPython tenants: Debian's python3 serving WSGI applications through tenantvm_guest.

The binding (apps/sdk/python/tenantvm_guest.py, in the package's SDK) is ctypes over
libtenantvm.so.  The bundled tenants file's python.localhost and shop.localhost run with it;
tests/guest/pyprobe.py is a probe application: its state digest, its randomness and its ways to
fail.  Isolation is the property of tests/test_isolation.py, for a big runtime: for any sequence
of requests, a long-lived ephemeral instance answers each exactly as a new instance does.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantvm import GuestFault, GuestOutOfMemory, GuestTimeout, Request, Response, Tenant, TenantVM, bundled
from tenantvm import config as tconfig

from .vcpu_batches import BatchedServing

PYTHON = Path("/usr/bin/python3")
GUEST_APPS = Path(__file__).resolve().parent / "guest"
pytestmark = [
    pytest.mark.usefixtures("kvm"),
    pytest.mark.skipif(not PYTHON.is_file(), reason="no Debian python3 (tools/setup-host.sh installs it)"),
]

EXAMPLES = int(os.environ.get("TENANTVM_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def bundled_tenant(name: str) -> Tenant:
    kwargs = tconfig.load(tconfig.BUNDLED_CONFIG).tenant(name).tenant_kwargs()
    return Tenant(kwargs.pop("program"), **kwargs)


def probe_tenant(**kwargs: Any) -> Tenant:
    """The probe application, with the package's SDK, warmed up on every path that succeeds."""
    warm = [Request("POST", "/state", body=b"[]"), Request("GET", "/random"), Request("GET", "/echo")] * 10
    return Tenant(
        PYTHON,
        ["-I", "-B", "/opt/tenantvm/python/tenantvm_guest.py", "/app/pyprobe.py:app"],
        mounts={bundled.SDK_DIR: "/opt/tenantvm", GUEST_APPS: "/app"},
        memory_mb=32,
        warmup=warm,
        **{"timeout": 2.0, **kwargs},
    )


@pytest.fixture(scope="module")
def probe() -> Tenant:
    return probe_tenant()


def state(vm: TenantVM, ops: list[Any] | None = None) -> dict[str, Any]:
    r = vm.call(Request("POST", "/state", body=json.dumps(ops or []).encode()))
    assert r.status == 200, r.stderr
    return json.loads(r.body)


def test_python_hello_is_one_exit_per_request() -> None:
    vm = bundled_tenant("python").instance()
    for _ in range(20):
        r = vm.call(Request())
        assert (r.status, r.body, r.header("content-type")) == (200, b"Hello World!", b"text/plain")
        assert vm.stats().last_call_exits == 1
    assert vm.stats().syscalls == {"tenantvm_respond_and_wait": 20}


def test_shop_json_api() -> None:
    vm = bundled_tenant("shop").instance()

    def call(method: str, path: str, body: object = None) -> tuple[int, Any, Any]:
        r = vm.call(Request(method, path, body=b"" if body is None else json.dumps(body).encode()))
        assert r.header("content-type") == b"application/json"
        return r.status, json.loads(r.body), r.header("allow")

    status, doc, _ = call("GET", "/products")
    assert status == 200
    assert [p["id"] for p in doc["products"]] == ["tea", "mug", "pot"]
    assert call("GET", "/products/mug")[:2] == (200, {"id": "mug", "name": "Stoneware mug", "price_cents": 1200})
    assert call("GET", "/products/nope")[:2] == (404, {"error": "no such product"})
    cart = {"items": [{"id": "tea", "qty": 2}, {"id": "mug", "qty": 1}], "coupon": "welcome10"}
    status, doc, _ = call("POST", "/quote", cart)
    assert status == 200
    assert (doc["subtotal_cents"], doc["discount_cents"], doc["tax_cents"], doc["total_cents"]) == (
        2500,
        250,
        180,
        2430,
    )
    for bad, error in [
        ({"items": []}, "items must be a non-empty array"),
        ({"items": [{"id": "tea", "qty": 0}]}, "items[0]: qty must be an integer between 1 and 1000"),
        ({"items": [{"id": "gold", "qty": 1}]}, "items[0]: no product 'gold'"),
        ({"items": [{"id": "tea", "qty": 1}], "coupon": "FREE"}, "unknown coupon 'FREE'"),
        ([1], "the body must be a JSON object"),
    ]:
        assert call("POST", "/quote", bad)[:2] == (400, {"error": error})
    assert call("GET", "/quote") == (405, {"error": "use POST"}, b"POST")
    assert call("GET", "/elsewhere")[:2] == (404, {"error": "not found"})


def test_wsgi_environ(probe: Tenant) -> None:
    headers = [("Host", "shop.localhost:8080"), ("X-A", "1"), ("x-a", "2"), ("Content-Type", "text/plain")]
    headers.append(("X_B", "dropped"))
    r = probe.instance().call(Request("PUT", "/echo/%41b", "x=1&y", headers, b"hi"))
    assert r.status == 200
    assert json.loads(r.body) == {
        "method": "PUT",
        "path": "/echo/Ab",
        "query": "x=1&y",
        "server": ["shop.localhost", "8080"],
        "headers": [
            ["CONTENT_LENGTH", "2"],
            ["CONTENT_TYPE", "text/plain"],
            ["HTTP_HOST", "shop.localhost:8080"],
            ["HTTP_X_A", "1,2"],
        ],
        "body": "hi",
    }


@pytest.mark.parametrize("value_bytes", [1, 300, 20_000])
def test_response_headers_of_any_size_and_latin_1_bytes_come_out_as_sent(probe: Tenant, value_bytes: int) -> None:
    # The binding lays small header sets out in one buffer made at start-up and gives larger
    # ones (over 16 KiB) ctypes objects of their own: both must send every byte.
    sent = [(f"X-H{i}", ("\xe9\xff-" + str(i)) * (value_bytes // 4 + 1)) for i in range(3)]
    sent.append(("Content-Type", "text/plain"))
    r = probe.instance().call(Request("POST", "/headers", body=json.dumps(sent).encode()))
    assert r.status == 200
    assert r.body == b"headers"
    got = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in r.headers]
    assert got == sent


def test_a_request_is_read_whole_after_a_longer_one(probe: Tenant) -> None:
    vm = probe.instance()
    long = [("X-Long", "v" * 5000), ("Host", "a.localhost:1")]
    first = json.loads(vm.call(Request("GET", "/echo/long", "q=" + "x" * 3000, long, b"b" * 9000)).body)
    assert first["body"] == "b" * 9000
    assert first["query"] == "q=" + "x" * 3000
    assert ["HTTP_X_LONG", "v" * 5000] in first["headers"]
    short = json.loads(vm.call(Request("GET", "/echo", "", [("Host", "b")], b"")).body)
    assert short == {
        "method": "GET",
        "path": "/echo",
        "query": "",
        "server": ["b", "80"],
        "headers": [["CONTENT_LENGTH", "0"], ["HTTP_HOST", "b"]],
        "body": "",
    }


def without_counts(digest: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in digest.items() if k not in ("blocks", "gc_objects")}


ALL_CHANGES = [
    ["global", 0, 3],
    ["cache", "a", 1],
    ["lru", "k", 0],
    ["registry", 0, "r"],
    ["environ", "X", "1"],
    ["path", "p", 0],
    ["tmp", "f", "x"],
    ["builtin", "b", 1],
    ["module", 0, "m"],
    ["garbage", 0, 3000],
    ["recursion", 0, 7],
    ["seed", 0, "s"],
]


def test_stateful_python_keeps_its_state_and_ephemeral_does_not(probe: Tenant) -> None:
    eph = probe.instance()
    first = state(eph, ALL_CHANGES)
    assert state(eph, ALL_CHANGES) == first
    st = probe_tenant(ephemeral=False).instance()
    # Another boot: its allocator counts may differ (the hash seed differs per boot).
    assert without_counts(state(st, ALL_CHANGES)) == without_counts(first)
    kept = state(st)
    assert (kept["counter"], kept["cache"], kept["lru"], kept["registry"]) == (3, [["a", 1]], 1, ["r"])
    assert (kept["environ"], kept["tmp"], kept["builtins"], kept["json_attr"]) == (
        [["PROBE_X", "1"]],
        ["probe-f"],
        ["probe_b"],
        "m",
    )
    st.call(Request(path="/random"))  # no host system call in it (os.urandom is answered in the VM)
    assert st.stats().last_call_exits == 1  # respond_and_wait: one exit per request when stateful too


# One change: [kind, key, value] (a number; the probe turns it into what the kind needs).
change = st.tuples(st.sampled_from([c[0] for c in ALL_CHANGES]), st.text("abc", max_size=2), st.integers(0, 9999))
ops_strategy = st.lists(change.map(list), max_size=6)


@pytest.fixture(scope="module")
def long_lived(probe: Tenant) -> TenantVM:
    return probe.instance()


@FUZZ
@given(sequence=st.lists(ops_strategy, min_size=1, max_size=4))
def test_isolation_property_for_the_python_tenant(probe: Tenant, long_lived: TenantVM, sequence: list) -> None:
    fresh = state(probe.instance())
    for ops in sequence:
        assert state(long_lived, ops) == fresh


def test_randomness_is_fresh_in_every_request(probe: Tenant) -> None:
    vm = probe.instance()
    answers = [json.loads(vm.call(Request(path="/random")).body) for _ in range(3)]
    answers.append(json.loads(probe.instance().call(Request(path="/random")).body))
    for key in ("random", "bits", "urandom", "secrets", "uuid4"):
        assert len({a[key] for a in answers}) == len(answers), key
    # A generator the program seeded itself before the snapshot repeats (docs/guest-abi.md).
    assert len({a["init_seeded"] for a in answers}) == 1


@pytest.mark.parametrize(
    ("path", "error", "timeout"),
    # Filling memory touches every page of it: slow on a loaded host, so the limit is generous.
    [("/fault", GuestFault, 10.0), ("/loop", GuestTimeout, 0.5), ("/oom", GuestOutOfMemory, 30.0)],
)
def test_a_failing_python_request_is_a_typed_error_and_the_next_is_served(
    path: str, error: type, timeout: float
) -> None:
    tenant = probe_tenant(timeout=timeout)
    vm = tenant.instance()
    clean = state(vm)
    with pytest.raises(error):
        vm.call(Request(path=path))
    assert state(vm) == clean


def test_an_exception_in_the_application_is_a_500_with_the_traceback_on_stderr(probe: Tenant) -> None:
    vm = probe.instance()
    r = vm.call(Request(path="/raise"))
    assert (r.status, r.body) == (500, b"Internal Server Error")
    assert b"ValueError: the probe raised" in r.stderr
    assert state(vm) == state(probe.instance())


def test_warm_up_puts_specialized_code_in_the_snapshot() -> None:
    # CPython 3.11 rewrites bytecode it runs often (specialization): without warm-up every
    # request does that again, writing (and dirtying) the code objects' pages.
    kwargs = tconfig.load(tconfig.BUNDLED_CONFIG).tenant("python").tenant_kwargs()
    assert len(kwargs["warmup"]) >= 10

    def pages_per_request(warmup: list[Request]) -> int:
        args = {k: v for k, v in kwargs.items() if k != "program"}
        vm = Tenant(kwargs["program"], **{**args, "warmup": warmup}).instance()
        for _ in range(5):
            vm.call(Request())
        return vm.stats().last_reset["guest_pages"]

    cold, warm = pages_per_request([]), pages_per_request(kwargs["warmup"])
    assert warm < cold * 0.9, (cold, warm)


def test_the_binding_reaches_the_key_value_store_and_a_store_down_is_a_503(tmp_path: Path) -> None:
    from tenantvm import _native
    from tenantvm.kv import SqliteKv

    class Down:
        def incr(self, ns: bytes, key: bytes, delta: int) -> int:
            raise ConnectionError("the store is down")

    paths = ["/incr", "/set", "/get", "/delete", "/other"]
    tenant = Tenant(
        PYTHON,
        ["-I", "-B", "/opt/tenantvm/python/tenantvm_guest.py", "/app/pykv.py:app"],
        mounts={bundled.SDK_DIR: "/opt/tenantvm", GUEST_APPS: "/app"},
        memory_mb=32,
        timeout=2.0,
        warmup=[Request("GET", p) for p in paths] * 5,
    )
    vm = tenant.with_kv(_native.KvBridge(SqliteKv(tmp_path / "kv.sqlite3"), timeout=5), "py").instance()
    assert [vm.call(Request("GET", "/incr")).body for _ in range(3)] == [b"1", b"2", b"3"]
    assert vm.call(Request("GET", "/get")).body == b"<none>"
    assert vm.call(Request("POST", "/set", body=b"\x00value")).body == b"ok"
    assert vm.call(Request("GET", "/get")).body == b"\x00value"
    assert vm.call(Request("GET", "/other")).body == b"errno %d" % errno.EBADMSG
    assert vm.call(Request("GET", "/delete")).body == b"True"
    down = tenant.with_kv(_native.KvBridge(Down(), timeout=5), "py").instance()
    r = down.call(Request("GET", "/incr"))
    assert r.status == 503
    assert b"kv_incr: Input/output error" in r.stderr  # the host's reason stays on the host


@pytest.fixture(scope="module")
def combined(probe: Tenant) -> Iterator[BatchedServing]:
    """The probe served as the server serves runtime tenants: by the vCPU-thread combiner."""
    serving = BatchedServing(probe, budget=10.0)
    yield serving
    serving.close()


def state_request(ops: list[Any] | None = None) -> Request:
    return Request("POST", "/state", body=json.dumps(ops or []).encode())


@FUZZ
@given(sequence=st.lists(ops_strategy, min_size=1, max_size=8))
def test_isolation_property_for_python_requests_served_in_batches(
    probe: Tenant, combined: BatchedServing, sequence: list
) -> None:
    """The property for requests the combiner runs as one batch (the guest kernel resets)."""
    fresh = state(probe.instance())
    sizes = len(combined.sizes)
    answers = combined.serve([state_request(ops) for ops in sequence])
    assert combined.sizes[sizes:] == [len(sequence)]
    for answer in answers:
        assert isinstance(answer, Response), answer
        assert answer.status == 200
        assert json.loads(answer.body) == fresh


def test_failures_and_randomness_in_a_batch_of_python_requests(probe: Tenant, combined: BatchedServing) -> None:
    clean = state(probe.instance())
    paths = ["/state", "/fault", "/random", "/state", "/loop", "/state", "/random", "/state"]
    answers = combined.serve([state_request() if p == "/state" else Request(path=p) for p in paths])
    kinds = [type(a) if not isinstance(a, Response) else a.status for a in answers]
    assert kinds == [200, GuestFault, 200, 200, GuestTimeout, 200, 200, 200]
    for i in (0, 3, 5, 7):
        assert json.loads(answers[i].body) == clean, paths[:i]
    randoms = [json.loads(answers[i].body) for i in (2, 6)]
    for key in ("random", "bits", "urandom", "secrets", "uuid4"):
        assert randoms[0][key] != randoms[1][key], key
