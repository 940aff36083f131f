"""The Ray examples under deploy/ray parse as YAML and run `lens bulk embed`."""

from __future__ import annotations

from pathlib import Path

import yaml

RAY = Path(__file__).resolve().parents[2] / "deploy" / "ray"


def test_cluster_launcher_config() -> None:
    config = yaml.safe_load((RAY / "cluster.yaml").read_text())
    assert config["head_node_type"] in config["available_node_types"]
    for node in config["available_node_types"].values():
        assert {"resources", "node_config"} <= set(node)
    assert any("lens[bulk]" in c for c in config["setup_commands"])
    assert config["max_workers"] >= max(
        n.get("max_workers", 0) for n in config["available_node_types"].values()
    )


def test_kuberay_rayjob() -> None:
    job = yaml.safe_load((RAY / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["entrypoint"].startswith("lens bulk embed ")
    cluster = job["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]
    for pod in pods:
        (container,) = pod["spec"]["containers"]
        mounted = {m["name"] for m in container["volumeMounts"]}
        assert mounted <= {v["name"] for v in pod["spec"]["volumes"]}
