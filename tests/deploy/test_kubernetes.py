"""The Kubernetes manifests under deploy/kubernetes: valid against the API's schemas (strict:
an unknown field is an error) and consistent with each other, with the Dockerfile and with
the lens.toml they carry: probes on real ports and routes, the Service over the pods, a grace
period that covers the drain, the ConfigMap and Secret the volumes name."""

from __future__ import annotations

import copy
import tempfile
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from lens_server.access.keys import ApiKeys
from lens_server.http.health import router as health_routes
from tests.conftest import ROOT
from tests.deploy.conftest import DEPLOY

KUBERNETES = DEPLOY / "kubernetes"
# The oldest Kubernetes release still commonly run; the manifests use nothing newer.
VERSION = "1.31.0"
# Seconds beyond drain_delay + grace_s for the collections to flush before SIGKILL.
MARGIN_S = 5


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object in the manifests, by (kind, name)."""
    objects = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            objects[document["kind"], document["metadata"]["name"]] = document
    return objects


@pytest.fixture(scope="module")
def pod(manifests: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return manifests["Deployment", "lens"]["spec"]["template"]


@pytest.fixture(scope="module")
def container(pod: dict[str, Any]) -> dict[str, Any]:
    (lens,) = pod["spec"]["containers"]
    return lens


def test_every_object_matches_the_api_schema(manifests: dict[tuple[str, str], dict[str, Any]]):
    assert set(manifests) >= {
        ("Deployment", "lens"),
        ("Service", "lens"),
        ("ConfigMap", "lens-config"),
        ("Secret", "lens-api-keys"),
    }
    for document in manifests.values():
        kubernetes_validate.validate(document, VERSION, strict=True)
    # Strict: a misspelt field is refused, not dropped.
    broken = copy.deepcopy(manifests["Deployment", "lens"])
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_template():
    """`kubectl apply -k` must not replace the keys an operator made with the template."""
    listed = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"]
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml", "secret.yaml"}
    assert sorted(listed) == sorted(files)


def test_configmap_is_deploy_lens_toml(manifests: dict[tuple[str, str], dict[str, Any]]):
    carried = manifests["ConfigMap", "lens-config"]["data"]["lens.toml"]
    assert carried == (DEPLOY / "lens.toml").read_text()


def _config(manifests: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return tomllib.loads(manifests["ConfigMap", "lens-config"]["data"]["lens.toml"])


def test_probes_ask_real_ports_and_routes(
    manifests: dict[tuple[str, str], dict[str, Any]], container: dict[str, Any]
):
    config = _config(manifests)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": config["port"], "http": config["http_port"]}
    routes = {route.path for route in health_routes.routes}
    probes = {
        kind: container[kind]["httpGet"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes["livenessProbe"]["path"] == "/health/live"
    assert probes["readinessProbe"]["path"] == "/health/ready"
    for kind, probe in probes.items():
        assert probe["port"] in ports, f"{kind} asks port {probe['port']!r}"
        assert probe["path"] in routes, f"{kind} asks {probe['path']}, which is no route"
        assert ports[probe["port"]] == config["http_port"], f"{kind} is not on the HTTP port"


def test_service_selects_the_pods_on_both_ports(
    manifests: dict[tuple[str, str], dict[str, Any]], pod: dict[str, Any], container: dict
):
    deployment = manifests["Deployment", "lens"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = manifests["Service", "lens"]["spec"]
    assert service["selector"].items() <= labels.items()
    names = {p["name"] for p in container["ports"]}
    by_name = {p["name"]: p for p in service["ports"]}
    assert set(by_name) == {"grpc", "http"}
    for name, port in by_name.items():
        assert port["targetPort"] == name and name in names and port["appProtocol"]
    assert by_name["grpc"]["appProtocol"] == "kubernetes.io/h2c"


def test_grace_period_covers_the_drain(
    manifests: dict[tuple[str, str], dict[str, Any]], pod: dict[str, Any], container: dict
):
    """The kubelet sends SIGKILL this long after the preStop hook begins: any preStop sleep,
    then lens's drain delay and its grace for requests in flight must all fit."""
    config = _config(manifests)
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {})
    assert "exec" not in container.get("lifecycle", {}).get("preStop", {})
    needed = pre_stop.get("seconds", 0) + config["drain_delay"] + config["grace_s"] + MARGIN_S
    assert pod["spec"]["terminationGracePeriodSeconds"] >= needed


def test_volumes_carry_the_config_keys_and_data(
    manifests: dict[tuple[str, str], dict[str, Any]], pod: dict[str, Any], container: dict
):
    config = _config(manifests)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert set(volumes) == {m["name"] for m in mounts.values()}

    # The config file where the container's --config reads it.
    config_path = container["args"][container["args"].index("--config") + 1]
    config_mount = mounts[config_path]
    configmap = volumes[config_mount["name"]]["configMap"]["name"]
    assert config_mount["subPath"] in manifests["ConfigMap", configmap]["data"]

    # The keys file where lens.toml's api_keys names it.
    keys = PurePosixPath(config["api_keys"])
    secret = manifests["Secret", volumes[mounts[str(keys.parent)]["name"]]["secret"]["secretName"]]
    assert keys.name in secret["stringData"]

    # The repository and the collections on claims that exist.
    claims = {name for kind, name in manifests if kind == "PersistentVolumeClaim"}
    for folder in (config["repo"], config["collections"]):
        volume = volumes[mounts[folder]["name"]]
        assert volume["persistentVolumeClaim"]["claimName"] in claims
        assert not mounts[folder].get("readOnly")


def test_secret_template_is_a_key_list_that_opens_nothing(
    manifests: dict[tuple[str, str], dict[str, Any]],
):
    secret = manifests["Secret", "lens-api-keys"]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "keys"
        path.write_text(secret["stringData"]["keys"])
        assert ApiKeys.read(path).required


def test_runs_as_the_images_user(pod: dict[str, Any], container: dict[str, Any]):
    dockerfile = (ROOT / "Dockerfile").read_text()
    context = pod["spec"]["securityContext"]
    assert f"\nUSER {context['runAsUser']}:{context['runAsGroup']}" in dockerfile
    assert context["runAsNonRoot"] and context["fsGroup"] == context["runAsGroup"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
