"""The dashboard (``/_tenantvm/``) in a real headless browser, and its JSON (``/_tenantvm/stats``).

The server serves the bundled example tenants (``tenantvm serve`` without a tenants file)
under each interface.  Chromium (Debian's ``chromium``, installed by tools/setup-host.sh) loads
the page while requests flow; its DOM must list every example tenant with a request rate and
the counts of the traffic, and must have refreshed several times.  A screenshot is kept in
``target/test-artifacts/``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tenantvm import stats
from tests.httpserver import INTERFACES, PYTHON, Server, free_port, server_env, start_server

pytestmark = pytest.mark.usefixtures("kvm")

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "target" / "test-artifacts"
EXAMPLES = ("hello", "counter", "echo", "calc")


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: run tools/setup-host.sh (make setup)", pytrace=False)
    return path


def browse(url: str, *extra: str, budget_ms: int = 5000) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on ``url`` for ``budget_ms`` of virtual time (the page polls meanwhile)."""
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",  # root in CI containers
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1400,420",
            f"--virtual-time-budget={budget_ms}",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module", params=INTERFACES)
def examples(kvm: dict, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Server]:
    """`tenantvm serve` of the bundled example tenants."""
    d = tmp_path_factory.mktemp(f"dashboard-{request.param}")
    port = free_port()
    command = [PYTHON, "-m", "tenantvm", "serve", "--port", str(port), "--interface", request.param]
    s = start_server(command, d / "server.log", env=server_env(), port=port, workers=1, interface=request.param)
    yield s
    s.stop()


def served(server: Server) -> set[str]:
    """The tenants the server serves (every C example; the runtime ones where installed)."""
    names = set(server.get("/_tenantvm/health").json()["tenants"])
    assert set(EXAMPLES) <= names
    return names


def test_stats_json_counts_requests_errors_and_latency(examples: Server) -> None:
    before = examples.get("/_tenantvm/stats").json()
    for _ in range(5):
        assert examples.get("/", host="localhost").status_code == 200
    assert examples.get("/nope", host="calc.localhost").status_code == 404
    r = examples.get("/_tenantvm/stats")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    data = r.json()
    assert set(data["tenants"]) == served(examples)
    hello, calc = data["tenants"]["hello"], data["tenants"]["calc"]
    assert hello["requests"] - before["tenants"]["hello"]["requests"] == 5
    assert hello["by_status"]["200"] >= 5
    assert calc["by_status"]["404"] >= 1
    assert hello["latency"]["count"] == hello["requests"]
    assert hello["latency"]["p50"] is not None
    assert 0 < hello["latency"]["p50"] <= hello["latency"]["p90"] <= hello["latency"]["p99"]
    assert hello["pool"]["instances"] == 2
    assert hello["version"] == 1
    assert hello["boot_ms"] > 0
    assert data["workers"] == 1


def test_stats_quantiles_interpolate_like_prometheus() -> None:
    buckets = [(0.001, 0.0), (0.002, 50.0), (0.004, 100.0), (float("inf"), 100.0)]
    assert stats.quantile(0.5, buckets) == pytest.approx(0.002)
    assert stats.quantile(0.75, buckets) == pytest.approx(0.003)
    assert stats.quantile(0.25, buckets) == pytest.approx(0.0015)
    assert stats.quantile(0.5, [(0.001, 0.0), (float("inf"), 0.0)]) is None
    assert stats.quantile(0.99, [(0.001, 0.0), (float("inf"), 10.0)]) == 0.001


def test_dashboard_is_one_self_contained_page(examples: Server) -> None:
    r = examples.get("/_tenantvm/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    # Nothing fetched from elsewhere: no src/href attributes, no @import or url() in the style.
    assert not re.search(r"""\b(src|href)\s*=|@import|url\(""", r.text), "the page loads an external resource"


def rows(dom: subprocess.CompletedProcess[str]) -> dict[str, list[str]]:
    """The dashboard's numeric cells per tenant, from Chromium's DOM dump."""
    assert dom.returncode == 0, dom.stderr
    html = dom.stdout
    status = re.search(r'<p id="status"[^>]*>([^<]*)</p>', html)
    assert status is not None, html
    assert status.group(1).startswith("updated "), status.group(1)
    updates = re.search(r'data-updates="(\d+)"', html)
    assert updates is not None, html
    assert int(updates.group(1)) >= 2, "the page did not refresh"
    found = dict(re.findall(r'<tr data-tenant="([^"]+)">(.*?)</tr>', html, re.S))
    return {name: re.findall(r'<td class="num[^"]*"[^>]*>([^<]*)', row) for name, row in found.items()}


def test_dashboard_renders_the_tenants_and_updates_with_traffic(examples: Server) -> None:
    url = f"{examples.base_url}/_tenantvm/"
    first = rows(browse(url, "--dump-dom"))
    assert set(first) == served(examples)
    with httpx.Client(base_url=examples.base_url, timeout=30) as c:
        for _ in range(25):
            assert c.get("/", headers={"host": "hello.localhost"}).status_code == 200
        for _ in range(3):
            assert c.get("/nope", headers={"host": "calc.localhost"}).status_code == 404
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"dashboard-{examples.interface}.png"
    shot.unlink(missing_ok=True)
    assert browse(url, f"--screenshot={shot}").returncode == 0
    after = rows(browse(url, "--dump-dom"))
    assert set(after) == served(examples)
    # columns: req/s, requests, p50, p90, p99, timeouts, faults, 5xx, rejected, resets, pool, version, boot
    assert int(after["hello"][1]) >= int(first["hello"][1]) + 25
    assert int(after["calc"][1]) >= int(first["calc"][1]) + 3
    assert float(after["hello"][0]) >= 0  # a rate once two snapshots were taken
    assert after["hello"][2].endswith(" ms")  # p50
    assert int(after["hello"][9]) >= 25  # resets: ephemeral
    assert after["hello"][10] == "0 / 2"
    assert after["hello"][11] == "v1"
    assert after["hello"][12].endswith(" ms")
    assert shot.is_file()
    assert shot.stat().st_size > 5000
