"""Instance pools (no VMs: fake instances), and the app's response validation."""

from __future__ import annotations

import asyncio
import itertools
from types import ModuleType

import pytest

from tenantvm.pool import Pool, PoolBusy, PoolClosed


class Fake:
    ids = itertools.count()

    def __init__(self) -> None:
        self.id = next(self.ids)
        self.usable = True


def run(coro):
    return asyncio.run(coro)


def test_acquire_release_counts() -> None:
    async def main() -> None:
        pool = Pool("t", Fake, 2)
        a = await pool.acquire(0)
        b = await pool.acquire(0)
        assert a is not b
        assert (pool.busy, pool.idle) == (2, 0)
        with pytest.raises(PoolBusy):
            await pool.acquire(0)
        with pytest.raises(PoolBusy):
            await pool.acquire(0.05)
        pool.release(a)
        assert (pool.busy, pool.idle, pool.waiting) == (1, 1, 0)
        assert await pool.acquire(0) is a

    run(main())


def test_waiters_are_served_in_order() -> None:
    async def main() -> None:
        pool = Pool("t", Fake, 1)
        vm = pool.try_acquire()
        assert vm is not None
        order: list[int] = []

        async def waiter(i: int) -> None:
            got = await pool.acquire(5)
            order.append(i)
            await asyncio.sleep(0)
            pool.release(got)

        tasks = [asyncio.create_task(waiter(i)) for i in range(5)]
        await asyncio.sleep(0.01)
        assert pool.waiting == 5
        assert pool.try_acquire() is None  # no jumping the queue
        pool.release(vm)
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2, 3, 4]
        assert (pool.busy, pool.idle, pool.waiting) == (0, 1, 0)

    run(main())


def test_cancelled_and_timed_out_waiters_leak_nothing() -> None:
    async def main() -> None:
        pool = Pool("t", Fake, 1)
        vm = await pool.acquire(0)
        cancelled = asyncio.create_task(pool.acquire(5))
        timed_out = asyncio.create_task(pool.acquire(0.01))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        with pytest.raises(PoolBusy):
            await timed_out
        assert pool.waiting == 0
        pool.release(vm)
        assert (pool.busy, pool.idle) == (0, 1)
        assert await pool.acquire(0) is vm

    run(main())


def test_unusable_instances_are_replaced() -> None:
    async def main() -> None:
        replaced: list[int] = []
        pool = Pool("t", Fake, 1, on_replace=lambda: replaced.append(1))
        vm = await pool.acquire(0)
        vm.usable = False
        waiter = asyncio.create_task(pool.acquire(5))
        await asyncio.sleep(0)
        pool.release(vm)
        assert pool.missing == 1
        new = await waiter
        assert new is not vm
        assert new.usable
        assert (pool.missing, pool.replaced, replaced) == (0, 1, [1])

    run(main())


def test_replacement_retries_after_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Pool, "RETRY_DELAY", 0.01)
    attempts: list[int] = []

    def flaky() -> Fake:
        attempts.append(1)
        if len(attempts) < 3:
            raise OSError("no memory")
        return Fake()

    async def main() -> None:
        pool = Pool("t", flaky, 1, instances=[Fake()])
        vm = await pool.acquire(0)
        vm.usable = False
        pool.release(vm)
        new = await pool.acquire(5)
        assert new is not vm
        assert len(attempts) == 3

    run(main())


def test_close_fails_waiters() -> None:
    async def main() -> None:
        pool = Pool("t", Fake, 1)
        await pool.acquire(0)
        waiter = asyncio.create_task(pool.acquire(5))
        await asyncio.sleep(0)
        pool.close()
        with pytest.raises(PoolClosed):
            await waiter
        with pytest.raises(PoolClosed):
            await pool.acquire(0)

    run(main())


# --- response validation (tenantvm.app) ------------------------------------------------------


@pytest.fixture(scope="module")
def app_module() -> ModuleType:
    """tenantvm.app, with prometheus-client in single-process mode in this process."""
    import prometheus_client  # noqa: F401 - imported first: the app's metrics stay in this process

    import tenantvm.app

    return tenantvm.app


def test_response_headers_are_validated_and_hop_by_hop_ones_dropped(app_module: ModuleType) -> None:
    BadResponse, _response_headers = app_module.BadResponse, app_module._response_headers

    ok = _response_headers(
        [
            (b"Content-Type", b"text/plain"),
            (b"X-Tab", b"a\tb"),
            (b"Content-Length", b"999"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Connection", b"close, X-Private"),
            (b"X-Private", b"secret"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Upgrade", b"h2c"),
            (b"X-Latin", b"\xe9"),
        ]
    )
    assert ok == [(b"content-type", b"text/plain"), (b"x-tab", b"a\tb"), (b"x-latin", b"\xe9")]
    for name, value in [
        (b"X-Split", b"a\r\nSet-Cookie: x=1"),
        (b"X-Lf", b"a\nb"),
        (b"X-Nul", b"a\x00b"),
        (b"X-Ctl", b"a\x01b"),
        (b"Bad Name", b"v"),
        (b"Bad:Name", b"v"),
        (b"", b"v"),
        (b"X-\xe9", b"v"),
    ]:
        with pytest.raises(BadResponse):
            _response_headers([(name, value)])


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
    ],
)
def test_the_endpoint_refuses_invalid_guest_responses(
    app_module: ModuleType, status: int, headers: list, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fake VM runs on the test's own thread: keep the seccomp filter off it.
    monkeypatch.setenv(app_module.SECCOMP_ENV, "0")
    TenantEndpoint, TenantRuntime = app_module.TenantEndpoint, app_module.TenantRuntime
    from tenantvm.config import TenantConfig
    from tenantvm.metrics import Metrics
    from tenantvm.tenant import Response

    class VM(Fake):
        def call(self, request: object) -> Response:
            return Response(status, [*headers, (b"content-length", b"1"), (b"connection", b"close")], b"body")

    class Server:
        def __init__(self) -> None:
            self.metrics = Metrics()
            cfg = TenantConfig(name="fake", hosts=("fake.test",), program=__file__)  # type: ignore[arg-type]
            self.rt = TenantRuntime(cfg, None, Pool("fake", VM, 1), True, self.metrics)  # type: ignore[arg-type]

        def route(self, host: bytes) -> TenantRuntime:
            return self.rt

    sent: list[dict] = []

    async def main() -> None:
        endpoint = TenantEndpoint()
        endpoint.server = Server()  # type: ignore[assignment]
        scope = {"type": "http", "method": "GET", "path": "/", "query_string": b"", "headers": [(b"host", b"x")]}

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        await endpoint(scope, receive, send)
        assert endpoint.server.rt.pool.idle == 1  # type: ignore[union-attr]

    run(main())
    start = sent[0]
    assert start["status"] == expected
    names = [n for n, _ in start["headers"]]
    assert names.count(b"content-length") == 1
    assert b"connection" not in names
    if expected != 502:
        assert all(h in start["headers"] for h in headers)
        assert (b"content-length", b"4") in start["headers"]
        assert sent[1]["body"] == b"body"
    else:
        assert (b"x-tenantvm-error", b"bad_response") in start["headers"]
        assert b"a\r\nb" not in b"".join(v for _, v in start["headers"])
