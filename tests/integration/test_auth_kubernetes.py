"""Kubernetes auth against a TLS stand-in of the TokenReview API (tests/k8s_tokenreview.py,
faithful to authentication.k8s.io/v1; no real API server can run here).

hvac configures the method, writes a role and logs in with legacy and projected
service-account tokens, then reads database credentials that log in to PostgreSQL. Every
refusal of Vault's plugin is checked: its status and words, that it creates no token, and
whether the cluster was asked. No JWT reaches a log line or an audit entry in plain text.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import hvac
import hvac.exceptions
import jwt
import pytest
import trustme
from cryptography.hazmat.primitives.asymmetric import ec

from broker.server.api.context import SERVICES
from broker.server.assembly import start_server
from tests.conftest import TOKEN, PgCluster, RunningBroker, own_broker_settings
from tests.k8s_tokenreview import (
    PROJECTED_ISSUER,
    FakeCluster,
    certificate_pem,
    new_rsa_key,
    public_key_pem,
)
from tests.support import ISSUED_PASSWORDS, Reply, VaultHTTP, pg_logs_in

MOUNT = "kubernetes"  # hvac's default mount point
POLICY_NAME = "brkt-k8s-app"
#: The README's recommended application policy, for the role's tokens.
POLICY = """
path "database/creds/brkt-pg-ro" { capabilities = ["read"] }
path "sys/leases/renew"          { capabilities = ["update"] }
path "sys/leases/revoke"         { capabilities = ["update"] }
"""
REVIEWER = ("kube-system", "vault-auth")
DENIED = "permission denied"


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[FakeCluster]:
    fake = FakeCluster()
    fake.delegators.add(REVIEWER)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture(scope="module")
async def k8s(broker: RunningBroker, cluster: FakeCluster) -> AsyncIterator[str]:
    """The method at auth/kubernetes with the app policy; disabled afterwards (its config
    and roles go with it)."""
    http = broker.http
    reply = await http.write(f"sys/auth/{MOUNT}", {"type": "kubernetes"})
    assert reply.status == 204, reply.body
    assert (await http.write(f"sys/policy/{POLICY_NAME}", {"policy": POLICY})).status == 204
    try:
        yield MOUNT
    finally:
        assert (await http.delete(f"sys/auth/{MOUNT}")).status == 204
        await http.delete(f"sys/policy/{POLICY_NAME}")


def reviewer_jwt(cluster: FakeCluster) -> str:
    return cluster.legacy_token(*REVIEWER, secret="vault-auth-token")


async def configure(http: VaultHTTP, mount: str, **fields: Any) -> None:
    reply = await http.write(f"auth/{mount}/config", fields)
    assert reply.status == 204, reply.body


async def login(http: VaultHTTP, mount: str, role: str, token: str) -> Reply:
    return await http.call("POST", f"auth/{mount}/login", {"role": role, "jwt": token}, token="")


async def accessor_count(http: VaultHTTP) -> int:
    reply = await http.list("auth/token/accessors")
    return len(reply.data["keys"]) if reply.status == 200 else 0


async def refused(
    http: VaultHTTP,
    cluster: FakeCluster,
    mount: str,
    role: str,
    token: str,
    expected: tuple[int, str],
    *,
    reviewed: bool,
    because: str = "",
) -> None:
    """A login that must fail with ``expected`` (status, error), create no token, and
    have asked the cluster (``reviewed``) or not; ``because``: the reason it logs."""
    before, reviews = await accessor_count(http), len(cluster.reviews)
    lines: list[str] = []
    handler = _Capture(lines)
    method_log = logging.getLogger("broker.server.auth.kubernetes")
    method_log.addHandler(handler)
    try:
        reply = await login(http, mount, role, token)
    finally:
        method_log.removeHandler(handler)
    assert because in "\n".join(lines), lines
    assert (reply.status, reply.errors) == (expected[0], [expected[1]]), reply.body
    assert await accessor_count(http) == before
    assert (len(cluster.reviews) > reviews) == reviewed


async def revoke_token(http: VaultHTTP, reply: Reply) -> None:
    accessor = reply.body["auth"]["accessor"]
    assert (await http.write("auth/token/revoke-accessor", {"accessor": accessor})).status == 204


async def test_hvac_login_with_legacy_and_projected_tokens_then_creds(
    broker: RunningBroker, pg_target: PgCluster, cluster: FakeCluster, k8s: str
) -> None:
    reviewer = reviewer_jwt(cluster)
    legacy = cluster.legacy_token("prod", "app")
    projected = cluster.projected_token("prod", "app", audiences=("vault",))

    def scenario() -> dict[str, Any]:
        admin = hvac.Client(url=broker.address, token=TOKEN)
        admin.auth.kubernetes.configure(
            kubernetes_host=cluster.https_url,
            kubernetes_ca_cert=cluster.ca_pem,
            token_reviewer_jwt=reviewer,
        )
        admin.auth.kubernetes.create_role(
            "brkt-app",
            bound_service_account_names=["app"],
            bound_service_account_namespaces="prod",
            policies=[POLICY_NAME],
            ttl="10m",
            max_ttl="1h",
        )
        admin.auth.kubernetes.create_role(
            "brkt-aud",
            bound_service_account_names="app",
            bound_service_account_namespaces="prod",
            policies=POLICY_NAME,
            audience="vault",
            alias_name_source="serviceaccount_name",
        )
        out: dict[str, Any] = {
            "config": admin.auth.kubernetes.read_config(),
            "role": admin.auth.kubernetes.read_role("brkt-app"),
            "roles": admin.auth.kubernetes.list_roles(),
        }
        for name, role, token in (
            ("legacy", "brkt-app", legacy),
            ("projected", "brkt-aud", projected),
        ):
            app = hvac.Client(url=broker.address)
            # Whitespace around the JWT, as a client that sends the file as read.
            out[name] = app.auth.kubernetes.login(role, f"\n {token}\n")
            creds = app.secrets.database.generate_credentials("brkt-pg-ro")
            ISSUED_PASSWORDS.add(creds["data"]["password"])
            out[f"{name}-creds"] = creds
            with pytest.raises(hvac.exceptions.Forbidden):
                app.secrets.database.generate_credentials("brkt-my-ro")
        with pytest.raises(hvac.exceptions.Forbidden):
            hvac.Client(url=broker.address).auth.kubernetes.login("brkt-aud", legacy)
        return out

    out = await asyncio.to_thread(scenario)
    config = out["config"]
    assert config["kubernetes_host"] == cluster.https_url
    assert config["token_reviewer_jwt_set"] is True
    assert "token_reviewer_jwt" not in config and reviewer not in json.dumps(config)
    assert config["disable_iss_validation"] is True and config["disable_local_ca_jwt"] is False
    role = out["role"]
    assert role["bound_service_account_names"] == ["app"]
    assert role["bound_service_account_namespaces"] == ["prod"]
    assert role["token_policies"] == role["policies"] == [POLICY_NAME]
    assert (role["token_ttl"], role["ttl"], role["token_max_ttl"]) == (600, 600, 3600)
    assert role["alias_name_source"] == "serviceaccount_uid" and "audience" not in role
    assert sorted(out["roles"]["keys"]) == ["brkt-app", "brkt-aud"]

    uid = cluster.accounts[("prod", "app")]
    for name, role_name, secret_name in (
        ("legacy", "brkt-app", "app-token-x7k2p"),
        ("projected", "brkt-aud", ""),
    ):
        auth = out[name]["auth"]
        assert auth["policies"] == [POLICY_NAME, "default"]
        assert auth["metadata"] == {
            "role": role_name,
            "service_account_name": "app",
            "service_account_namespace": "prod",
            "service_account_secret_name": secret_name,
            "service_account_uid": uid,
        }
        assert auth["orphan"] is True and auth["renewable"] is True
        looked = await broker.http.write(
            "auth/token/lookup-accessor", {"accessor": auth["accessor"]}
        )
        assert looked.data["display_name"] == "kubernetes-prod-app"
        assert looked.data["path"] == "auth/kubernetes/login"
        creds = out[f"{name}-creds"]
        username = creds["data"]["username"]
        assert username.startswith("v_kubernetes_prod_")
        assert await pg_logs_in(pg_target.server.port, username, creds["data"]["password"])
        await broker.http.write("sys/leases/revoke", {"lease_id": creds["lease_id"]})
    assert 0 < out["legacy"]["auth"]["lease_duration"] <= 600

    # What the cluster was asked, with the reviewer's token as the bearer: the legacy
    # token has no audience to ask for, the audience-bound role asks for its own.
    legacy_review, projected_review = cluster.reviews[0], cluster.reviews[1]
    assert legacy_review.bearer == reviewer == projected_review.bearer
    assert legacy_review.body == {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": legacy},
    }
    assert projected_review.body["spec"] == {"token": projected, "audiences": ["vault"]}
    for name in ("legacy", "projected"):
        await revoke_token(broker.http, Reply(200, out[name]))


async def test_role_writes_follow_vaults_rules(broker: RunningBroker, k8s: str) -> None:
    http = broker.http
    base = f"auth/{k8s}/role"
    for body, error in (
        (
            {"bound_service_account_namespaces": "prod"},
            '"bound_service_account_names" can not be empty',
        ),
        (
            {"bound_service_account_names": "app"},
            '"bound_service_account_namespaces" can not be empty if '
            '"bound_service_account_namespace_selector" is not set',
        ),
        (
            {"bound_service_account_names": ["*", "app"], "bound_service_account_namespaces": "x"},
            'can not mix "*" with values',
        ),
        (
            {"bound_service_account_names": "app", "bound_service_account_namespaces": "*,prod"},
            'can not mix "*" with values',
        ),
        (
            {
                "bound_service_account_names": "app",
                "bound_service_account_namespaces": "prod",
                "alias_name_source": "pod_name",
            },
            "invalid alias_name_source, must be one of: serviceaccount_uid, serviceaccount_name",
        ),
        (
            {
                "bound_service_account_names": "app",
                "bound_service_account_namespace_selector": '{"matchLabels": {"team": "a"}}',
            },
            "bound_service_account_namespace_selector is not supported by the broker: "
            "list the namespaces in bound_service_account_namespaces",
        ),
        (
            {
                "bound_service_account_names": "app",
                "bound_service_account_namespaces": "prod",
                "token_policies": "root",
            },
            "auth methods cannot create root tokens",
        ),
    ):
        reply = await http.write(f"{base}/brkt-bad", body)
        assert (reply.status, reply.errors) == (400, [error]), body
    assert (await http.read(f"{base}/brkt-bad")).status == 404

    # Both "*" is allowed (as in Vault); an empty selector, as Terraform sends it, is none.
    reply = await http.write(
        f"{base}/Brkt-Any",
        {
            "bound_service_account_names": "*",
            "bound_service_account_namespaces": ["*"],
            "bound_service_account_namespace_selector": "",
            "token_policies": ["default"],
            "token_bound_cidrs": "127.0.0.1/32",
            "num_uses": 3,
            "token_type": "service",
        },
    )
    assert reply.status == 204, reply.body
    role = (await http.read(f"{base}/brkt-any")).data  # role names are case-insensitive
    assert role["bound_service_account_names"] == ["*"]
    assert role["bound_service_account_namespace_selector"] == ""
    assert role["token_bound_cidrs"] == role["bound_cidrs"] == ["127.0.0.1/32"]
    assert role["token_num_uses"] == role["num_uses"] == 3
    # An update keeps what it does not send.
    assert (await http.write(f"{base}/brkt-any", {"audience": "vault"})).status == 204
    role = (await http.read(f"{base}/brkt-any")).data
    assert (role["audience"], role["token_num_uses"]) == ("vault", 3)
    assert (await http.delete(f"{base}/BRKT-ANY")).status == 204
    assert (await http.read(f"{base}/brkt-any")).status == 404


async def test_config_checks_and_sealed_storage(
    broker: RunningBroker, cluster: FakeCluster, k8s: str
) -> None:
    http = broker.http
    path = f"auth/{k8s}/config"
    for body, error in (
        ({}, "no host provided"),
        (
            {"kubernetes_host": "kubernetes.default.svc"},
            "kubernetes_host must be an http:// or https:// URL of the Kubernetes API server",
        ),
        (
            {"kubernetes_host": cluster.https_url, "kubernetes_ca_cert": "not a certificate"},
            "The provided CA PEM data contains no valid certificates",
        ),
        (
            {"kubernetes_host": cluster.https_url, "pem_keys": ["-----BEGIN nothing"]},
            "data does not contain any valid RSA or ECDSA public keys",
        ),
        (
            {"kubernetes_host": cluster.https_url, "use_annotations_as_alias_metadata": True},
            "use_annotations_as_alias_metadata is not supported by the broker "
            "(it has no identity store to put alias metadata in)",
        ),
    ):
        reply = await http.write(path, body)
        assert (reply.status, reply.errors) == (400, [error]), body
    reviewer = reviewer_jwt(cluster)
    await configure(
        http,
        k8s,
        kubernetes_host=cluster.https_url,
        kubernetes_ca_cert=cluster.ca_pem,
        token_reviewer_jwt=reviewer,
        pem_keys=[public_key_pem(cluster.key), certificate_pem(cluster.key)],
    )
    data = (await http.read(path)).data
    assert len(data["pem_keys"]) == 2 and data["token_reviewer_jwt_set"] is True
    assert reviewer not in json.dumps(data)
    # At rest the body is sealed: neither the reviewer's token nor the CA reads in it.
    conn = await asyncpg.connect(broker.settings.storage_dsn)
    try:
        bodies = await conn.fetch("SELECT body FROM broker_auth_entries WHERE mount = $1", k8s)
    finally:
        await conn.close()
    assert bodies
    for row in bodies:
        assert reviewer not in row["body"] and "BEGIN CERTIFICATE" not in row["body"]
    # A write replaces the whole configuration (Vault's): the reviewer token is gone.
    await configure(http, k8s, kubernetes_host=cluster.https_url)
    data = (await http.read(path)).data
    assert data["token_reviewer_jwt_set"] is False and data["pem_keys"] == []


async def test_every_refusal_creates_nothing(
    broker: RunningBroker, cluster: FakeCluster, k8s: str
) -> None:
    http = broker.http
    reviewer = reviewer_jwt(cluster)

    async def config(**changes: Any) -> None:
        """A configuration that never reads this machine's own service-account files
        (were the tests run in a pod), with ``changes`` (None: left out)."""
        fields = {
            "kubernetes_host": cluster.https_url,
            "kubernetes_ca_cert": cluster.ca_pem,
            "token_reviewer_jwt": reviewer,
            "disable_local_ca_jwt": True,
            **changes,
        }
        await configure(http, k8s, **{k: v for k, v in fields.items() if v is not None})

    async def role(name: str, **body: Any) -> None:
        reply = await http.write(f"auth/{k8s}/role/{name}", {"token_policies": POLICY_NAME, **body})
        assert reply.status == 204, reply.body

    async def accepted(role_name: str, token: str) -> dict[str, Any]:
        """A login that succeeds: the token's lookup (the token is revoked at once)."""
        reply = await login(http, k8s, role_name, token)
        assert reply.status == 200, reply.body
        accessor = reply.body["auth"]["accessor"]
        looked = await http.write("auth/token/lookup-accessor", {"accessor": accessor})
        await revoke_token(http, reply)
        return looked.data

    def no(
        role_name: str,
        token: str,
        expected: tuple[int, str] = (403, DENIED),
        *,
        reviewed: bool,
        because: str = "",
    ) -> Any:
        return refused(
            http, cluster, k8s, role_name, token, expected, reviewed=reviewed, because=because
        )

    await config()
    await role("brkt-r", bound_service_account_names="app", bound_service_account_namespaces="prod")
    good = cluster.legacy_token("prod", "app")

    # Malformed requests and unknown roles: Vault's 400s.
    await no("nope", good, (400, 'invalid role name "nope"'), reviewed=False)
    await no("", good, (400, "missing role"), reviewed=False)
    await no("brkt-r", " \n", (400, "missing jwt"), reviewed=False)
    # Not a JWT, or the good token's claims signed with HMAC or not at all: Vault's bare
    # 403, before the cluster is asked.
    claims = jwt.decode(good, options={"verify_signature": False})
    hmac_signed = jwt.encode(claims, "k" * 32, algorithm="HS256")
    unsigned = ".".join([_b64({"alg": "none", "typ": "JWT"}), good.split(".")[1], ""])
    for token in ("not-a-jwt", "a.b.c", hmac_signed, unsigned):
        await no("brkt-r", token, reviewed=False)

    # The role's bounds, exact and globbed.
    await no(
        "brkt-r",
        cluster.legacy_token("prod", "web"),
        (403, "service account name not authorized"),
        reviewed=False,
    )
    await no(
        "brkt-r",
        cluster.legacy_token("dev", "app"),
        (403, "namespace not authorized"),
        reviewed=False,
    )
    await role(
        "brkt-glob",
        bound_service_account_names="app-*",
        bound_service_account_namespaces="team-*,ops",
    )
    await accepted("brkt-glob", cluster.legacy_token("team-a", "app-web"))
    await accepted("brkt-glob", cluster.legacy_token("ops", "app-"))
    await no(
        "brkt-glob",
        cluster.legacy_token("team-a", "web-app"),
        (403, "service account name not authorized"),
        reviewed=False,
    )
    await no(
        "brkt-glob",
        cluster.legacy_token("ops-2", "app-web"),
        (403, "namespace not authorized"),
        reviewed=False,
    )
    await role("brkt-star", bound_service_account_names="*", bound_service_account_namespaces="*")
    await accepted("brkt-star", cluster.projected_token("anything", "anyone"))

    # Audience: in the JWT, then in the review's answer.
    await role(
        "brkt-aud",
        bound_service_account_names="app",
        bound_service_account_namespaces="prod",
        audience="vault",
    )
    wrong_aud = cluster.projected_token("prod", "app", audiences=("other",))
    await no(
        "brkt-aud",
        wrong_aud,
        (403, "invalid audience (aud) claim: audience claim does not match any expected audience"),
        reviewed=False,
    )
    await no(
        "brkt-aud",
        good,
        (403, "invalid audience (aud) claim: audience claim does not match any expected audience"),
        reviewed=False,
    )
    unaware = cluster.projected_token("prod", "app", audiences=("vault",))
    await accepted("brkt-aud", unaware)
    cluster.answer_audiences[unaware] = ["https://kubernetes.default.svc.cluster.local"]
    await no("brkt-aud", unaware, reviewed=True, because="but wanted ['vault']")

    # Times of projected tokens (a minute of clock skew).
    expired = cluster.projected_token("prod", "app", issued=time.time() - 7200, ttl=3600)
    await no(
        "brkt-r",
        expired,
        (403, "invalid expiration time (exp) claim: token is expired"),
        reviewed=False,
    )

    # The issuer: off by default; on, the default issuer or the configured one.
    projected = cluster.projected_token("prod", "app")
    await accepted("brkt-r", projected)
    await config(disable_iss_validation=False)
    await accepted("brkt-r", good)
    await no("brkt-r", projected, (403, "invalid issuer (iss) claim"), reviewed=False)
    await config(disable_iss_validation=False, issuer=PROJECTED_ISSUER)
    await accepted("brkt-r", projected)
    await no("brkt-r", good, (403, "invalid issuer (iss) claim"), reviewed=False)

    # pem_keys: the cluster's key verifies its tokens; another key's token never reaches
    # the cluster. Without pem_keys the cluster itself refuses the forged signature.
    other = new_rsa_key()
    forged = cluster.legacy_token("prod", "app", key=other)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    await config(pem_keys=[public_key_pem(ec_key), certificate_pem(cluster.key)])
    await accepted("brkt-r", good)
    await no("brkt-r", forged, reviewed=False)
    await config(pem_keys=[public_key_pem(other)])
    await no("brkt-r", good, reviewed=False)
    await config()
    await no("brkt-r", forged, reviewed=True, because="lookup failed: [invalid bearer token")

    # The review says no: a revoked token (authenticated: false), a deleted account.
    revoked = cluster.legacy_token("prod", "app", secret="app-token-old")
    await accepted("brkt-r", revoked)
    cluster.revoked.add(revoked)
    await no("brkt-r", revoked, reviewed=True, because="service account jwt not valid")
    gone = cluster.legacy_token("prod", "gone")
    await role(
        "brkt-gone", bound_service_account_names="gone", bound_service_account_namespaces="prod"
    )
    cluster.delete_service_account("prod", "gone")
    await no("brkt-gone", gone, reviewed=True, because="service account jwt not valid")

    # The review names someone else than the JWT does: username, uid, not an account.
    for answer, reason in (
        ({"username": "system:serviceaccount:prod:other"}, "JWT names did not match"),
        ({"username": "system:serviceaccount:staging:app"}, "JWT namespaces did not match"),
        ({"uid": "00000000-0000-0000-0000-000000000000"}, "JWT UIDs did not match"),
        ({"username": "kubernetes-admin"}, "unexpected username format"),
        ({"username": "system:node:prod:app"}, "username returned is not a service account"),
    ):
        token = cluster.legacy_token("prod", "app", secret=f"app-token-{len(cluster.answer_as)}")
        cluster.answer_as[token] = answer
        await no("brkt-r", token, reviewed=True, because=reason)

    # The reviewer's own token rejected (401 Status), or not allowed to review (403).
    cluster.revoked.add(reviewer)
    await no("brkt-r", good, reviewed=True, because="service account unauthorized")
    cluster.revoked.discard(reviewer)
    await config(token_reviewer_jwt=cluster.legacy_token("kube-system", "not-a-delegator"))
    await no("brkt-r", good, reviewed=True, because="TokenReview answered HTTP 403: tokenreviews")
    assert cluster.reviews[-1].status == 403

    # No reviewer token: the client's JWT is its own bearer (it needs the delegator role).
    await config(token_reviewer_jwt=None)
    await no("brkt-r", good, reviewed=True)
    assert cluster.reviews[-1].bearer == good and cluster.reviews[-1].status == 403
    cluster.delegators.add(("prod", "app"))
    try:
        await accepted("brkt-r", good)
        assert cluster.reviews[-1].bearer == good and cluster.reviews[-1].status == 201
    finally:
        cluster.delegators.discard(("prod", "app"))

    # TLS: a CA that did not sign the server's certificate is a refusal, not a 500.
    await config(kubernetes_ca_cert=trustme.CA().cert_pem.bytes().decode())
    await no("brkt-r", good, reviewed=False, because="ClientConnectorCertificateError")
    # Nothing listening (a closed port) is the same.
    await config(kubernetes_host="https://127.0.0.1:9")
    await no("brkt-r", good, reviewed=False, because="ClientConnectorError")
    # Plain http:// is allowed, as in Vault.
    await config(kubernetes_host=cluster.http_url, kubernetes_ca_cert=None)
    await accepted("brkt-r", good)

    # token_bound_cidrs: checked before anything else, then bound to the token.
    await config()
    await role(
        "brkt-cidr",
        bound_service_account_names="app",
        bound_service_account_namespaces="prod",
        token_bound_cidrs="10.0.0.0/8",
    )
    await no("brkt-cidr", good, reviewed=False)
    await role("brkt-cidr", token_bound_cidrs=["127.0.0.0/8"])
    assert (await accepted("brkt-cidr", good))["bound_cidrs"] == ["127.0.0.0/8"]

    # A mount without a configuration.
    await http.write("sys/auth/brkt-k8s-empty", {"type": "kubernetes"})
    try:
        reply = await http.write(
            "auth/brkt-k8s-empty/role/r",
            {"bound_service_account_names": "app", "bound_service_account_namespaces": "prod"},
        )
        assert reply.status == 204
        before = await accessor_count(http)
        reply = await login(http, "brkt-k8s-empty", "r", good)
        assert (reply.status, reply.errors) == (400, ["could not load backend configuration"])
        assert await accessor_count(http) == before
    finally:
        await http.delete("sys/auth/brkt-k8s-empty")


