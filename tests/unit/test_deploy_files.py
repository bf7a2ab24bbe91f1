"""The deployment files, validated offline: no Docker engine or cluster runs here, so
what can be checked is checked (schemas, the unit file, the metric names dashboards use)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from broker.server.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def test_compose_file_matches_the_compose_spec() -> None:
    schema = json.loads((Path(__file__).parent / "data" / "compose_spec.json").read_text())
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    jsonschema.Draft201909Validator(schema).validate(compose)
    assert set(compose["services"]) == {"broker", "storage", "demo-postgres", "demo-mariadb"}
    assert compose["services"]["broker"]["depends_on"]["storage"]["condition"] == (
        "service_healthy"
    )


@pytest.mark.parametrize(
    "path", sorted((DEPLOY / "kubernetes").glob("*.yaml")), ids=lambda p: p.name
)
def test_kubernetes_manifests_match_their_schemas(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(document, "1.30.0", strict=True)


def test_kubernetes_set_is_complete() -> None:
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in (DEPLOY / "kubernetes").glob("*.yaml")}
    assert {"Deployment", "Service", "ConfigMap", "CronJob", "NetworkPolicy"} <= kinds
    deployment = yaml.safe_load((DEPLOY / "kubernetes" / "deployment.yaml").read_text())
    assert deployment["spec"]["replicas"] == 2


def test_systemd_unit(tmp_path: Path) -> None:
    unit = (DEPLOY / "systemd" / "broker.service").read_text()
    assert "ExecStart=/usr/local/bin/broker server" in unit and "KillSignal=SIGTERM" in unit
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    # verify needs the binary and user to exist: substitute ones every machine has.
    probe = tmp_path / "broker.service"
    probe.write_text(
        unit.replace("/usr/local/bin/broker", "/bin/true")
        .replace("User=broker", "User=root")
        .replace("Group=broker", "Group=root")
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(probe)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def _exported_series() -> set[str]:
    names: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names |= {family.name + "_total", family.name + "_created"}
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_count", "_sum", "_created")}
        else:
            names.add(family.name)
    return names


def test_dashboard_and_alerts_use_metrics_the_broker_exports() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "broker-dashboard.json").read_text())
    alerts = yaml.safe_load((DEPLOY / "grafana" / "alerts.yml").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [r["expr"] for g in alerts["groups"] for r in g["rules"]]
    used = {name for e in exprs for name in re.findall(r"\bbroker_[a-z_]+", e)}
    assert used, "no broker metric referenced"
    assert used <= _exported_series(), used - _exported_series()
    titles = {r["alert"] for g in alerts["groups"] for r in g["rules"]}
    assert {"BrokerRevocationBacklogGrowing", "BrokerRevocationsFailing"} <= titles
