"""Storage is not trusted: rows edited, swapped, moved or copied from another install in the
storage database are refused, alerted on and counted, never used (docs/storage-threat-model.md).

Each test plays someone with write access to the storage database (and nothing else: no
keyring, no root key): it edits a row directly, NOTIFYs the nodes as any writer could (so no
cache hides the edit), then shows the broker does not act on the row.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from broker.exceptions import RowIntegrityError
from broker.models import NewLease
from broker.server.assembly import start_server
from broker.server.storage.connector import create_pool
from broker.server.storage.stores import Stores
from tests.conftest import (
    PG_ADMIN,
    PG_READONLY,
    TOKEN,
    PgCluster,
    RunningBroker,
    own_broker_settings,
)
from tests.support import (
    ISSUED_PASSWORDS,
    VaultHTTP,
    eventually,
    pg_role_exists,
    unseal_for_test,
)

FAILED = "storage integrity check failed"


@pytest.fixture
async def storage(broker: RunningBroker) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(broker.settings.storage_dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def _notify(storage: asyncpg.Connection) -> None:
    """What any storage writer can do too: make every node drop its caches."""
    await storage.execute("SELECT pg_notify('broker_catalog', ''), pg_notify('broker_auth', '')")


async def _failures(broker: RunningBroker, table: str) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{broker.address}/v1/sys/metrics?format=prometheus", headers={"X-Vault-Token": TOKEN}
        ) as resp,
    ):
        text = await resp.text()
    name = "broker_storage_integrity_failures_total"
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and f'table="{table}"' in line
    )


def _refused(reply: object) -> bool:
    body = getattr(reply, "body", {})
    status = getattr(reply, "status", 0)
    return status == 500 and any(FAILED in e for e in body.get("errors", []))


async def _role(http: VaultHTTP, name: str, statements: str = PG_READONLY) -> None:
    reply = await http.write(
        f"database/roles/{name}",
        {"db_name": "pg", "creation_statements": [statements], "default_ttl": "1h"},
    )
    assert reply.status == 204, reply.body


async def _no_leases(http: VaultHTTP, role: str) -> bool:
    reply = await http.list(f"sys/leases/lookup/database/creds/{role}")
    return reply.status == 404 or not reply.data.get("keys")


# -- database roles and connections -----------------------------------------------------------


async def test_an_edited_role_issues_nothing(
    broker: RunningBroker, storage: asyncpg.Connection, pg_target: PgCluster
) -> None:
    http = broker.http
    name = "brkt-int-role-" + secrets.token_hex(3)
    planted = "brkt_int_planted_" + secrets.token_hex(3)
    await _role(http, name)
    before = await _failures(broker, "broker_roles")
    await storage.execute(
        "UPDATE broker_roles SET creation_statements = $3 WHERE mount = $1 AND name = $2",
        "database",
        name,
        [f"CREATE ROLE {planted} LOGIN PASSWORD 'x'; " + PG_READONLY],
    )
    await _notify(storage)
    reply = await http.read(f"database/creds/{name}")
    assert _refused(reply), reply.body
    assert not await pg_role_exists(pg_target.dsn(), planted)
    assert await _no_leases(http, name)
    assert await _failures(broker, "broker_roles") == before + 1
    assert _refused(await http.read(f"database/roles/{name}"))
    assert _refused(await http.write(f"database/roles/{name}", {"default_ttl": "2h"}))
    # Deleted and written again through the API, the role works again.
    assert (await http.delete(f"database/roles/{name}")).status == 204
    await _role(http, name)
    ISSUED_PASSWORDS.add((await http.creds(name)).data["password"])


async def test_swapped_roles_are_refused(
    broker: RunningBroker, storage: asyncpg.Connection
) -> None:
    """Each row's MAC binds it to its own key: B's contents with B's MAC under A's name fail."""
    http = broker.http
    a, b = ("brkt-int-swap-" + secrets.token_hex(3) for _ in range(2))
    await _role(http, a)
    await _role(http, b, PG_READONLY + " SELECT 1;")
    await storage.execute(
        """UPDATE broker_roles r SET creation_statements = o.creation_statements, mac = o.mac
           FROM broker_roles o
           WHERE r.mount = 'database' AND o.mount = 'database'
             AND ((r.name = $1 AND o.name = $2) OR (r.name = $2 AND o.name = $1))""",
        a,
        b,
    )
    await _notify(storage)
    try:
        for name in (a, b):
            reply = await http.read(f"database/creds/{name}")
            assert _refused(reply), reply.body
            assert await _no_leases(http, name)
    finally:
        for name in (a, b):
            assert (await http.delete(f"database/roles/{name}")).status == 204


async def test_a_row_copied_from_another_install_is_refused(
    broker: RunningBroker,
    storage: asyncpg.Connection,
    pg_target: PgCluster,
    fresh_storage_db: str,
    http_session: aiohttp.ClientSession,
) -> None:
    """Another broker (another keyring) writes the role an attacker wants; its whole row,
    MAC included, copied into this install's storage under the same key, is refused."""
    name = "brkt-int-copy-" + secrets.token_hex(3)
    planted = "brkt_int_copied_" + secrets.token_hex(3)
    http = broker.http
    await _role(http, name)
    other = own_broker_settings(pg_target.dsn(fresh_storage_db))
    runner = await start_server(other)
    try:
        theirs = VaultHTTP(http_session, f"http://{other.listen_address}", TOKEN)
        assert (await theirs.write("sys/mounts/database", {"type": "database"})).status == 204
        reply = await theirs.write(
            f"database/roles/{name}",
            {"db_name": "pg", "creation_statements": [f"CREATE ROLE {planted} LOGIN"]},
        )
        assert reply.status == 204, reply.body
    finally:
        await runner.cleanup()
    source = await asyncpg.connect(pg_target.dsn(fresh_storage_db))
    try:
        row = await source.fetchrow(
            "SELECT creation_statements, mac FROM broker_roles WHERE name = $1", name
        )
    finally:
        await source.close()
    assert row is not None and row["mac"] is not None
    await storage.execute(
        "UPDATE broker_roles SET creation_statements = $2, mac = $3 "
        "WHERE mount = 'database' AND name = $1",
        name,
        row["creation_statements"],
        row["mac"],
    )
    await _notify(storage)
    try:
        assert _refused(await http.read(f"database/creds/{name}"))
        assert not await pg_role_exists(pg_target.dsn(), planted)
    finally:
        assert (await http.delete(f"database/roles/{name}")).status == 204


