"""The deployment files, validated offline: no Docker engine or cluster runs here, so
what can be checked is checked (schemas, the unit file, the metric names dashboards use)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from broker.server.auth.acl import ACL, parse_policy
from broker.server.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
#: External Secrets Operator's API groups, with the kinds the broker's examples use.
ESO_GROUPS = {"external-secrets.io", "generators.external-secrets.io"}
ESO_KINDS = {
    ("external-secrets.io/v1", "ExternalSecret"),
    ("external-secrets.io/v1", "SecretStore"),
    ("external-secrets.io/v1", "ClusterSecretStore"),
    ("generators.external-secrets.io/v1alpha1", "VaultDynamicSecret"),
}
#: Schemas of ESO's CRDs: ``npm ci --prefix tests/eso`` (package.json pins them).
ESO_SCHEMAS = ROOT / "tests" / "eso"


def _group(document: dict[str, Any]) -> str:
    api_version: str = document["apiVersion"]
    return api_version.rpartition("/")[0]


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
        if _group(document) in ESO_GROUPS:
            continue  # External Secrets' own kinds: their CRD schemas, below
        kubernetes_validate.validate(document, "1.30.0", strict=True)


def test_kubernetes_set_is_complete() -> None:
    kinds = {
        document["kind"]
        for p in (DEPLOY / "kubernetes").glob("*.yaml")
        for document in yaml.safe_load_all(p.read_text())
    }
    assert {"Deployment", "Service", "ConfigMap", "CronJob", "NetworkPolicy"} <= kinds
    deployment = yaml.safe_load((DEPLOY / "kubernetes" / "deployment.yaml").read_text())
    assert deployment["spec"]["replicas"] == 2


def test_the_broker_may_review_pod_tokens() -> None:
    """The declared Kubernetes auth method reviews each pod's token with the broker's own
    (TokenReview): the pod runs as an account bound to system:auth-delegator, and its
    network policy lets it reach the API server."""
    deployment = yaml.safe_load((DEPLOY / "kubernetes" / "deployment.yaml").read_text())
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    rbac = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "rbac.yaml").read_text()))
    assert (rbac[0]["kind"], rbac[0]["metadata"]["name"]) == ("ServiceAccount", account)
    (binding,) = [d for d in rbac if d["kind"] == "ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == "system:auth-delegator"
    assert {"kind": "ServiceAccount", "name": account, "namespace": "default"} in binding[
        "subjects"
    ]
    policy = yaml.safe_load((DEPLOY / "kubernetes" / "networkpolicy.yaml").read_text())
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {443, 6443} <= ports
    configmap = (DEPLOY / "kubernetes" / "configmap.yaml").read_text()
    assert 'kubernetes_host = "https://kubernetes.default.svc"' in configmap


def test_liveness_does_not_depend_on_storage() -> None:
    """sys/health answers 503 while storage fails over; a liveness probe on it would have
    Kubernetes restart every node during a failover, into crash-loop backoff. Readiness
    takes the nodes out of the Service meanwhile; liveness only asks the process."""
    deployment = yaml.safe_load((DEPLOY / "kubernetes" / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "tcpSocket" in container["livenessProbe"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/sys/health"


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


# -- Vault Agent injector, External Secrets and the broker side they expect ---------------


def _documents(name: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((KUBERNETES / name).read_text()))


def _broker_address() -> tuple[str, int]:
    """The Service's name and port (deploy/kubernetes/service.yaml)."""
    service = yaml.safe_load((KUBERNETES / "service.yaml").read_text())
    return service["metadata"]["name"], service["spec"]["ports"][0]["port"]


def _points_at_broker(url: str) -> bool:
    name, port = _broker_address()
    parts = urlsplit(url)
    return (
        parts.scheme in ("http", "https")
        and (parts.hostname or "").split(".")[0] == name
        and parts.port == port
    )


def _declared() -> dict[str, Any]:
    """The [declarative] section of the ConfigMap's broker.toml: the broker side of the
    manifests (database roles, the policy, the Kubernetes auth method and its role)."""
    configmap = yaml.safe_load((KUBERNETES / "configmap.yaml").read_text())
    declared: dict[str, Any] = tomllib.loads(configmap["data"]["broker.toml"])["declarative"]
    return declared


def _writes(prefix: str) -> dict[str, dict[str, Any]]:
    """The roles the ConfigMap declares at the API paths ``<prefix><name>``, by name, with
    their keys as a write to that path takes them (``database/roles/``,
    ``auth/kubernetes/role/``)."""
    declared = _declared()
    found: dict[str, dict[str, Any]] = {}
    for mount, body in declared.get("mounts", {}).items():
        for name, role in body.get("roles", {}).items():
            found[f"{mount}/roles/{name}"] = role
    for path, body in declared.get("auth", {}).items():
        for name, role in body.get("roles", {}).items():
            found[f"auth/{path}/role/{name}"] = role
    return {path[len(prefix) :]: dict(v) for path, v in found.items() if path.startswith(prefix)}


