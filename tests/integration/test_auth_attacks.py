"""Attacks on the Kubernetes and JWT/OIDC auth methods and the token answers agents use.

Three attackers, each against a real broker (the session's) and the real parts the two
method test files run (the TLS TokenReview stand-in, a JWKS endpoint on 127.0.0.1):

- a hostile client with no token: malformed, forged and oversized JWTs must be Vault's
  4xx ``{"errors": [...]}``, never a 500, and create no token;
- a hostile role writer holding a least-privilege token: a policy that lets it write a
  mount's roles but denies it one role must deny every spelling of that role's path that
  the handler would act on (case, Unicode case folding, whitespace);
- someone who can write to the storage database only: a token's ``period`` flipped from
  0 (which would make it renewable past every maximum), a role body moved to another
  name, a plain-text body planted, are all refused.

Each test was written against the code as it stood; those whose docstring starts with
FINDING failed on it and pass since the fix it names.
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import jwt
import pytest
import trustme
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from yarl import URL

from broker.server.auth import jwt_claims, kubernetes
from broker.server.storage.embedded import free_port
from tests.conftest import RunningBroker, _LogCapture
from tests.integration.test_auth_jwt import JwksServer, public_jwk, rsa_key
from tests.integration.test_auth_kubernetes import REVIEWER, configure, reviewer_jwt
from tests.k8s_tokenreview import FakeCluster
from tests.support import ISSUED_PASSWORDS, Reply, VaultHTTP, eventually

APP_POLICY = "brkt-atk-app"
APP_RULES = 'path "database/creds/brkt-pg-ro" { capabilities = ["read"] }\n'
ISSUER = "https://issuer.attack.test"
AUDIENCE = "https://broker.attack.test"
DENIED = "permission denied"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: Any, payload: Any, signature: bytes = b"sig") -> str:
    """A JWT-shaped string with exactly this header and payload (JSON text, or raw text
    when given a string), unsigned or signed with garbage."""
    parts = [h if isinstance(h, str) else json.dumps(h) for h in (header, payload)]
    return ".".join(b64(p.encode()) for p in parts) + "." + b64(signature)


def nested(depth: int) -> str:
    """JSON text nesting ``depth`` arrays: deeper than the interpreter's recursion limit."""
    return "[" * depth + "]" * depth


async def accessors(http: VaultHTTP) -> set[str]:
    reply = await http.list("auth/token/accessors")
    assert reply.status == 200, reply.body
    return set(reply.data["keys"])


async def login(http: VaultHTTP, mount: str, body: dict[str, Any]) -> Reply:
    return await http.call("POST", f"auth/{mount}/login", body, token="")


def vault_error(reply: Reply, status: int) -> None:
    """A refusal as Vault words it: the status and a non-empty list of strings."""
    assert reply.status == status, reply.body
    assert set(reply.body) == {"errors"}, reply.body
    assert reply.errors and all(isinstance(e, str) for e in reply.errors), reply.body


async def enable(http: VaultHTTP, type_: str) -> str:
    mount = f"brkt-atk-{type_}-{secrets.token_hex(3)}"
    reply = await http.write(f"sys/auth/{mount}", {"type": type_})
    assert reply.status == 204, reply.body
    return mount


@pytest.fixture(scope="module")
async def app_policy(broker: RunningBroker) -> AsyncIterator[str]:
    reply = await broker.http.write(f"sys/policy/{APP_POLICY}", {"policy": APP_RULES})
    assert reply.status == 204, reply.body
    yield APP_POLICY
    assert (await broker.http.delete(f"sys/policy/{APP_POLICY}")).status == 204


# -- the two methods, configured as an administrator would ----------------------------------


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[FakeCluster]:
    fake = FakeCluster()
    fake.delegators.add(REVIEWER)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def k8s(broker: RunningBroker, cluster: FakeCluster, app_policy: str) -> AsyncIterator[str]:
    http = broker.http
    mount = await enable(http, "kubernetes")
    try:
        await configure(
            http,
            mount,
            kubernetes_host=cluster.https_url,
            kubernetes_ca_cert=cluster.ca_pem,
            token_reviewer_jwt=reviewer_jwt(cluster),
            disable_local_ca_jwt=True,
        )
        yield mount
    finally:
        assert (await http.delete(f"sys/auth/{mount}")).status == 204


@dataclass
class Issuer:
    """A JWT issuer whose JWKS a ``jwt`` mount is configured with."""

    mount: str
    key: rsa.RSAPrivateKey
    kid: str
    server: JwksServer

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": "repo:brkt-org/app:ref:refs/heads/main",
            "aud": AUDIENCE,
            "actor": "octocat",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        }
        return {**claims, **changes}

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        return self.sign_text(json.dumps(claims), **header)

    def sign_text(self, payload: str, **header: Any) -> str:
        """A valid RS256 signature over exactly ``payload`` (PyJWT would refuse to
        encode some of the claims the tests send)."""
        head = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": self.kid, **header}).encode())
        body = b64(payload.encode())
        signature = jwt.get_algorithm_by_name("RS256").sign(f"{head}.{body}".encode(), self.key)
        return f"{head}.{body}.{b64(signature)}"