async def test_an_edited_connection_is_not_used(
    broker: RunningBroker, storage: asyncpg.Connection
) -> None:
    """The connection's URL (sealed, so an attacker can only replace it) points the broker,
    with its admin password, at the attacker's host: refused before any connection."""
    http = broker.http
    name = "brkt-int-conn-" + secrets.token_hex(3)
    await _role(http, name)
    before = await _failures(broker, "broker_connections")
    original = await storage.fetchrow(
        "SELECT connection_url, allowed_roles, mac FROM broker_connections "
        "WHERE mount = 'database' AND name = 'pg'"
    )
    assert original is not None
    try:
        await storage.execute(
            "UPDATE broker_connections SET connection_url = $1 "
            "WHERE mount = 'database' AND name = 'pg'",
            "postgresql://{{username}}:{{password}}@127.0.0.1:1/app",
        )
        await _notify(storage)
        reply = await http.read(f"database/creds/{name}")
        assert _refused(reply), reply.body
        assert await _failures(broker, "broker_connections") >= before + 1
        assert _refused(await http.read("database/config/pg"))
        # allowed_roles too
        await storage.execute(
            "UPDATE broker_connections SET connection_url = $1, allowed_roles = '{nobody}' "
            "WHERE mount = 'database' AND name = 'pg'",
            original["connection_url"],
        )
        await _notify(storage)
        assert _refused(await http.read(f"database/creds/{name}"))
    finally:
        # A whole-row rollback to a valid version is the limit: the original row is valid.
        await storage.execute(
            "UPDATE broker_connections SET connection_url = $1, allowed_roles = $2, mac = $3 "
            "WHERE mount = 'database' AND name = 'pg'",
            original["connection_url"],
            original["allowed_roles"],
            original["mac"],
        )
        await _notify(storage)
    ISSUED_PASSWORDS.add((await http.creds(name)).data["password"])