async def test_jwts_reach_no_log_line_and_no_audit_entry(
    broker: RunningBroker, cluster: FakeCluster, k8s: str, tmp_path: Path
) -> None:
    """Successes and refusals of every kind, with a file audit device on and every log
    line captured at DEBUG: no JWT (nor its signature alone) is written anywhere."""
    http = broker.http
    reviewer = reviewer_jwt(cluster)
    await configure(
        http,
        k8s,
        kubernetes_host=cluster.https_url,
        kubernetes_ca_cert=cluster.ca_pem,
        token_reviewer_jwt=reviewer,
    )
    reply = await http.write(
        f"auth/{k8s}/role/brkt-log",
        {"bound_service_account_names": "app", "bound_service_account_namespaces": "prod"},
    )
    assert reply.status == 204
    audit_file = tmp_path / "audit.log"
    reply = await http.write(
        "sys/audit/brkt-k8s-file", {"type": "file", "options": {"file_path": str(audit_file)}}
    )
    assert reply.status == 204, reply.body
    lines: list[str] = []
    handler = _Capture(lines)
    logging.getLogger().addHandler(handler)
    good = cluster.legacy_token("prod", "app")
    revoked = cluster.projected_token("prod", "app")
    cluster.revoked.add(revoked)
    mismatch = cluster.legacy_token("prod", "app", secret="app-token-mismatch")
    cluster.answer_as[mismatch] = {"uid": "another"}
    forged = cluster.legacy_token("prod", "app", key=new_rsa_key())
    tokens = [
        good,
        revoked,
        mismatch,
        forged,
        cluster.legacy_token("dev", "app"),
        "not-a-jwt-but-secret",
    ]
    try:
        ok = await login(http, k8s, "brkt-log", good)
        assert ok.status == 200
        await revoke_token(http, ok)
        for token in tokens[1:]:
            assert (await login(http, k8s, "brkt-log", token)).status in (400, 403)
        assert (await login(http, k8s, "nope", good)).status == 400
    finally:
        logging.getLogger().removeHandler(handler)
        assert (await http.delete("sys/audit/brkt-k8s-file")).status == 204
    audit = audit_file.read_text()
    assert audit.count('"type": "request"') + audit.count('"type":"request"') >= len(tokens)
    logged = "\n".join(lines)
    assert "kubernetes login on auth/kubernetes refused by the TokenReview" in logged
    for secret in [*tokens, reviewer]:
        for text in (audit, logged):
            assert secret not in text
            assert secret.rsplit(".", 1)[-1] not in text  # not even the signature


