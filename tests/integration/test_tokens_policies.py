"""Tokens and ACL policies through hvac: a limited token is refused outside its policy,
revoking a token revokes its children and their leases (the logins stop working), and
use counts, expiry and orphan leases behave as in Vault."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

import hvac
import hvac.exceptions
import pytest

from tests.conftest import PgCluster, RunningBroker
from tests.support import ISSUED_PASSWORDS, eventually, mysql_user_exists, pg_logs_in

CREDS_POLICY = """
path "database/creds/brkt-pg-*" {
  capabilities = ["read"]
}
path "database/creds/brkt-my-ro" {
  capabilities = ["read"]
}
path "database/roles/+" {
  capabilities = ["read"]
}
path "database/roles/brkt-my-ro" {
  capabilities = ["deny"]
}
path "sys/leases/*" {
  capabilities = ["update", "list"]
}
"""


def _hvac(broker: RunningBroker, token: str | None = None) -> hvac.Client:
    return hvac.Client(url=broker.address, token=token or broker.http.token)


def _creds(client: hvac.Client, role: str) -> dict[str, Any]:
    reply: dict[str, Any] = client.secrets.database.generate_credentials(role)
    ISSUED_PASSWORDS.add(reply["data"]["password"])
    return reply


async def test_limited_token_is_refused_outside_its_policy(broker: RunningBroker) -> None:
    name = "brkt-creds-" + secrets.token_hex(3)

    def scenario() -> dict[str, Any]:
        root = _hvac(broker)
        root.sys.create_or_update_policy(name, CREDS_POLICY)
        assert CREDS_POLICY.strip() in root.sys.read_policy(name)["data"]["rules"]
        token = root.auth.token.create(policies=[name], ttl="10m", display_name="ci")["auth"]
        limited = _hvac(broker, token["client_token"])
        out: dict[str, Any] = {"token": token, "creds": _creds(limited, "brkt-pg-ro")}
        out["role"] = limited.secrets.database.read_role("brkt-pg-ro")["data"]
        calls: list[Callable[[], Any]] = [
            lambda: limited.secrets.database.read_role("brkt-my-ro"),  # deny wins
            lambda: limited.secrets.database.list_roles(),  # no list on the folder
            lambda: limited.sys.create_or_update_policy("x", CREDS_POLICY),
            lambda: limited.secrets.database.delete_role("brkt-pg-ro"),
            lambda: limited.sys.list_mounted_secrets_engines(),
            lambda: limited.auth.token.create(policies=["root"]),  # not a subset
        ]
        for call in calls:
            with pytest.raises(hvac.exceptions.Forbidden):
                call()
        out["self"] = limited.auth.token.lookup_self()["data"]
        out["caps"] = limited.sys.get_capabilities(
            ["database/creds/brkt-pg-ro", "database/roles/brkt-my-ro"]
        )["data"]
        return out

    out = await asyncio.to_thread(scenario)
    assert out["token"]["client_token"].startswith("hvs.")
    assert out["token"]["policies"] == [name, "default"]
    # The token's display name is in the login's name, so a DBA sees whose it is.
    assert out["creds"]["data"]["username"].startswith("v_token_ci_brkt_pg_ro_")
    assert out["self"]["display_name"] == "token-ci"
    assert out["self"]["ttl"] <= 600
    assert out["caps"]["database/creds/brkt-pg-ro"] == ["read"]
    assert out["caps"]["database/roles/brkt-my-ro"] == ["deny"]

    # The refusal is Vault's body, and costs nothing: no token, no lease.
    reply = await broker.http.call("PUT", "sys/policy/x", {"policy": CREDS_POLICY}, token="nope")
    assert (reply.status, reply.body) == (403, {"errors": ["permission denied"]})
    reply = await broker.http.call("GET", "database/creds/brkt-pg-ro", token="")
    assert (reply.status, reply.body) == (403, {"errors": ["permission denied"]})


async def test_bad_policies_are_refused_with_400(broker: RunningBroker) -> None:
    for text in (
        'path "a" { capabilities = ["fly"] }',
        'path "a/*/b" { capabilities = ["read"] }',
        "path {",
        '{"path": 3}',
    ):
        reply = await broker.http.write("sys/policies/acl/brkt-bad", {"policy": text})
        assert reply.status == 400, (text, reply.body)
        assert reply.errors
    assert (await broker.http.read("sys/policies/acl/brkt-bad")).status == 404
    assert (await broker.http.write("sys/policy/root", {"policy": CREDS_POLICY})).status == 400
    assert (await broker.http.delete("sys/policy/default")).status == 400
    # JSON policies are accepted too, and listed.
    json_policy = '{"path": {"database/creds/*": {"capabilities": ["read"]}}}'
    assert (
        await broker.http.write("sys/policies/acl/brkt-json", {"policy": json_policy})
    ).status == 204
    assert "brkt-json" in (await broker.http.list("sys/policies/acl")).data["keys"]
    assert (await broker.http.delete("sys/policies/acl/brkt-json")).status == 204


async def test_revoking_a_token_revokes_its_children_and_their_leases(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    def scenario() -> tuple[dict[str, Any], dict[str, Any], str]:
        root = _hvac(broker)
        parent = root.auth.token.create(policies=["root"], ttl="10m")["auth"]["client_token"]
        child = _hvac(broker, parent).auth.token.create(ttl="10m")["auth"]["client_token"]
        pg = _creds(_hvac(broker, child), "brkt-pg-ro")
        my = _creds(_hvac(broker, parent), "brkt-my-ro")
        root.auth.token.revoke(parent)
        return pg, my, child

    pg, my, child = await asyncio.to_thread(scenario)
    user, password = pg["data"]["username"], pg["data"]["password"]

    async def pg_gone() -> bool:
        return not await pg_logs_in(pg_target.server.port, user, password)

    async def my_gone() -> bool:
        return not await mysql_user_exists(my["data"]["username"])

    await eventually(pg_gone, within=15)
    await eventually(my_gone, within=15)
    # The child died with its parent.
    reply = await broker.http.call("GET", "auth/token/lookup-self", token=child)
    assert reply.status == 403
    lease = await broker.http.read(f"sys/leases/history/{pg['lease_id']}")
    assert lease.status == 200 and lease.data["revoke_time"] is not None
    assert lease.data["token_accessor"]


async def test_orphan_leases_outlive_the_token(broker: RunningBroker, pg_target: PgCluster) -> None:
    """External Secrets revokes its token right after reading; with orphan_leases the
    credentials it handed out keep working."""
    role = "brkt-pg-orphan"
    reply = await broker.http.write(
        f"database/roles/{role}",
        {
            "db_name": "pg",
            "creation_statements": [
                "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' "
                "VALID UNTIL '{{expiration}}'; GRANT app_readers TO \"{{name}}\";"
            ],
            "default_ttl": "5m",
            "orphan_leases": True,
        },
    )
    assert reply.status == 204, reply.body
    assert (await broker.http.read(f"database/roles/{role}")).data["orphan_leases"] is True
    token = (await broker.http.write("auth/token/create", {"ttl": "5m"})).body["auth"]
    creds = await broker.http.call("GET", f"database/creds/{role}", token=token["client_token"])
    assert creds.status == 200
    ISSUED_PASSWORDS.add(creds.data["password"])
    revoked = await broker.http.write("auth/token/revoke", {"token": token["client_token"]})
    assert revoked.status == 204
    await asyncio.sleep(1.0)  # several sweeps
    assert await pg_logs_in(pg_target.server.port, creds.data["username"], creds.data["password"])
    assert (await broker.http.write(f"sys/leases/revoke/{creds.body['lease_id']}")).status == 204
    await broker.http.delete(f"database/roles/{role}")


async def test_use_limited_and_expiring_tokens(broker: RunningBroker, pg_target: PgCluster) -> None:
    limited = (await broker.http.write("auth/token/create", {"num_uses": 2})).body["auth"]
    token = limited["client_token"]
    for _ in range(2):
        assert (await broker.http.call("GET", "auth/token/lookup-self", token=token)).status == 200
    assert (await broker.http.call("GET", "auth/token/lookup-self", token=token)).status == 403

    # An expired token is refused, and its leases are revoked with it (Vault's rule).
    short = (await broker.http.write("auth/token/create", {"ttl": "2s"})).body["auth"]
    creds = await broker.http.call("GET", "database/creds/brkt-pg-ro", token=short["client_token"])
    assert creds.status == 200
    ISSUED_PASSWORDS.add(creds.data["password"])
    user, password = creds.data["username"], creds.data["password"]

    async def gone() -> bool:
        return not await pg_logs_in(pg_target.server.port, user, password)

    await eventually(gone, within=20, interval=0.5)
    reply = await broker.http.call("GET", "auth/token/lookup-self", token=short["client_token"])
    assert reply.status == 403


async def test_token_renewal_and_lookup(broker: RunningBroker) -> None:
    made = (
        await broker.http.write(
            "auth/token/create", {"ttl": "1m", "explicit_max_ttl": "2m", "meta": {"app": "x"}}
        )
    ).body["auth"]
    token, accessor = made["client_token"], made["accessor"]
    renewed = await broker.http.call(
        "PUT", "auth/token/renew-self", {"increment": "1h"}, token=token
    )
    assert renewed.status == 200, renewed.body
    assert 100 <= renewed.body["auth"]["lease_duration"] <= 120  # capped by explicit_max_ttl
    by_accessor = await broker.http.write("auth/token/lookup-accessor", {"accessor": accessor})
    assert by_accessor.data["meta"] == {"app": "x"}
    assert by_accessor.data["id"] == ""  # an accessor never reveals the token
    looked = await broker.http.write("auth/token/lookup", {"token": token})
    assert looked.data["accessor"] == accessor
    assert (await broker.http.call("PUT", "auth/token/revoke-self", token=token)).status == 204
    assert (await broker.http.write("auth/token/lookup", {"token": token})).status == 400


async def test_display_names_are_sanitised_like_vaults(broker: RunningBroker) -> None:
    made = await broker.http.write("auth/token/create", {"display_name": 'a"b; c', "ttl": "1m"})
    token = made.body["auth"]["client_token"]
    looked = await broker.http.call("GET", "auth/token/lookup-self", token=token)
    assert looked.data["display_name"] == "token-a-b--c"
    creds = await broker.http.call("GET", "database/creds/brkt-pg-ro", token=token)
    assert creds.status == 200 and creds.data["username"].startswith("v_token_a_b_c_")
    ISSUED_PASSWORDS.add(creds.data["password"])
    await broker.http.write(f"sys/leases/revoke/{creds.body['lease_id']}")
