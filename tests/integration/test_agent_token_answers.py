"""The token answers Vault Agent, consul-template, the Secrets Store CSI provider and
External Secrets rely on: the ``auth`` block of a token renewal, Vault's field names and
JSON types in a token lookup, periodic tokens, ``sys/internal/ui/mounts``, 403 for every
dead token on every path, and Vault Agent's renewal loop driven call by call."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import PG_READONLY, PgCluster, RunningBroker
from tests.support import ISSUED_PASSWORDS, Reply, VaultHTTP, eventually, pg_logs_in
from tests.unit.test_deploy_files import _writes

#: Every Vault client (the api package, so Agent, consul-template, the CSI provider)
#: sends it on every request.
AGENT_HEADERS = {"X-Vault-Request": "true"}
DENIED = {"errors": ["permission denied"]}
AUTH_KEYS = {
    "client_token",
    "accessor",
    "policies",
    "token_policies",
    "metadata",
    "lease_duration",
    "renewable",
    "entity_id",
    "token_type",
    "orphan",
    "mfa_requirement",
    "num_uses",
}


def _app_policy(role: str) -> str:
    """The README's recommended application policy (least privilege), for ``role``."""
    return (
        f'path "database/creds/{role}" {{ capabilities = ["read"] }}\n'
        'path "sys/leases/renew"        { capabilities = ["update"] }\n'
        'path "sys/leases/revoke"       { capabilities = ["update"] }\n'
    )


async def _as(http: VaultHTTP, token: str, method: str, path: str, body: Any = None) -> Reply:
    return await http.call(method, path, body, token=token, headers=AGENT_HEADERS)


@dataclass
class App:
    """A database role with short TTLs, the README's app policy for it, and an AppRole
    mount whose role hands that policy out: what an Agent deployment is set up with."""

    role: str
    policy: str
    mount: str
    role_id: str
    secret_id: str


@pytest.fixture
async def app(broker: RunningBroker) -> AsyncIterator[App]:
    http = broker.http
    tag = secrets.token_hex(3)
    role, policy, mount = f"brkt-pg-agent-{tag}", f"brkt-agent-{tag}", f"brkt-agent-{tag}"
    reply = await http.write(
        f"database/roles/{role}",
        {"db_name": "pg", "creation_statements": [PG_READONLY], "default_ttl": 2, "max_ttl": 6},
    )
    assert reply.status == 204, reply.body
    assert (await http.write(f"sys/policy/{policy}", {"policy": _app_policy(role)})).status == 204
    assert (await http.write(f"sys/auth/{mount}", {"type": "approle"})).status == 204
    reply = await http.write(
        f"auth/{mount}/role/agent", {"token_policies": [policy], "token_ttl": "10m"}
    )
    assert reply.status == 204, reply.body
    role_id = (await http.read(f"auth/{mount}/role/agent/role-id")).data["role_id"]
    secret_id = (await http.write(f"auth/{mount}/role/agent/secret-id")).data["secret_id"]
    try:
        yield App(role, policy, mount, role_id, secret_id)
    finally:
        await http.write(f"sys/leases/revoke-prefix/database/creds/{role}")
        await http.delete(f"database/roles/{role}")
        await http.delete(f"sys/auth/{mount}")
        await http.delete(f"sys/policy/{policy}")


async def _login(http: VaultHTTP, app: App) -> dict[str, Any]:
    reply = await _as(
        http,
        "",
        "PUT",
        f"auth/{app.mount}/login",
        {"role_id": app.role_id, "secret_id": app.secret_id},
    )
    assert reply.status == 200, reply.body
    auth: dict[str, Any] = reply.body["auth"]
    return auth


async def _token(http: VaultHTTP, **body: Any) -> dict[str, Any]:
    reply = await http.write("auth/token/create", {"ttl": "10m", "policies": ["default"], **body})
    assert reply.status == 200, reply.body
    auth: dict[str, Any] = reply.body["auth"]
    return auth