async def test_an_inline_password_in_the_connection_url_is_stored_sealed(
    broker: RunningBroker, storage: asyncpg.Connection, pg_target: PgCluster
) -> None:
    """Vault accepts ``scheme://user:password@host``; the whole URL is barrier ciphertext."""
    http = broker.http
    inline = "brkt-inline-" + secrets.token_hex(8)
    name = "brkt-int-inline-" + secrets.token_hex(3)
    url = f"postgresql://{PG_ADMIN}:{inline}@127.0.0.1:{pg_target.server.port}/app"
    reply = await http.write(
        f"database/config/{name}",
        {
            "plugin_name": "postgresql-database-plugin",
            "connection_url": url,
            "verify_connection": False,
            "allowed_roles": [],
        },
    )
    assert reply.status == 204, reply.body
    try:
        stored = await storage.fetchval(
            "SELECT connection_url FROM broker_connections WHERE mount = 'database' AND name = $1",
            name,
        )
        assert stored.startswith("enc:") and inline not in stored
        dump = await storage.fetchval(
            "SELECT string_agg(t::text, ' ') FROM broker_connections t WHERE name = $1", name
        )
        assert inline not in dump
        read = await http.read(f"database/config/{name}")
        assert read.status == 200, read.body
    finally:
        assert (await http.delete(f"database/config/{name}")).status == 204


async def test_an_edited_static_role_is_refused(
    broker: RunningBroker, storage: asyncpg.Connection, pg_target: PgCluster
) -> None:
    http = broker.http
    account = "brkt_int_static_" + secrets.token_hex(3)
    victim = "brkt_int_victim_" + secrets.token_hex(3)
    name = "brkt-int-static-" + secrets.token_hex(3)
    admin = await asyncpg.connect(pg_target.dsn())
    try:
        for role in (account, victim):
            await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'initial-pw'")
            await admin.execute(f"GRANT {role} TO {PG_ADMIN} WITH ADMIN OPTION")
        reply = await http.write(
            f"database/static-roles/{name}",
            {"db_name": "pg", "username": account, "rotation_period": "1h"},
        )
        assert reply.status == 204, reply.body
        ISSUED_PASSWORDS.add((await http.read(f"database/static-creds/{name}")).data["password"])
        await storage.execute(
            "UPDATE broker_static_roles SET username = $2 WHERE mount = 'database' AND name = $1",
            name,
            victim,
        )
        await _notify(storage)
        assert _refused(await http.read(f"database/static-creds/{name}"))
        assert _refused(await http.write(f"database/rotate-role/{name}"))
        assert await _failures(broker, "broker_static_roles") >= 1
    finally:
        await storage.execute(
            "DELETE FROM broker_static_roles WHERE mount = 'database' AND name = $1", name
        )
        for role in (account, victim):
            await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


# -- who may call: policies, tokens, AppRole --------------------------------------------------


async def test_an_edited_policy_grants_nothing(
    broker: RunningBroker, storage: asyncpg.Connection
) -> None:
    http = broker.http
    policy = "brkt-int-pol-" + secrets.token_hex(3)
    rules = 'path "auth/token/lookup-self" { capabilities = ["read"] }'
    assert (await http.write(f"sys/policy/{policy}", {"policy": rules})).status == 204
    token = (await http.write("auth/token/create", {"policies": [policy]})).body["auth"][
        "client_token"
    ]
    assert (await http.call("GET", "sys/mounts", token=token)).status == 403
    before = await _failures(broker, "broker_policies")
    await storage.execute(
        "UPDATE broker_policies SET policy = $2 WHERE name = $1",
        policy,
        'path "*" { capabilities = ["create", "read", "update", "delete", "list", "sudo"] }',
    )
    await _notify(storage)
    # The notification reaches the node asynchronously (the ACL cache lasts two seconds):
    # until then the old rules hold; never the edited ones.
    for _ in range(50):
        reply = await http.call("GET", "sys/mounts", token=token)
        assert reply.status != 200, reply.body
        if _refused(reply):
            break
        await asyncio.sleep(0.1)
    assert _refused(reply), reply.body
    assert await _failures(broker, "broker_policies") >= before + 1
    assert (await http.delete(f"sys/policy/{policy}")).status == 204


