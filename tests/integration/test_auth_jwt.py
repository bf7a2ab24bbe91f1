"""JWT/OIDC auth with real parts.

A real OpenID provider (panva/oidc-provider, tests/oidc/, run by Node on 127.0.0.1, over
http and over https with a trustme CA) issues JWT access tokens by the client credentials
grant; the broker discovers it, verifies its tokens, follows its key rotation. Then
GitHub-Actions-shaped tokens signed here, served from a JWKS endpoint on 127.0.0.1, go
through every refusal Vault makes, and a flood of made-up key IDs is shown to cost the
JWKS endpoint a bounded number of requests. hvac logs in, reads creds, and the creds log
in to PostgreSQL; no refusal creates a token; no JWT reaches a log line or audit entry.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import shutil
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import hvac
import hvac.exceptions
import jwt
import pytest
import trustme
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm

from broker.server.storage.embedded import free_port
from tests.conftest import RunningBroker, _LogCapture
from tests.support import ISSUED_PASSWORDS, ROOT, Reply, VaultHTTP, pg_logs_in

OIDC_DIR = ROOT / "tests" / "oidc"
AUDIENCE = "https://broker.test"
GH_ISSUER = "https://token.actions.githubusercontent.com"
GH_AUDIENCE = "https://github.com/brkt-org"
POLICY_NAME = "brkt-jwt-app"
# The README's recommended application policy, for the role this test reads.
POLICY = """
path "database/creds/brkt-pg-ro" { capabilities = ["read"] }
path "sys/leases/renew"          { capabilities = ["update"] }
path "sys/leases/revoke"         { capabilities = ["update"] }
"""


def rsa_key(kid: str) -> tuple[rsa.RSAPrivateKey, dict[str, Any]]:
    """A fresh RSA key and its private JWK (for the provider) under ``kid``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key))
    jwk.pop("key_ops", None)  # oidc-provider picks signing keys by use, not key_ops
    jwk.update(kid=kid, alg="RS256", use="sig")
    return key, jwk


def public_jwk(jwk: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v for k, v in jwk.items() if k in ("kty", "kid", "alg", "use", "n", "e", "crv", "x", "y")
    }


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def token_accessors(http: VaultHTTP) -> set[str]:
    reply = await http.list("auth/token/accessors")
    assert reply.status == 200, reply.body
    return set(reply.data["keys"])


async def login(http: VaultHTTP, mount: str, body: dict[str, Any]) -> Reply:
    return await http.call("POST", f"auth/{mount}/login", body, token="")


async def enable(http: VaultHTTP, type_: str, prefix: str) -> str:
    mount = f"{prefix}-{secrets.token_hex(3)}"
    reply = await http.write(f"sys/auth/{mount}", {"type": type_})
    assert reply.status == 204, reply.body
    return mount


# -- the OpenID provider ------------------------------------------------------------------


