"""The deployment files: the Kubernetes manifests (parsed, their essentials checked, as no
schema validator is available offline), the ConfigMap's tenants file, the Containerfile (built
where podman or buildah is installed)."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from tenantvm.config import ServerConfig

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
    assert froms[-1].endswith("debian:bookworm-slim")
    assert 'ENTRYPOINT ["tenantvm", "serve"' in text
    assert "USER 10001" in text


@pytest.mark.slow
def test_the_image_builds_where_a_builder_is_installed() -> None:
    builder = shutil.which("podman") or shutil.which("buildah")
    if builder is None:
        pytest.skip("no podman or buildah on this machine")
    cmd = [builder, "build" if builder.endswith("podman") else "bud", "-f", "Containerfile", "-t", "tenantvm-test", "."]
    subprocess.run(cmd, cwd=REPO, check=True, timeout=3600)