def test_external_secrets_documents_point_at_the_broker() -> None:
    documents = _documents("external-secrets.yaml")
    assert {(d["apiVersion"], d["kind"]) for d in documents} <= ESO_KINDS
    roles = _writes("database/roles/")
    k8s_roles = _writes("auth/kubernetes/role/")
    generators = [d for d in documents if d["kind"] == "VaultDynamicSecret"]
    stores = [d for d in documents if d["kind"] in ("SecretStore", "ClusterSecretStore")]
    assert generators and stores
    for generator in generators:
        path = generator["spec"]["path"].strip("/")
        mount, _, role = path.rpartition("/creds/")
        assert mount == "database" and role in roles, path
        # ESO revokes its own token right after the read: the leases must outlive it.
        assert roles[role].get("orphan_leases") is True, role
    providers = [g["spec"]["provider"] for g in generators]
    providers += [s["spec"]["provider"]["vault"] for s in stores]
    for provider in providers:
        assert _points_at_broker(provider["server"]), provider["server"]
        kubernetes = provider["auth"]["kubernetes"]
        assert kubernetes["mountPath"] == "kubernetes"
        bound = k8s_roles[kubernetes["role"]]
        assert kubernetes["serviceAccountRef"]["name"] in bound["bound_service_account_names"]
    generated = {g["metadata"]["name"] for g in generators}
    for secret in (d for d in documents if d["kind"] == "ExternalSecret"):
        for source in secret["spec"]["dataFrom"]:
            if "sourceRef" in source:
                assert source["sourceRef"]["generatorRef"]["name"] in generated
            else:  # read through a store: one read for both username and password
                assert source["extract"]["key"].rpartition("/")[2] in roles
                assert secret["spec"]["secretStoreRef"]["name"] in {
                    s["metadata"]["name"] for s in stores
                }