def _check_auth_block(auth: dict[str, Any], token: str, accessor: str) -> None:
    assert set(auth) == AUTH_KEYS, auth
    assert auth["client_token"] == token
    assert auth["accessor"] == accessor
    assert isinstance(auth["lease_duration"], int) and auth["lease_duration"] > 0
    assert auth["renewable"] is True
    assert auth["entity_id"] == "" and auth["token_type"] == "service"
    assert isinstance(auth["orphan"], bool) and auth["mfa_requirement"] is None
    assert isinstance(auth["num_uses"], int)
    assert auth["policies"] == auth["token_policies"] and "default" in auth["policies"]


def _check_lookup_types(data: dict[str, Any], token: str) -> None:
    """Vault's ``handleLookup``: these names with these JSON types, nothing else."""
    expected: dict[str, type | tuple[type, ...]] = {
        "accessor": str,
        "creation_time": int,
        "creation_ttl": int,
        "display_name": str,
        "entity_id": str,
        "expire_time": str,
        "explicit_max_ttl": int,
        "id": str,
        "issue_time": str,
        "meta": (dict, type(None)),
        "num_uses": int,
        "orphan": bool,
        "path": str,
        "policies": list,
        "renewable": bool,
        "ttl": int,
        "type": str,
    }
    assert set(data) == set(expected), set(data) ^ set(expected)
    for name, kind in expected.items():
        assert isinstance(data[name], kind), (name, data[name])
    assert not isinstance(data["ttl"], bool) and not isinstance(data["creation_ttl"], bool)
    assert data["id"] == token and data["entity_id"] == "" and data["type"] == "service"
    expire = dt.datetime.fromisoformat(data["expire_time"])
    issued = dt.datetime.fromisoformat(data["issue_time"])
    assert data["expire_time"].endswith("Z") and expire.tzinfo is not None
    assert int(issued.timestamp()) == data["creation_time"]
    assert 0 < data["ttl"] <= data["creation_ttl"]
    assert abs((expire - dt.datetime.now(dt.UTC)).total_seconds() - data["ttl"]) <= 2


# -- renewal answers and lookups ----------------------------------------------------------


async def test_renewals_answer_with_the_auth_block(broker: RunningBroker) -> None:
    http = broker.http
    made = await _token(http, meta={"app": "billing"})
    token, accessor = made["client_token"], made["accessor"]
    try:
        renewed = await _as(http, token, "PUT", "auth/token/renew-self", {"increment": "5m"})
        assert renewed.status == 200, renewed.body
        assert renewed.body["data"] is None
        auth = renewed.body["auth"]
        _check_auth_block(auth, token, accessor)
        assert auth["metadata"] == {"app": "billing"}
        assert 290 <= auth["lease_duration"] <= 300
        assert auth["orphan"] is True  # the configured root token is nobody's parent

        by_token = await http.write("auth/token/renew", {"token": token, "increment": 120})
        assert by_token.status == 200, by_token.body
        _check_auth_block(by_token.body["auth"], token, accessor)
        assert 110 <= by_token.body["auth"]["lease_duration"] <= 120

        # Vault leaves the token out when the caller only named its accessor.
        by_accessor = await http.write("auth/token/renew-accessor", {"accessor": accessor})
        assert by_accessor.status == 200, by_accessor.body
        _check_auth_block(by_accessor.body["auth"], "", accessor)
    finally:
        await http.write("auth/token/revoke-accessor", {"accessor": accessor})


async def test_lookups_use_vaults_names_and_types(broker: RunningBroker) -> None:
    http = broker.http
    made = await _token(http, display_name="billing", explicit_max_ttl="1h")
    token, accessor = made["client_token"], made["accessor"]
    try:
        looked = await _as(http, token, "GET", "auth/token/lookup-self")
        assert looked.status == 200, looked.body
        _check_lookup_types(looked.data, token)
        assert looked.data["explicit_max_ttl"] == 3600 and looked.data["creation_ttl"] == 600
        assert looked.data["display_name"] == "token-billing" and looked.data["meta"] is None
        assert looked.data["orphan"] is True and looked.data["path"] == "auth/token/create"

        by_token = await http.write("auth/token/lookup", {"token": token})
        _check_lookup_types(by_token.data, token)
        by_accessor = await http.write("auth/token/lookup-accessor", {"accessor": accessor})
        _check_lookup_types(by_accessor.data, "")  # an accessor never reveals the token
        assert by_accessor.data["accessor"] == accessor
    finally:
        await http.write("auth/token/revoke-accessor", {"accessor": accessor})