async def test_an_edited_token_does_not_authenticate(
    broker: RunningBroker, storage: asyncpg.Connection
) -> None:
    http = broker.http
    created = (await http.write("auth/token/create", {"policies": ["default"]})).body["auth"]
    token, accessor = created["client_token"], created["accessor"]
    await storage.execute(
        "UPDATE broker_tokens SET policies = '{root}' WHERE accessor = $1", accessor
    )
    await _notify(storage)
    reply = await http.call("GET", "sys/mounts", token=token)
    assert reply.status != 200 and _refused(reply), reply.body
    assert _refused(await http.write("auth/token/lookup-accessor", {"accessor": accessor}))
    assert await _failures(broker, "broker_tokens") >= 1
    # A token row moved onto another token's secret (its token_hmac) fails too.
    other = (await http.write("auth/token/create", {"policies": ["default"]})).body["auth"]
    await storage.execute("DELETE FROM broker_tokens WHERE accessor = $1", accessor)
    await storage.execute(
        "UPDATE broker_tokens SET policies = '{root}' WHERE accessor = $1", other["accessor"]
    )
    await _notify(storage)
    assert _refused(await http.call("GET", "sys/mounts", token=other["client_token"]))
    await storage.execute("DELETE FROM broker_tokens WHERE accessor = $1", other["accessor"])


async def test_renewed_and_orphaned_tokens_stay_valid(broker: RunningBroker) -> None:
    """The broker's own changes to a token row (renewal, orphaning) re-authenticate it."""
    http = broker.http
    parent = (await http.write("auth/token/create", {"ttl": "1h"})).body["auth"]
    as_parent = VaultHTTP(http.session, http.address, parent["client_token"])
    child = (await as_parent.write("auth/token/create", {"ttl": "1h"})).body["auth"]
    renewed = await http.write("auth/token/renew", {"token": child["client_token"]})
    assert renewed.status == 200, renewed.body
    reply = await http.write("auth/token/revoke-orphan", {"token": parent["client_token"]})
    assert reply.status == 204, reply.body
    looked = await http.call("GET", "auth/token/lookup-self", token=child["client_token"])
    assert looked.status == 200, looked.body
    assert looked.data.get("parent") in (None, "")  # orphaned, still valid


async def test_an_edited_approle_role_does_not_log_in(
    broker: RunningBroker, storage: asyncpg.Connection
) -> None:
    http = broker.http
    mount = "brkt-int-approle-" + secrets.token_hex(3)
    assert (await http.write(f"sys/auth/{mount}", {"type": "approle"})).status == 204
    path = f"auth/{mount}/role/app"
    assert (await http.write(path, {"token_policies": "default"})).status == 204
    role_id = (await http.read(f"{path}/role-id")).data["role_id"]
    secret = (await http.write(f"{path}/secret-id")).data["secret_id"]
    policy = "brkt-int-wide-" + secrets.token_hex(3)
    wide = 'path "*" { capabilities = ["read", "list"] }'
    assert (await http.write(f"sys/policy/{policy}", {"policy": wide})).status == 204
    await storage.execute(
        "UPDATE broker_approle_roles SET token_policies = $2 WHERE mount = $1",
        mount,
        [policy],
    )
    await _notify(storage)
    login = {"role_id": role_id, "secret_id": secret}
    reply = await http.call("PUT", f"auth/{mount}/login", login, token="")
    assert _refused(reply), reply.body
    assert "auth" not in reply.body or not reply.body.get("auth")
    assert await _failures(broker, "broker_approle_roles") >= 1
    assert (await http.delete(f"sys/auth/{mount}")).status == 204
    assert (await http.delete(f"sys/policy/{policy}")).status == 204


# -- audit devices ----------------------------------------------------------------------------


async def test_an_edited_audit_device_is_not_followed(
    broker: RunningBroker, storage: asyncpg.Connection, tmp_path: Path
) -> None:
    http = broker.http
    name = "brkt-int-audit-" + secrets.token_hex(3)
    kept, diverted = tmp_path / "kept.log", tmp_path / "diverted.log"
    reply = await http.write(
        f"sys/audit/{name}", {"type": "file", "options": {"file_path": str(kept)}}
    )
    assert reply.status == 204, reply.body
    original = await storage.fetchrow(
        "SELECT options, mac FROM broker_audit_devices WHERE path = $1", name
    )
    assert original is not None
    try:
        await storage.execute(
            "UPDATE broker_audit_devices SET options = $2 WHERE path = $1",
            name,
            json.dumps({"file_path": str(diverted)}),
        )
        await _notify(storage)
        assert _refused(await http.read("sys/audit"))
        assert (await http.read("sys/mounts")).status == 200
        size = kept.stat().st_size
        assert (await http.read("sys/mounts")).status == 200
        assert kept.stat().st_size > size  # still the device the operator enabled
        assert not diverted.exists()
        assert await _failures(broker, "broker_audit_devices") >= 1
    finally:
        await storage.execute(
            "UPDATE broker_audit_devices SET options = $2, mac = $3 WHERE path = $1",
            name,
            original["options"],
            original["mac"],
        )
        await _notify(storage)
        assert (await http.delete(f"sys/audit/{name}")).status == 204


