"""The application's pieces in process: the loop's metric buffer, the router, TenantApp."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tenantvm import app as tapp
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


def router(default: bool = False) -> tapp.TenantServer:
    def runtime(name: str, hosts: list[str]) -> Any:
        return SimpleNamespace(config=SimpleNamespace(name=name, hosts=hosts))

    tenants = {"a": runtime("a", ["a.test"]), "b": runtime("b", ["b.test", "127.0.0.1"])}
    cfg = SimpleNamespace(server=SimpleNamespace(default_tenant="a" if default else None, retry_after_s=1))
    return tapp.TenantServer(cfg, SimpleNamespace(), tenants, None)  # type: ignore[arg-type]


def test_router_ignores_port_and_case_and_remembers_a_bounded_number_of_hosts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tapp, "ROUTE_CACHE_SIZE", 8)
    server = router()
    a, b = server.tenants["a"], server.tenants["b"]
    for _ in range(2):  # the second time from the table
        assert server.route(b"A.Test:8080") is a
        assert server.route(b"127.0.0.1:80") is b
        assert server.route(b"b.test.") is b
        assert server.route(b"nobody.test:1") is None
    for i in range(100):
        assert server.route(f"x{i}.test:1".encode()) is None
        assert len(server._routes) <= 8
    assert server.route(b"a.TEST:1") is a
    with_default = router(default=True)
    assert with_default.route(b"nobody.test:99") is with_default.tenants["a"]


# --- TenantApp --------------------------------------------------------------------------------


def test_an_unexpected_error_in_the_endpoint_is_a_500() -> None:
    class Broken(tapp.TenantEndpoint):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            raise RuntimeError("bug")

    application = tapp.TenantApp(Broken(), routes=[])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/x", "headers": []}
    with pytest.raises(RuntimeError, match="bug"):
        asyncio.run(application(scope, receive, send))
    assert sent[0]["status"] == 500
    assert dict(sent[0]["headers"])[b"x-tenantvm-error"] == b"host"


@pytest.mark.parametrize(
    ("path", "reserved"),
    [("/_tenantvm", True), ("/_tenantvm/", True), ("/_tenantvm/metrics", True), ("/_tenantvmx", False), ("/", False)],
)
def test_reserved_paths(path: str, reserved: bool) -> None:
    assert tapp._is_reserved(path) is reserved