# -- periodic tokens --------------------------------------------------------------------------


async def test_periodic_tokens_renew_back_to_their_period_with_no_maximum(
    broker: RunningBroker,
) -> None:
    http = broker.http
    made = await _token(http, period="90s", ttl="1h")
    token, accessor = made["client_token"], made["accessor"]
    try:
        assert made["lease_duration"] == 90  # the period, not the ttl asked for
        looked = await http.call("GET", "auth/token/lookup-self", token=token)
        assert looked.data["period"] == 90 and looked.data["explicit_max_ttl"] == 0
        assert 0 < looked.data["ttl"] <= 90
        # Vault's CalculateTTL: a renewal of a periodic token gives its period, whatever
        # the increment asked for, and no maximum stops it.
        for increment in ("1h", "10s"):
            renewed = await http.call(
                "PUT", "auth/token/renew-self", {"increment": increment}, token=token
            )
            assert renewed.status == 200, renewed.body
            assert 88 <= renewed.body["auth"]["lease_duration"] <= 90
        storage = await asyncpg.connect(broker.settings.storage_dsn)
        try:
            row = await storage.fetchrow(
                "SELECT period, max_expires_at FROM broker_tokens WHERE accessor = $1", accessor
            )
        finally:
            await storage.close()
        assert row is not None and row["period"] == 90 and row["max_expires_at"] is None
    finally:
        await http.write("auth/token/revoke-accessor", {"accessor": accessor})

    # An explicit max TTL still ends a periodic token's renewals.
    capped = await _token(http, period="90s", explicit_max_ttl="30s")
    try:
        assert capped["lease_duration"] == 30
        renewed = await http.write("auth/token/renew", {"token": capped["client_token"]})
        assert 0 < renewed.body["auth"]["lease_duration"] <= 30
    finally:
        await http.write("auth/token/revoke-accessor", {"accessor": capped["accessor"]})


async def test_only_root_or_sudo_makes_periodic_tokens(broker: RunningBroker) -> None:
    http = broker.http
    tag = secrets.token_hex(3)
    plain, sudo = f"brkt-mint-{tag}", f"brkt-mint-sudo-{tag}"
    rules = 'path "auth/token/create" { capabilities = ["update"%s] }'
    assert (await http.write(f"sys/policy/{plain}", {"policy": rules % ""})).status == 204
    assert (await http.write(f"sys/policy/{sudo}", {"policy": rules % ', "sudo"'})).status == 204
    minters = [await _token(http, policies=[name]) for name in (plain, sudo)]
    try:
        refused = await http.call(
            "PUT", "auth/token/create", {"period": "1m"}, token=minters[0]["client_token"]
        )
        assert refused.status == 400, refused.body
        assert refused.errors == ["root or sudo privileges required to create periodic token"]
        allowed = await http.call(
            "PUT", "auth/token/create", {"period": "1m"}, token=minters[1]["client_token"]
        )
        assert allowed.status == 200, allowed.body
        assert allowed.body["auth"]["lease_duration"] == 60
    finally:
        for minter in minters:  # their children go with them
            await http.write("auth/token/revoke-accessor", {"accessor": minter["accessor"]})
        for name in (plain, sudo):
            await http.delete(f"sys/policy/{name}")