# -- the upgrade: rows written before row authentication ------------------------------------------


async def test_rows_written_before_the_upgrade_are_authenticated_once(
    pg_target: PgCluster, fresh_storage_db: str
) -> None:
    """A keyring without a row key (an install from before) gets one at unseal, and its rows
    are authenticated then, once: afterwards a row without a MAC is refused."""
    pool = await create_pool(pg_target.dsn(fresh_storage_db))
    try:
        stores = Stores.open(pool)
        await stores.migrate()
        await unseal_for_test(stores)
        await stores.auth.upsert_policy("brkt-old", 'path "x" { capabilities = ["read"] }')
        # Back to the state of an older version: no row key in the keyring, no MACs.
        barrier = stores.keyring.barrier
        old = dataclasses.replace(barrier.keyring, row_mac_key=None)
        seal = await stores.keyring.get_seal()
        assert seal is not None
        sealed = barrier.sealed_keyring(old)
        assert await stores.keyring.update_keyring(seal.keyring_version, sealed)
        barrier.install(barrier.root_key, old)
        await pool.execute("UPDATE broker_policies SET mac = NULL")
        await pool.execute("UPDATE broker_tokens SET mac = NULL")
        assert await stores.auth.get_policy("brkt-old") is not None  # before: trusted

        assert await stores.keyring.authenticate_rows() >= 2  # the policy and the root token
        assert barrier.keyring.row_mac_key is not None
        assert await pool.fetchval("SELECT count(*) FROM broker_policies WHERE mac IS NULL") == 0
        assert await stores.auth.get_policy("brkt-old") is not None
        assert await stores.keyring.authenticate_rows() == 0  # once only

        # From now on, a row without a MAC (or edited and stripped of it) is refused.
        await pool.execute("UPDATE broker_policies SET mac = NULL, policy = 'path \"*\" {}'")
        with pytest.raises(RowIntegrityError, match=FAILED):
            await stores.auth.get_policy("brkt-old")
    finally:
        await pool.close()


async def test_a_node_does_not_serve_with_a_tampered_audit_device(
    pg_target: PgCluster,
    fresh_storage_db: str,
    http_session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """At unseal a tampered device row keeps the node sealed (here: an auto-unsealing node
    does not start), rather than serving unaudited or logging where the attacker chose."""
    kept, diverted = tmp_path / "kept.log", tmp_path / "diverted.log"
    settings = own_broker_settings(
        pg_target.dsn(fresh_storage_db), audit_file_dirs=(str(tmp_path),)
    )
    runner = await start_server(settings)
    try:
        http = VaultHTTP(http_session, f"http://{settings.listen_address}", TOKEN)
        body = {"type": "file", "options": {"file_path": str(kept)}}
        assert (await http.write("sys/audit/brkt-kept", body)).status == 204
    finally:
        await runner.cleanup()
    storage = await asyncpg.connect(pg_target.dsn(fresh_storage_db))
    try:
        await storage.execute(
            "UPDATE broker_audit_devices SET options = $1", json.dumps({"file_path": str(diverted)})
        )
    finally:
        await storage.close()
    again = own_broker_settings(pg_target.dsn(fresh_storage_db), audit_file_dirs=(str(tmp_path),))
    with pytest.raises(RowIntegrityError):
        runner = await start_server(again)
        await runner.cleanup()
    assert not diverted.exists()


# -- leases ------------------------------------------------------------------------------------


async def _gauge(broker: RunningBroker, name: str) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{broker.address}/v1/sys/metrics?format=prometheus", headers={"X-Vault-Token": TOKEN}
        ) as resp,
    ):
        text = await resp.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + " ", name + "{"))
    )


async def _issue(http: VaultHTTP, role: str) -> dict[str, str]:
    reply = await http.creds(role)
    return {"lease_id": reply.body["lease_id"], "username": reply.data["username"]}


