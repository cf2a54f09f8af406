"""Tenants' key-value store: the backends (SQLite, Redis) against a dict model, scoping,
store down / slow / restarted, and guests reaching it through the request API."""

from __future__ import annotations

import contextlib
import errno
import itertools
import re
import threading
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantvm import Request, Response, Tenant, _native
from tenantvm.kv import RedisKv, SqliteKv, open_store
from tests.kvstores import Redis, need_redis

I64 = (-(1 << 63), (1 << 63) - 1)
INT_RE = re.compile(rb"0|-?[1-9][0-9]*")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    need_redis()
    r = Redis(tmp_path_factory.mktemp("redis")).start()
    yield r
    r.stop()


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def bridge(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        store = SqliteKv(tmp_path_factory.mktemp("sqlite") / "kv.sqlite3")
    else:
        store = RedisKv(request.getfixturevalue("redis_server").url, timeout=5)
    return _native.KvBridge(store, timeout=10)


def oserror(fn, *args, **kw) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError, match=r"\S") as e:
        fn(*args, **kw)
    return int(e.value.args[0])


keys = st.sampled_from([b"a", b"b", b"c", b"\x00:\xff"])
values = st.one_of(st.binary(max_size=6), st.integers(-20, 20).map(lambda n: str(n).encode()))
deltas = st.one_of(st.integers(-5, 5), st.integers(*I64))
ops = st.lists(
    st.one_of(
        st.tuples(st.just("get"), keys),
        st.tuples(st.just("set"), keys, values, st.sampled_from([0, 600_000])),
        st.tuples(st.just("incr"), keys, deltas),
        st.tuples(st.just("delete"), keys),
    ),
    max_size=30,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops)
def test_a_random_sequence_of_operations_behaves_like_a_dict(bridge, ops) -> None:  # type: ignore[no-untyped-def]
    ns = uuid.uuid4().hex.encode()
    model: dict[bytes, bytes] = {}
    for op in ops:
        if op[0] == "get":
            assert bridge.execute(ns, "get", op[1]) == model.get(op[1])
        elif op[0] == "set":
            assert bridge.execute(ns, "set", op[1], value=op[2], ttl_ms=op[3]) is None
            model[op[1]] = op[2]
        elif op[0] == "delete":
            assert bridge.execute(ns, "delete", op[1]) is (op[1] in model)
            model.pop(op[1], None)
        else:
            old = model.get(op[1], b"0")
            if not INT_RE.fullmatch(old) or not I64[0] <= int(old) <= I64[1]:
                assert oserror(bridge.execute, ns, "incr", op[1], delta=op[2]) == errno.EBADMSG
            elif not I64[0] <= int(old) + op[2] <= I64[1]:
                assert oserror(bridge.execute, ns, "incr", op[1], delta=op[2]) == errno.EOVERFLOW
            else:
                assert bridge.execute(ns, "incr", op[1], delta=op[2]) == int(old) + op[2]
                model[op[1]] = str(int(old) + op[2]).encode()


def test_keys_expire_and_incr_keeps_the_ttl(bridge) -> None:  # type: ignore[no-untyped-def]
    ns = uuid.uuid4().hex.encode()
    bridge.execute(ns, "set", b"t", value=b"5", ttl_ms=150)
    bridge.execute(ns, "set", b"p", value=b"x", ttl_ms=0)
    assert bridge.execute(ns, "incr", b"t", delta=1) == 6
    time.sleep(0.6)
    assert bridge.execute(ns, "get", b"t") is None
    assert bridge.execute(ns, "delete", b"t") is False
    assert bridge.execute(ns, "get", b"p") == b"x"
    assert bridge.execute(ns, "incr", b"t", delta=1) == 1  # an expired key counts from 0


def test_namespaces_never_meet_even_with_separator_bytes_in_names(bridge) -> None:  # type: ignore[no-untyped-def]
    base = uuid.uuid4().hex.encode()
    a, b = base + b"a", base + b"a:"
    bridge.execute(a, "set", b":b", value=b"of a")
    assert bridge.execute(b, "get", b"b") is None
    assert bridge.execute(b, "get", b":b") is None
    bridge.execute(b, "set", b"b", value=b"of a:")
    assert bridge.execute(a, "get", b":b") == b"of a"
    assert bridge.execute(a, "get", b"b") is None