async def test_approle_token_period(broker: RunningBroker, app: App) -> None:
    http = broker.http
    path = f"auth/{app.mount}/role/agent"
    reply = await http.write(path, {"token_period": "2h", "token_max_ttl": "1h"})
    assert reply.status == 204, reply.body
    read = (await http.read(path)).data
    assert read["token_period"] == 7200 and read["period"] == 7200
    auth = await _login(http, app)
    try:
        assert auth["lease_duration"] == 7200  # token_max_ttl does not cap a periodic token
        looked = await http.call("GET", "auth/token/lookup-self", token=auth["client_token"])
        assert looked.data["period"] == 7200 and looked.data["explicit_max_ttl"] == 0
        assert looked.data["path"] == f"auth/{app.mount}/login"
    finally:
        await http.write("auth/token/revoke-accessor", {"accessor": auth["accessor"]})
    # hvac 2.x and older clients send the deprecated name.
    assert (await http.write(path, {"period": "30m"})).status == 204
    assert (await http.read(path)).data["token_period"] == 1800
    assert (await http.write(path, {"token_period": 0})).status == 204
    auth = await _login(http, app)
    try:
        assert auth["lease_duration"] == 600  # token_ttl again
        looked = await http.call("GET", "auth/token/lookup-self", token=auth["client_token"])
        assert "period" not in looked.data
    finally:
        await http.write("auth/token/revoke-accessor", {"accessor": auth["accessor"]})
    negative = await http.write(path, {"token_period": -5})
    assert negative.status == 400, negative.body


async def test_a_periods_edit_in_storage_is_refused(broker: RunningBroker, app: App) -> None:
    """The period is covered by the row MACs: a storage writer cannot make a token or an
    AppRole role periodic (endless renewals), nor strip a period."""
    http = broker.http
    made = await _token(http, period="1m")
    plain = await _token(http)
    storage = await asyncpg.connect(broker.settings.storage_dsn)
    try:
        for accessor, period in ((made["accessor"], 0), (plain["accessor"], 86400)):
            await storage.execute(
                "UPDATE broker_tokens SET period = $2 WHERE accessor = $1", accessor, period
            )
        await storage.execute(
            "UPDATE broker_approle_roles SET token_period = 86400 WHERE mount = $1", app.mount
        )
        await storage.execute("SELECT pg_notify('broker_auth', '')")
        for token in (made["client_token"], plain["client_token"]):
            reply = await http.call("GET", "auth/token/lookup-self", token=token)
            assert reply.status == 500, reply.body
            assert "storage integrity check failed" in reply.errors[0]
        login = await http.call(
            "PUT", f"auth/{app.mount}/login", {"role_id": app.role_id, "secret_id": app.secret_id}
        )
        assert login.status == 500 and not login.body.get("auth"), login.body
    finally:
        await storage.execute(
            "DELETE FROM broker_tokens WHERE accessor = ANY($1::text[])",
            [made["accessor"], plain["accessor"]],
        )
        await storage.close()


# -- sys/internal/ui/mounts -------------------------------------------------------------------


async def test_ui_mounts_describe_the_mount_holding_a_path(broker: RunningBroker, app: App) -> None:
    http = broker.http
    auth = await _login(http, app)
    token = auth["client_token"]
    try:
        reply = await _as(http, token, "GET", f"sys/internal/ui/mounts/database/creds/{app.role}")
        assert reply.status == 200, reply.body
        data = reply.data
        assert data["path"] == "database/" and data["type"] == "database"
        assert data["options"] is None and isinstance(data["config"], dict)
        assert {"default_lease_ttl", "max_lease_ttl", "force_no_cache"} <= set(data["config"])
        assert data["local"] is False and data["seal_wrap"] is False
        assert data["external_entropy_access"] is False
        mounts = (await http.read("sys/mounts")).body["database/"]
        assert data["accessor"] == mounts["accessor"] and data["uuid"] == mounts["uuid"]
        # The token method (the default policy reaches auth/token/lookup-self).
        reply = await _as(http, token, "GET", "sys/internal/ui/mounts/auth/token/lookup-self")
        assert reply.status == 200, reply.body
        assert reply.data["path"] == "token/" and reply.data["type"] == "token"
        # Vault's 403 for a mount the token reaches nothing under, and for no mount at all.
        for path in (f"auth/{app.mount}/login", "no-such-mount/x"):
            refused = await _as(http, token, "GET", f"sys/internal/ui/mounts/{path}")
            assert refused.status == 403, refused.body
            assert refused.errors == [
                "preflight capability check returned 403, please ensure client's policies "
                f'grant access to path "{path}/"'
            ]
        # An auth mount answers with its path in the auth table, as in Vault.
        root = await http.read(f"sys/internal/ui/mounts/auth/{app.mount}/login")
        assert root.status == 200, root.body
        assert root.data["path"] == f"{app.mount}/" and root.data["type"] == "approle"

        listed = await _as(http, token, "GET", "sys/internal/ui/mounts")
        assert listed.status == 200, listed.body
        assert set(listed.data) == {"secret", "auth"}
        assert "database/" in listed.data["secret"]
        assert listed.data["secret"]["database/"]["type"] == "database"
        assert set(listed.data["auth"]) == {"token/"}  # nothing reaches the AppRole mount
        everything = (await http.read("sys/internal/ui/mounts")).data
        assert f"{app.mount}/" in everything["auth"] and "database/" in everything["secret"]
    finally:
        await http.write("auth/token/revoke-accessor", {"accessor": auth["accessor"]})


