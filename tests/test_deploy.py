"""The deployment files: the Kubernetes manifests (parsed, their essentials checked, as no
schema validator is available offline), the ConfigMap's tenants file, the Containerfile (built
where podman or buildah is installed)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import tomllib
from dataclasses import fields
from pathlib import Path

import httpx
import pytest
import yaml

from tenantvm.config import ServerConfig
from tests.httpserver import free_port

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"


def documents() -> list[dict]:
    docs = []
    for f in sorted(DEPLOY.glob("*.yaml")):
        if f.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def one(kind: str, name: str) -> dict:
    found = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} documents"
    return found[0]


def test_every_document_has_the_basic_fields_and_kustomize_lists_every_file() -> None:
    for d in documents():
        assert {"apiVersion", "kind", "metadata"} <= d.keys(), d
    listed = set(one_kustomization()["resources"])
    assert listed == {f.name for f in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}


def one_kustomization() -> dict:
    return yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())


def test_the_deployment_serves_with_kvm_probes_metrics_and_its_tenants_file() -> None:
    dep = one("Deployment", "tenantvm")
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/path"] == "/_tenantvm/metrics"
    (c,) = pod["spec"]["containers"]
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
    assert ann["prometheus.io/port"] == str(port)
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/_tenantvm/health", "port": "http"}
    assert c["resources"]["limits"]["devices.kubevirt.io/kvm"] == "1"
    assert {"cpu", "memory"} <= c["resources"]["requests"].keys()
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert "privileged" not in c["securityContext"]
    env = {e["name"]: e["value"] for e in c["env"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert env["TENANTVM_CONFIG"] == mounts["tenants"] + "/tenants.toml"
    assert volumes["tenants"]["configMap"]["name"] == "tenantvm-tenants"
    assert set(mounts) == set(volumes)
    assert mounts["shm"] == "/dev/shm"


def test_the_service_and_the_store_are_reachable_by_the_names_used() -> None:
    svc = one("Service", "tenantvm")
    assert svc["spec"]["selector"] == one("Deployment", "tenantvm")["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    tenants = tomllib.loads(one("ConfigMap", "tenantvm-tenants")["data"]["tenants.toml"])
    assert set(tenants["server"]) <= {f.name for f in fields(ServerConfig)}
    host = tenants["server"]["kv"].removeprefix("redis://").split(":")[0]
    redis = one("Service", host)
    assert redis["spec"]["ports"][0]["port"] == 6379


def test_the_containerfile_runs_tenantvm_serve_on_slim_debian_as_a_user() -> None:
    text = (REPO / "Containerfile").read_text()
    froms = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert froms == ["${BASE}", "${BASE}"], "both stages start from the BASE build argument"
    assert "ARG BASE=docker.io/library/debian:bookworm-slim" in text.splitlines()
    assert 'ENTRYPOINT ["tenantvm", "serve"' in text
    assert "USER 10001" in text


#: Set by `make test-image`: building the image (a Rust build inside it) takes 10-20 minutes,
#: too long for `make test`.
IMAGE_TEST = os.environ.get("TENANTVM_IMAGE_TEST") == "1"
#: Extra `podman` options for running the container where podman's defaults cannot start one
#: (`make test-image PODMAN_RUN_ARGS=...`, docs/deploy.md).
PODMAN_RUN_ARGS = shlex.split(os.environ.get("TENANTVM_PODMAN_RUN_ARGS", ""))


@pytest.mark.slow
def test_the_image_builds_and_serves_the_example_tenants_with_only_dev_kvm(tmp_path: Path) -> None:
    podman = shutil.which("podman")
    if podman is None:
        pytest.skip("SKIPPED (not run): no podman on this machine (Debian: apt-get install podman debootstrap)")
    if not IMAGE_TEST:
        pytest.skip("SKIPPED (not run): the image build takes 10-20 minutes: `make test-image` runs it")
    if not Path("/dev/kvm").exists():
        pytest.fail("no /dev/kvm to pass to the container")
    image = "localhost/tenantvm-test:latest"
    env = {**os.environ, "IMAGE": image}
    subprocess.run([str(REPO / "deploy" / "build-image.sh")], cwd=REPO, env=env, check=True, timeout=3600)
    port = free_port()
    name = f"tenantvm-test-{os.getpid()}"
    runtime, options = [], list(PODMAN_RUN_ARGS)
    while "--runtime" in options:  # a global option of podman's, before `run`
        i = options.index("--runtime")
        runtime += options[i : i + 2]
        del options[i : i + 2]
    runtime += [a for a in options if a.startswith("--runtime=")]
    options = [a for a in options if not a.startswith("--runtime=")]
    run = [podman, *runtime, "run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:8080", *options]
    # The container's user must be allowed to open /dev/kvm: a member of the device's group
    # when the device is not open to everyone (Debian: 0660 root:kvm).
    kvm = os.stat("/dev/kvm")
    group = [] if kvm.st_mode & 0o006 == 0o006 else ["--group-add", str(kvm.st_gid)]
    device = ["--device", "/dev/kvm", *group]
    started = subprocess.run([*run, *device, image, "--workers", "1"], timeout=120, capture_output=True)
    assert started.returncode == 0, started.stderr.decode(errors="replace")
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/_tenantvm/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            logs = subprocess.run([podman, "logs", name], capture_output=True, text=True).stdout
            assert time.monotonic() < deadline, f"the container did not become healthy:\n{logs}"
            time.sleep(1)
        assert httpx.get(base, headers={"host": "localhost"}).content == b"Hello World!"
        echo = httpx.post(f"{base}/x", headers={"host": "echo.localhost"}, content=b"hi")
        assert echo.content == b"hi"
        # The key-value counter, on the image's SQLite store (its volume).
        counts = [httpx.get(base, headers={"host": "counter-kv.localhost"}).content for _ in range(3)]
        numbers = [int(c.split()[1]) for c in counts]
        assert numbers == [numbers[0], numbers[0] + 1, numbers[0] + 2], counts
        # No privileges: the container runs as its user, with no capabilities.
        inspect = subprocess.run(
            [podman, "exec", name, "sh", "-c", "id -u; grep CapEff /proc/self/status"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert inspect[0] == "10001"
        assert inspect[-1] == "0000000000000000"
    finally:
        subprocess.run([podman, "stop", "-t", "5", name], capture_output=True, timeout=60)
