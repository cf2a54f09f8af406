"""The application's pieces in process: the loop's metric buffer, routing, the dispatcher and both
interfaces (ASGI and RSGI, driven by fakes), guest response validation."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tenantvm import answers, interfaces, routing
from tenantvm.dispatch import Dispatcher
from tenantvm.metrics import BUCKETS, LoopBuffer


def sample(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float | None:
    return registry.get_sample_value(name, labels or {})


def histograms() -> tuple[CollectorRegistry, Any, Any]:
    reg = CollectorRegistry()
    buffered = Histogram("buffered", "h", ["t"], buckets=BUCKETS, registry=reg).labels("a")
    direct = Histogram("direct", "h", ["t"], buckets=BUCKETS, registry=reg).labels("a")
    return reg, buffered, direct


VALUES = [0.0, 0.00005, 0.0001, 0.00010001, 0.0003, 0.001, 0.7, 1.0, 29.9, 30.0, 31.0, 1e9]


def test_buffered_histogram_matches_direct_observations() -> None:
    reg, buffered, direct = histograms()
    buf = LoopBuffer()
    for v in VALUES:
        buf.observe(buffered, v)
        direct.observe(v)
    for bound in [*BUCKETS, float("inf")]:
        le = "+Inf" if bound == float("inf") else str(float(bound))
        labels = {"t": "a", "le": le}
        assert sample(reg, "buffered_bucket", labels) == sample(reg, "direct_bucket", labels)
    assert sample(reg, "buffered_sum", {"t": "a"}) == pytest.approx(sample(reg, "direct_sum", {"t": "a"}))
    assert sample(reg, "buffered_count", {"t": "a"}) == len(VALUES)


def test_histograms_without_the_expected_internals_get_every_observation() -> None:
    class Plain:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, v: float) -> None:
            self.seen.append(v)

    child = Plain()
    buf = LoopBuffer()
    for v in VALUES:
        buf.observe(child, v)
    assert child.seen == VALUES  # outside a loop: written at once


def test_updates_on_the_loop_are_written_at_the_end_of_the_turn() -> None:
    reg = CollectorRegistry()
    counter = Counter("c", "c", ["t"], registry=reg).labels("a")
    gauge = Gauge("g", "g", ["t"], registry=reg).labels("a")
    _, hist, _ = histograms()
    buf = LoopBuffer()

    async def main() -> None:
        for _ in range(5):
            buf.inc(counter)
            buf.inc(gauge)
            buf.observe(hist, 0.001)
        buf.inc(gauge, -5)  # balanced within the turn
        buf.inc(counter, 2.5)
        assert sample(reg, "c_total", {"t": "a"}) == 0.0, "nothing written during the turn"
        await asyncio.sleep(0)
        assert sample(reg, "c_total", {"t": "a"}) == 7.5
        assert sample(reg, "g", {"t": "a"}) == 0.0
        assert hist._sum.get() == pytest.approx(0.005)
        buf.inc(gauge)  # a gauge left raised at the end of a turn is written raised
        await asyncio.sleep(0)
        assert sample(reg, "g", {"t": "a"}) == 1.0
        buf.inc(counter)
        buf.flush()  # before a scrape
        assert sample(reg, "c_total", {"t": "a"}) == 8.5

    asyncio.run(main())


def test_updates_outside_a_loop_are_written_at_once() -> None:
    reg = CollectorRegistry()
    counter = Counter("c", "c", registry=reg)
    buf = LoopBuffer()
    buf.inc(counter, 3)
    assert sample(reg, "c_total") == 3.0


# --- routing ----------------------------------------------------------------------------------


def test_router_ignores_port_and_case_and_remembers_a_bounded_number_of_hosts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(routing, "ROUTE_CACHE_SIZE", 8)
    a, b, d = object(), object(), object()
    router = routing.HostRouter({"a.test": a, "b.test": b, "127.0.0.1": b}, None)
    for _ in range(2):  # the second time from the table
        assert router.route(b"A.Test:8080") is a
        assert router.route(b"127.0.0.1:80") is b
        assert router.route(b"b.test.") is b
        assert router.route(b"nobody.test:1") is None
    for i in range(100):
        assert router.route(f"x{i}.test:1".encode()) is None
        assert router.remembered() <= 8
    assert router.route(b"a.TEST:1") is a
    with_default = routing.HostRouter({"a.test": a}, d)
    assert with_default.route(b"nobody.test:99") is d
    assert with_default.route(b"") is d


@pytest.mark.parametrize(
    ("path", "reserved"),
    [("/_tenantvm", True), ("/_tenantvm/", True), ("/_tenantvm/metrics", True), ("/_tenantvmx", False), ("/", False)],
)
def test_reserved_paths(path: str, reserved: bool) -> None:
    assert routing.is_reserved(path) is reserved


@pytest.mark.parametrize(
    ("method", "path", "route"),
    [
        ("GET", "/_tenantvm/metrics", routing.Reserved.METRICS),
        ("HEAD", "/_tenantvm/health", routing.Reserved.HEALTH),
        ("POST", "/_tenantvm/health", routing.Reserved.METHOD_NOT_ALLOWED),
        ("GET", "/_tenantvm/health/x", routing.Reserved.NOT_FOUND),
        ("GET", "/_tenantvm", routing.Reserved.NOT_FOUND),
    ],
)
def test_reserved_routes(method: str, path: str, route: routing.Reserved) -> None:
    assert routing.reserved_route(method, path) is route


@pytest.mark.parametrize(
    ("decoded", "raw"),
    [
        ("/", b"/"),
        ("/hello/world", b"/hello/world"),
        ("/a b", b"/a%20b"),
        ("/100%", b"/100%25"),
        ("/q?x#y", b"/q%3Fx%23y"),
        ("/caf\u00e9", b"/caf%C3%A9"),
        ("/a;b=c:d@e!$&'()*+,~-._", b"/a;b=c:d@e!$&'()*+,~-._"),
    ],
)
def test_rsgi_paths_are_re_encoded_where_needed(decoded: str, raw: bytes) -> None:
    assert interfaces.rsgi_path(decoded) == raw


# --- both interfaces, driven by fakes ---------------------------------------------------------


class FakeRSGI:
    """An RSGI scope and protocol object: what Granian hands the application."""

    def __init__(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        self.proto = "http"
        self.http_version = "1.1"
        self.method = method
        self.path = path
        self.query_string = ""
        self.headers = SimpleNamespace(items=lambda: list(headers))
        self._body = body
        self.sent: list[tuple[int, list[tuple[str, str]], bytes]] = []

    def __aiter__(self) -> Any:
        async def chunks() -> Any:
            if self._body:
                yield self._body

        return chunks()

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.sent.append((status, headers, body))


def serve(interface: str, dispatcher: Dispatcher, method: str = "GET", path: str = "/") -> tuple[int, dict, bytes]:
    """One request through ``interface`` (asgi or rsgi): (status, headers as str, body)."""
    if interface == "rsgi":
        fake = FakeRSGI(method, path, [("host", "x")])
        asyncio.run(interfaces.rsgi_http(dispatcher, fake, fake))
        assert len(fake.sent) == 1
        status, headers, body = fake.sent[0]
        return status, dict(headers), body
    sent: list[dict[str, Any]] = []
    scope = {"type": "http", "method": method, "path": path, "query_string": b"", "headers": [(b"host", b"x")]}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(interfaces.asgi_http(dispatcher, scope, receive, send))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    assert headers["content-length"] == str(len(sent[1]["body"]))
    return sent[0]["status"], headers, sent[1]["body"]


INTERFACES = ["asgi", "rsgi"]


@pytest.mark.parametrize("interface", INTERFACES)
def test_an_unexpected_error_in_the_dispatcher_is_a_500(interface: str) -> None:
    class Broken(Dispatcher):
        def tenant(self, *args: Any) -> Any:
            raise RuntimeError("bug")

    captured: list[tuple[int, dict, bytes]] = []
    real_run = asyncio.run

    def run_and_keep(coro: Any) -> None:
        with pytest.raises(RuntimeError, match="bug"):
            real_run(coro)

    if interface == "rsgi":
        fake = FakeRSGI("GET", "/x", [("host", "x")])
        run_and_keep(interfaces.rsgi_http(Broken(), fake, fake))
        status, headers, _ = fake.sent[0]
        captured.append((status, dict(headers), b""))
    else:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/x", "query_string": b"", "headers": []}
        run_and_keep(interfaces.asgi_http(Broken(), scope, None, send))  # type: ignore[arg-type]
        captured.append((sent[0]["status"], {k.decode(): v.decode() for k, v in sent[0]["headers"]}, b""))
    status, headers, _ = captured[0]
    assert status == 500
    assert headers["x-tenantvm-error"] == "host"


@pytest.mark.parametrize("interface", INTERFACES)
def test_not_started_is_503_and_reserved_paths_are_answered(interface: str) -> None:
    dispatcher = Dispatcher()
    assert serve(interface, dispatcher)[0] == 503
    assert serve(interface, dispatcher, path="/_tenantvm/health")[0] == 503
    status, headers, _ = serve(interface, dispatcher, "POST", "/_tenantvm/metrics")
    assert (status, headers["allow"]) == (405, "GET, HEAD")
    assert serve(interface, dispatcher, path="/_tenantvm/nothing")[0] == 404


# --- guest response validation ----------------------------------------------------------------


def test_response_headers_are_validated_and_hop_by_hop_ones_dropped() -> None:
    ok = answers.final_headers(
        200,
        [
            (b"Content-Type", b"text/plain"),
            (b"X-Tab", b"a\tb"),
            (b"Content-Length", b"999"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Connection", b"close, X-Private"),
            (b"X-Private", b"secret"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Upgrade", b"h2c"),
            (b"X-Utf8", "caf\u00e9".encode()),
        ],
    )
    assert ok == ((b"content-type", b"text/plain"), (b"x-tab", b"a\tb"), (b"x-utf8", "caf\u00e9".encode()))
    assert answers.final_headers(201, [(b"X-Tab", b"a\tb")]) is answers.final_headers(202, [(b"X-Tab", b"a\tb")])
    for name, value in [
        (b"X-Split", b"a\r\nSet-Cookie: x=1"),
        (b"X-Lf", b"a\nb"),
        (b"X-Nul", b"a\x00b"),
        (b"X-Ctl", b"a\x01b"),
        (b"Bad Name", b"v"),
        (b"Bad:Name", b"v"),
        (b"", b"v"),
        (b"X-\xe9", b"v"),
        (b"X-Latin1", b"\xe9"),  # neither ASCII nor UTF-8: RSGI could not send it as it is
    ]:
        for _ in range(2):  # a refused list is never remembered as checked
            with pytest.raises(answers.BadResponse):
                answers.final_headers(200, [(name, value)])


@pytest.fixture(scope="module")
def metrics_module() -> Any:
    """tenantvm.metrics, with prometheus-client in single-process mode in this process."""
    import prometheus_client  # noqa: F401 - imported first: the app's metrics stay in this process

    import tenantvm.metrics

    return tenantvm.metrics


@pytest.mark.parametrize("interface", INTERFACES)
@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (200, [(b"x-ok", b"1")], 200),
        (599, [], 599),
        (99, [], 502),
        (100, [], 502),
        (101, [], 502),
        (600, [], 502),
        (-1, [], 502),
        (200, [(b"x-bad", b"a\r\nb: c")], 502),
        (200, [(b"bad name", b"v")], 502),
        (200, [(b"x-latin1", b"\xe9")], 502),
    ],
)
def test_the_dispatcher_refuses_invalid_guest_responses(
    metrics_module: Any, interface: str, status: int, headers: list, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fake VM runs on the test's own thread: keep the seccomp filter off it.
    from tenantvm import callers
    from tenantvm.config import TenantConfig
    from tenantvm.pool import Pool
    from tenantvm.server import TenantRuntime

    monkeypatch.setenv(callers.SECCOMP_ENV, "0")

    class Native:
        def call(self, *args: object) -> tuple:
            return (status, [*headers, (b"content-length", b"1"), (b"connection", b"close")], b"body", b"", b"", 1)

    class VM:
        usable = True
        _native = Native()

    cfg = TenantConfig(name="fake", hosts=("x",), program=__file__, ephemeral=False)  # type: ignore[arg-type]
    rt = TenantRuntime(cfg, None, Pool("fake", VM, 1), True, metrics_module.Metrics())  # type: ignore[arg-type]
    dispatcher = Dispatcher()
    dispatcher.server = SimpleNamespace(route=lambda host: rt, metrics=rt.metrics)  # type: ignore[assignment]
    for _ in range(2):  # the second time the checked headers come from the cache
        got, sent_headers, body = serve(interface, dispatcher)
        assert rt.pool.idle == 1
    assert got == expected
    assert "connection" not in sent_headers
    if expected != 502:
        assert all((k.decode(), v.decode()) in sent_headers.items() for k, v in headers)
        assert body == b"body"
    else:
        assert sent_headers["x-tenantvm-error"] == "bad_response"
        assert "a\r\nb" not in "".join(sent_headers.values())


# --- start-up and shutdown in process ----------------------------------------------------------


def test_one_application_object_serves_asgi_and_rsgi_between_start_up_and_shutdown(
    apps: Any, kvm: dict, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, metrics_module: Any
) -> None:
    """The ASGI lifespan boots the tenants and the shutdown releases the run directory, as an
    ASGI server (uvicorn, Granian's ASGI) drives it; RSGI requests reach the same tenants."""
    from tenantvm import callers
    from tenantvm.app import TenantApp

    monkeypatch.setenv(callers.SECCOMP_ENV, "0")  # inline calls run on this test's thread
    run = tmp_path / "run"
    monkeypatch.setenv("TENANTVM_RUN_DIR", str(run))
    config = tmp_path / "tenants.toml"
    config.write_text(f'[tenants.hello]\nhosts = ["x"]\nprogram = "{apps / "hello"}"\npool_size = 1\n')
    application = TenantApp(config)

    async def main() -> None:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        outbox: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            outbox.append(message)

        lifespan = asyncio.create_task(application({"type": "lifespan"}, inbox.get, send))
        await inbox.put({"type": "lifespan.startup"})
        while not outbox:
            await asyncio.sleep(0.01)
        assert outbox == [{"type": "lifespan.startup.complete"}]
        assert application.server is not None
        assert run.is_dir()
        for interface in INTERFACES:
            status, _, body = await serve_app(interface)
            assert (status, body) == (200, b"Hello World!"), interface
        await inbox.put({"type": "lifespan.shutdown"})
        await lifespan
        assert outbox[-1] == {"type": "lifespan.shutdown.complete"}
        assert application.server is None

    async def serve_app(interface: str) -> tuple[int, dict, bytes]:
        if interface == "rsgi":
            fake = FakeRSGI("GET", "/", [("host", "x")])
            await application.__rsgi__(fake, fake)
            status, headers, body = fake.sent[0]
            return status, dict(headers), body
        sent: list[dict[str, Any]] = []
        scope = {"type": "http", "method": "GET", "path": "/", "query_string": b"", "headers": [(b"host", b"x")]}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await application(scope, receive, send)
        return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]

    asyncio.run(main())
    assert not run.exists(), "the last user of the run directory removes it"


# --- priming ----------------------------------------------------------------------------------


def test_new_instances_are_primed_with_the_first_warm_up_requests_of_ephemeral_tenants() -> None:
    from tenantvm.config import TenantConfig, WarmupRequest
    from tenantvm.server import PRIME_CALLS, priming_requests

    a, b = WarmupRequest(path="/a"), WarmupRequest("POST", "/b", "q=1", (("x-k", "v"),), b"body")
    cfg = TenantConfig(name="t", hosts=("x",), program=__file__, warmup=(a, b))  # type: ignore[arg-type]
    primed = priming_requests(cfg)
    assert len(primed) == PRIME_CALLS == 3
    assert [(r.method, r.path, r.query, list(r.headers), r.body) for r in primed] == [
        ("GET", "/a", "", [], b""),
        ("POST", "/b", "q=1", [("x-k", "v")], b"body"),
        ("GET", "/a", "", [], b""),
    ]
    assert priming_requests(TenantConfig(name="t", hosts=("x",), program=__file__)) == []  # type: ignore[arg-type]
    stateful = TenantConfig(name="t", hosts=("x",), program=__file__, warmup=(a,), ephemeral=False)  # type: ignore[arg-type]
    assert priming_requests(stateful) == []  # priming would change its state