async def test_ui_mounts_follow_the_policy_not_the_default_one(broker: RunningBroker) -> None:
    """No policy names sys/internal/ui/mounts (Vault's default one does not either): a
    token without the default policy may still ask, about mounts its policies reach."""
    http = broker.http
    name = "brkt-ui-" + secrets.token_hex(3)
    policy = 'path "database/creds/+" { capabilities = ["read"] }\n'
    policy += 'path "database/roles/*" { capabilities = ["deny"] }'
    assert (await http.write(f"sys/policy/{name}", {"policy": policy})).status == 204
    made = await _token(http, policies=[name], no_default_policy=True)
    try:
        reply = await http.call(
            "GET", "sys/internal/ui/mounts/database/roles/x", token=made["client_token"]
        )
        assert reply.status == 200 and reply.data["path"] == "database/", reply.body
        reply = await http.call(
            "GET", "sys/internal/ui/mounts/auth/token/lookup-self", token=made["client_token"]
        )
        assert reply.status == 403, reply.body
    finally:
        await http.write("auth/token/revoke-accessor", {"accessor": made["accessor"]})
        await http.delete(f"sys/policy/{name}")


# -- dead tokens ------------------------------------------------------------------------------

#: Paths that exist and paths that do not, under every prefix, with the operation a
#: client would use: a dead token must learn nothing from any of them.
WALK = (
    ("GET", "auth/token/lookup-self"),
    ("PUT", "auth/token/renew-self"),
    ("PUT", "auth/token/revoke-self"),
    ("PUT", "auth/token/create"),
    ("PUT", "auth/token/lookup"),
    ("PUT", "auth/token/renew"),
    ("PUT", "auth/token/lookup-accessor"),
    ("LIST", "auth/token/accessors"),
    ("GET", "auth/token/no-such-path"),
    ("GET", "sys/internal/ui/mounts"),
    ("GET", "sys/internal/ui/mounts/database/creds/brkt-pg-ro"),
    ("GET", "sys/internal/ui/mounts/no-such-mount"),
    ("GET", "database/creds/brkt-pg-ro"),
    ("GET", "database/roles/brkt-pg-ro"),
    ("LIST", "database/roles"),
    ("GET", "database/no-such-path"),
    ("GET", "no-such-mount/anything"),
    ("PUT", "sys/leases/renew"),
    ("PUT", "sys/leases/lookup"),
    ("PUT", "sys/leases/revoke"),
    ("PUT", "sys/renew"),
    ("LIST", "sys/leases/lookup/database/creds/"),
    ("PUT", "sys/capabilities-self"),
    ("GET", "sys/mounts"),
    ("GET", "sys/auth"),
    ("GET", "sys/policy"),
    ("GET", "sys/no-such-path"),
    ("PUT", "sys/wrapping/wrap"),
    ("GET", "auth/no-such-method/role/x"),
    ("GET", "cubbyhole/x"),
    ("DELETE", "database/roles/brkt-pg-ro"),
)


