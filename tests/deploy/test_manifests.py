"""The Kubernetes manifests in deploy/: every overlay renders with `kubectl kustomize`, passes
`kubernetes-validate --strict` offline, and keeps the suite's production rules (non-root,
read-only root filesystem, gRPC health probes, resource limits, database URL from a Secret).

Without kubectl these tests are skipped, except with CI=true, where a missing tool fails the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.registry import SERVICES

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = sorted(p for p in (DEPLOY / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
# Each kind of rule file, mounted from a ConfigMap of its own (deploy/base/rules).
RULE_DIRS = ["campaigns", "referral", "dispatch"]
rules_param = pytest.mark.parametrize("kind", RULE_DIRS)

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "Pod", "CronJob"}

Manifest = dict[str, Any]


def _tool(name: str, path: str | None = None) -> str:
    found = shutil.which(name, path=path)
    if found is None:
        where = f"next to {sys.executable}" if path else "on PATH"
        reason = f"`{name}` not found {where}; the deploy/ manifests cannot be checked"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (required when CI=true)")
        pytest.skip(reason)
    return found


@pytest.fixture(scope="module")
def kubectl() -> str:
    return _tool("kubectl")


@pytest.fixture(scope="module")
def validator() -> str:
    return _tool("kubernetes-validate", path=os.path.dirname(sys.executable))


_rendered: dict[Path, str] = {}


def render(kubectl: str, overlay: Path) -> str:
    if overlay not in _rendered:
        result = subprocess.run(
            [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, f"kubectl kustomize {overlay.relative_to(REPO)} failed:\n{result.stderr}"
        _rendered[overlay] = result.stdout
    return _rendered[overlay]


def documents(kubectl: str, overlay: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(render(kubectl, overlay)) if doc]


def pod_spec(doc: Manifest) -> Manifest:
    kind = doc["kind"]
    if kind == "Pod":
        return doc["spec"]
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def containers(docs: list[Manifest]) -> Iterator[tuple[str, Manifest, Manifest]]:
    """(label, pod spec, container) for every container and init container of every workload."""
    for doc in docs:
        if doc["kind"] not in WORKLOAD_KINDS:
            continue
        spec = pod_spec(doc)
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            yield f"{doc['kind']}/{doc['metadata']['name']} container {container['name']}", spec, container


def is_alliance_service(container: Manifest) -> bool:
    """A container of the suite's image running `alliance serve NAME` (NATS etc. are not)."""
    args = container.get("args", [])
    return args[:1] == ["serve"] and "alliance" in container["image"].rsplit("/", 1)[-1]


def by_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [doc for doc in docs if doc["kind"] == kind]


overlay_param = pytest.mark.parametrize("overlay", OVERLAYS, ids=[p.name for p in OVERLAYS])


def test_there_are_overlays() -> None:
    assert {p.name for p in OVERLAYS} >= {"dev", "production"}