def test_external_secrets_documents_match_esos_schemas() -> None:
    """ESO's CRD schemas, as the @kubernetes-models package compiles them from ESO's CRDs
    (pinned in tests/eso/package.json), installed here with ``npm ci`` on first run, as
    the OpenID provider of the JWT tests is: Node is on every machine the suite runs on."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are required to check the ESO manifests (tests/eso/)")
    if not (ESO_SCHEMAS / "node_modules").is_dir():
        installed = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=ESO_SCHEMAS,
            capture_output=True,
            text=True,
            check=False,
        )
        assert installed.returncode == 0, (installed.stdout + installed.stderr)[-3000:]
    documents = _documents("external-secrets.yaml")
    result = subprocess.run(
        ["node", "validate.mjs"],
        input=json.dumps(documents),
        cwd=ESO_SCHEMAS,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("valid ") == len(documents), result.stdout
    # The schemas do check: a store without its server is refused.
    broken = [{**documents[2], "spec": {"provider": {"vault": {"version": "v1"}}}}]
    assert broken[0]["kind"] == "SecretStore"
    refused = subprocess.run(
        ["node", "validate.mjs"],
        input=json.dumps(broken),
        cwd=ESO_SCHEMAS,
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 1 and "server" in refused.stdout, refused.stdout


def test_vault_agent_injector_annotations() -> None:
    (deployment,) = _documents("vault-agent-injector.yaml")
    pod = deployment["spec"]["template"]
    notes = pod["metadata"]["annotations"]
    prefix = "vault.hashicorp.com/"
    assert notes[prefix + "agent-inject"] == "true"
    assert _points_at_broker(notes[prefix + "service"]), notes[prefix + "service"]
    assert notes[prefix + "auth-path"] == "auth/kubernetes"
    k8s_roles = _writes("auth/kubernetes/role/")
    bound = k8s_roles[notes[prefix + "role"]]
    assert pod["spec"]["serviceAccountName"] in bound["bound_service_account_names"]
    secrets = {
        key.removeprefix(prefix + "agent-inject-secret-"): path
        for key, path in notes.items()
        if key.startswith(prefix + "agent-inject-secret-")
    }
    assert secrets == {"db-creds": "database/creds/app"}
    roles = _writes("database/roles/")
    for name, path in secrets.items():
        assert path.rpartition("/")[2] in roles
        template = notes[prefix + f"agent-inject-template-{name}"]
        assert f'with secret "{path}"' in template and ".Data.password" in template
    # The agent keeps its token and renews: its leases may die with the token.
    assert roles["app"].get("orphan_leases", False) is False
    labels = pod["metadata"]["labels"]
    assert labels.get("broker-client") == "true"  # the broker's NetworkPolicy lets it in


def test_the_declared_policy_grants_what_the_manifests_read() -> None:
    acl = ACL(parse_policy(_declared()["policies"]["app"]["policy"]))
    policies = {
        policy
        for role in _writes("auth/kubernetes/role/").values()
        for policy in role["token_policies"]
    }
    assert policies == {"app"}
    for role in _writes("database/roles/"):
        assert acl.allows(f"database/creds/{role}", "read")
        assert not acl.allows(f"database/roles/{role}", "read")
    assert acl.allows("sys/leases/renew", "update")


# -- The declarative configuration the deployments ship -----------------------------------


def _load_declared(config_text: str, tmp_path: Path, environ: dict[str, str]) -> Any:
    """Settings and the [declarative] section as the server loads them at start."""
    from broker.server.bootstrap import load_declarative
    from broker.server.settings import Settings

    path = tmp_path / "broker.toml"
    path.write_text(config_text)
    settings = Settings.load(path, environ={})
    assert settings.declarative_file == str(path.resolve())
    return settings, load_declarative(str(path), environ=environ)


def test_kubernetes_configmap_declares_the_broker_and_the_pod_mounts_its_secrets(
    tmp_path: Path,
) -> None:
    import tomllib

    configmap = yaml.safe_load((KUBERNETES / "configmap.yaml").read_text())
    deployment = yaml.safe_load((KUBERNETES / "deployment.yaml").read_text())
    secret = yaml.safe_load((KUBERNETES / "secret.example.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    config_path = container["args"][container["args"].index("--config") + 1]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    directory, _, key = config_path.rpartition("/")
    assert volumes[mounts[directory]]["configMap"]["name"] == configmap["metadata"]["name"]
    text = configmap["data"][key]
    # Every password_file is a key of the Secret, projected into a mounted volume.
    declared = tomllib.loads(text)["declarative"]
    files = [
        connection["password_file"]
        for mount in declared["mounts"].values()
        for connection in mount.get("connections", {}).values()
    ]
    assert files and not any(
        "password" in c
        for m in declared["mounts"].values()
        for c in m.get("connections", {}).values()
    )
    local = text
    for name in files:
        directory, _, file_name = name.rpartition("/")
        volume = volumes[mounts[directory]]["secret"]
        assert volume["secretName"] == secret["metadata"]["name"]
        item = next(i for i in volume["items"] if i["path"] == file_name)
        assert item["key"] in secret["stringData"]
        (tmp_path / file_name).write_text("from-the-secret\n")
        local = local.replace(name, str(tmp_path / file_name))
    settings, config = _load_declared(local, tmp_path, environ={})
    assert settings.allow_api_audit_creation is False  # audit devices come from the file
    paths = {o.path: o for o in config.objects}
    assert {"sys/audit/stdout", "database/config/pg", "database/roles/app"} <= set(paths)
    assert {"sys/auth/kubernetes", "auth/approle/role/ci", "sys/policies/acl/app"} <= set(paths)
    assert paths["database/config/pg"].secret == "from-the-secret"
    assert set(paths["database/config/pg"].values["allowed_roles"]) == {
        p.rpartition("/")[2] for p in paths if p.startswith("database/roles/")
    }
    acl = ACL(parse_policy(paths["sys/policies/acl/app"].values["policy"]))
    for role in paths["database/config/pg"].values["allowed_roles"]:
        assert acl.allows(f"database/creds/{role}", "read")
    assert paths["auth/approle/role/ci"].values["token_policies"] == ["app"]
    # Kubernetes auth from inside the pod: the in-cluster host, and the pod's own CA and
    # token (no reviewer token, none of the local files turned off).
    k8s = paths["auth/kubernetes/config"]
    assert k8s.values["kubernetes_host"] == "https://kubernetes.default.svc"
    assert k8s.secret is None and k8s.values["token_reviewer_jwt_set"] is False
    assert k8s.values["kubernetes_ca_cert"] == "" and not k8s.values["disable_local_ca_jwt"]
    app = paths["auth/kubernetes/role/app"].values
    assert app["token_policies"] == ["app"] and app["token_period"] == 3600


def test_compose_declares_the_demo_databases(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    broker = compose["services"]["broker"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in broker["volumes"]}
    text = (DEPLOY / mounted["/etc/broker/broker.toml"]).read_text()
    environment = {k: str(v) for k, v in broker["environment"].items()}
    _, config = _load_declared(text, tmp_path, environ=environment)
    connections = [o for o in config.objects if o.kind == "connection"]
    assert {c.path for c in connections} == {
        "database/config/demo-postgres",
        "database/config/demo-mariadb",
    }
    for connection in connections:
        host = connection.path.rpartition("/")[2]
        assert host in connection.values["connection_url"] and connection.secret
        assert broker["depends_on"][host]["condition"] == "service_healthy"