async def test_dead_tokens_get_403_on_every_path(broker: RunningBroker) -> None:
    http = broker.http
    revoked = await _token(http)
    assert (await http.write("auth/token/revoke", {"token": revoked["client_token"]})).status == 204
    expired = await _token(http, ttl="1s")

    async def gone() -> bool:
        reply = await http.write("auth/token/lookup-accessor", {"accessor": expired["accessor"]})
        return reply.status != 200

    await eventually(gone, within=10)
    dead = {
        "revoked": revoked["client_token"],
        "expired": expired["client_token"],
        "unknown": "hvs." + secrets.token_urlsafe(24),
        "malformed": "not-a-token",
    }
    for kind, token in dead.items():
        for method, path in WALK:
            for headers in (AGENT_HEADERS, {}):
                reply = await http.call(method, path, {}, token=token, headers=headers)
                assert (reply.status, reply.body) == (403, DENIED), (kind, method, path)
    # No token at all: the same.
    for method, path in WALK:
        reply = await http.call(method, path, {}, token="")
        assert (reply.status, reply.body) == (403, DENIED), (method, path)


async def test_x_vault_request_is_accepted_and_no_index_header_is_sent(
    broker: RunningBroker, http_session: aiohttp.ClientSession
) -> None:
    headers = {"X-Vault-Token": broker.http.token, **AGENT_HEADERS}
    for method, path, body in (
        ("GET", "sys/health", None),
        ("GET", "auth/token/lookup-self", None),
        ("GET", "sys/internal/ui/mounts/database", None),
        ("PUT", "sys/capabilities-self", {"paths": ["database/creds/brkt-pg-ro"]}),
        ("GET", "sys/mounts", None),
    ):
        async with http_session.request(
            method, f"{broker.address}/v1/{path}", json=body, headers=headers
        ) as resp:
            assert resp.status == 200, (path, await resp.text())
            assert "X-Vault-Index" not in resp.headers
            assert "Access-Control-Allow-Origin" not in resp.headers


# -- Vault Agent's loop, call by call ---------------------------------------------------------


async def test_vault_agent_renewal_loop(
    broker: RunningBroker, pg_target: PgCluster, app: App
) -> None:
    """What Vault Agent (auto_auth with AppRole, a template reading database creds) sends,
    in order, with a least-privilege token: login, renew-self, lookup-self, the mount
    preflight, the creds read, lease renewals until the role's max_ttl (6 s, TTL 2 s), and
    a new read once the lease cannot be renewed any further."""
    http = broker.http
    auth = await _login(http, app)
    token, accessor = auth["client_token"], auth["accessor"]
    try:
        assert sorted(auth["policies"]) == sorted([app.policy, "default"])
        # auto_auth: the token's lifetime watcher renews it and needs the auth block.
        renewed = await _as(http, token, "PUT", "auth/token/renew-self", {"increment": 600})
        assert renewed.status == 200, renewed.body
        _check_auth_block(renewed.body["auth"], token, accessor)
        looked = await _as(http, token, "GET", "auth/token/lookup-self")
        assert looked.status == 200, looked.body
        _check_lookup_types(looked.data, token)
        assert looked.data["renewable"] is True and looked.data["meta"] == {"role_name": "agent"}

        creds_path = f"database/creds/{app.role}"
        preflight = await _as(http, token, "GET", f"sys/internal/ui/mounts/{creds_path}")
        assert preflight.status == 200, preflight.body
        assert preflight.data["type"] == "database" and preflight.data["path"] == "database/"

        first = await _read_creds(http, token, creds_path)
        assert first["lease_duration"] == 2 and first["renewable"] is True
        assert await pg_logs_in(pg_target.server.port, **_login_of(first))

        durations, refused = await _renew_until_max_ttl(http, token, first)
        assert durations[0] == 2, durations  # far from max_ttl: the increment asked for
        capped = durations[durations.index(min(durations)) :]
        assert min(durations) < 2, durations  # near max_ttl: capped, with a warning
        assert refused or durations[-1] == 0, durations  # then nothing is left to renew
        assert capped == sorted(capped, reverse=True), durations

        # The watcher gives up on the lease and the template reads again: a new login.
        second = await _read_creds(http, token, creds_path)
        assert second["lease_id"] != first["lease_id"]
        assert second["data"]["username"] != first["data"]["username"]
        assert await pg_logs_in(pg_target.server.port, **_login_of(second))

        async def first_revoked() -> bool:
            return not await pg_logs_in(pg_target.server.port, **_login_of(first))

        await eventually(first_revoked, within=15)  # past its max_ttl, the sweep drops it
        assert await pg_logs_in(pg_target.server.port, **_login_of(second))
    finally:
        await http.write("auth/token/revoke-accessor", {"accessor": accessor})