async def _lease_row(storage: asyncpg.Connection, lease_id: str) -> asyncpg.Record:
    row = await storage.fetchrow(
        "SELECT state, last_error, username FROM broker_leases WHERE lease_id = $1", lease_id
    )
    assert row is not None
    return row


async def _forget(http: VaultHTTP, pg_target: PgCluster, lease_id: str, *users: str) -> None:
    """Clean up after a lease left failing on purpose: forget it, drop its user by hand."""
    assert (await http.write(f"sys/leases/revoke-force/{lease_id}")).status == 204
    conn = await asyncpg.connect(pg_target.dsn())
    try:
        for user in users:
            await conn.execute(f'DROP ROLE IF EXISTS "{user}"')
    finally:
        await conn.close()


async def _drop_planted(pg_target: PgCluster, planted: str) -> None:
    conn = await asyncpg.connect(pg_target.dsn())
    try:
        await conn.execute(f'DROP ROLE IF EXISTS "{planted}"')
    finally:
        await conn.close()


async def test_an_edited_lease_does_not_run_its_revocation_statements(
    broker: RunningBroker, storage: asyncpg.Connection, pg_target: PgCluster
) -> None:
    """A lease row carries the statements revocation runs as the connection's admin: edited
    in storage, they are never run; the lease stays failing, alerted on and counted. An
    untouched lease on the same role still revokes."""
    http = broker.http
    name = "brkt-int-lease-" + secrets.token_hex(3)
    planted = "brkt_evil_lease_" + secrets.token_hex(3)
    await _role(http, name)
    tampered = await _issue(http, name)
    intact = await _issue(http, name)
    lease_id = tampered["lease_id"]
    before = await _failures(broker, "broker_leases")
    await storage.execute(
        "UPDATE broker_leases SET revocation_statements = $2 WHERE lease_id = $1",
        lease_id,
        [f"CREATE ROLE {planted}"],
    )
    try:
        reply = await http.write("sys/leases/revoke", {"lease_id": lease_id})
        assert reply.status != 204, reply.body
        assert not await pg_role_exists(pg_target.dsn(), planted)
        assert await pg_role_exists(pg_target.dsn(), tampered["username"])  # not revoked
        row = await _lease_row(storage, lease_id)
        assert row["state"] == "revoking" and FAILED in (row["last_error"] or "")
        assert await _failures(broker, "broker_leases") >= before + 1
        assert await _gauge(broker, "broker_leases_failing") >= 1
        # The untouched lease revokes as ever.
        ok = await http.write("sys/leases/revoke", {"lease_id": intact["lease_id"]})
        assert ok.status == 204, ok.body
        assert not await pg_role_exists(pg_target.dsn(), intact["username"])
    finally:
        await _drop_planted(pg_target, planted)
        await _forget(http, pg_target, lease_id, tampered["username"])
        assert (await http.delete(f"database/roles/{name}")).status == 204


async def test_an_edited_lease_does_not_run_its_renew_statements(
    broker: RunningBroker, storage: asyncpg.Connection, pg_target: PgCluster
) -> None:
    http = broker.http
    name = "brkt-int-renew-" + secrets.token_hex(3)
    planted = "brkt_evil_lease_" + secrets.token_hex(3)
    await _role(http, name)
    issued = await _issue(http, name)
    lease_id = issued["lease_id"]
    before = await _failures(broker, "broker_leases")
    await storage.execute(
        "UPDATE broker_leases SET renew_statements = $2 WHERE lease_id = $1",
        lease_id,
        [f"CREATE ROLE {planted}"],
    )
    try:
        reply = await http.write("sys/leases/renew", {"lease_id": lease_id, "increment": 600})
        assert _refused(reply), reply.body
        assert not await pg_role_exists(pg_target.dsn(), planted)
        assert await _failures(broker, "broker_leases") == before + 1
    finally:
        await _drop_planted(pg_target, planted)
        await _forget(http, pg_target, lease_id, issued["username"])
        assert (await http.delete(f"database/roles/{name}")).status == 204