@pytest.fixture(scope="module")
async def node_provider() -> None:
    """Node and the provider package (installed from the lock file on a fresh clone)."""
    if shutil.which("node") is None:
        pytest.fail("node is required for the OpenID provider tests (tests/oidc/)")
    if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        proc = await asyncio.create_subprocess_exec(
            "npm",
            "ci",
            "--no-audit",
            "--no-fund",
            cwd=OIDC_DIR,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out.decode()[-3000:]


@dataclass
class OidcProvider:
    """One oidc-provider process; ``restart`` with another key is a key rotation."""

    workdir: Path
    port: int
    tls: trustme.CA | None = None
    client_id: str = "brkt-ci"
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    process: asyncio.subprocess.Process | None = None

    @property
    def issuer(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def client_ssl(self) -> ssl.SSLContext | bool:
        if self.tls is None:
            return True  # plain http: nothing to verify
        context = ssl.create_default_context()
        self.tls.configure_trust(context)
        return context

    async def start(self, jwk: dict[str, Any], claims: dict[str, Any]) -> None:
        config: dict[str, Any] = {
            "issuer": self.issuer,
            "port": self.port,
            "jwks": {"keys": [jwk]},
            "clients": [
                {
                    "client_id": self.client_id,
                    "client_secret": self.client_secret,
                    "claims": claims,
                }
            ],
            "resource": AUDIENCE,
        }
        if self.tls is not None:
            cert = self.tls.issue_cert("127.0.0.1")
            cert_path, key_path = self.workdir / "server.pem", self.workdir / "server.key"
            cert.private_key_pem.write_to_path(str(key_path))
            cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
            config["tls"] = {"cert": str(cert_path), "key": str(key_path)}
        path = self.workdir / f"provider-{jwk['kid']}.json"
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        stderr = (self.workdir / "provider.log").open("ab")
        self.process = await asyncio.create_subprocess_exec(
            "node",
            str(OIDC_DIR / "provider.mjs"),
            str(path),
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
        stderr.close()
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 60)
        assert line.startswith(b"listening"), (self.workdir / "provider.log").read_text()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()

    async def restart(self, jwk: dict[str, Any], claims: dict[str, Any]) -> None:
        await self.stop()
        await self.start(jwk, claims)

    async def token(self, session: aiohttp.ClientSession) -> str:
        """A JWT access token by the client credentials grant (RFC 9068 shape)."""
        async with session.post(
            f"{self.issuer}/token",
            data={
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "scope": "db",
            },
            ssl=self.client_ssl(),
        ) as resp:
            body = await resp.json()
            assert resp.status == 200, body
        token = body["access_token"]
        assert isinstance(token, str) and token.count(".") == 2
        return token


@pytest.fixture
async def provider(node_provider: None, tmp_path: Path) -> AsyncIterator[OidcProvider]:
    started = OidcProvider(tmp_path, free_port())
    try:
        yield started
    finally:
        await started.stop()


@pytest.fixture(scope="module")
async def app_policy(broker: RunningBroker) -> AsyncIterator[str]:
    reply = await broker.http.write(f"sys/policy/{POLICY_NAME}", {"policy": POLICY})
    assert reply.status == 204, reply.body
    yield POLICY_NAME
    assert (await broker.http.delete(f"sys/policy/{POLICY_NAME}")).status == 204


async def creds_log_in(broker: RunningBroker, client_token: str, port: int) -> str:
    """Read creds with ``client_token`` through hvac, log in to PostgreSQL with them,
    revoke the lease; the username the login got."""

    def read() -> dict[str, Any]:
        app = hvac.Client(url=broker.address, token=client_token)
        answer: dict[str, Any] = app.secrets.database.generate_credentials("brkt-pg-ro")
        return answer

    creds = await asyncio.to_thread(read)
    ISSUED_PASSWORDS.add(creds["data"]["password"])
    username = creds["data"]["username"]
    assert await pg_logs_in(port, username, creds["data"]["password"])
    reply = await broker.http.write("sys/leases/revoke", {"lease_id": creds["lease_id"]})
    assert reply.status == 204, reply.body
    return str(username)


async def test_oidc_provider_login_creds_and_key_rotation(
    broker: RunningBroker,
    pg_target: Any,
    app_policy: str,
    provider: OidcProvider,
    http_session: aiohttp.ClientSession,
) -> None:
    _, key_a = rsa_key("key-a")
    await provider.start(key_a, {"repository": "brkt-org/app", "env": {"stage": "prod"}})
    http = broker.http
    mount = await enable(http, "jwt", "brkt-oidc")
    role = "App-Role"  # Vault lowercases role names
    try:

        def configure() -> None:
            admin = hvac.Client(url=broker.address, token=http.token)
            admin.auth.jwt.configure(oidc_discovery_url=provider.issuer, path=mount)
            admin.auth.jwt.create_role(
                name=role,
                role_type="jwt",
                user_claim="client_id",
                allowed_redirect_uris=None,
                bound_audiences=[AUDIENCE],
                bound_claims={"/env/stage": "prod", "repository": "brkt-org/app"},
                claim_mappings={"repository": "repository", "scope": "scope"},
                token_policies=[app_policy],
                token_ttl="10m",
                path=mount,
            )

        await asyncio.to_thread(configure)
        config = (await http.read(f"auth/{mount}/config")).data
        assert config["oidc_discovery_url"] == provider.issuer
        assert (await http.list(f"auth/{mount}/role")).data["keys"] == ["app-role"]

        token = await provider.token(http_session)

        def hvac_login(jwt_token: str) -> dict[str, Any]:
            client = hvac.Client(url=broker.address)
            answer: dict[str, Any] = client.auth.jwt.jwt_login(role, jwt_token, path=mount)
            return answer

        auth = (await asyncio.to_thread(hvac_login, token))["auth"]
        assert auth["policies"] == sorted([app_policy, "default"])
        assert auth["metadata"] == {
            "role": "app-role",
            "repository": "brkt-org/app",
            "scope": "db",
        }
        assert 0 < auth["lease_duration"] <= 600
        looked_up = await http.call("GET", "auth/token/lookup-self", token=auth["client_token"])
        assert looked_up.data["display_name"] == f"{mount}-brkt-ci"
        assert looked_up.data["path"] == f"auth/{mount}/login"
        username = await creds_log_in(broker, auth["client_token"], pg_target.server.port)
        assert mount.replace("-", "_") in username  # the display name names the user

        # Key rotation: the provider restarts with only a new key. Its tokens carry a kid
        # the broker has not seen, which makes it fetch the JWKS again.
        _, key_b = rsa_key("key-b")
        await provider.restart(key_b, {"repository": "brkt-org/app", "env": {"stage": "prod"}})
        rotated = await provider.token(http_session)
        assert jwt.get_unverified_header(rotated)["kid"] == "key-b"
        auth = (await asyncio.to_thread(hvac_login, rotated))["auth"]
        await creds_log_in(broker, auth["client_token"], pg_target.server.port)
        # The old key is gone from the set: its token no longer verifies (and asking the
        # provider again for it so soon is refused by the refetch limit).
        reply = await login(http, mount, {"role": role, "jwt": token})
        assert reply.status == 400, reply.body
        assert "failed to verify id token signature" in reply.errors[0]

        # A provider token that does not satisfy the role's claims is refused.
        await provider.restart(key_b, {"repository": "brkt-org/other", "env": {"stage": "prod"}})
        other = await provider.token(http_session)
        reply = await login(http, mount, {"role": role, "jwt": other})
        assert reply.status == 400
        assert reply.errors == [
            'error validating claims: claim "repository" does not match any associated '
            "bound claim values"
        ]
    finally:
        assert (await http.delete(f"sys/auth/{mount}")).status == 204


async def test_oidc_provider_over_https_with_its_ca(
    broker: RunningBroker,
    app_policy: str,
    node_provider: None,
    tmp_path: Path,
    http_session: aiohttp.ClientSession,
) -> None:
    ca = trustme.CA()
    provider = OidcProvider(tmp_path, free_port(), tls=ca)
    _, key = rsa_key("tls-key")
    http = broker.http
    mount = await enable(http, "oidc", "brkt-oidc-tls")  # type oidc shares the code
    try:
        await provider.start(key, {})
        # Without the CA the provider's certificate is not trusted.
        reply = await http.write(f"auth/{mount}/config", {"oidc_discovery_url": provider.issuer})
        assert reply.status == 400
        assert reply.errors[0].startswith("error checking oidc discovery URL: ")
        assert "CERTIFICATE_VERIFY_FAILED" in reply.errors[0]
        reply = await http.write(
            f"auth/{mount}/config",
            {
                "oidc_discovery_url": provider.issuer,
                "oidc_discovery_ca_pem": ca.cert_pem.bytes().decode(),
                "oidc_client_id": "brkt-browser",
                "oidc_client_secret": "client-secret-" + secrets.token_hex(8),
                "default_role": "CI",
            },
        )
        assert reply.status == 204, reply.body
        read = await http.read(f"auth/{mount}/config")
        assert read.data["oidc_client_id"] == "brkt-browser"
        assert "oidc_client_secret" not in read.data
        assert "client-secret-" not in json.dumps(read.body)
        reply = await http.write(
            f"auth/{mount}/role/ci",
            {
                "role_type": "jwt",
                "user_claim": "sub",
                "bound_audiences": AUDIENCE,
                "bound_subject": provider.client_id,
                "token_policies": app_policy,
            },
        )
        assert reply.status == 204, reply.body
        token = await provider.token(http_session)
        reply = await login(http, mount, {"jwt": token})  # the default role
        assert reply.status == 200, reply.body
        assert reply.body["auth"]["metadata"] == {"role": "ci"}
    finally:
        await provider.stop()
        assert (await http.delete(f"sys/auth/{mount}")).status == 204


async def test_discovery_document_must_name_the_configured_issuer(
    broker: RunningBroker, provider: OidcProvider
) -> None:
    _, key = rsa_key("key-issuer")
    await provider.start(key, {})
    http = broker.http
    mount = await enable(http, "jwt", "brkt-oidc-iss")
    try:
        # The same provider under another spelling of its URL: the document's issuer
        # ("http://127.0.0.1:PORT") is not the configured one.
        reply = await http.write(
            f"auth/{mount}/config", {"oidc_discovery_url": provider.issuer + "/"}
        )
        assert reply.status == 400
        assert "issuer did not match the issuer returned by provider" in reply.errors[0]
        assert (await http.read(f"auth/{mount}/config")).status == 404
        # Nothing listens there at all.
        reply = await http.write(
            f"auth/{mount}/config", {"oidc_discovery_url": f"http://127.0.0.1:{free_port()}"}
        )
        assert reply.status == 400
        assert reply.errors[0].startswith("error checking oidc discovery URL: ")
    finally:
        assert (await http.delete(f"sys/auth/{mount}")).status == 204


# -- GitHub-Actions-shaped tokens through a JWKS URL -----------------------------------------


@dataclass
class JwksServer:
    """A JWKS endpoint on 127.0.0.1 that counts the requests it gets."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.json_response({"keys": self.keys})


@dataclass
class GitHub:
    """GitHub Actions' OIDC issuer, as far as the broker can tell: its key signs here."""

    mount: str
    server: JwksServer
    key: rsa.RSAPrivateKey
    kid: str

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": GH_ISSUER,
            "sub": "repo:brkt-org/app:ref:refs/heads/main",
            "aud": GH_AUDIENCE,
            "repository": "brkt-org/app",
            "repository_owner": "brkt-org",
            "ref": "refs/heads/main",
            "actor": "octocat",
            "event_name": "push",
            "job_workflow_ref": "brkt-org/app/.github/workflows/deploy.yml@refs/heads/main",
            "jti": str(uuid.uuid4()),
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def sign(self, claims: dict[str, Any], key: Any = None, kid: str | None = None) -> str:
        return jwt.encode(
            claims,
            key or self.key,
            algorithm="RS256",
            headers={"kid": kid or self.kid, "typ": "JWT"},
        )

    def token(self, **changes: Any) -> str:
        return self.sign(self.claims(**changes))


@pytest.fixture
async def github(broker: RunningBroker, app_policy: str) -> AsyncIterator[GitHub]:
    server = JwksServer()
    app = web.Application()
    app.router.add_get("/.well-known/jwks", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    server.url = f"http://127.0.0.1:{port}/.well-known/jwks"
    key, jwk = rsa_key("gh-" + secrets.token_hex(4))
    server.keys.append(public_jwk(jwk))
    http = broker.http
    mount = await enable(http, "jwt", "brkt-gh")
    try:
        reply = await http.write(
            f"auth/{mount}/config", {"jwks_url": server.url, "bound_issuer": GH_ISSUER}
        )
        assert reply.status == 204, reply.body
        yield GitHub(mount, server, key, jwk["kid"])
    finally:
        assert (await http.delete(f"sys/auth/{mount}")).status == 204
        await runner.cleanup()


async def write_role(http: VaultHTTP, mount: str, name: str, body: dict[str, Any]) -> Reply:
    return await http.write(
        f"auth/{mount}/role/{name}",
        {"role_type": "jwt", "user_claim": "actor", "token_policies": POLICY_NAME, **body},
    )


async def test_github_actions_token_through_hvac(
    broker: RunningBroker, pg_target: Any, github: GitHub
) -> None:
    mount = github.mount

    def scenario(token: str) -> dict[str, Any]:
        admin = hvac.Client(url=broker.address, token=broker.http.token)
        admin.auth.jwt.create_role(
            name="ci-role",
            role_type="jwt",
            user_claim="actor",
            allowed_redirect_uris=None,
            bound_audiences=[GH_AUDIENCE],
            bound_claims_type="glob",
            bound_claims={"sub": "repo:brkt-org/app:*"},
            claim_mappings={
                "repository": "repository",
                "ref": "ref",
                "job_workflow_ref": "workflow",
            },
            token_policies=[POLICY_NAME],
            token_ttl="15m",
            token_max_ttl="1h",
            path=mount,
        )
        read: dict[str, Any] = admin.auth.jwt.read_role("ci-role", path=mount)["data"]
        answer: dict[str, Any] = hvac.Client(url=broker.address).auth.jwt.jwt_login(
            "ci-role", token, path=mount
        )
        return {"read": read, "login": answer}

    out = await asyncio.to_thread(scenario, github.token(ref="refs/heads/feature-x"))
    read = out["read"]
    assert read["role_type"] == "jwt"
    assert read["bound_claims_type"] == "glob"
    assert read["bound_claims"] == {"sub": "repo:brkt-org/app:*"}
    assert read["token_ttl"] == 900 and read["ttl"] == 900
    assert read["clock_skew_leeway"] == 0  # 0: Vault's default (60 s) applies
    auth = out["login"]["auth"]
    assert auth["metadata"] == {
        "role": "ci-role",
        "repository": "brkt-org/app",
        "ref": "refs/heads/feature-x",
        "workflow": "brkt-org/app/.github/workflows/deploy.yml@refs/heads/main",
    }
    assert auth["lease_duration"] == 900 and auth["renewable"] is True
    await creds_log_in(broker, auth["client_token"], pg_target.server.port)
    # A token from another repository does not match the glob.
    reply = await login(
        broker.http,
        mount,
        {"role": "ci-role", "jwt": github.token(sub="repo:brkt-org/other:ref:refs/heads/main")},
    )
    assert reply.status == 400
    assert reply.errors == [
        'error validating claims: claim "sub" does not match any associated bound claim values'
    ]


def hs256_with_public_key(github: GitHub) -> str:
    """The classic confusion attack: HS256 keyed with the server's public key PEM."""
    pem = github.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": github.kid}).encode())
    payload = b64(json.dumps(github.claims()).encode())
    signature = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def unsigned(github: GitHub) -> str:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(github.claims()).encode())}."


@pytest.fixture
async def audit_file(broker: RunningBroker, tmp_path: Path) -> AsyncIterator[Path]:
    """A file audit device for the test's duration."""
    path = tmp_path / "audit.log"
    reply = await broker.http.write(
        "sys/audit/brkt-jwt-file", {"type": "file", "options": {"file_path": str(path)}}
    )
    assert reply.status == 204, reply.body
    try:
        yield path
    finally:
        assert (await broker.http.delete("sys/audit/brkt-jwt-file")).status == 204


async def test_every_refusal_creates_nothing(
    broker: RunningBroker, github: GitHub, no_password_in_logs: _LogCapture, audit_file: Path
) -> None:
    http, mount = broker.http, github.mount
    now = int(time.time())
    roles = {
        "main": {"bound_audiences": GH_AUDIENCE, "bound_subject": github.claims()["sub"]},
        "no-aud": {"bound_claims": {"repository": "brkt-org/app"}},
        "ref": {
            "bound_audiences": GH_AUDIENCE,
            "bound_claims": {"ref": ["refs/heads/main", "refs/heads/release"]},
        },
        "nested": {"bound_audiences": GH_AUDIENCE, "bound_claims": {"/env/stage": "prod"}},
        "glob": {
            "bound_audiences": GH_AUDIENCE,
            "bound_claims_type": "glob",
            "bound_claims": {"job_workflow_ref": "brkt-org/app/.github/workflows/*@refs/tags/v*"},
        },
        "strict-time": {"bound_audiences": GH_AUDIENCE, "clock_skew_leeway": -1},
        "groups": {"bound_audiences": GH_AUDIENCE, "groups_claim": "groups"},
        "far": {"bound_audiences": GH_AUDIENCE, "token_bound_cidrs": ["10.0.0.0/8"]},
        "near": {"token_bound_cidrs": ["127.0.0.0/8"], "bound_audiences": GH_AUDIENCE},
    }
    for name, body in roles.items():
        reply = await write_role(http, mount, name, body)
        assert reply.status == 204, (name, reply.body)
    reply = await http.write(
        f"auth/{mount}/role/browser",
        {"user_claim": "sub", "allowed_redirect_uris": "http://localhost:8250/oidc/callback"},
    )
    assert reply.status == 204, reply.body  # no role_type: Vault's default, oidc
    assert (await http.read(f"auth/{mount}/role/browser")).data["role_type"] == "oidc"

    other_key, _ = rsa_key("other")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    refusals: list[tuple[str, str, int, str]] = [
        ("main", github.sign(github.claims(), key=other_key), 400, "failed to verify id token"),
        ("main", unsigned(github), 400, "token signed with unexpected algorithm"),
        ("main", hs256_with_public_key(github), 400, "token signed with unexpected algorithm"),
        (
            "main",
            jwt.encode(github.claims(), ec_key, "ES256", {"kid": github.kid}),
            400,
            "failed to verify id token",
        ),
        ("main", "not.a.jwt", 400, "malformed token"),
        (
            "main",
            github.token(exp=now - 3600, iat=now - 3900, nbf=now - 3900),
            400,
            "invalid expiration time (exp) claim: token is expired",
        ),
        ("main", github.token(nbf=now + 3600, iat=now), 400, "token not yet valid"),
        ("main", github.token(iat=now + 3600, nbf=None), 400, "token not yet valid"),
        (
            "main",
            github.token(iat=None, nbf=None, exp=None),
            400,
            "no issued at (iat), not before (nbf), or expiration time (exp) claims in token",
        ),
        ("main", github.token(iss="https://evil.example"), 400, "invalid issuer (iss) claim"),
        (
            "main",
            github.token(aud="https://github.com/other-org"),
            400,
            "invalid audience (aud) claim",
        ),
        (
            "main",
            github.token(sub="repo:brkt-org/app:ref:refs/heads/dev"),
            400,
            "invalid subject (sub) claim",
        ),
        (
            "no-aud",
            github.token(),
            400,
            "audience claim found in JWT but no audiences bound to the role",
        ),
        (
            "ref",
            github.token(ref="refs/heads/dev"),
            400,
            'claim "ref" does not match any associated bound claim values',
        ),
        (
            "nested",
            github.token(env={"stage": "dev"}),
            400,
            'claim "/env/stage" does not match any associated bound claim values',
        ),
        ("nested", github.token(), 400, 'claim "/env/stage" is missing'),
        (
            "glob",
            github.token(),
            400,
            'claim "job_workflow_ref" does not match any associated bound claim values',
        ),
        (
            "strict-time",
            github.token(exp=now - 5, iat=now - 300, nbf=now - 300),
            400,
            "token is expired",
        ),
        ("main", github.token(actor=None), 400, 'claim "actor" not found in token'),
        ("groups", github.token(), 400, 'failed to fetch groups: "groups" claim not found'),
        ("groups", github.token(groups={"a": 1}), 400, "could not be converted to string list"),
        (
            "main",
            github.token(actor=["a", "b"]),
            400,
            'claim "actor" could not be converted to string',
        ),
        ("browser", github.token(), 400, "role with oidc role_type is not allowed"),
        ("far", github.token(), 403, "permission denied"),
        ("missing-role", github.token(), 400, 'role "missing-role" could not be found'),
        ("", github.token(), 400, "missing role"),
        ("main", "", 400, "missing token"),
    ]
    before = await token_accessors(http)
    presented: list[str] = []
    for role, token, status, message in refusals:
        presented.append(token)
        reply = await login(http, mount, {"role": role, "jwt": token})
        assert reply.status == status, (role, message, reply.body)
        assert any(message in e for e in reply.errors), (role, message, reply.errors)
    assert await token_accessors(http) == before  # no refusal made a token

    # What the bounds allow, with the same roles.
    accepted = [
        ("main", github.token(exp=now - 30, iat=now - 330, nbf=now - 330)),  # within 60 s
        ("main", github.token(exp=None)),  # exp derived: iat + 150 s
        ("ref", github.token(ref="refs/heads/release")),
        ("nested", github.token(env={"stage": "prod"})),
        (
            "glob",
            github.token(job_workflow_ref="brkt-org/app/.github/workflows/rel.yml@refs/tags/v1.2"),
        ),
        ("near", github.token()),
        ("groups", github.token(groups=["deployers", "admins"])),
        ("MAIN", github.token(actor=4242)),  # role names are case-insensitive; numeric user
    ]
    for role, token in accepted:
        presented.append(token)
        reply = await login(http, mount, {"role": role, "jwt": token})
        assert reply.status == 200, (role, reply.body)
    reply = await http.call(
        "GET", "auth/token/lookup-self", token=reply.body["auth"]["client_token"]
    )
    assert reply.data["display_name"] == f"{mount}-4242"

    audit = await asyncio.to_thread(audit_file.read_text)
    logs = "\n".join(no_password_in_logs.lines)
    for token in filter(None, presented):
        signature = token.rsplit(".", 1)[-1]  # the part no other entry could contain
        for text in [token, signature] if len(signature) > 16 else [token]:
            assert text not in audit
            assert text not in logs
    logins = [
        entry["request"]["data"]
        for entry in map(json.loads, audit.splitlines())
        if entry.get("request", {}).get("path") == f"auth/{mount}/login" and "response" not in entry
    ]
    assert len(logins) == len(presented)  # every login audited, its JWT hashed
    assert all(d["jwt"].startswith("hmac-sha256:") for d in logins if d.get("jwt"))


async def test_role_and_config_writes_refused(broker: RunningBroker, github: GitHub) -> None:
    http, mount = broker.http, github.mount
    base = {"role_type": "jwt", "user_claim": "sub"}
    cases: list[tuple[dict[str, Any], str]] = [
        (base, "must have at least one bound constraint when creating/updating a role"),
        ({"role_type": "jwt", "bound_audiences": "x"}, "a user claim must be defined on the role"),
        (
            {"user_claim": "sub", "bound_audiences": "x"},
            "'allowed_redirect_uris' must be set if 'role_type' is 'oidc' or unspecified.",
        ),
        ({**base, "role_type": "ldap"}, "invalid 'role_type': ldap"),
        (
            {**base, "bound_audiences": "x", "bound_claims_type": "regex"},
            "invalid 'bound_claims_type': regex",
        ),
        (
            {**base, "bound_claims_type": "glob", "bound_claims": {"n": 1}},
            "glob values must be strings",
        ),
        (
            {**base, "bound_audiences": "x", "claim_mappings": {"a": "role"}},
            'metadata key "role" is reserved and may not be a mapping destination',
        ),
        (
            {**base, "bound_audiences": "x", "claim_mappings": {"a": "m", "b": "m"}},
            'multiple keys are mapped to metadata key "m"',
        ),
        (
            {**base, "bound_audiences": "x", "token_policies": "root"},
            "auth methods cannot create root tokens",
        ),
        (
            {**base, "bound_audiences": "x", "token_type": "batch"},
            "the broker issues service tokens only",
        ),
    ]
    for body, message in cases:
        reply = await http.write(f"auth/{mount}/role/refused", body)
        assert reply.status == 400, (body, reply.body)
        assert any(message in e for e in reply.errors), (message, reply.errors)
    assert (await http.read(f"auth/{mount}/role/refused")).status == 404
    # The client's addresses alone are a binding, as in Vault.
    reply = await http.write(
        f"auth/{mount}/role/by-address", {**base, "bound_cidrs": "127.0.0.1/32"}
    )
    assert reply.status == 204, reply.body
    read = (await http.read(f"auth/{mount}/role/by-address")).data
    assert read["token_bound_cidrs"] == read["bound_cidrs"] == ["127.0.0.1/32"]

    pem = (
        github.key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    config_cases: list[tuple[dict[str, Any], str]] = [
        (
            {"jwks_url": github.server.url, "jwt_validation_pubkeys": [pem]},
            "exactly one of 'jwt_validation_pubkeys', 'jwks_url' or 'oidc_discovery_url'",
        ),
        ({}, "exactly one of"),
        (
            {"jwks_url": github.server.url, "jwt_supported_algs": ["HS256"]},
            'invalid jwt_supported_algs: unsupported signing algorithm "HS256"',
        ),
        (
            {"jwks_url": github.server.url, "oidc_client_id": "x"},
            "both 'oidc_client_id' and 'oidc_client_secret' must be set for OIDC",
        ),
        ({"jwt_validation_pubkeys": ["not a key"]}, "error parsing public key"),
        ({"jwks_url": "ftp://127.0.0.1/jwks"}, "error checking jwks URL"),
        (
            {"jwks_url": github.server.url, "provider_config": {"provider": "azure"}},
            "provider_config is not supported",
        ),
    ]
    for body, message in config_cases:
        reply = await http.write(f"auth/{mount}/config", body)
        assert reply.status == 400, (body, reply.body)
        assert any(message in e for e in reply.errors), (message, reply.errors)
    # The config in force is still the fixture's.
    assert (await http.read(f"auth/{mount}/config")).data["jwks_url"] == github.server.url

    # Static keys: a PEM list instead of a URL; ES256 allowed explicitly.
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_pem = (
        ec_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    static = await enable(http, "jwt", "brkt-jwt-pem")
    try:
        reply = await http.write(
            f"auth/{static}/config",
            {"jwt_validation_pubkeys": [pem, ec_pem], "jwt_supported_algs": "ES256"},
        )
        assert reply.status == 204, reply.body
        reply = await write_role(http, static, "app", {"bound_audiences": GH_AUDIENCE})
        assert reply.status == 204, reply.body
        good = jwt.encode(github.claims(), ec_key, "ES256")
        assert (await login(http, static, {"role": "app", "jwt": good})).status == 200
        rs = github.token()  # RS256 is not among the allowed algorithms here
        reply = await login(http, static, {"role": "app", "jwt": rs})
        assert reply.status == 400
        assert "token signed with unexpected algorithm" in reply.errors[0]
        config = (await http.read(f"auth/{static}/config")).data
        assert config["jwt_supported_algs"] == ["ES256"]
        assert config["jwt_validation_pubkeys"] == [pem, ec_pem]
        listed = await http.list(f"auth/{static}/role")
        assert listed.data["keys"] == ["app"]
        assert (await http.delete(f"auth/{static}/role/app")).status == 204
        assert (await http.read(f"auth/{static}/role/app")).status == 404
    finally:
        assert (await http.delete(f"sys/auth/{static}")).status == 204


async def test_unknown_kid_flood_is_rate_limited(broker: RunningBroker, github: GitHub) -> None:
    """Tokens with made-up key IDs make the broker refetch the JWKS, at most once per
    10 seconds per mount, one fetch shared by concurrent logins: the count of requests
    the endpoint sees stays bounded however many bad tokens arrive."""
    http, mount = broker.http, github.mount
    reply = await write_role(http, mount, "flood", {"bound_audiences": GH_AUDIENCE})
    assert reply.status == 204, reply.body
    assert (await login(http, mount, {"role": "flood", "jwt": github.token()})).status == 200
    before = github.server.requests
    started = time.monotonic()
    forged = [github.sign(github.claims(), kid=f"made-up-{i}") for i in range(40)]
    replies = await asyncio.gather(
        *(login(http, mount, {"role": "flood", "jwt": token}) for token in forged)
    )
    for token in forged:  # then one after the other
        replies.append(await login(http, mount, {"role": "flood", "jwt": token}))
    elapsed = time.monotonic() - started
    assert all(r.status == 400 for r in replies)
    fetched = github.server.requests - before
    assert 1 <= fetched <= 1 + int(elapsed // 10), (fetched, elapsed)
    # The genuine key still works, from the cache.
    assert (await login(http, mount, {"role": "flood", "jwt": github.token()})).status == 200
    assert github.server.requests - before == fetched
