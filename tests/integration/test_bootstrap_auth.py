"""Declared Kubernetes and JWT/OIDC auth methods, their configs and roles, against real
storage, the TokenReview stand-in (tests/k8s_tokenreview.py) and a JWKS / discovery
endpoint on 127.0.0.1: set up from empty storage at start, then a pod, a CI job and an
OIDC client log in through them and read credentials that log in to PostgreSQL. Drift
through the API (a role, a config, a config's secret) is reported and set back; a secret
changed in its file or variable is written, and never printed; a removed role is pruned;
an inline secret is refused."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from broker.server.assembly import start_server
from broker.server.bootstrap import DeclarativeConfigError
from broker.server.storage.embedded import free_port
from tests.conftest import (
    PG_ADMIN,
    PG_ADMIN_PASSWORD,
    PG_READONLY,
    TOKEN,
    PgCluster,
    own_broker_settings,
)
from tests.integration.test_auth_jwt import public_jwk, rsa_key
from tests.k8s_tokenreview import FakeCluster
from tests.support import ISSUED_PASSWORDS, Reply, VaultHTTP, pg_logs_in, run_cli

REVIEWER = ("kube-system", "broker-reviewer")
OTHER_REVIEWER = ("kube-system", "other-reviewer")
CI_ISSUER = "https://ci.brkt.example"
CI_AUDIENCE = "https://github.com/brkt-org"
POLICY = 'path "db/creds/ro" { capabilities = ["read"] }\n'


@dataclass
class Issuer:
    """An OpenID provider as far as the broker can tell: a discovery document naming this
    URL as its issuer, and a JWKS with the key that signs here."""

    url: str
    key: rsa.RSAPrivateKey
    kid: str

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/.well-known/jwks"

    def sign(self, **claims: Any) -> str:
        now = int(time.time())
        body = {"iat": now, "nbf": now, "exp": now + 300, "jti": str(uuid.uuid4()), **claims}
        return jwt.encode(body, self.key, algorithm="RS256", headers={"kid": self.kid})


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    key, jwk = rsa_key("brkt-decl-" + secrets.token_hex(3))
    url = f"http://127.0.0.1:{free_port()}"

    async def jwks(_: web.Request) -> web.Response:
        return web.json_response({"keys": [public_jwk(jwk)]})

    async def discovery(_: web.Request) -> web.Response:
        return web.json_response({"issuer": url, "jwks_uri": f"{url}/.well-known/jwks"})

    app = web.Application()
    app.router.add_get("/.well-known/jwks", jwks)
    app.router.add_get("/.well-known/openid-configuration", discovery)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(url.rpartition(":")[2])).start()
    try:
        yield Issuer(url, key, jwk["kid"])
    finally:
        await runner.cleanup()


@pytest.fixture
async def cluster() -> AsyncIterator[FakeCluster]:
    fake = FakeCluster()
    fake.delegators.update({REVIEWER, OTHER_REVIEWER})
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@dataclass
class Files:
    """The configuration file and the secrets beside it."""

    path: Path
    reviewer: Path
    environ: dict[str, str]

    def reviewer_jwt(self) -> str:
        return self.reviewer.read_text().strip()


def _config(
    dsn: str,
    pg: PgCluster,
    cluster: FakeCluster,
    issuer: Issuer,
    *,
    k8s_roles: tuple[str, ...] = ("app", "extra"),
    sso_config: bool = True,
    reviewer: bool = True,
) -> str:
    lines = [
        f'storage_dsn = "{dsn}"',
        "",
        "[declarative]",
        'prune = ["policies", "auth_roles"]',
        "",
        "[declarative.policies.app]",
        f"policy = '''\n{POLICY}'''",
        "",
        "[declarative.mounts.db.connections.pg]",
        'plugin_name = "postgresql-database-plugin"',
        f'connection_url = "{pg.url_template}"',
        f'username = "{PG_ADMIN}"',
        'password_env = "BRKT_DECL_PG_PASSWORD"',
        'allowed_roles = ["ro"]',
        "",
        "[declarative.mounts.db.roles.ro]",
        'db_name = "pg"',
        f"creation_statements = '''{PG_READONLY}'''",
        'default_ttl = "10m"',
        "",
        "# The broker outside the cluster: the API server's CA and a reviewer token given.",
        "[declarative.auth.kubernetes]",
        'type = "kubernetes"',
        "",
        "[declarative.auth.kubernetes.config]",
        f'kubernetes_host = "{cluster.https_url}"',
        'kubernetes_ca_cert_file = "k8s/ca.crt"',
        'token_reviewer_jwt_file = "k8s/reviewer.jwt"' if reviewer else "",
        "disable_local_ca_jwt = true",
    ]
    for name in k8s_roles:
        lines += [
            "",
            f"[declarative.auth.kubernetes.roles.{name}]",
            f'bound_service_account_names = ["{name}"]',
            'bound_service_account_namespaces = ["prod"]',
            'token_policies = ["app"]',
            'token_ttl = "10m"',
        ]
    lines += [
        "",
        "[declarative.auth.ci]",
        'type = "jwt"',
        "",
        "[declarative.auth.ci.config]",
        f'jwks_url = "{issuer.jwks_url}"',
        f'bound_issuer = "{CI_ISSUER}"',
        "",
        "[declarative.auth.ci.roles.deploy]",
        'role_type = "jwt"',
        'user_claim = "actor"',
        f'bound_audiences = ["{CI_AUDIENCE}"]',
        'bound_claims_type = "glob"',
        'bound_claims = { sub = "repo:brkt-org/app:*" }',
        'claim_mappings = { repository = "repository" }',
        'token_policies = ["app"]',
        'token_ttl = "15m"',
        "",
        "[declarative.auth.sso]",
        'type = "oidc"',
    ]
    if sso_config:
        lines += [
            "",
            "[declarative.auth.sso.config]",
            f'oidc_discovery_url = "{issuer.url}"',
            'oidc_client_id = "brkt-broker"',
            'oidc_client_secret_env = "BRKT_DECL_OIDC_SECRET"',
        ]
    lines += [
        "",
        "[declarative.auth.sso.roles.dev]",
        'role_type = "jwt"',
        'user_claim = "sub"',
        'bound_subject = "dev@brkt.example"',
        'bound_audiences = ["brkt-broker"]',
        'token_policies = ["app"]',
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def files(tmp_path: Path, cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch) -> Files:
    (tmp_path / "k8s").mkdir()
    (tmp_path / "k8s" / "ca.crt").write_text(cluster.ca_pem)
    reviewer = tmp_path / "k8s" / "reviewer.jwt"
    reviewer.write_text(cluster.legacy_token(*REVIEWER) + "\n")
    environ = {
        "BRKT_DECL_PG_PASSWORD": PG_ADMIN_PASSWORD,
        "BRKT_DECL_OIDC_SECRET": "oidc-" + secrets.token_hex(12),
    }
    ISSUED_PASSWORDS.update({environ["BRKT_DECL_OIDC_SECRET"], reviewer.read_text().strip()})
    for name, value in environ.items():  # the in-process server reads its own environment
        monkeypatch.setenv(name, value)
    return Files(tmp_path / "broker.toml", reviewer, environ)


async def _apply_cli(files: Files, *flags: str) -> CompletedProcess[str]:
    args = ("apply", "--config", str(files.path), *flags)
    return await asyncio.to_thread(run_cli, *args, env=files.environ)


def _lines(result: CompletedProcess[str], action: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith(action)]


def _line(result: CompletedProcess[str], path: str) -> str:
    (line,) = [line for line in result.stdout.splitlines() if line.split()[2] == path]
    return line


async def _login(http: VaultHTTP, mount: str, role: str, token: str) -> Reply:
    return await http.call("POST", f"auth/{mount}/login", {"role": role, "jwt": token}, token="")


async def _creds_log_in(http: VaultHTTP, pg: PgCluster, login: Reply) -> None:
    """The login got the declared policy, and with it credentials that log in."""
    assert login.status == 200, login.body
    assert login.body["auth"]["policies"] == ["app", "default"]
    reply = await http.call("GET", "db/creds/ro", token=login.body["auth"]["client_token"])
    assert reply.status == 200, reply.body
    ISSUED_PASSWORDS.add(reply.data["password"])
    assert await pg_logs_in(pg.server.port, reply.data["username"], reply.data["password"])


async def _log_in_everywhere(
    http: VaultHTTP, pg: PgCluster, cluster: FakeCluster, issuer: Issuer
) -> None:
    pod = cluster.legacy_token("prod", "app")
    await _creds_log_in(http, pg, await _login(http, "kubernetes", "app", pod))
    job = issuer.sign(
        iss=CI_ISSUER,
        aud=CI_AUDIENCE,
        sub="repo:brkt-org/app:ref:refs/heads/main",
        actor="octocat",
        repository="brkt-org/app",
    )
    login = await _login(http, "ci", "deploy", job)
    await _creds_log_in(http, pg, login)
    assert login.body["auth"]["metadata"] == {"role": "deploy", "repository": "brkt-org/app"}
    person = issuer.sign(iss=issuer.url, aud="brkt-broker", sub="dev@brkt.example")
    await _creds_log_in(http, pg, await _login(http, "sso", "dev", person))


async def test_declared_auth_methods_log_in_drift_secrets_and_pruning(
    pg_target: PgCluster,
    fresh_storage_db: str,
    cluster: FakeCluster,
    issuer: Issuer,
    files: Files,
    http_session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="broker.server.bootstrap")
    dsn = pg_target.dsn(fresh_storage_db)
    files.path.write_text(_config(dsn, pg_target, cluster, issuer))
    settings = own_broker_settings(dsn, declarative_file=str(files.path))
    runner = await start_server(settings)  # applies the file to the empty storage
    http = VaultHTTP(http_session, f"http://{settings.listen_address}", TOKEN)
    try:
        summaries = [
            r.getMessage()
            for r in caplog.records
            if r.getMessage().startswith("declarative configuration from ")
        ]
        assert summaries and summaries[-1].endswith("applied: 14 to create"), summaries

        # The configs as the API reads them: no secret in them.
        k8s = (await http.read("auth/kubernetes/config")).data
        assert k8s["kubernetes_host"] == cluster.https_url
        assert k8s["kubernetes_ca_cert"] == cluster.ca_pem
        assert k8s["token_reviewer_jwt_set"] is True and k8s["disable_local_ca_jwt"] is True
        assert files.reviewer_jwt() not in str(k8s)
        sso = (await http.read("auth/sso/config")).data
        assert sso["oidc_client_id"] == "brkt-broker" and "oidc_client_secret" not in sso
        role = (await http.read("auth/kubernetes/role/app")).data
        assert role["bound_service_account_namespaces"] == ["prod"]
        assert (role["token_policies"], role["token_ttl"]) == (["app"], 600)

        # A pod, a CI job and a person's OIDC client log in through the declared methods;
        # the cluster was asked with the declared reviewer token.
        await _log_in_everywhere(http, pg_target, cluster, issuer)
        assert cluster.reviews[-1].bearer == files.reviewer_jwt()
        again = await _apply_cli(files, "--dry-run", "--detailed-exitcode")
        assert again.returncode == 0, again.stdout + again.stderr
        assert len(_lines(again, "unchanged")) == 14

        # Outside the file: a role's TTL, the JWT config's issuer dropped (a config write
        # replaces the whole config), and the Kubernetes config rewritten whole with
        # another reviewer token.
        reply = await http.write("auth/kubernetes/role/app", {"token_ttl": "1h"})
        assert reply.status == 204, reply.body
        reply = await http.write("auth/ci/config", {"jwks_url": issuer.jwks_url})
        assert reply.status == 204, reply.body
        other = cluster.legacy_token(*OTHER_REVIEWER)
        ISSUED_PASSWORDS.add(other)
        reply = await http.write(
            "auth/kubernetes/config",
            {
                "kubernetes_host": cluster.https_url,
                "kubernetes_ca_cert": cluster.ca_pem,
                "disable_local_ca_jwt": True,
                "token_reviewer_jwt": other,
            },
        )
        assert reply.status == 204, reply.body
        dry = await _apply_cli(files, "--dry-run", "--detailed-exitcode")
        assert dry.returncode == 2, dry.stdout + dry.stderr
        assert len(_lines(dry, "update")) == 3, dry.stdout
        assert "[token_ttl]  drift: token_ttl changed" in _line(dry, "auth/kubernetes/role/app")
        assert "[bound_issuer]  drift: bound_issuer" in _line(dry, "auth/ci/config")
        config_line = _line(dry, "auth/kubernetes/config")
        assert "[token_reviewer_jwt]  drift: token_reviewer_jwt changed" in config_line
        assert "3 drifted" in dry.stderr
        assert other not in dry.stdout + dry.stderr
        assert files.reviewer_jwt() not in dry.stdout + dry.stderr

        fixed = await _apply_cli(files)
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        assert (await http.read("auth/kubernetes/role/app")).data["token_ttl"] == 600
        assert (await http.read("auth/ci/config")).data["bound_issuer"] == CI_ISSUER
        await _log_in_everywhere(http, pg_target, cluster, issuer)
        assert cluster.reviews[-1].bearer == files.reviewer_jwt()  # the file's, set back

        # New secrets in the file and the variable (rotated by their owners) are written,
        # and neither is printed; the running node uses them at once.
        files.reviewer.write_text(other + "\n")
        files.environ["BRKT_DECL_OIDC_SECRET"] = "oidc-" + secrets.token_hex(12)
        ISSUED_PASSWORDS.add(files.environ["BRKT_DECL_OIDC_SECRET"])
        rotated = await _apply_cli(files)
        assert rotated.returncode == 0, rotated.stdout + rotated.stderr
        update = _lines(rotated, "update")
        assert sorted(line.split()[2:] for line in update) == [
            ["auth/kubernetes/config", "[token_reviewer_jwt]"],
            ["auth/sso/config", "[oidc_client_secret]"],
        ], rotated.stdout
        output = rotated.stdout + rotated.stderr
        assert other not in output and files.environ["BRKT_DECL_OIDC_SECRET"] not in output
        await _log_in_everywhere(http, pg_target, cluster, issuer)
        assert cluster.reviews[-1].bearer == other

        # The reviewer token no longer named: the config is written without one (each
        # client's JWT would be the bearer of its own review). Named again, it is written
        # again, and that is the file's change, not drift.
        files.path.write_text(_config(dsn, pg_target, cluster, issuer, reviewer=False))
        dropped = await _apply_cli(files)
        assert dropped.returncode == 0, dropped.stdout + dropped.stderr
        assert _lines(dropped, "update") == [
            "update     auth_config      auth/kubernetes/config  [token_reviewer_jwt_set]"
        ]
        assert (await http.read("auth/kubernetes/config")).data["token_reviewer_jwt_set"] is False
        files.path.write_text(_config(dsn, pg_target, cluster, issuer))
        named = await _apply_cli(files)
        assert named.returncode == 0, named.stdout + named.stderr
        assert _lines(named, "update") == [
            "update     auth_config      auth/kubernetes/config  "
            "[token_reviewer_jwt_set, token_reviewer_jwt]"
        ]
        await _log_in_everywhere(http, pg_target, cluster, issuer)
        assert cluster.reviews[-1].bearer == other

        # A role removed from the file is deleted (auth_roles is pruned); a config removed
        # is released: it goes only with its method.
        files.path.write_text(
            _config(dsn, pg_target, cluster, issuer, k8s_roles=("app",), sso_config=False)
        )
        pruned = await _apply_cli(files)
        assert pruned.returncode == 0, pruned.stdout + pruned.stderr
        assert _lines(pruned, "delete") == [
            "delete     auth_role        auth/kubernetes/role/extra"
        ]
        assert "deleted only with its auth method" in _line(pruned, "auth/sso/config")
        assert (await http.read("auth/kubernetes/role/extra")).status == 404
        assert (await http.read("auth/sso/config")).status == 200
        await _log_in_everywhere(http, pg_target, cluster, issuer)
        settled = await _apply_cli(files, "--dry-run", "--detailed-exitcode")
        assert settled.returncode == 0, settled.stdout + settled.stderr
        assert {line.split()[0] for line in settled.stdout.splitlines()} == {"unchanged"}
    finally:
        await http.write("sys/leases/revoke-prefix/db/")
        await runner.cleanup()


async def test_an_inline_auth_secret_is_refused(
    tmp_path: Path, cluster: FakeCluster, issuer: Issuer
) -> None:
    reviewer = cluster.legacy_token(*REVIEWER)
    path = tmp_path / "broker.toml"
    path.write_text(
        'storage_dsn = "postgresql://127.0.0.1:1/none"\n'
        "[declarative.auth.kubernetes]\n"
        'type = "kubernetes"\n'
        "[declarative.auth.kubernetes.config]\n"
        f'kubernetes_host = "{cluster.https_url}"\n'
        f'token_reviewer_jwt = "{reviewer}"\n'
    )
    settings = own_broker_settings("postgresql://127.0.0.1:1/none", declarative_file=str(path))
    with pytest.raises(DeclarativeConfigError, match="an inline token_reviewer_jwt is refused"):
        await start_server(settings)  # before storage is touched
    result = await asyncio.to_thread(run_cli, "apply", "--config", str(path), "--dry-run")
    assert result.returncode == 1
    assert "token_reviewer_jwt_file" in result.stderr and reviewer not in result.stderr