async def test_swapped_lease_users_are_not_revoked(
    broker: RunningBroker, storage: asyncpg.Connection, pg_target: PgCluster
) -> None:
    """Each lease's MAC binds its user to its id: swapped, revoking one lease would drop the
    other's user (early) and leave its own alive. Neither is acted on."""
    http = broker.http
    name = "brkt-int-lswap-" + secrets.token_hex(3)
    await _role(http, name)
    a, b = await _issue(http, name), await _issue(http, name)
    await storage.execute(
        """UPDATE broker_leases l SET username = o.username
           FROM broker_leases o
           WHERE (l.lease_id = $1 AND o.lease_id = $2) OR (l.lease_id = $2 AND o.lease_id = $1)""",
        a["lease_id"],
        b["lease_id"],
    )
    try:
        for issued in (a, b):
            reply = await http.write("sys/leases/revoke", {"lease_id": issued["lease_id"]})
            assert reply.status != 204, reply.body
            row = await _lease_row(storage, issued["lease_id"])
            assert FAILED in (row["last_error"] or "")
        for issued in (a, b):
            assert await pg_role_exists(pg_target.dsn(), issued["username"])
    finally:
        for issued in (a, b):
            await _forget(http, pg_target, issued["lease_id"], issued["username"])
        assert (await http.delete(f"database/roles/{name}")).status == 204


async def test_leases_written_before_the_upgrade_are_authenticated_once(
    pg_target: PgCluster, fresh_storage_db: str
) -> None:
    """Live leases from before lease rows had MACs get one in the upgrade at unseal, so they
    stay revocable; afterwards a lease without a MAC is refused."""
    pool = await create_pool(pg_target.dsn(fresh_storage_db))
    try:
        stores = Stores.open(pool)
        await stores.migrate()
        await unseal_for_test(stores)
        now = dt.datetime.now(dt.UTC)
        lease = NewLease(
            "database/creds/brkt-old/upgraded0000000000000000",
            "database",
            "brkt-old",
            "pg",
            "postgresql-database-plugin",
            "v_brkt_old_user",
            ('DROP ROLE IF EXISTS "{{name}}"',),
            (),
            now,
            now + dt.timedelta(hours=1),
            now + dt.timedelta(hours=2),
        )
        await stores.leases.bulk_insert_leases([lease], "active")
        assert await stores.leases.get_lease(lease.lease_id, checked=True) is not None
        # Back to the state of an older version: no row key in the keyring, no MACs.
        barrier = stores.keyring.barrier
        old = dataclasses.replace(barrier.keyring, row_mac_key=None)
        seal = await stores.keyring.get_seal()
        assert seal is not None
        assert await stores.keyring.update_keyring(
            seal.keyring_version, barrier.sealed_keyring(old)
        )
        barrier.install(barrier.root_key, old)
        for table in ("broker_leases", "broker_policies", "broker_tokens"):
            await pool.execute(f"UPDATE {table} SET mac = NULL")

        assert await stores.keyring.authenticate_rows() >= 2  # the lease and the root token
        assert await pool.fetchval("SELECT count(*) FROM broker_leases WHERE mac IS NULL") == 0
        assert await stores.leases.get_lease(lease.lease_id, checked=True) is not None
        claimed = await stores.leases.claim_due_leases(10, 30, lease.lease_id, exact=True)
        assert claimed == []  # not due: but a due one comes back authenticated
        await pool.execute("UPDATE broker_leases SET due_at = now()")
        (due,) = await stores.leases.claim_due_leases(10, 30, lease.lease_id, exact=True)
        assert not due.tampered

        await pool.execute("UPDATE broker_leases SET mac = NULL, due_at = now()")
        with pytest.raises(RowIntegrityError, match=FAILED):
            await stores.leases.get_lease(lease.lease_id, checked=True)
        (due,) = await stores.leases.claim_due_leases(10, 30, lease.lease_id, exact=True)
        assert due.tampered
    finally:
        await pool.close()