async def _read_creds(http: VaultHTTP, token: str, path: str) -> dict[str, Any]:
    reply = await _as(http, token, "GET", path)
    assert reply.status == 200, reply.body
    ISSUED_PASSWORDS.add(reply.data["password"])
    return reply.body


def _login_of(creds: dict[str, Any]) -> dict[str, str]:
    return {"user": creds["data"]["username"], "password": creds["data"]["password"]}


async def _renew_until_max_ttl(
    http: VaultHTTP, token: str, creds: dict[str, Any]
) -> tuple[list[int], bool]:
    """consul-template's lifetime watcher: renew with the lease's own duration as the
    increment (more often than its two thirds, so the capped renewals near max_ttl are
    seen), until the broker refuses the lease or has no time left to give. Returns the
    renewals' lease durations and whether the last attempt was refused."""
    durations: list[int] = []
    lease_id = creds["lease_id"]
    for _ in range(40):  # max_ttl is 6 s: about 12 renewals; bounded regardless
        reply = await _as(
            http, token, "PUT", "sys/leases/renew", {"lease_id": lease_id, "increment": 2}
        )
        if reply.status == 400:
            assert "max_ttl" in reply.errors[0] or "expired" in reply.errors[0], reply.body
            return durations, True
        assert reply.status == 200, reply.body
        assert reply.body["lease_id"] == lease_id and reply.body["renewable"] is True
        duration = reply.body["lease_duration"]
        assert isinstance(duration, int) and 0 <= duration <= 2, reply.body
        if duration < 2:
            assert reply.body.get("warnings"), reply.body  # Vault warns when it caps
        durations.append(duration)
        if duration == 0:
            return durations, False
        await asyncio.sleep(0.5)
    raise AssertionError(f"the lease was still renewable after {durations}")


# -- External Secrets' flow and the deploy example's roles ----------------------------------


async def test_eso_flow_with_the_example_roles(broker: RunningBroker, pg_target: PgCluster) -> None:
    """deploy/kubernetes/configmap.yaml's database roles, written as they are: External
    Secrets reads a login and revokes its own token at once; the ``orphan_leases`` role's
    login survives that, the other role's dies with the token (as an Agent's should)."""
    http = broker.http
    tag = secrets.token_hex(3)
    roles = {name: f"brkt-setup-{name}-{tag}" for name in _writes("database/roles/")}
    assert set(roles) == {"app", "app-eso"}
    policy = "brkt-setup-" + tag
    rules = "".join(_app_policy(role) for role in roles.values())
    try:
        for name, body in _writes("database/roles/").items():
            reply = await http.write(f"database/roles/{roles[name]}", body)
            assert reply.status == 204, reply.body
        assert (await http.read(f"database/roles/{roles['app-eso']}")).data["orphan_leases"]
        assert (await http.write(f"sys/policy/{policy}", {"policy": rules})).status == 204
        token = (await _token(http, policies=[policy]))["client_token"]
        eso = await _read_creds(http, token, f"database/creds/{roles['app-eso']}")
        agent = await _read_creds(http, token, f"database/creds/{roles['app']}")
        assert (await _as(http, token, "PUT", "auth/token/revoke-self")).status == 204
        port = pg_target.server.port

        async def agents_login_revoked() -> bool:
            return not await pg_logs_in(port, **_login_of(agent))

        await eventually(agents_login_revoked, within=15)
        assert await pg_logs_in(port, **_login_of(eso))  # orphan_leases: it lives on
        lease = await http.write("sys/leases/lookup", {"lease_id": eso["lease_id"]})
        assert lease.status == 200 and lease.data["ttl"] > 0, lease.body
    finally:
        for role in roles.values():
            await http.write(f"sys/leases/revoke-prefix/database/creds/{role}")
            await http.delete(f"database/roles/{role}")
        await http.delete(f"sys/policy/{policy}")