def _b64(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


class _Capture(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.getMessage()} {record.__dict__}")


@pytest.fixture
def service_account_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "serviceaccount"
    folder.mkdir()
    yield folder


async def test_inside_a_pod_the_local_token_and_ca_are_used(
    pg_target: PgCluster,
    fresh_storage_db: str,
    http_session: aiohttp.ClientSession,
    cluster: FakeCluster,
    service_account_dir: Path,
) -> None:
    """A configuration with only ``kubernetes_host`` (Vault running in the cluster): the
    pod's own token is the reviewer's bearer and its ``ca.crt`` the trusted CA, read at
    login; ``disable_local_ca_jwt`` turns both off."""
    reviewer = reviewer_jwt(cluster)
    (service_account_dir / "token").write_text(reviewer + "\n")
    (service_account_dir / "ca.crt").write_text(cluster.ca_pem)
    settings = own_broker_settings(pg_target.dsn(fresh_storage_db))
    runner = await start_server(settings)
    try:
        runner.app[SERVICES].kubernetes.service_account_dir = service_account_dir
        http = VaultHTTP(http_session, f"http://{settings.listen_address}", TOKEN)
        assert (await http.write("sys/auth/k8s", {"type": "kubernetes"})).status == 204
        await configure(http, "k8s", kubernetes_host=cluster.https_url)
        reply = await http.write(
            "auth/k8s/role/app",
            {"bound_service_account_names": "app", "bound_service_account_namespaces": "prod"},
        )
        assert reply.status == 204
        good = cluster.legacy_token("prod", "app")
        reply = await login(http, "k8s", "app", good)
        assert reply.status == 200, reply.body
        assert cluster.reviews[-1].bearer == reviewer
        assert reply.body["auth"]["metadata"]["service_account_name"] == "app"
        # Outside a pod's defaults the system's roots do not know the cluster's CA.
        await configure(http, "k8s", kubernetes_host=cluster.https_url, disable_local_ca_jwt=True)
        reviews = len(cluster.reviews)
        reply = await login(http, "k8s", "app", good)
        assert (reply.status, reply.errors) == (403, [DENIED])
        assert len(cluster.reviews) == reviews
        # Over plain HTTP with the local defaults off, the client's JWT is the bearer.
        await configure(http, "k8s", kubernetes_host=cluster.http_url, disable_local_ca_jwt=True)
        reply = await login(http, "k8s", "app", good)
        assert (reply.status, reply.errors) == (403, [DENIED])
        assert cluster.reviews[-1].bearer == good
    finally:
        await runner.cleanup()