async def test_a_wrapping_token_hash_moved_onto_another_row_opens_nothing(
    broker: RunningBroker, storage: asyncpg.Connection
) -> None:
    """Wrapped responses are found by the wrapping token's HMAC: a storage writer who
    holds one wrapping token and copies its HMAC onto another caller's row must not be
    able to unwrap that caller's credentials with it."""
    http = broker.http
    victim = await http.call("GET", "database/creds/brkt-pg-ro", headers={"X-Vault-Wrap-TTL": "2m"})
    assert victim.status == 200, victim.body
    mine = await http.call(
        "PUT", "sys/wrapping/wrap", {"anything": "mine"}, headers={"X-Vault-Wrap-TTL": "2m"}
    )
    assert mine.status == 200, mine.body
    my_token = mine.body["wrap_info"]["token"]
    rows = await storage.fetch(
        "SELECT token_hmac, accessor FROM broker_wrapped_responses WHERE accessor = ANY($1)",
        [victim.body["wrap_info"]["accessor"], mine.body["wrap_info"]["accessor"]],
    )
    by_accessor = {r["accessor"]: r["token_hmac"] for r in rows}
    mine_hmac = by_accessor[mine.body["wrap_info"]["accessor"]]
    await storage.execute("DELETE FROM broker_wrapped_responses WHERE token_hmac = $1", mine_hmac)
    await storage.execute(
        "UPDATE broker_wrapped_responses SET token_hmac = $1 WHERE accessor = $2",
        mine_hmac,
        victim.body["wrap_info"]["accessor"],
    )
    stolen = await http.call("PUT", "sys/wrapping/unwrap", {"token": my_token}, token="")
    assert stolen.status in (400, 500), stolen.body
    assert "password" not in str(stolen.body)


async def test_a_secret_id_moved_to_another_role_logs_nothing_in(
    broker: RunningBroker, storage: asyncpg.Connection
) -> None:
    """Secret IDs are hashed bound to their mount and role: a storage writer who moves a
    genuine one onto a more privileged role cannot log in to that role with it."""
    http = broker.http
    mount = "brkt-int-sid-" + secrets.token_hex(3)
    assert (await http.write(f"sys/auth/{mount}", {"type": "approle"})).status == 204
    try:
        for role in ("low", "high"):
            reply = await http.write(f"auth/{mount}/role/{role}", {"token_policies": "default"})
            assert reply.status == 204, reply.body
        secret = (await http.write(f"auth/{mount}/role/low/secret-id")).data["secret_id"]
        high_id = (await http.read(f"auth/{mount}/role/high/role-id")).data["role_id"]
        moved = await storage.execute(
            "UPDATE broker_approle_secret_ids SET role_name = 'high' "
            "WHERE mount = $1 AND role_name = 'low'",
            mount,
        )
        assert moved == "UPDATE 1"
        login = {"role_id": high_id, "secret_id": secret}
        reply = await http.call("PUT", f"auth/{mount}/login", login, token="")
        assert reply.status == 400, reply.body
        assert not reply.body.get("auth")
    finally:
        assert (await http.delete(f"sys/auth/{mount}")).status == 204


async def test_a_tampered_connection_fails_only_its_own_revocations(
    broker: RunningBroker, storage: asyncpg.Connection, pg_target: PgCluster
) -> None:
    """A sweep batch holding leases of a tampered connection and of a sound one revokes
    the sound one's and fails only the tampered one's (before, the integrity error ended
    the whole batch and every sweep after it)."""
    http = broker.http
    sound = await http.creds("brkt-pg-ro")
    stuck = await http.creds("brkt-my-ro")
    original = await storage.fetchrow(
        "SELECT allowed_roles, mac FROM broker_connections WHERE mount = 'database' AND name = 'my'"
    )
    assert original is not None
    try:
        await storage.execute(
            "UPDATE broker_connections SET allowed_roles = '{*}' "
            "WHERE mount = 'database' AND name = 'my'"
        )
        await _notify(storage)
        for lease in (stuck, sound):
            reply = await http.write(
                "sys/leases/revoke", {"lease_id": lease.body["lease_id"], "sync": False}
            )
            assert reply.status in (202, 204), reply.body

        async def sound_one_gone() -> bool:
            return not await pg_role_exists(pg_target.dsn(), sound.data["username"])

        await eventually(sound_one_gone)
        history = await http.read(f"sys/leases/history/{stuck.body['lease_id']}")
        assert "integrity" in (history.data.get("last_error") or ""), history.body
    finally:
        await storage.execute(
            "UPDATE broker_connections SET allowed_roles = $1, mac = $2 "
            "WHERE mount = 'database' AND name = 'my'",
            original["allowed_roles"],
            original["mac"],
        )
        await _notify(storage)
    revoked = await http.write("sys/leases/revoke", {"lease_id": stuck.body["lease_id"]})
    assert revoked.status == 204, revoked.body