@overlay_param
def test_overlay_validates_strictly(kubectl: str, validator: str, overlay: Path) -> None:
    result = subprocess.run(
        [validator, "--strict", "--quiet", "-"],
        input=render(kubectl, overlay),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, (
        f"kubernetes-validate --strict rejects {overlay.name}:\n{result.stdout}{result.stderr}"
    )


@overlay_param
def test_every_container_is_non_root_read_only_and_limited(kubectl: str, overlay: Path) -> None:
    found = list(containers(documents(kubectl, overlay)))
    assert found, f"{overlay.name} renders no workloads"
    for label, spec, container in found:
        pod_sc = spec.get("securityContext", {})
        sc = container.get("securityContext", {})
        run_as_non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        run_as_user = sc.get("runAsUser", pod_sc.get("runAsUser"))
        assert run_as_non_root is True, f"{label}: runAsNonRoot is not true"
        assert run_as_user is None or run_as_user > 0, f"{label}: runAsUser {run_as_user}"
        assert sc.get("readOnlyRootFilesystem") is True, f"{label}: readOnlyRootFilesystem is not true"
        assert sc.get("allowPrivilegeEscalation") is False, f"{label}: allowPrivilegeEscalation is not false"
        assert "ALL" in sc.get("capabilities", {}).get("drop", []), f"{label}: capabilities not dropped"
        limits = container.get("resources", {}).get("limits", {})
        assert {"cpu", "memory"} <= limits.keys(), f"{label}: resources.limits {limits}"
        assert container.get("resources", {}).get("requests"), f"{label}: no resources.requests"


@overlay_param
def test_services_have_grpc_probes_and_drain_in_time(kubectl: str, overlay: Path) -> None:
    docs = documents(kubectl, overlay)
    services = [(label, spec, c) for label, spec, c in containers(docs) if is_alliance_service(c)]
    assert services, f"{overlay.name} runs no `alliance serve` container"
    settings = {}
    for configmap in by_kind(docs, "ConfigMap"):
        if configmap["metadata"]["name"].startswith("alliance-settings"):
            settings = configmap["data"]
    assert settings.get("GRPC_HOST") == "0.0.0.0", "containers must bind GRPC_HOST=0.0.0.0"
    grace = float(settings.get("SHUTDOWN_GRACE_SECONDS", 10))
    for label, spec, container in services:
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        grpc_port = int(env["GRPC_PORT"])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container.get(probe, {}).get("grpc", {}).get("port") == grpc_port, (
                f"{label}: {probe} is not a grpc probe on GRPC_PORT {grpc_port}"
            )
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        pre_stop_seconds = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0.0
        # host.stop(): gRPC drain (grace), then background loops (grace again), after the preStop.
        assert spec.get("terminationGracePeriodSeconds", 30) > pre_stop_seconds + 2 * grace, (
            f"{label}: terminationGracePeriodSeconds too short for SHUTDOWN_GRACE_SECONDS={grace}"
        )
        mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{label}: no writable /tmp"
        # Rule files are hot-reloaded: whole-directory, read-only mounts (subPath mounts never update).
        for path, mount in mounts.items():
            if path.startswith(settings["RULES_DIR"] + "/"):
                assert "subPath" not in mount and mount.get("readOnly"), f"{label}: rules mount {path}"
        if container["args"][:2] == ["serve", "points"]:
            assert f"{settings['RULES_DIR']}/campaigns" in mounts, f"{label}: campaigns not mounted"


@overlay_param
@rules_param
def test_rules_configmap_has_no_hash_suffix(kubectl: str, overlay: Path, kind: str) -> None:
    """Rules are hot-reloaded from the mount: a hash suffix would roll every pod on each edit."""
    names = [cm["metadata"]["name"] for cm in by_kind(documents(kubectl, overlay), "ConfigMap")]
    assert f"alliance-rules-{kind}" in names, f"{overlay.name}: no ConfigMap alliance-rules-{kind} in {names}"


def test_production_reads_database_url_from_a_secret(kubectl: str) -> None:
    docs = documents(kubectl, DEPLOY / "overlays" / "production")
    services = [(label, c) for label, _, c in containers(docs) if is_alliance_service(c)]
    assert services
    for label, container in services:
        env = {e["name"]: e for e in container.get("env", [])}
        assert "DATABASE_URL" in env, f"{label}: DATABASE_URL not set"
        assert "value" not in env["DATABASE_URL"], f"{label}: DATABASE_URL must not be a literal value"
        ref = env["DATABASE_URL"].get("valueFrom", {}).get("secretKeyRef")
        assert ref, f"{label}: DATABASE_URL must come from a secretKeyRef"
        service = label.removeprefix("Deployment/").split(" ", 1)[0]
        if service in SERVICES:  # each service its own database, its own Secret
            assert ref == {"name": f"alliance-{service}-db", "key": "url"}, f"{label}: {ref}"
    assert not by_kind(docs, "Secret"), "production must not ship Secrets: they are created out of band"


@rules_param
def test_rules_configmap_copy_matches_rules_dir(kind: str) -> None:
    """deploy/base/rules/<kind>/ is a copy of rules/<kind>/ (kustomize cannot read ../../rules)."""
    fix = f"run `make deploy-rules` to copy rules/{kind} into deploy/base/rules"
    source = {p.name: p.read_bytes() for p in (REPO / "rules" / kind).glob("*.yaml")}
    copy_dir = DEPLOY / "base" / "rules" / kind
    copy = {p.name: p.read_bytes() for p in copy_dir.glob("*.yaml")}
    assert source and sorted(copy) == sorted(source), f"rule files differ: {fix}"
    changed = [name for name in source if source[name] != copy[name]]
    assert not changed, f"{changed} differ from rules/{kind}: {fix}"
    kustomization = yaml.safe_load((copy_dir.parent / "kustomization.yaml").read_text())
    generator = next(g for g in kustomization["configMapGenerator"] if g["name"] == f"alliance-rules-{kind}")
    assert generator["options"]["disableNameSuffixHash"] is True
    assert sorted(generator["files"]) == sorted(f"{kind}/{name}" for name in source), f"files: list stale: {fix}"


@overlay_param
def test_every_registered_service_is_deployed_on_its_ports(kubectl: str, overlay: Path) -> None:
    """services/registry.py is the one port table: each service in it has a Deployment whose
    container serves on its ports, probes them, and a Service, a PodDisruptionBudget and a
    NetworkPolicy; nothing is deployed that the registry does not know."""
    docs = documents(kubectl, overlay)
    deployed = {c["args"][1]: (label, c) for label, _, c in containers(docs) if is_alliance_service(c)}
    assert set(deployed) == set(SERVICES), f"{overlay.name}: deployed {sorted(deployed)}, registry {sorted(SERVICES)}"
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    budgets = {
        p["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/name") for p in by_kind(docs, "PodDisruptionBudget")
    }
    policies = {
        p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name")
        for p in by_kind(docs, "NetworkPolicy")
    }
    for name, entry in SERVICES.items():
        label, container = deployed[name]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env.get("GRPC_PORT") == str(entry.grpc_port), f"{label}: GRPC_PORT is not {entry.grpc_port}"
        assert env.get("METRICS_PORT") == str(entry.metrics_port), f"{label}: METRICS_PORT is not {entry.metrics_port}"
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        assert ports == {"grpc": entry.grpc_port, "metrics": entry.metrics_port}, f"{label}: ports {ports}"
        service_ports = {p["name"]: p["port"] for p in services[name]["spec"]["ports"]}
        assert service_ports == ports, f"Service/{name}: ports {service_ports}"
        assert name in budgets, f"{name}: no PodDisruptionBudget"
        assert name in policies, f"{name}: no NetworkPolicy"