def test_sqlite_store_is_shared_by_connections_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "kv.sqlite3"
    one, two = SqliteKv(path), SqliteKv(path)
    threads = [threading.Thread(target=lambda s=s: [s.incr(b"ns", b"n", 1) for _ in range(200)]) for s in (one, two)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert SqliteKv(path).get(b"ns", b"n") == b"400"
    assert open_store(f"sqlite:///{path}").get(b"ns", b"n") == b"400"


# --- the store down, slow, restarted ---------------------------------------------------------


def test_redis_down_is_eio_and_paused_is_etimedout_and_both_recover(tmp_path: Path) -> None:
    r = Redis(tmp_path / "r").start()
    try:
        bridge = _native.KvBridge(RedisKv(r.url, timeout=2), timeout=0.3)
        assert bridge.execute(b"n", "incr", b"k", delta=1) == 1
        # Every client's commands wait 3 s: the bridge gives up first.
        assert r.command("CLIENT", "PAUSE", "3000", "ALL").startswith(b"+OK")
        assert oserror(bridge.execute, b"n", "incr", b"k", delta=1) == errno.ETIMEDOUT
        r.stop()
        assert oserror(bridge.execute, b"n", "get", b"k") == errno.EIO
        r.start()
        # The paused incr was applied late (its outcome was unknown to the guest): 2 or 3.
        assert bridge.execute(b"n", "incr", b"k", delta=1) in (2, 3)
    finally:
        r.stop()


def test_redis_restarted_mid_load_loses_no_acknowledged_increment(tmp_path: Path) -> None:
    r = Redis(tmp_path / "r").start()
    bridge = _native.KvBridge(RedisKv(r.url, timeout=1), timeout=2)
    acked: list[int] = []
    failures: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                acked.append(bridge.execute(b"n", "incr", b"k", delta=1))
            except OSError as e:
                failures.append(e.args[0])
                time.sleep(0.01)

    workers = [threading.Thread(target=load) for _ in range(3)]
    try:
        for w in workers:
            w.start()
        while len(acked) < 100:
            time.sleep(0.01)
        r.stop(kill=True)
        time.sleep(0.3)
        r.start()
        before = len(acked)
        deadline = time.monotonic() + 60
        while len(acked) < before + 100 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        for w in workers:
            w.join()
    try:
        assert len(acked) >= before + 100, "increments did not resume after the restart"
        assert len(set(acked)) == len(acked), "an increment was acknowledged twice with one value"
        final = bridge.execute(b"n", "get", b"k")
        assert int(final) >= max(acked)
        assert int(final) >= len(acked)
        assert set(failures) <= {errno.EIO, errno.ETIMEDOUT}
        assert failures, "the restart was not seen"
    finally:
        r.stop()


def test_a_full_queue_is_eio_at_once(tmp_path: Path) -> None:
    class Stuck:
        def __init__(self) -> None:
            self.release = threading.Event()

        def incr(self, ns: bytes, key: bytes, delta: int) -> int:
            self.release.wait(10)
            return 1

    stuck = Stuck()
    bridge = _native.KvBridge(stuck, timeout=5, threads=1, queue=1)
    results: list[object] = []

    def one() -> None:
        try:
            results.append(bridge.execute(b"n", "incr", b"k", delta=1))
        except OSError as e:
            results.append(e.args[0])

    first = threading.Thread(target=one)
    first.start()
    time.sleep(0.2)  # the thread holds the first call; the queue has room for one more
    second = threading.Thread(target=one)
    second.start()
    time.sleep(0.2)
    assert oserror(bridge.execute, b"n", "incr", b"k", delta=1) == errno.EIO
    stuck.release.set()
    first.join()
    second.join()
    assert results == [1, 1]


# --- guests ----------------------------------------------------------------------------------


def call(vm, method: str, path: str, query: str = "", body: bytes = b"") -> Response:  # type: ignore[no-untyped-def]
    return vm.call(Request(method, path, query, body=body))  # type: ignore[no-any-return]


def kv_errno(r: Response) -> int:
    return int(dict(r.headers)[b"x-kv-errno"])


def test_guests_reach_their_own_keys_only(app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bridge = _native.KvBridge(SqliteKv(tmp_path / "kv.sqlite3"), timeout=5)
    base = Tenant(app("kv"))
    a, b = base.with_kv(bridge, "a").instance(), base.with_kv(bridge, "b").instance()
    assert call(a, "PUT", "/k/x", body=b"from a").status == 204
    assert call(a, "GET", "/k/x").body == b"from a"
    assert call(b, "GET", "/k/x").status == 404
    assert call(b, "POST", "/k/x", "incr=2").body == b"2"
    assert call(a, "GET", "/k/x").body == b"from a"
    assert kv_errno(call(a, "GET", "/k/" + "k" * 513)) == errno.ENAMETOOLONG
    assert kv_errno(call(base.instance(), "GET", "/k/x")) == errno.ENOSYS


def test_priming_runs_with_the_store_off_and_leaves_it_on(app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bridge = _native.KvBridge(SqliteKv(tmp_path / "kv.sqlite3"), timeout=5)
    vm = Tenant(app("kv")).with_kv(bridge, "p").instance()
    vm.prime([Request("POST", "/k/x", "incr=5")] * 3)
    assert vm.stats().calls == 3
    assert call(vm, "GET", "/k/x").status == 404  # priming wrote nothing
    assert call(vm, "POST", "/k/x", "incr=1").body == b"1"  # and the store is on again


def test_the_kv_counter_counts_exactly_across_tenants_instances(app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bridge = _native.KvBridge(SqliteKv(tmp_path / "kv.sqlite3"), timeout=5)
    tenant = Tenant(app("counter_kv"), ephemeral=False).with_kv(bridge, "counter")
    instances = [tenant.instance() for _ in range(3)]
    seen = [call(vm, "GET", "/").body for vm, _ in zip(itertools.cycle(instances), range(30))]
    assert seen == [b"Hello %d World!" % n for n in range(1, 31)]


def test_a_stuck_store_never_holds_a_request_past_its_time_limit(app) -> None:  # type: ignore[no-untyped-def]
    from tenantvm.errors import GuestTimeout

    class Stuck:
        def __init__(self) -> None:
            self.release = threading.Event()

        def incr(self, ns: bytes, key: bytes, delta: int) -> int:
            self.release.wait(60)
            return 1

    stuck = Stuck()
    # The store answers only when released (by the watchdog after 20 s at the latest) and the
    # bridge would wait 60 s: only the request's own limit (300 ms) ends the call before that.
    watchdog = threading.Timer(20, stuck.release.set)
    watchdog.start()
    try:
        bridge = _native.KvBridge(stuck, timeout=60)
        vm = Tenant(app("counter_kv"), ephemeral=False, timeout=0.3).with_kv(bridge, "c").instance()
        with contextlib.suppress(GuestTimeout):
            assert call(vm, "GET", "/").status == 503
        assert not stuck.release.is_set(), "the call waited for the store past the request's limit"
    finally:
        stuck.release.set()
        watchdog.cancel()
