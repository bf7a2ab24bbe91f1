"""Attacks from the critical security issue, performed against a running broker:

- an AppRole role writer minting a root token (policies are held to what the writer may
  grant, and no auth method ever issues ``root``);
- deny rules bypassed with ``//``, a trailing slash, an encoded slash or a case change
  (one canonical path for the ACL and the handler);
- a use-limited token minting an unlimited child that outlives it;
- a bad ``X-Vault-Wrap-TTL`` answered 400 after a login and a lease were made.

Each test fails on the code before the fix (the attack succeeded there).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from yarl import URL

from tests.conftest import (
    PG_ADMIN,
    PG_ADMIN_PASSWORD,
    PgCluster,
    RunningBroker,
    pg_connection_config,
)
from tests.support import Reply, VaultHTTP, eventually


async def _policy_token(http: VaultHTTP, rules: str, **fields: Any) -> str:
    name = "brkt-esc-" + secrets.token_hex(3)
    assert (await http.write(f"sys/policy/{name}", {"policy": rules})).status == 204
    reply = await http.write("auth/token/create", {"policies": [name], "ttl": "10m", **fields})
    assert reply.status == 200, reply.body
    token: str = reply.body["auth"]["client_token"]
    return token


async def _raw(
    session: aiohttp.ClientSession, address: str, method: str, path: str, token: str
) -> Reply:
    """A request whose path goes out byte for byte (``//``, ``%2F``, trailing ``/``)."""
    url = URL(f"{address}/v1/{path}", encoded=True)
    async with session.request(method, url, headers={"X-Vault-Token": token}, json={}) as r:
        text = await r.read()
        return Reply(r.status, await r.json(content_type=None) if text else {})


@pytest.fixture
async def approle_mount(broker: RunningBroker) -> AsyncIterator[str]:
    mount = "brkt-esc-" + secrets.token_hex(3)
    assert (await broker.http.write(f"sys/auth/{mount}", {"type": "approle"})).status == 204
    yield mount
    assert (await broker.http.delete(f"sys/auth/{mount}")).status == 204


# -- 1. AppRole cannot mint root -------------------------------------------------------------


async def test_approle_role_writer_cannot_mint_a_root_token(
    broker: RunningBroker, approle_mount: str
) -> None:
    http = broker.http
    writer = await _policy_token(
        http,
        f'path "auth/{approle_mount}/role/*" {{ capabilities = ["create", "update", "read"] }}\n'
        'path "database/creds/brkt-pg-ro" { capabilities = ["read"] }',
    )
    as_writer = VaultHTTP(http.session, http.address, writer)
    for policies in ("root", "ROOT", " Root ", ["default", "root"]):
        reply = await as_writer.write(
            f"auth/{approle_mount}/role/escalate", {"token_policies": policies}
        )
        assert reply.status == 400, (policies, reply.body)
        assert "auth methods cannot create root tokens" in reply.errors[0]
    # Not even root may store a role that would issue root tokens.
    reply = await http.write(f"auth/{approle_mount}/role/escalate", {"token_policies": "root"})
    assert reply.status == 400, reply.body
    # A policy the writer does not hold is not the writer's to give.
    reply = await as_writer.write(
        f"auth/{approle_mount}/role/escalate", {"token_policies": "brkt-someone-elses"}
    )
    assert reply.status == 403, reply.body
    assert (await http.read(f"auth/{approle_mount}/role/escalate")).status == 404
    # Its own policies it may hand on.
    own = (await as_writer.read("auth/token/lookup-self")).data["policies"]
    granted = [p for p in own if p != "default"]
    reply = await as_writer.write(f"auth/{approle_mount}/role/fine", {"token_policies": granted})
    assert reply.status == 204, reply.body


async def test_a_stored_root_role_is_refused_at_login_without_spending_the_secret_id(
    broker: RunningBroker, pg_target: PgCluster, approle_mount: str
) -> None:
    """A role row edited in storage (or written by an older version) still cannot log in
    as root, and the refused login does not burn the secret ID."""
    http = broker.http
    path = f"auth/{approle_mount}/role/edited"
    assert (await http.write(path, {"token_policies": "default"})).status == 204
    role_id = (await http.read(f"{path}/role-id")).data["role_id"]
    secret = (await http.write(f"{path}/secret-id")).data["secret_id"]
    storage = await asyncpg.connect(broker.settings.storage_dsn)
    try:
        await storage.execute(
            "UPDATE broker_approle_roles SET token_policies = '{root}' "
            "WHERE mount = $1 AND name = 'edited'",
            approle_mount,
        )
    finally:
        await storage.close()
    login = {"role_id": role_id, "secret_id": secret}
    reply = await http.call("PUT", f"auth/{approle_mount}/login", login, token="")
    # The edited row fails its integrity check (test_storage_integrity.py); a row written by
    # an older version is authenticated at the upgrade and then refused as root below.
    assert reply.status == 500, reply.body
    assert reply.errors[0].startswith("storage integrity check failed")
    looked = await http.write(f"{path}/secret-id/lookup", {"secret_id": secret})
    assert looked.status == 200, looked.body


# -- 3. one canonical path -------------------------------------------------------------------


async def test_deny_rules_hold_for_every_spelling_of_a_path(
    broker: RunningBroker, http_session: aiohttp.ClientSession
) -> None:
    http = broker.http
    lease_id = (await http.creds("brkt-pg-ro")).body["lease_id"]
    mount = "brkt-esc-db-" + secrets.token_hex(3)
    assert (await http.write(f"sys/mounts/{mount}", {"type": "database"})).status == 204
    narrow = "brkt-narrow-" + secrets.token_hex(3)
    narrow_rules = 'path "auth/token/lookup-self" { capabilities = ["read"] }'
    assert (await http.write(f"sys/policy/{narrow}", {"policy": narrow_rules})).status == 204
    attacker = await _policy_token(
        http,
        f"""
        path "sys/leases/revoke/*" {{ capabilities = ["update"] }}
        path "sys/leases/revoke/database/creds/brkt-pg-ro/*" {{ capabilities = ["deny"] }}
        path "sys/mounts/*" {{ capabilities = ["create", "update", "read", "delete"] }}
        path "sys/mounts/{mount}" {{ capabilities = ["deny"] }}
        path "sys/policy/*" {{ capabilities = ["create", "update", "read", "delete"] }}
        path "sys/policy/{narrow}" {{ capabilities = ["deny"] }}
        """,
    )
    attempts = [
        ("PUT", f"sys/leases/revoke//{lease_id}"),
        ("PUT", f"sys/leases/revoke/{lease_id.replace('/', '//')}"),
        ("PUT", f"sys/leases/revoke/{lease_id}/"),
        ("PUT", f"sys/leases/revoke/%2F{lease_id}"),
        ("PUT", f"sys/leases//revoke/{lease_id}"),
        ("PUT", f"/sys/leases/revoke/{lease_id}"),
        ("DELETE", f"sys/mounts//{mount}"),
        ("DELETE", f"sys/mounts/{mount}/"),
        ("DELETE", f"sys/mounts/{mount}//"),
        ("DELETE", f"sys//mounts/{mount}"),
        ("PUT", f"sys/policy/{narrow.upper()}"),
        ("PUT", f"sys/policy/{narrow.capitalize()}/"),
        ("PUT", f"sys/policy//{narrow.title()}"),
        ("DELETE", f"sys/policy/{narrow.upper()}"),
    ]
    for method, path in attempts:
        reply = await _raw(http_session, http.address, method, path, attacker)
        assert reply.status == 403, (method, path, reply.status, reply.body)
    # Nothing happened: the lease lives, the mount is there, the policy is unchanged.
    looked = await http.write("sys/leases/lookup", {"lease_id": lease_id})
    assert looked.status == 200 and looked.data["ttl"] > 0, looked.body
    assert (await http.read(f"sys/mounts/{mount}")).status == 200
    assert (await http.read(f"sys/policy/{narrow}")).body["rules"] == narrow_rules
    # Dot segments mean nothing in Vault's paths: refused outright.
    for path in (f"sys/mounts/x/../{mount}", f"sys/mounts/%2E%2E/sys/mounts/{mount}"):
        reply = await _raw(http_session, http.address, "DELETE", path, attacker)
        assert reply.status == 400, (path, reply.body)
    # What the policy does allow still works, in any spelling.
    other = "brkt-esc-other-" + secrets.token_hex(3)
    reply = await _raw(http_session, http.address, "PUT", f"sys//policy/{other.upper()}/", attacker)
    assert reply.status == 400, reply.body  # reached the handler: no policy document given
    assert (await http.delete(f"sys/mounts/{mount}")).status == 204
    assert (await http.delete(f"sys/policy/{narrow}")).status == 204
    assert (await http.write(f"sys/leases/revoke/{lease_id}")).status == 204


async def test_capabilities_answer_for_the_path_as_a_request_would_be_judged(
    broker: RunningBroker,
) -> None:
    http = broker.http
    token = await _policy_token(
        http,
        'path "sys/mounts/*" { capabilities = ["read"] }\n'
        'path "sys/mounts/secret" { capabilities = ["deny"] }',
    )
    reply = await http.write(
        "sys/capabilities", {"token": token, "paths": ["sys/mounts//secret", "sys/mounts/x"]}
    )
    assert reply.status == 200, reply.body
    assert reply.body["sys/mounts//secret"] == ["deny"]
    assert reply.body["sys/mounts/x"] == ["read"]


# -- 4. use-limited tokens -------------------------------------------------------------------


async def test_a_use_limited_token_cannot_mint_a_child(broker: RunningBroker) -> None:
    http = broker.http
    rules = 'path "auth/token/create*" { capabilities = ["create", "update", "sudo"] }'
    limited = await _policy_token(http, rules, num_uses=1)
    as_limited = VaultHTTP(http.session, http.address, limited)
    reply = await as_limited.write("auth/token/create", {"ttl": "768h"})
    assert reply.status == 400, reply.body
    assert reply.errors == ["restricted use token cannot generate child tokens"]
    # That request spent its one use: the token is gone, and no child exists.
    assert (await http.write("auth/token/lookup", {"token": limited})).status == 400
    orphans_before = set((await http.list("auth/token/accessors")).data["keys"])
    limited2 = await _policy_token(http, rules, num_uses=3)
    as_limited2 = VaultHTTP(http.session, http.address, limited2)
    reply = await as_limited2.write("auth/token/create-orphan", {})
    assert reply.status == 400, reply.body
    after = set((await http.list("auth/token/accessors")).data["keys"])
    assert len(after - orphans_before) == 1  # limited2 itself, nothing it made


async def test_a_child_does_not_outlive_its_parent(broker: RunningBroker) -> None:
    http = broker.http
    rules = 'path "auth/token/create" { capabilities = ["update"] }'
    parent = await _policy_token(http, rules, explicit_max_ttl="2m")
    as_parent = VaultHTTP(http.session, http.address, parent)
    reply = await as_parent.write("auth/token/create", {"ttl": "768h"})
    assert reply.status == 200, reply.body
    child = reply.body["auth"]
    assert 0 < child["lease_duration"] <= 120, child
    looked = (await http.write("auth/token/lookup", {"token": child["client_token"]})).data
    assert 0 < looked["ttl"] <= 120
    # Revoking the parent (not as an orphaning revoke) takes the child with it.
    assert (await http.write("auth/token/revoke", {"token": parent})).status == 204
    reply = await http.write("auth/token/lookup", {"token": child["client_token"]})
    assert reply.status == 400, reply.body


async def test_the_last_use_of_a_token_revokes_its_leases(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    http = broker.http
    token = await _policy_token(
        http, 'path "database/creds/brkt-pg-ro" { capabilities = ["read"] }', num_uses=1
    )
    as_token = VaultHTTP(http.session, http.address, token)
    lease_id = (await as_token.creds("brkt-pg-ro")).body["lease_id"]
    assert (await as_token.read("database/creds/brkt-pg-ro")).status == 403

    async def gone() -> bool:
        looked = await http.write("sys/leases/lookup", {"lease_id": lease_id})
        return looked.status == 400 or looked.data.get("state") == "revoked"

    await eventually(gone)


# -- 7. nothing happens for a request that is refused ----------------------------------------


async def _issued_roles(pg: PgCluster) -> int:
    admin = await asyncpg.connect(pg.dsn())
    try:
        count: int = await admin.fetchval("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v_%'")
        return count
    finally:
        await admin.close()


async def test_a_bad_wrap_ttl_is_refused_before_any_login_is_made(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    http = broker.http
    before_roles = await _issued_roles(pg_target)
    before_leases = await http.list("sys/leases/lookup/database/creds/brkt-pg-ro/")
    keys_before = set(before_leases.body.get("data", {}).get("keys", []))
    for ttl in ("0", "1ms", "0s", "9999h", "-5s", "soon"):
        reply = await http.call(
            "GET", "database/creds/brkt-pg-ro", headers={"X-Vault-Wrap-TTL": ttl}
        )
        assert reply.status == 400, (ttl, reply.body)
        assert "X-Vault-Wrap-TTL" in reply.errors[0]
    assert await _issued_roles(pg_target) == before_roles
    after_leases = await http.list("sys/leases/lookup/database/creds/brkt-pg-ro/")
    assert set(after_leases.body.get("data", {}).get("keys", [])) == keys_before


# -- found in review: listing needs sudo, lookup names no token, capabilities as enforced ----


async def test_listing_lease_ids_needs_sudo_as_in_vault(broker: RunningBroker) -> None:
    http = broker.http
    lease_id = (await http.creds("brkt-pg-ro")).body["lease_id"]
    plain = await _policy_token(
        http,
        'path "sys/leases/lookup/*" { capabilities = ["list", "update"] }\n'
        'path "sys/leases/lookup" { capabilities = ["update"] }\n'
        'path "sys/leases" { capabilities = ["read"] }',
    )
    as_plain = VaultHTTP(http.session, http.address, plain)
    assert (await as_plain.list("sys/leases/lookup/database/creds/brkt-pg-ro/")).status == 403
    assert (await as_plain.list("sys/leases/lookup/")).status == 403
    assert (await as_plain.read("sys/leases")).status == 403
    # Looking one lease up by its id needs no sudo, and names no token.
    looked = await as_plain.write("sys/leases/lookup", {"lease_id": lease_id})
    assert looked.status == 200, looked.body
    assert "token_accessor" not in looked.data
    with_sudo = await _policy_token(
        http, 'path "sys/leases/lookup/*" { capabilities = ["list", "sudo"] }'
    )
    as_sudo = VaultHTTP(http.session, http.address, with_sudo)
    listed = await as_sudo.list("sys/leases/lookup/database/creds/brkt-pg-ro/")
    assert listed.status == 200 and lease_id.rsplit("/", 1)[1] in listed.data["keys"]
    assert (await http.write(f"sys/leases/revoke/{lease_id}")).status == 204


async def test_capabilities_agree_with_enforcement(broker: RunningBroker) -> None:
    http = broker.http
    victim = "brkt-capvictim-" + secrets.token_hex(3)
    token = await _policy_token(
        http,
        'path "sys/policy/*" { capabilities = ["update", "read", "delete"] }\n'
        f'path "sys/policy/{victim}" {{ capabilities = ["deny"] }}\n'
        'path "sys/mounts/*" { capabilities = ["update", "delete", "sudo"] }\n'
        'path "sys/mounts/brkt-capdb" { capabilities = ["deny"] }\n'
        'path "database/roles/" { capabilities = ["list"] }',
    )
    asked = [
        f"sys/policy/{victim.upper()}",
        "sys/mounts/brkt-capdb/",
        "sys/mounts//brkt-capdb",
        "database/roles",
        "database/roles/",
    ]
    reply = await http.write("sys/capabilities", {"token": token, "paths": asked})
    assert reply.status == 200, reply.body
    assert reply.body[f"sys/policy/{victim.upper()}"] == ["deny"]
    assert reply.body["sys/mounts/brkt-capdb/"] == ["deny"]
    assert reply.body["sys/mounts//brkt-capdb"] == ["deny"]
    assert reply.body["database/roles"] == ["list"]
    assert reply.body["database/roles/"] == ["list"]
    as_token = VaultHTTP(http.session, http.address, token)
    assert (await as_token.list("database/roles")).status == 200


async def test_a_body_that_cannot_be_decoded_is_a_400(broker: RunningBroker) -> None:
    reply = await broker.http.call(
        "PUT",
        "sys/policy/brkt-gzip",
        raw=b"this is not gzip",
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert reply.status == 400, reply.body
    assert (await broker.http.read("sys/policy/brkt-gzip")).status == 404


async def test_a_conflicting_write_names_no_stored_value(
    broker: RunningBroker, approle_mount: str
) -> None:
    """Storage errors carry PostgreSQL's detail (``Key (mount, role_id)=(..., <the other
    role's id>)``): the answer is a 400 that names the constraint, never the value."""
    http = broker.http
    for name in ("first", "second"):
        reply = await http.write(f"auth/{approle_mount}/role/{name}", {"token_policies": "default"})
        assert reply.status == 204, reply.body
    taken = (await http.read(f"auth/{approle_mount}/role/first/role-id")).data["role_id"]
    reply = await http.write(f"auth/{approle_mount}/role/second/role-id", {"role_id": taken})
    assert reply.status == 400, reply.body
    assert taken not in str(reply.body)


async def test_a_password_written_into_the_url_never_comes_back_on_read(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    """Vault masks it too: a read of the connection shows the URL with the password
    replaced, so the admin password (which rotate-root promises only the broker knows)
    cannot be read back by whoever may read the configuration."""
    http = broker.http
    url = f"postgresql://{PG_ADMIN}:{PG_ADMIN_PASSWORD}@127.0.0.1:{pg_target.server.port}/app"
    name = "brkt-inline-" + secrets.token_hex(3)
    body = {**pg_connection_config(pg_target), "connection_url": url}
    body.pop("username")
    body.pop("password")
    written = await http.write(f"database/config/{name}", body)
    assert written.status in (200, 204), written.body
    try:
        read = await http.read(f"database/config/{name}")
        assert read.status == 200, read.body
        assert PG_ADMIN_PASSWORD not in str(read.body)
        assert read.data["connection_details"]["connection_url"].startswith(
            f"postgresql://{PG_ADMIN}:***@"
        )
    finally:
        await http.delete(f"database/config/{name}")