@pytest.fixture
async def issuer(broker: RunningBroker, app_policy: str) -> AsyncIterator[Issuer]:
    server = JwksServer()
    app = web.Application()
    app.router.add_get("/jwks", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    server.url = f"http://127.0.0.1:{port}/jwks"
    key, jwk = rsa_key("atk-" + secrets.token_hex(4))
    server.keys.append(public_jwk(jwk))
    http = broker.http
    mount = await enable(http, "jwt")
    try:
        reply = await http.write(
            f"auth/{mount}/config", {"jwks_url": server.url, "bound_issuer": ISSUER}
        )
        assert reply.status == 204, reply.body
        yield Issuer(mount, key, jwk["kid"], server)
    finally:
        assert (await http.delete(f"sys/auth/{mount}")).status == 204
        await runner.cleanup()


async def jwt_role(http: VaultHTTP, mount: str, name: str, **body: Any) -> None:
    fields = {
        "role_type": "jwt",
        "user_claim": "actor",
        "bound_audiences": AUDIENCE,
        "token_policies": APP_POLICY,
        **body,
    }
    reply = await http.write(f"auth/{mount}/role/{name}", fields)
    assert reply.status == 204, reply.body


async def k8s_role(http: VaultHTTP, mount: str, name: str, **body: Any) -> None:
    fields = {
        "bound_service_account_names": "app",
        "bound_service_account_namespaces": "prod",
        "token_policies": APP_POLICY,
        **body,
    }
    reply = await http.write(f"auth/{mount}/role/{name}", fields)
    assert reply.status == 204, reply.body


# -- a least-privilege role writer ---------------------------------------------------------


@dataclass
class Writer:
    http: VaultHTTP
    policy: str


@pytest.fixture
async def writer_for(broker: RunningBroker) -> AsyncIterator[Any]:
    """``await writer_for(mount, protected)``: a token that may write, read and delete
    every role of ``mount`` but ``protected``, and holds the app policy (so the policies
    of the roles it writes are its own); revoked and its policy deleted afterwards."""
    http = broker.http
    made: list[tuple[str, str]] = []

    async def make(mount: str, protected: str) -> Writer:
        policy = f"brkt-atk-writer-{secrets.token_hex(3)}"
        rules = (
            f'path "auth/{mount}/role/*" {{ capabilities = ["create", "update", "read", '
            f'"delete", "list"] }}\n'
            f'path "auth/{mount}/role/{protected}" {{ capabilities = ["deny"] }}\n'
        )
        assert (await http.write(f"sys/policy/{policy}", {"policy": rules})).status == 204
        reply = await http.write(
            "auth/token/create", {"policies": [policy, APP_POLICY], "ttl": "10m"}
        )
        assert reply.status == 200, reply.body
        made.append((policy, reply.body["auth"]["accessor"]))
        return Writer(
            VaultHTTP(http.session, http.address, reply.body["auth"]["client_token"]), policy
        )

    try:
        yield make
    finally:
        for policy, accessor in made:
            await http.write("auth/token/revoke-accessor", {"accessor": accessor})
            await http.delete(f"sys/policy/{policy}")


# == the role writer: the ACL must judge the role the handler acts on ======================


def spellings(name: str, *, whitespace: bool) -> list[str]:
    """Other spellings of the role path's last segment that the handler maps to ``name``:
    Vault lower-cases role names; ``str.lower`` also folds the Kelvin sign to ``k``."""
    out = [name.upper(), name.title(), name.replace("k", "\u212a")]
    if whitespace:  # the JWT method used to strip the name it was given
        out += [f"{name} ", f" {name}"]
    return out


@pytest.mark.parametrize("method", ["jwt", "kubernetes"])
async def test_a_denied_role_is_denied_under_every_spelling(
    broker: RunningBroker,
    method: str,
    issuer: Issuer,
    k8s: str,
    writer_for: Any,
) -> None:
    """FINDING: the role name was lower-cased (and, for JWT roles, stripped) by the
    handler after the ACL had judged the path as written, so ``auth/<m>/role/KADMIN``
    slipped past a deny on ``auth/<m>/role/kadmin`` and rewrote, read or deleted it."""
    http = broker.http
    mount = issuer.mount if method == "jwt" else k8s
    protected = "brkt-kadmin"
    if method == "jwt":
        await jwt_role(http, mount, protected, bound_subject="repo:brkt-org/ops:ref:refs/heads/x")
        # A write drops the subject binding: any token of the issuer would do.
        widen: dict[str, Any] = {"role_type": "jwt", "user_claim": "sub", "bound_subject": ""}
    else:
        await k8s_role(http, mount, protected)
        widen = {"bound_service_account_names": "*", "bound_service_account_namespaces": "*"}
    before = (await http.read(f"auth/{mount}/role/{protected}")).data
    writer = await writer_for(mount, protected)
    # The writer may do what its policy allows: a role of its own, its own policies.
    if method == "jwt":
        mine: dict[str, Any] = {"role_type": "jwt", "user_claim": "sub", "bound_audiences": "x"}
    else:
        mine = {"bound_service_account_names": "a", "bound_service_account_namespaces": "b"}
    reply = await writer.http.write(
        f"auth/{mount}/role/brkt-mine", {**mine, "policies": APP_POLICY}
    )
    assert reply.status == 204, reply.body
    for spelled in [protected, *spellings(protected, whitespace=method == "jwt")]:
        path = f"auth/{mount}/role/{spelled}"
        replies = [
            await writer.http.write(path, widen),
            await writer.http.read(path),
            await writer.http.delete(path),
        ]
        if spelled.strip() == spelled:  # the protected role itself, as the ACL now sees
            assert [r.status for r in replies] == [403] * 3, (spelled, replies)
            assert all(r.errors == [DENIED] for r in replies), (spelled, replies)
        else:  # another name, which no role can have: nothing to act on
            assert [r.status for r in replies] == [400, 404, 204], (spelled, replies)
        assert (await http.read(f"auth/{mount}/role/{protected}")).data == before, spelled
    # sys/capabilities answers as enforcement judges: every spelling of the role as the
    # role itself (nothing but the LIST form, which names no role), the writer's own
    # role with everything, and the mount path keeps its case.
    spelled_paths = [f"auth/{mount}/role/{n}" for n in spellings(protected, whitespace=False)]
    reply = await writer.http.write(
        "sys/capabilities-self", {"paths": [f"auth/{mount}/role/{protected}", *spelled_paths]}
    )
    assert reply.body[f"auth/{mount}/role/{protected}"] == ["list"]
    assert {p: reply.body[p] for p in spelled_paths} == {p: ["list"] for p in spelled_paths}
    reply = await writer.http.write(
        "sys/capabilities-self",
        {"paths": [f"auth/{mount}/role/BRKT-MINE", f"auth/{mount.upper()}/role/brkt-mine"]},
    )
    assert reply.body[f"auth/{mount}/role/BRKT-MINE"] == [
        "create",
        "delete",
        "list",
        "read",
        "update",
    ]
    assert reply.body[f"auth/{mount.upper()}/role/brkt-mine"] == ["deny"]
    # Spellings sent exactly as written (no client-side normalising): percent-encoded
    # letters and slashes, doubled and trailing slashes, dot segments.
    for raw, status in (
        ("%62rkt-kadmin", 403),
        ("%42RKT-KADMIN", 403),
        ("brkt-kadmin%2F", 403),
        ("BRKT-KADMIN/", 403),
        ("/brkt-kadmin//", 403),
        ("x/../brkt-kadmin", 400),
        ("x/%2E%2E/brkt-kadmin", 400),
        ("./brkt-kadmin", 400),
    ):
        for method_name in ("PUT", "GET", "DELETE"):
            url = URL(f"{http.address}/v1/auth/{mount}/role/{raw}", encoded=True)
            async with http.session.request(
                method_name, url, json=widen, headers={"X-Vault-Token": writer.http.token}
            ) as resp:
                assert resp.status == status, (raw, method_name, await resp.text())
                assert list(await resp.json()) == ["errors"]
    assert (await http.read(f"auth/{mount}/role/{protected}")).data == before
    assert (await http.read(f"auth/{mount}/role/{protected}")).data == before


# == the hostile client: malformed JWTs are Vault's 4xx, never a 500 ========================

#: Deeper than the interpreter's recursion limit: ``json.loads`` raises RecursionError.
DEEP = 100_000


def jwt_forgeries(claims: dict[str, Any]) -> dict[str, str]:
    """Tokens anyone can send, none validly signed: each must be a 400 or 403."""
    rs = {"alg": "RS256", "typ": "JWT"}
    return {
        "kid-not-a-string": forged({**rs, "kid": 123}, claims),
        "crit-not-a-list": forged({**rs, "crit": "exp"}, claims),
        "crit-unknown": forged({**rs, "crit": ["brkt-ext"], "brkt-ext": 1}, claims),
        "crit-b64": forged({**rs, "crit": ["b64"], "b64": False}, claims),
        "header-deep": forged('{"alg":"RS256","x":' + nested(DEEP) + "}", claims),
        "payload-deep": forged(rs, nested(DEEP)),
        "header-a-list": forged("[1]", claims),
        "header-not-json": forged("{alg", claims),
        "alg-a-list": forged({"alg": ["RS256"]}, claims),
        "jwk-header": forged({**rs, "jwk": {"kty": "oct", "k": "c2VjcmV0"}}, claims),
        "jku-header": forged({**rs, "jku": "http://127.0.0.1:1/jwks"}, claims),
        "two-parts": "a.b",
        "four-parts": "a.b.c.d",
        "not-base64": "!!.??.**",
        "non-ascii": "\u00e9.\u00e9.\u00e9",
        "empty-signature": forged(rs, claims).rsplit(".", 1)[0] + ".",
    }


async def test_forged_jwts_are_refused_by_the_jwt_method_without_a_500(
    broker: RunningBroker, issuer: Issuer
) -> None:
    """FINDING: a header ``kid`` that is not a string, or a ``crit`` header PyJWT refuses,
    raised PyJWT's InvalidTokenError, which the JWT method did not catch: any client
    without a token got a 500 (and a traceback in the log) for each."""
    http, mount = broker.http, issuer.mount
    await jwt_role(http, mount, "brkt-forge")
    before = await accessors(http)
    answers = {
        name: await login(http, mount, {"role": "brkt-forge", "jwt": token})
        for name, token in jwt_forgeries(issuer.claims()).items()
    }
    assert {n: r.status for n, r in answers.items() if r.status != 400} == {}
    for reply in answers.values():
        vault_error(reply, 400)
        assert reply.errors[0].startswith("error validating token: "), reply.errors
    for body in (
        {"role": "brkt-forge", "jwt": "x" * (64 * 1024 + 1)},
        {"role": "brkt-forge", "jwt": ["a.b.c"]},
        {"role": {"name": "brkt-forge"}, "jwt": "a.b.c"},
        {"role": "brkt-forge", "jwt": {"alg": "none"}},
    ):
        vault_error(await login(http, mount, body), 400)
    assert await accessors(http) == before


async def test_signed_tokens_with_absurd_claims_are_refused_without_a_500(
    broker: RunningBroker, issuer: Issuer
) -> None:
    """FINDING: a token the issuer did sign (a compromised or merely careless provider,
    or a config writer's own key) with a time claim too large for a float made
    ``math.isfinite`` raise OverflowError: a 500 where Vault refuses the token."""
    http, mount = broker.http, issuer.mount
    await jwt_role(http, mount, "brkt-claims")
    now = int(time.time())
    before = await accessors(http)
    answers: dict[str, Reply] = {}
    for changes in (
        {"exp": 10**400},
        {"iat": 10**400},
        {"nbf": -(10**400)},
        {"exp": float("inf")},
        {"exp": float("nan")},
        {"exp": str(now + 300)},
        {"exp": [now + 300]},
        {"aud": {"a": AUDIENCE}},
        {"aud": [AUDIENCE, 1]},
        {"sub": 1},
        {"iss": [ISSUER]},
        {"actor": {"a": 1}},
        {"actor": 1.5},
        {"actor": True},
        {"actor": ""},
    ):
        token = issuer.sign(issuer.claims(**changes))
        answers[repr(changes)[:40]] = await login(
            http, mount, {"role": "brkt-claims", "jwt": token}
        )
    assert {n: r.status for n, r in answers.items() if r.status != 400} == {}
    for reply in answers.values():
        vault_error(reply, 400)
    assert await accessors(http) == before
    # Payloads that are not a JSON object of claims, validly signed.
    for payload in ("[1]", '"text"', "1", "{", nested(DEEP), '{"a":' + nested(DEEP) + "}"):
        token = issuer.sign_text(payload)
        vault_error(await login(http, mount, {"role": "brkt-claims", "jwt": token}), 400)
    assert await accessors(http) == before


@pytest.mark.parametrize(
    ("field", "pointer"),
    [
        ("bound_claims", "/groups/\u00b2"),  # "²".isdigit(), but int("²") raises
        ("bound_claims", "/groups/01"),
        ("bound_claims", "/groups/-1"),
        ("claim_mappings", "/groups/\u00b2"),
        ("user_claim", "/groups/\u00b2"),
        ("groups_claim", "/groups/\u00b2"),
    ],
)
async def test_json_pointers_a_role_writer_chooses_cannot_make_a_500(
    broker: RunningBroker, issuer: Issuer, field: str, pointer: str
) -> None:
    """FINDING: a JSON pointer segment that ``str.isdigit`` accepts but ``int`` does not
    (a superscript digit) raised ValueError at every login through the role: a role
    writer could turn its role's logins into 500s. RFC 6901 array indexes are ASCII
    digits without leading zeros; anything else names no element."""
    http, mount = broker.http, issuer.mount
    body: dict[str, Any] = {
        "bound_claims": {pointer: "a"} if field == "bound_claims" else {},
        "claim_mappings": {pointer: "g"} if field == "claim_mappings" else {},
        "user_claim": pointer if field == "user_claim" else "actor",
        "user_claim_json_pointer": field == "user_claim",
        "groups_claim": pointer if field == "groups_claim" else "",
    }
    await jwt_role(http, mount, "brkt-pointer", **body)
    before = await accessors(http)
    token = issuer.sign(issuer.claims(groups=["a", "b", "a"]))
    reply = await login(http, mount, {"role": "brkt-pointer", "jwt": token})
    if field == "claim_mappings":  # a mapped claim that is absent is left out, as in Vault
        assert reply.status == 200, reply.body
        assert reply.body["auth"]["metadata"] == {"role": "brkt-pointer"}
        await http.write("auth/token/revoke-accessor", {"accessor": reply.body["auth"]["accessor"]})
    else:
        vault_error(reply, 400)
    assert await accessors(http) == before


def k8s_forgeries(cluster: FakeCluster) -> dict[str, str]:
    """Service-account-shaped tokens anyone can write: without ``pem_keys`` the broker
    reads the claims unverified, and must refuse these before asking the cluster."""
    uid = cluster.service_account("prod", "app")
    claims: dict[str, Any] = {
        "iss": "kubernetes/serviceaccount",
        "kubernetes.io/serviceaccount/namespace": "prod",
        "kubernetes.io/serviceaccount/service-account.name": "app",
        "kubernetes.io/serviceaccount/service-account.uid": uid,
    }
    rs = {"alg": "RS256", "kid": "k"}
    return {
        "header-deep": forged('{"alg":"RS256","x":' + nested(DEEP) + "}", claims),
        "payload-deep": forged(rs, nested(DEEP)),
        "payload-deep-in-object": forged(rs, '{"a":' + nested(DEEP) + "}"),
        "exp-huge": forged(rs, {**claims, "exp": 10**400}),
        "iat-huge": forged(rs, {**claims, "iat": 10**400}),
        "nbf-huge-negative": forged(rs, {**claims, "nbf": -(10**400)}),
        "exp-nan": forged(rs, json.dumps({**claims, "exp": float("nan")})),
        "exp-infinite": forged(rs, json.dumps({**claims, "exp": float("inf")})),
        "exp-text": forged(rs, {**claims, "exp": "tomorrow"}),
        "kid-not-a-string": forged({**rs, "kid": 7}, claims),
        "crit-unknown": forged({**rs, "crit": ["x"], "x": 1}, claims),
        "alg-none": forged({"alg": "none"}, claims, b""),
        "alg-hs256": forged({"alg": "HS256"}, claims),
        "projected-not-an-object": forged(rs, {**claims, "kubernetes.io": ["prod"]}),
        "name-not-a-string": forged(
            rs, {**claims, "kubernetes.io/serviceaccount/service-account.name": ["app"]}
        ),
        "aud-an-object": forged(rs, {**claims, "aud": {"a": 1}}),
        "payload-a-list": forged(rs, [claims]),
    }


async def test_forged_service_account_tokens_are_refused_without_a_500(
    broker: RunningBroker, cluster: FakeCluster, k8s: str
) -> None:
    """FINDING: deeply nested JSON in the header or claims (RecursionError) and time
    claims too large for a float (OverflowError) were 500s for any client without a
    token; a NaN ``exp`` passed the time check (every comparison with NaN is false) and
    the cluster was asked about a token Vault refuses outright (Go's JSON has no NaN)."""
    http = broker.http
    await k8s_role(http, k8s, "brkt-forge")
    before, reviews = await accessors(http), len(cluster.reviews)
    answers = {
        name: await login(http, k8s, {"role": "brkt-forge", "jwt": token})
        for name, token in k8s_forgeries(cluster).items()
    }
    assert {n: r.status for n, r in answers.items() if r.status != 403} == {}
    for reply in answers.values():
        vault_error(reply, 403)
    assert len(cluster.reviews) == reviews  # refused before the cluster was asked
    assert await accessors(http) == before
    # The role's own service account, with a token the cluster signed, still logs in.
    reply = await login(
        http, k8s, {"role": "brkt-forge", "jwt": cluster.legacy_token("prod", "app")}
    )
    assert reply.status == 200, reply.body
    await http.write("auth/token/revoke-accessor", {"accessor": reply.body["auth"]["accessor"]})


# == the role writer: what a role hands out stays within the writer's reach ================


@pytest.mark.parametrize("method", ["jwt", "kubernetes"])
async def test_a_role_writer_cannot_hand_out_more_than_it_holds(
    broker: RunningBroker, method: str, issuer: Issuer, k8s: str, writer_for: Any
) -> None:
    """Policies it does not hold, ``root``, batch tokens, negative or absurd numbers:
    each refused with Vault's error shape, and no role written. FINDING (the uses): a
    ``token_num_uses`` past the token row's integer was stored, and every login through
    the role then failed with a storage DataError."""
    http = broker.http
    mount = issuer.mount if method == "jwt" else k8s
    writer = await writer_for(mount, "brkt-none")
    if method == "jwt":
        base: dict[str, Any] = {"role_type": "jwt", "user_claim": "sub", "bound_audiences": "x"}
    else:
        base = {"bound_service_account_names": "app", "bound_service_account_namespaces": "prod"}
    refusals: list[tuple[dict[str, Any], int]] = [
        ({"token_policies": [APP_POLICY, "brkt-other"]}, 403),
        ({"policies": "brkt-other"}, 403),  # the deprecated name hvac sends
        ({"token_policies": "root"}, 400),
        ({"token_policies": " ROOT "}, 400),
        ({"token_type": "batch"}, 400),
        ({"token_type": "default-batch"}, 400),
        ({"token_type": "brkt"}, 400),
        ({"token_ttl": -1}, 400),
        ({"token_ttl": "-5m"}, 400),
        ({"token_max_ttl": 10**20}, 400),
        ({"token_period": "1e9h"}, 400),
        ({"token_explicit_max_ttl": "999999999999s"}, 400),
        ({"token_num_uses": -1}, 400),
        ({"token_num_uses": 2**31}, 400),  # more than the token row can hold
        ({"num_uses": 10**30}, 400),
        ({"token_num_uses": "many"}, 400),
        ({"token_num_uses": True}, 400),
        ({"token_ttl": "2h", "token_max_ttl": "1h"}, 400),
        ({"token_bound_cidrs": "10.0.0.0/33"}, 400),
        ({"token_bound_cidrs": "not-a-cidr"}, 400),
        ({"token_policies": {"a": 1}}, 400),
    ]
    answers = []
    for changes in refusals:
        fields, status = changes
        body = {**base, **fields}
        if "policies" not in fields:
            body.setdefault("token_policies", APP_POLICY)
        reply = await writer.http.write(f"auth/{mount}/role/brkt-esc", body)
        answers.append((fields, reply.status, status))
        if reply.status == status:
            vault_error(reply, status)
    assert [a for a in answers if a[1] != a[2]] == []
    assert (await http.read(f"auth/{mount}/role/brkt-esc")).status == 404
    # The writer may still make a periodic role (Vault asks no sudo of a role writer:
    # whoever writes roles can mint logins anyway), within its own policies.
    reply = await writer.http.write(
        f"auth/{mount}/role/brkt-esc",
        {**base, "token_policies": APP_POLICY, "token_period": "1h", "token_num_uses": 2**31 - 1},
    )
    assert reply.status == 204, reply.body


# == the storage writer ====================================================================


@pytest.fixture
async def storage(broker: RunningBroker) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(broker.settings.storage_dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def new_token(http: VaultHTTP, **fields: Any) -> tuple[str, str]:
    reply = await http.write("auth/token/create", {"policies": [APP_POLICY], **fields})
    assert reply.status == 200, reply.body
    return reply.body["auth"]["client_token"], reply.body["auth"]["accessor"]


async def test_a_tokens_period_cannot_be_flipped_in_storage(
    broker: RunningBroker, app_policy: str, storage: asyncpg.Connection
) -> None:
    """0 -> n would make a token renewable past every maximum; n -> 0 changes it too.
    The MAC covers ``period`` when not 0, and its absence when 0 (storage/integrity.py)."""
    http = broker.http
    plain, plain_accessor = await new_token(http, ttl="1h")
    periodic, periodic_accessor = await new_token(http, period="1h", explicit_max_ttl="2h")
    try:
        for accessor, period in ((plain_accessor, 86400), (periodic_accessor, 0)):
            updated = await storage.execute(
                "UPDATE broker_tokens SET period = $2 WHERE accessor = $1", accessor, period
            )
            assert updated == "UPDATE 1"
        for token in (plain, periodic):  # neither was used yet: no cached entry
            for path in ("auth/token/lookup-self", "auth/token/renew-self"):
                reply = await http.call("PUT", path, {}, token=token)
                vault_error(reply, 500)
                assert reply.errors == [
                    "storage integrity check failed (broker_tokens); the row was not used"
                ]
    finally:
        await storage.execute(
            "DELETE FROM broker_tokens WHERE accessor = ANY($1::text[])",
            [plain_accessor, periodic_accessor],
        )


async def test_an_approle_roles_token_period_cannot_be_flipped_in_storage(
    broker: RunningBroker, app_policy: str, storage: asyncpg.Connection
) -> None:
    http = broker.http
    mount = await enable(http, "approle")
    try:
        reply = await http.write(f"auth/{mount}/role/brkt-app", {"token_policies": APP_POLICY})
        assert reply.status == 204, reply.body
        updated = await storage.execute(
            "UPDATE broker_approle_roles SET token_period = 86400 WHERE mount = $1", mount
        )
        assert updated == "UPDATE 1"
        reply = await http.read(f"auth/{mount}/role/brkt-app/role-id")
        vault_error(reply, 500)
        assert reply.errors == [
            "storage integrity check failed (broker_approle_roles); the row was not used"
        ]
    finally:
        assert (await http.delete(f"sys/auth/{mount}")).status == 204


async def test_auth_entries_cannot_be_moved_or_planted(
    broker: RunningBroker, issuer: Issuer, k8s: str, storage: asyncpg.Connection
) -> None:
    """A role body copied over another role (its policies onto a role anyone can log in
    to), a config moved between mounts, a body planted in plain text: each refused."""
    http, mount = broker.http, issuer.mount
    await jwt_role(http, mount, "brkt-wide", bound_audiences=AUDIENCE)
    await jwt_role(http, mount, "brkt-narrow", bound_subject="repo:brkt-org/none:x")
    get = "SELECT body FROM broker_auth_entries WHERE mount = $1 AND kind = $2 AND name = $3"
    put = "UPDATE broker_auth_entries SET body = $4 WHERE mount = $1 AND kind = $2 AND name = $3"
    wide = await storage.fetchval(get, mount, "role", "brkt-wide")
    await storage.execute(put, mount, "role", "brkt-narrow", wide)
    k8s_config = await storage.fetchval(get, k8s, "config", "config")
    await storage.execute(put, mount, "config", "config", k8s_config)
    before = await accessors(http)
    token = issuer.sign(issuer.claims())
    integrity = ["storage integrity check failed (broker_auth_entries); the row was not used"]
    for reply in (
        await http.read(f"auth/{mount}/role/brkt-narrow"),
        await http.read(f"auth/{mount}/config"),
        await login(http, mount, {"role": "brkt-wide", "jwt": token}),
    ):
        vault_error(reply, 500)
        assert reply.errors == integrity
    plain = json.dumps({"name": "brkt-wide", "role_type": "jwt", "user_claim": "sub"})
    await storage.execute(put, mount, "role", "brkt-wide", plain)
    reply = await http.read(f"auth/{mount}/role/brkt-wide")
    vault_error(reply, 500)
    assert reply.errors == integrity
    assert await accessors(http) == before


# == the token answers =====================================================================


async def test_token_answers_never_carry_another_tokens_id(
    broker: RunningBroker, app_policy: str
) -> None:
    """renew-accessor and lookup-accessor answer by accessor: the token itself is what
    the accessor exists to keep back. A periodic token's renewal stops at its explicit
    maximum whatever increment is asked for."""
    http = broker.http
    token, accessor = await new_token(http, period="1h", explicit_max_ttl="10m")
    try:
        renewed = await http.write(
            "auth/token/renew-accessor", {"accessor": accessor, "increment": "240h"}
        )
        assert renewed.status == 200, renewed.body
        assert renewed.body["auth"]["client_token"] == ""
        assert token not in json.dumps(renewed.body)
        assert 0 < renewed.body["auth"]["lease_duration"] <= 600
        looked = await http.write("auth/token/lookup-accessor", {"accessor": accessor})
        assert looked.status == 200, looked.body
        assert looked.data["id"] == "" and token not in json.dumps(looked.body)
        assert looked.data["period"] == 3600 and looked.data["explicit_max_ttl"] == 600
        again = await http.call("PUT", "auth/token/renew-self", {"increment": "240h"}, token=token)
        assert again.status == 200 and 0 < again.body["auth"]["lease_duration"] <= 600
    finally:
        await http.write("auth/token/revoke-accessor", {"accessor": accessor})


async def test_internal_ui_mounts_show_only_what_the_token_reaches(
    broker: RunningBroker, issuer: Issuer, app_policy: str
) -> None:
    """Outside the ACL, the handler must decide: a mount the token has no rights under,
    and a mount that does not exist, are the same 403; no token at all is a 403."""
    http = broker.http
    token, accessor = await new_token(http)
    try:
        app = VaultHTTP(http.session, http.address, token)
        ok = await app.read("sys/internal/ui/mounts/database/creds/brkt-pg-ro")
        assert ok.status == 200 and ok.data["type"] == "database", ok.body
        hidden = await app.read(f"sys/internal/ui/mounts/auth/{issuer.mount}/role/x")
        missing = await app.read("sys/internal/ui/mounts/brkt-no-such-mount/x")
        vault_error(hidden, 403)
        vault_error(missing, 403)
        assert [e.replace(f"auth/{issuer.mount}/role/x", "P") for e in hidden.errors] == [
            e.replace("brkt-no-such-mount/x", "P") for e in missing.errors
        ]
        listed = await app.read("sys/internal/ui/mounts")
        assert listed.status == 200, listed.body
        # The default policy reaches sys/ (capabilities-self, leases): Vault shows it too.
        assert set(listed.data["secret"]) == {"database/", "sys/"}
        assert f"{issuer.mount}/" not in listed.data["auth"]
        for path in ("sys/internal/ui/mounts", "sys/internal/ui/mounts/database/x"):
            vault_error(await http.call("GET", path, token=""), 403)
            vault_error(await http.call("GET", path, token="hvs.forged"), 403)
    finally:
        await http.write("auth/token/revoke-accessor", {"accessor": accessor})


# == transport: TLS, redirects, forwarded addresses =======================================


async def test_the_cluster_is_asked_only_over_tls_it_can_verify(
    broker: RunningBroker, cluster: FakeCluster, k8s: str
) -> None:
    """A CA that did not sign the API server's certificate, or none (the system roots),
    and the TokenReview is not sent: the reviewer's token never reaches that server."""
    http = broker.http
    await k8s_role(http, k8s, "brkt-tls")
    good = cluster.legacy_token("prod", "app")
    for ca in (trustme.CA().cert_pem.bytes().decode(), ""):
        await configure(
            http,
            k8s,
            kubernetes_host=cluster.https_url,
            kubernetes_ca_cert=ca,
            token_reviewer_jwt=reviewer_jwt(cluster),
            disable_local_ca_jwt=True,
        )
        before, reviews = await accessors(http), len(cluster.reviews)
        reply = await login(http, k8s, {"role": "brkt-tls", "jwt": good})
        vault_error(reply, 403)
        assert reply.errors == [DENIED]
        assert len(cluster.reviews) == reviews and await accessors(http) == before


async def test_key_sources_are_fetched_only_over_verified_tls_and_from_one_origin(
    broker: RunningBroker, app_policy: str
) -> None:
    """A JWKS URL over TLS with a CA that did not sign the server's certificate, and a
    JWKS URL that redirects to another port, are refused when the config is written.
    FINDING (the last redirect): a ``Location`` that ``urlsplit`` cannot parse raised
    ValueError past the fetch's error handling: a 500 (and, for a login's refetch, a 500
    on every login until the provider stopped)."""
    http = broker.http
    ca, other = trustme.CA(), trustme.CA()
    _, jwk = rsa_key("tls-" + secrets.token_hex(3))
    server = JwksServer(keys=[public_jwk(jwk)])
    app = web.Application()
    app.router.add_get("/jwks", server.handle)
    target = free_port()

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"https://127.0.0.1:{target}/jwks")

    async def unparsable(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://[::1")

    async def deep(request: web.Request) -> web.Response:
        return web.Response(text='{"keys": ' + nested(DEEP) + "}", content_type="application/json")

    app.router.add_get("/away", redirect)
    app.router.add_get("/nowhere", unparsable)
    app.router.add_get("/deep", deep)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    await web.TCPSite(runner, "127.0.0.1", target, ssl_context=context).start()
    mount = await enable(http, "jwt")
    try:
        url = f"https://127.0.0.1:{port}"
        path = f"auth/{mount}/config"
        reply = await http.write(
            path, {"jwks_url": f"{url}/jwks", "jwks_ca_pem": other.cert_pem.bytes().decode()}
        )
        vault_error(reply, 400)
        assert "CERTIFICATE_VERIFY_FAILED" in reply.errors[0]
        reply = await http.write(path, {"jwks_url": f"{url}/jwks"})  # the system roots
        vault_error(reply, 400)
        ca_pem = ca.cert_pem.bytes().decode()
        reply = await http.write(path, {"jwks_url": f"{url}/away", "jwks_ca_pem": ca_pem})
        vault_error(reply, 400)
        assert "redirect to another origin refused" in reply.errors[0]
        reply = await http.write(path, {"jwks_url": f"{url}/nowhere", "jwks_ca_pem": ca_pem})
        vault_error(reply, 400)  # was a 500: ValueError from urlsplit("http://[::1")
        reply = await http.write(path, {"jwks_url": f"{url}/deep", "jwks_ca_pem": ca_pem})
        vault_error(reply, 400)
        assert server.requests == 0
        reply = await http.write(path, {"jwks_url": f"{url}/jwks", "jwks_ca_pem": ca_pem})
        assert reply.status == 204, reply.body
        assert server.requests == 1
    finally:
        assert (await http.delete(f"sys/auth/{mount}")).status == 204
        await runner.cleanup()


async def test_a_forwarded_address_does_not_satisfy_token_bound_cidrs(
    broker: RunningBroker, issuer: Issuer
) -> None:
    """The session's broker trusts no proxy: an X-Forwarded-For naming an address inside
    the role's CIDRs is refused, and creates nothing."""
    http, mount = broker.http, issuer.mount
    await jwt_role(http, mount, "brkt-cidr", token_bound_cidrs="10.0.0.0/8")
    before = await accessors(http)
    for forwarded in ("10.1.2.3", "10.1.2.3, 127.0.0.1", "127.0.0.1, 10.1.2.3"):
        reply = await http.call(
            "POST",
            f"auth/{mount}/login",
            {"role": "brkt-cidr", "jwt": issuer.sign(issuer.claims())},
            token="",
            headers={"X-Forwarded-For": forwarded},
        )
        assert reply.status in (400, 403), reply.body
        vault_error(reply, reply.status)
    assert await accessors(http) == before


# == mounts: leftovers and nesting =========================================================


async def test_a_disabled_method_leaves_nothing_for_its_successor(
    broker: RunningBroker, issuer: Issuer
) -> None:
    """Disabling drops the config and roles with the method: a method enabled again at
    the same path (another type, even) starts empty, so an old role cannot log in."""
    http = broker.http
    mount = await enable(http, "jwt")
    try:
        await http.write(f"auth/{mount}/config", {"jwks_url": issuer.server.url})
        await jwt_role(http, mount, "brkt-old", bound_audiences=AUDIENCE)
        assert (await http.delete(f"sys/auth/{mount}")).status == 204
        for type_ in ("jwt", "kubernetes"):
            assert (await http.write(f"sys/auth/{mount}", {"type": type_})).status == 204
            assert (await http.read(f"auth/{mount}/role/brkt-old")).status == 404
            assert (await http.read(f"auth/{mount}/config")).status == 404
            reply = await login(
                http, mount, {"role": "brkt-old", "jwt": issuer.sign(issuer.claims())}
            )
            vault_error(reply, 400)
            assert (await http.delete(f"sys/auth/{mount}")).status == 204
    finally:
        await http.delete(f"sys/auth/{mount}")


async def test_auth_methods_cannot_be_nested(broker: RunningBroker) -> None:
    """FINDING: ``sys/auth/<m>/role/x`` could be enabled under an enabled ``<m>`` (Vault
    refuses: "path is already in use"): the inner method's config then lay under
    the outer one's ``auth/<m>/role/*``, so a policy for the outer mount's role writers
    handed them the inner mount's key source too (and its role ``x`` became unreachable)."""
    http = broker.http
    outer = await enable(http, "jwt")
    try:
        for nested_path, type_ in (
            (f"{outer}/role/x", "jwt"),
            (f"{outer}/x", "kubernetes"),
        ):
            reply = await http.write(f"sys/auth/{nested_path}", {"type": type_})
            vault_error(reply, 400)
            assert reply.errors == [f"path is already in use at {outer}/"]
        inner = await enable(http, "jwt")
        reply = await http.write(f"sys/auth/{inner.rsplit('-', 1)[0]}", {"type": "jwt"})
        assert reply.status == 204, reply.body  # a shared prefix that is not a segment
        await http.delete(f"sys/auth/{inner.rsplit('-', 1)[0]}")
        await http.delete(f"sys/auth/{inner}")
        holder = f"{outer}-holder"
        assert (await http.write(f"sys/auth/{holder}/a", {"type": "jwt"})).status == 204
        try:
            reply = await http.write(f"sys/auth/{holder}", {"type": "jwt"})
            vault_error(reply, 400)
            assert reply.errors == [f"path is already in use at {holder}/a/"]
        finally:
            await http.delete(f"sys/auth/{holder}/a")
    finally:
        for path in (f"{outer}/role/x", f"{outer}/x"):
            await http.delete(f"sys/auth/{path}")
        assert (await http.delete(f"sys/auth/{outer}")).status == 204


# == secrets in places no one looks ========================================================


async def test_a_jwt_sent_in_the_query_string_reaches_no_log_line(
    broker: RunningBroker, issuer: Issuer, no_password_in_logs: _LogCapture
) -> None:
    """FINDING: parameters are also read from the query string (on every verb), and the
    access log wrote ``request.raw_path``, query included: a client that put its JWT
    (or ``auth/token/lookup?token=...``) in the URL had it written in plain text to
    every node's log at INFO."""
    http, mount = broker.http, issuer.mount
    await jwt_role(http, mount, "brkt-query")
    token = issuer.sign(issuer.claims())
    start = len(no_password_in_logs.lines)
    async with http.session.post(
        f"{http.address}/v1/auth/{mount}/login",
        params={"role": "brkt-query", "jwt": token},
    ) as resp:
        answer = await resp.json()
        assert resp.status == 200, answer
    client_token = answer["auth"]["client_token"]
    async with http.session.put(
        f"{http.address}/v1/auth/token/lookup",
        params={"token": client_token},
        headers={"X-Vault-Token": http.token},
    ) as resp:
        assert resp.status == 200, await resp.text()
    await http.write("auth/token/revoke-accessor", {"accessor": answer["auth"]["accessor"]})
    logged = "\n".join(no_password_in_logs.lines[start:])
    assert f"/v1/auth/{mount}/login" in logged  # the requests were logged...
    signature = token.rsplit(".", 1)[1]
    for secret in (token, signature, client_token):
        assert secret not in logged  # ...without what they carried


async def test_a_hostile_api_server_cannot_make_a_login_500_or_pass(
    broker: RunningBroker, cluster: FakeCluster, k8s: str
) -> None:
    """FINDING (its first answer): ``kubernetes_host`` is configuration, and the server
    behind it answers what it likes. A TokenReview answer nested deeper than the
    interpreter's stack made ``json.loads`` raise RecursionError: a 500 on every login.
    The other answers must refuse the login (without following a redirect with the
    reviewer's token)."""
    http = broker.http
    await k8s_role(http, k8s, "brkt-hostile")
    good = cluster.legacy_token("prod", "app")
    uid = cluster.accounts[("prod", "app")]
    user = {"username": "system:serviceaccount:prod:app", "uid": uid}
    answers: list[tuple[int, str]] = [
        (201, nested(DEEP)),
        (201, '{"status": {"authenticated": true, "user": ' + nested(DEEP) + "}}"),
        (201, json.dumps({"status": {"authenticated": "true", "user": user}})),
        (201, json.dumps({"status": {"authenticated": 1, "user": user}})),
        (201, json.dumps({"status": {"authenticated": True, "user": {**user, "uid": "x"}}})),
        (
            201,
            json.dumps(
                {"status": {"authenticated": True, "user": {**user, "username": "prod:app"}}}
            ),
        ),
        (
            201,
            json.dumps(
                {
                    "status": {
                        "authenticated": True,
                        "user": {**user, "username": "system:serviceaccount:prod:app:x"},
                    }
                }
            ),
        ),
        (201, json.dumps({"status": "Success", "user": user})),
        (201, json.dumps([user])),
        (201, "not json"),
        (201, "x" * (2 << 20)),
        (307, ""),
        (500, json.dumps({"kind": "Status", "message": "boom"})),
    ]
    served: list[str] = []

    async def review(request: web.Request) -> web.Response:
        served.append(request.headers.get("Authorization", ""))
        status, text = answers[len(served) - 1]
        headers = {"Location": f"{cluster.http_url}{request.path}"} if status == 307 else {}
        return web.Response(
            status=status, text=text, content_type="application/json", headers=headers
        )

    app = web.Application()
    app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", review)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await configure(
            http,
            k8s,
            kubernetes_host=f"http://127.0.0.1:{port}",
            token_reviewer_jwt=reviewer_jwt(cluster),
            disable_local_ca_jwt=True,
        )
        before, reviews = await accessors(http), len(cluster.reviews)
        statuses = [
            (await login(http, k8s, {"role": "brkt-hostile", "jwt": good})).status for _ in answers
        ]
        assert statuses == [403] * len(answers)
        assert len(served) == len(answers)
        assert len(cluster.reviews) == reviews  # the redirect was not followed
        assert await accessors(http) == before
    finally:
        await runner.cleanup()


# == every bad write is a 4xx that changes nothing =========================================


JWT_CONFIGS: list[dict[str, Any]] = [
    {"jwks_url": "http://[::1"},
    {"jwks_url": "http://[::1]:x/jwks"},
    {"oidc_discovery_url": "https://[v1.bad]/"},
    {"jwks_url": "file:///etc/passwd"},
    {"jwks_url": 123},
    {"jwt_validation_pubkeys": "garbage"},
    {"jwt_validation_pubkeys": [1]},
    {"jwt_validation_pubkeys": ["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"]},
    {"jwks_url": "http://127.0.0.1:1/jwks", "jwt_supported_algs": ["none"]},
    {"jwks_url": "http://127.0.0.1:1/jwks", "jwt_supported_algs": ["HS256"]},
    {"jwks_url": "http://127.0.0.1:1/jwks", "bound_issuer": {"a": 1}},
    {"jwks_url": "http://127.0.0.1:1/jwks", "jwks_ca_pem": "not a pem"},
    {"oidc_discovery_url": "http://127.0.0.1:1", "oidc_client_id": "a"},
    {"jwks_url": "http://127.0.0.1:1/jwks", "provider_config": {"provider": "azure"}},
    {"jwks_url": "http://127.0.0.1:1/jwks", "namespace_in_state": "maybe"},
]
K8S_CONFIGS: list[dict[str, Any]] = [
    {"kubernetes_host": "http://[::1"},
    {"kubernetes_host": "https://[::1]:port"},
    {"kubernetes_host": 123},
    {"kubernetes_host": "ftp://127.0.0.1"},
    {"kubernetes_host": "https://127.0.0.1", "pem_keys": [1]},
    {"kubernetes_host": "https://127.0.0.1", "pem_keys": "not a key"},
    {
        "kubernetes_host": "https://127.0.0.1",
        "kubernetes_ca_cert": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
    },
    {"kubernetes_host": "https://127.0.0.1", "disable_iss_validation": "perhaps"},
    {"kubernetes_host": "https://127.0.0.1", "token_reviewer_jwt": ["a"]},
]
JWT_ROLES: list[dict[str, Any]] = [
    {"bound_claims": "not json"},
    {"bound_claims": {"a": []}},
    {"bound_claims": {"a": {"b": 1}}},
    {"bound_claims": {"a": [None]}},
    {"bound_claims": ["a"]},
    {"bound_claims_type": "glob", "bound_claims": {"a": True}},
    {"claim_mappings": "a"},
    {"claim_mappings": ["a=b", "c"]},
    {"claim_mappings": {"a": 1}},
    {"claim_mappings": {"a": "role"}},
    {"claim_mappings": {"a": "x", "b": "x"}},
    {"clock_skew_leeway": "-abc"},
    {"clock_skew_leeway": "1e400"},
    {"expiration_leeway": [1]},
    {"not_before_leeway": True},
    {"max_age": -1},
    {"poll_interval": "soon"},
    {"bound_audiences": [1]},
    {"user_claim": ["sub"]},
    {"role_type": ["jwt"]},
    {"token_ttl": "1y"},
    {"token_policies": [["a"]]},
]
K8S_ROLES: list[dict[str, Any]] = [
    {"bound_service_account_names": [1]},
    {"bound_service_account_names": {"a": 1}},
    {"bound_service_account_namespaces": [None]},
    {"alias_name_source": ["serviceaccount_uid"]},
    {"audience": ["a"]},
    {"token_type": 1},
    {"token_no_default_policy": "sometimes"},
    {"bound_service_account_namespace_selector": {"matchLabels": {}}},
]


async def test_bad_config_and_role_writes_are_4xx_and_change_nothing(
    broker: RunningBroker, issuer: Issuer, k8s: str, app_policy: str
) -> None:
    """FINDING (the URLs): ``http://[::1`` as ``jwks_url`` or ``kubernetes_host`` made
    ``urlsplit`` raise ValueError, a 500; ``https://[::1]:port`` was stored as a host."""
    http = broker.http
    mount = await enable(http, "jwt")
    try:
        answers: list[tuple[str, dict[str, Any], Reply]] = []
        for body in JWT_CONFIGS:
            answers.append(("jwt config", body, await http.write(f"auth/{mount}/config", body)))
        assert (await http.read(f"auth/{mount}/config")).status == 404
        k8s_before = (await http.read(f"auth/{k8s}/config")).data
        for body in K8S_CONFIGS:
            answers.append(("k8s config", body, await http.write(f"auth/{k8s}/config", body)))
        jwt_base = {"role_type": "jwt", "user_claim": "sub", "bound_audiences": "x"}
        for body in JWT_ROLES:
            reply = await http.write(f"auth/{issuer.mount}/role/brkt-bad", {**jwt_base, **body})
            answers.append(("jwt role", body, reply))
        k8s_base = {"bound_service_account_names": "a", "bound_service_account_namespaces": "b"}
        for body in K8S_ROLES:
            reply = await http.write(f"auth/{k8s}/role/brkt-bad", {**k8s_base, **body})
            answers.append(("k8s role", body, reply))
        odd = [f"{what} {body} {r.status}" for what, body, r in answers if r.status != 400]
        assert not odd, "\n".join(odd)
        for _, _, reply in answers:
            vault_error(reply, 400)
        assert (await http.read(f"auth/{k8s}/config")).data == k8s_before
        assert (await http.read(f"auth/{issuer.mount}/role/brkt-bad")).status == 404
        assert (await http.read(f"auth/{k8s}/role/brkt-bad")).status == 404
    finally:
        assert (await http.delete(f"sys/auth/{mount}")).status == 204


async def test_a_login_meant_for_another_method_type_gets_nowhere(
    broker: RunningBroker, issuer: Issuer, k8s: str, cluster: FakeCluster
) -> None:
    """Each mount serves its own type's login: an AppRole body, a service-account token
    on a JWT mount, a JWT on a Kubernetes mount are refused and create nothing."""
    http = broker.http
    await jwt_role(http, issuer.mount, "brkt-cross")
    await k8s_role(http, k8s, "brkt-cross")
    before = await accessors(http)
    for mount, body, status in (
        (issuer.mount, {"role_id": "x", "secret_id": "y"}, 400),
        (issuer.mount, {"role": "brkt-cross", "jwt": cluster.legacy_token("prod", "app")}, 400),
        (k8s, {"role_id": "x", "secret_id": "y"}, 400),
        (k8s, {"role": "brkt-cross", "jwt": issuer.sign(issuer.claims())}, 403),
    ):
        vault_error(await login(http, mount, body), status)
    assert await accessors(http) == before


def test_globs_match_as_vaults_do() -> None:
    """bound_claims globs (go-glob) and service-account bounds (GlobbedStringsMatch):
    case-sensitive, no Unicode folding, '*' only where Vault puts it."""
    for pattern, subject, matched in (
        ("repo:brkt-org/*", "repo:brkt-org/app:ref:refs/heads/main", True),
        ("repo:brkt-org/*", "repo:BRKT-ORG/app", False),
        ("repo:brkt-org/*", "repo:brkt-org", False),
        ("repo:brkt-org/app:*", "repo:brkt-org/app-evil:x", False),
        ("*:ref:refs/heads/main", "repo:x:ref:refs/heads/main-evil", False),
        ("a*a", "a", False),
        ("*", "", True),
        ("", "x", False),
        ("repo:*/app", "repo:\u212a/app", True),  # any run, any characters
        ("repo:k*", "repo:\u212a", False),  # no case folding
    ):
        assert jwt_claims.glob_match(pattern, subject) is matched, (pattern, subject)
    for pattern, value, matched in (
        ("app-*", "app-", True),
        ("app-*", "App-x", False),
        ("*-prod", "x-prod", True),
        ("a*b", "ab", False),  # a '*' in the middle is a literal
        ("a*b", "a*b", True),
        ("", "app", False),
        ("*", "app", False),  # '*' alone is decided by the caller, never by a pattern
    ):
        assert kubernetes.glob_match(pattern, value) is matched, (pattern, value)


async def test_disabling_a_method_logs_out_everyone_it_logged_in(
    broker: RunningBroker, issuer: Issuer, k8s: str, cluster: FakeCluster, app_policy: str
) -> None:
    """FINDING: Vault revokes every token an auth method issued when the method is
    disabled (its users are logged out, their leases revoked); the broker kept them
    alive, so disabling a compromised method (a leaked key, a hostile TokenReview host)
    left every login it had granted working for its whole TTL, a periodic one for good."""
    http = broker.http
    await jwt_role(http, issuer.mount, "brkt-bye", token_period="1h")
    await k8s_role(http, k8s, "brkt-bye")
    approle = await enable(http, "approle")
    try:
        reply = await http.write(f"auth/{approle}/role/brkt-bye", {"token_policies": APP_POLICY})
        assert reply.status == 204, reply.body
        role_id = (await http.read(f"auth/{approle}/role/brkt-bye/role-id")).data["role_id"]
        secret = await http.write(f"auth/{approle}/role/brkt-bye/secret-id", {})
        logins = {
            issuer.mount: {"role": "brkt-bye", "jwt": issuer.sign(issuer.claims())},
            k8s: {"role": "brkt-bye", "jwt": cluster.legacy_token("prod", "app")},
            approle: {"role_id": role_id, "secret_id": secret.data["secret_id"]},
        }
        tokens: dict[str, str] = {}
        for mount, body in logins.items():
            reply = await login(http, mount, body)
            assert reply.status == 200, reply.body
            tokens[mount] = reply.body["auth"]["client_token"]
        # The leases a login token holds go with it.
        creds = await http.call("GET", "database/creds/brkt-pg-ro", token=tokens[issuer.mount])
        assert creds.status == 200, creds.body
        for mount in logins:
            assert (await http.delete(f"sys/auth/{mount}")).status == 204
        for name, token in tokens.items():
            reply = await http.call("GET", "auth/token/lookup-self", token=token)
            assert reply.status == 403, (name, reply.body)
        ISSUED_PASSWORDS.add(creds.body["data"]["password"])

        async def lease_gone() -> bool:
            reply = await http.write("sys/leases/lookup", {"lease_id": creds.body["lease_id"]})
            return reply.status == 400

        await eventually(lease_gone, within=5)
    finally:
        await http.delete(f"sys/auth/{approle}")


async def test_a_deleted_role_ends_the_renewals_of_its_logins(
    broker: RunningBroker, issuer: Issuer, k8s: str, cluster: FakeCluster, app_policy: str
) -> None:
    """FINDING: Vault renews a login's token only while the role it logged in through
    exists (the methods' ``pathLoginRenew``): deleting a role is how a periodic token,
    which has no maximum, is ended. The broker renewed it for good."""
    http = broker.http
    await jwt_role(http, issuer.mount, "brkt-gone", token_period="1h")
    await k8s_role(http, k8s, "BRKT-Gone", token_period="1h")
    approle = await enable(http, "approle")
    try:
        reply = await http.write(
            f"auth/{approle}/role/brkt-gone", {"token_policies": APP_POLICY, "token_period": "1h"}
        )
        assert reply.status == 204, reply.body
        role_id = (await http.read(f"auth/{approle}/role/brkt-gone/role-id")).data["role_id"]
        secret = await http.write(f"auth/{approle}/role/brkt-gone/secret-id", {})
        logins = {
            issuer.mount: {"role": "brkt-gone", "jwt": issuer.sign(issuer.claims())},
            k8s: {"role": "Brkt-GONE", "jwt": cluster.legacy_token("prod", "app")},
            approle: {"role_id": role_id, "secret_id": secret.data["secret_id"]},
        }
        answers = {mount: await login(http, mount, body) for mount, body in logins.items()}
        assert {m: r.status for m, r in answers.items()} == {m: 200 for m in logins}
        for mount, answer in answers.items():
            token, accessor = answer.body["auth"]["client_token"], answer.body["auth"]["accessor"]
            renewed = await http.call("PUT", "auth/token/renew-self", {}, token=token)
            assert renewed.status == 200, renewed.body  # while the role exists
            assert (await http.delete(f"auth/{mount}/role/brkt-gone")).status == 204
            before = (await http.write("auth/token/lookup-accessor", {"accessor": accessor})).data
            for path, body, as_token in (
                ("auth/token/renew-self", {}, token),
                ("auth/token/renew", {"token": token}, http.token),
                ("auth/token/renew-accessor", {"accessor": accessor}, http.token),
            ):
                reply = await http.call("PUT", path, body, token=as_token)
                vault_error(reply, 400)
                assert "does not exist" in reply.errors[0], reply.errors
            after = (await http.write("auth/token/lookup-accessor", {"accessor": accessor})).data
            assert after["expire_time"] == before["expire_time"]
            await http.write("auth/token/revoke-accessor", {"accessor": accessor})
    finally:
        assert (await http.delete(f"sys/auth/{approle}")).status == 204
