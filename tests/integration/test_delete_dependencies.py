"""Deleting what live leases depend on (Vault's most reported lease bugs): a deleted role
never stops its leases' revocation (hashicorp/vault#3464, #4782); a connection with live
leases is not deleted, or, with ``force=true``, only after they are revoked (#9420);
disabling a mount revokes first and keeps the mount if that fails; and a connection
deleted while credentials are being made never leaves a user without a lease."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiomysql
import asyncpg
import pytest

from broker.server.storage.embedded import free_port
from tests.conftest import (
    MYSQL_READONLY,
    PG_ADMIN,
    PG_READONLY,
    PgCluster,
    RunningBroker,
    pg_connection_config,
)
from tests.support import (
    ISSUED_PASSWORDS,
    MARIADB,
    eventually,
    mysql_user_exists,
    pg_role_exists,
    run_cli,
)

#: Every user these tests make starts so, on both targets; cleanup drops what is left.
_PREFIX = "v_brkt_dd_"
_TEMPLATE = _PREFIX + "{{random 12 | lowercase}}"
_MYSQL_URL = "{{username}}:{{password}}@tcp(127.0.0.1:3306)/"
PLUGINS = ("pg", "my")


@dataclass(frozen=True)
class Mount:
    path: str
    pg: PgCluster

    def statements(self, plugin: str) -> str:
        return PG_READONLY if plugin == "pg" else MYSQL_READONLY

    async def user_exists(self, plugin: str, username: str) -> bool:
        if plugin == "pg":
            return await pg_role_exists(self.pg.dsn(), username)
        return await mysql_user_exists(username)


def _pg_config(pg: PgCluster, url: str | None = None) -> dict[str, str]:
    config = pg_connection_config(pg)
    config["username_template"] = _TEMPLATE
    if url is not None:
        config["connection_url"] = url
        config["verify_connection"] = "false"
    return config


def _my_config(url: str = _MYSQL_URL) -> dict[str, str]:
    return {
        "plugin_name": "mysql-database-plugin",
        "connection_url": url,
        "username": "root",
        "password": "",
        "allowed_roles": "*",
        "username_template": _TEMPLATE,
        "verify_connection": "false" if url != _MYSQL_URL else "true",
    }


def _closed_port_url(plugin: str, pg: PgCluster) -> str:
    """The connection's target, moved to a port nothing listens on: revocation fails."""
    port = free_port()
    if plugin == "pg":
        return f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{port}/app"
    return f"{{{{username}}}}:{{{{password}}}}@tcp(127.0.0.1:{port})/"


@pytest.fixture
async def mount(broker: RunningBroker, pg_target: PgCluster) -> AsyncIterator[Mount]:
    """A mount of the test's own with a PostgreSQL connection 'pg' and a MariaDB one 'my'."""
    path = f"brkt-dd-{secrets.token_hex(3)}"
    http = broker.http
    assert (await http.write(f"sys/mounts/{path}", {"type": "database"})).status == 204
    reply = await http.write(f"{path}/config/pg", _pg_config(pg_target))
    assert reply.status == 204, reply.body
    reply = await http.write(f"{path}/config/my", _my_config())
    assert reply.status == 204, reply.body
    try:
        yield Mount(path, pg_target)
    finally:
        # Working targets again, then the normal path; anything left is dropped by hand.
        await http.write(f"{path}/config/pg", _pg_config(pg_target))
        await http.write(f"{path}/config/my", _my_config())
        await http.delete(f"sys/mounts/{path}")
        admin = await asyncpg.connect(pg_target.dsn())
        try:
            for (name,) in await admin.fetch(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE 'v\\_brkt\\_dd\\_%'"
            ):
                await admin.execute(f'DROP ROLE IF EXISTS "{name}"')
        finally:
            await admin.close()
        await _drop_mysql_users()


async def _drop_mysql_users() -> None:
    conn = await aiomysql.connect(autocommit=True, **MARIADB)
    try:
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT User, Host FROM mysql.user WHERE User LIKE 'v\\_brkt\\_dd\\_%'"
            )
            for user, host in await cur.fetchall():
                await cur.execute("DROP USER IF EXISTS %s@%s", (user, host))
    finally:
        conn.close()


async def _role(
    broker: RunningBroker, mount: Mount, plugin: str, name: str, **extra: object
) -> None:
    body: dict[str, object] = {
        "db_name": plugin,
        "creation_statements": [mount.statements(plugin)],
        "default_ttl": "1h",
        "max_ttl": "24h",
        **extra,
    }
    reply = await broker.http.write(f"{mount.path}/roles/{name}", body)
    assert reply.status == 204, reply.body


async def _creds(broker: RunningBroker, mount: Mount, role: str) -> tuple[str, str]:
    reply = await broker.http.creds(role, mount=mount.path)
    return reply.body["lease_id"], reply.data["username"]


# -- (1) deleting a role never prevents its leases' revocation ------------------------------


@pytest.mark.parametrize("plugin", PLUGINS)
async def test_leases_of_a_deleted_role_revoke_by_id_prefix_and_expiry(
    broker: RunningBroker, mount: Mount, plugin: str
) -> None:
    await _role(broker, mount, plugin, "long")
    await _role(broker, mount, plugin, "short", default_ttl="2s", max_ttl="2s")
    by_id, by_prefix, by_prefix2 = [await _creds(broker, mount, "long") for _ in range(3)]
    expiring = await _creds(broker, mount, "short")
    for _, username in (by_id, by_prefix, by_prefix2, expiring):
        assert await mount.user_exists(plugin, username)

    for role in ("long", "short"):
        assert (await broker.http.delete(f"{mount.path}/roles/{role}")).status == 204
        assert (await broker.http.read(f"{mount.path}/roles/{role}")).status == 404

    reply = await broker.http.write("sys/leases/revoke", {"lease_id": by_id[0]})
    assert reply.status == 204, reply.body
    assert not await mount.user_exists(plugin, by_id[1])
    assert await mount.user_exists(plugin, by_prefix[1])  # only that one

    reply = await broker.http.write(f"sys/leases/revoke-prefix/{mount.path}/creds/long")
    assert reply.status == 204, reply.body
    for _, username in (by_prefix, by_prefix2):
        assert not await mount.user_exists(plugin, username)

    # The sweep, at expiry, without the role either.
    async def expired_and_gone() -> bool:
        return not await mount.user_exists(plugin, expiring[1])

    await eventually(expired_and_gone, within=20)
    for lease_id, _ in (by_id, by_prefix, by_prefix2, expiring):
        history = await broker.http.read(f"sys/leases/history/{lease_id}")
        assert history.data["state"] == "revoked", history.body


async def test_a_recreated_role_does_not_change_how_old_leases_revoke(
    broker: RunningBroker, mount: Mount
) -> None:
    """The revocation statements are the ones the lease was issued with (a snapshot in the
    lease row), not whatever a role of the same name says at revocation time."""
    admin = await asyncpg.connect(mount.pg.dsn("app"))
    table = f"brkt_dd_revlog_{secrets.token_hex(3)}"
    try:
        await admin.execute(f"CREATE TABLE {table} (tag text, name text)")
        await admin.execute(f"GRANT INSERT ON {table} TO {PG_ADMIN}")

        def revocation(tag: str) -> list[str]:
            return [f"INSERT INTO {table} VALUES ('{tag}', '{{{{name}}}}')", 'DROP ROLE "{{name}}"']

        await _role(broker, mount, "pg", "again", revocation_statements=revocation("old"))
        old_lease, old_user = await _creds(broker, mount, "again")
        assert (await broker.http.delete(f"{mount.path}/roles/again")).status == 204
        await _role(broker, mount, "pg", "again", revocation_statements=revocation("new"))
        new_lease, new_user = await _creds(broker, mount, "again")

        for lease_id in (old_lease, new_lease):
            reply = await broker.http.write("sys/leases/revoke", {"lease_id": lease_id})
            assert reply.status == 204, reply.body
        rows = {(r["tag"], r["name"]) for r in await admin.fetch(f"SELECT * FROM {table}")}
        assert rows == {("old", old_user), ("new", new_user)}
        assert not await mount.user_exists("pg", old_user)
        assert not await mount.user_exists("pg", new_user)
    finally:
        await admin.execute(f"DROP TABLE IF EXISTS {table}")
        await admin.close()


@pytest.mark.parametrize("plugin", PLUGINS)
async def test_failing_revocation_statements_still_remove_the_user(
    broker: RunningBroker, mount: Mount, plugin: str
) -> None:
    """Revocation statements that fail do not leave the login: the engine drops the user
    whatever they did (so they cannot be used to make a revocation fail, either)."""
    await _role(broker, mount, plugin, "divzero", revocation_statements=["SELECT 1/0"])
    lease_id, username = await _creds(broker, mount, "divzero")
    assert (await broker.http.delete(f"{mount.path}/roles/divzero")).status == 204
    reply = await broker.http.write("sys/leases/revoke", {"lease_id": lease_id})
    assert reply.status == 204, reply.body
    assert not await mount.user_exists(plugin, username)


# -- (2) deleting a connection with live leases ----------------------------------------------


@pytest.mark.parametrize("plugin", PLUGINS)
async def test_connection_with_live_leases_is_kept_unless_forced(
    broker: RunningBroker, mount: Mount, plugin: str
) -> None:
    await _role(broker, mount, plugin, "conn")
    leases = [await _creds(broker, mount, "conn") for _ in range(2)]
    # A role moved to another connection after issuance: its lease still belongs to this
    # one (revoked by connection, not by the role's prefix).
    await _role(broker, mount, plugin, "moved")
    moved = await _creds(broker, mount, "moved")
    other = "my" if plugin == "pg" else "pg"
    reply = await broker.http.write(f"{mount.path}/roles/moved", {"db_name": other})
    assert reply.status == 204, reply.body
    leases.append(moved)

    reply = await broker.http.delete(f"{mount.path}/config/{plugin}")
    assert reply.status == 400, reply.body
    assert "3 live lease(s)" in reply.errors[0], reply.errors
    assert "force=true" in reply.errors[0]
    assert (await broker.http.read(f"{mount.path}/config/{plugin}")).status == 200
    for _, username in leases:
        assert await mount.user_exists(plugin, username)

    reply = await broker.http.delete(f"{mount.path}/config/{plugin}?force=true")
    assert reply.status == 200, reply.body
    assert reply.data == {"revoked_leases": 3}
    assert (await broker.http.read(f"{mount.path}/config/{plugin}")).status == 404
    for lease_id, username in leases:
        assert not await mount.user_exists(plugin, username)
        history = await broker.http.read(f"sys/leases/history/{lease_id}")
        assert history.data["state"] == "revoked"
    # Nothing live: a plain delete of what is left is a 204, forced or not.
    reply = await broker.http.delete(f"{mount.path}/config/{other}?force=true")
    assert (reply.status, reply.data) == (200, {"revoked_leases": 0})


@pytest.mark.parametrize("plugin", PLUGINS)
async def test_forced_delete_is_refused_when_a_revocation_fails(
    broker: RunningBroker, mount: Mount, plugin: str
) -> None:
    await _role(broker, mount, plugin, "down")
    lease_id, username = await _creds(broker, mount, "down")
    broken = _closed_port_url(plugin, mount.pg)
    config = _pg_config(mount.pg, broken) if plugin == "pg" else _my_config(broken)
    assert (await broker.http.write(f"{mount.path}/config/{plugin}", config)).status == 204

    reply = await broker.http.delete(f"{mount.path}/config/{plugin}?force=true")
    assert reply.status == 400, reply.body
    assert "1 of 1 lease(s) could not be revoked" in reply.errors[0], reply.errors
    assert lease_id in reply.errors[0]
    assert (await broker.http.read(f"{mount.path}/config/{plugin}")).status == 200
    assert await mount.user_exists(plugin, username)  # and its lease still holds it
    lookup = await broker.http.read(f"sys/leases/history/{lease_id}")
    assert lookup.data["state"] == "revoking"

    working = _pg_config(mount.pg) if plugin == "pg" else _my_config()
    assert (await broker.http.write(f"{mount.path}/config/{plugin}", working)).status == 204
    reply = await broker.http.delete(f"{mount.path}/config/{plugin}?force=true")
    assert (reply.status, reply.data) == (200, {"revoked_leases": 1})
    assert not await mount.user_exists(plugin, username)


# -- (3) disabling a mount -------------------------------------------------------------------


async def test_disabling_a_mount_revokes_its_leases_first(
    broker: RunningBroker, mount: Mount
) -> None:
    await _role(broker, mount, "pg", "p")
    await _role(broker, mount, "my", "m")
    issued = [("pg", await _creds(broker, mount, "p")), ("my", await _creds(broker, mount, "m"))]
    assert (await broker.http.delete(f"sys/mounts/{mount.path}")).status == 204
    for plugin, (lease_id, username) in issued:
        assert not await mount.user_exists(plugin, username)
        history = await broker.http.read(f"sys/leases/history/{lease_id}")
        assert history.data["state"] == "revoked"
    assert f"{mount.path}/" not in (await broker.http.read("sys/mounts")).data


@pytest.mark.parametrize("plugin", PLUGINS)
async def test_a_mount_whose_leases_cannot_be_revoked_is_kept(
    broker: RunningBroker, mount: Mount, plugin: str
) -> None:
    await _role(broker, mount, plugin, "stuck")
    lease_id, username = await _creds(broker, mount, "stuck")
    broken = _closed_port_url(plugin, mount.pg)
    config = _pg_config(mount.pg, broken) if plugin == "pg" else _my_config(broken)
    assert (await broker.http.write(f"{mount.path}/config/{plugin}", config)).status == 204

    reply = await broker.http.delete(f"sys/mounts/{mount.path}")
    assert reply.status == 400, reply.body
    assert "which was kept" in reply.errors[0] and "1 revocation(s)" in reply.errors[0]
    assert f"{mount.path}/" in (await broker.http.read("sys/mounts")).data
    assert (await broker.http.read(f"{mount.path}/config/{plugin}")).status == 200
    assert await mount.user_exists(plugin, username)

    working = _pg_config(mount.pg) if plugin == "pg" else _my_config()
    assert (await broker.http.write(f"{mount.path}/config/{plugin}", working)).status == 204
    assert (await broker.http.delete(f"sys/mounts/{mount.path}")).status == 204
    assert not await mount.user_exists(plugin, username)
    history = await broker.http.read(f"sys/leases/history/{lease_id}")
    assert history.data["state"] == "revoked"


# -- (4) deletes racing an issuance --------------------------------------------------------


async def _wait_for_lease_row(storage: asyncpg.Connection, mount: str, role: str) -> str:
    async def present() -> bool:
        return bool(
            await storage.fetchval(
                "SELECT 1 FROM broker_leases WHERE mount = $1 AND role_name = $2", mount, role
            )
        )

    await eventually(present, within=10, interval=0.02)
    lease_id: str = await storage.fetchval(
        "SELECT lease_id FROM broker_leases WHERE mount = $1 AND role_name = $2", mount, role
    )
    return lease_id


async def test_deletes_while_creds_are_being_made_count_the_lease(
    broker: RunningBroker, mount: Mount
) -> None:
    """The lease row is written before the user: a connection delete during creation sees
    it and refuses; a role delete goes ahead and the lease still revokes."""
    slow = PG_READONLY + " SELECT pg_sleep(1.5);"
    await _role(broker, mount, "pg", "slow", creation_statements=[slow])
    storage = await asyncpg.connect(broker.settings.storage_dsn)
    try:
        task = asyncio.create_task(broker.http.read(f"{mount.path}/creds/slow"))
        lease_id = await _wait_for_lease_row(storage, mount.path, "slow")
        reply = await broker.http.delete(f"{mount.path}/config/pg")
        assert reply.status == 400, reply.body
        assert "1 live lease(s)" in reply.errors[0]
        assert (await broker.http.delete(f"{mount.path}/roles/slow")).status == 204
        creds = await task
    finally:
        await storage.close()
    assert creds.status == 200, creds.body
    ISSUED_PASSWORDS.add(creds.data["password"])
    assert creds.body["lease_id"] == lease_id
    username = creds.data["username"]
    assert await mount.user_exists("pg", username)
    assert (await broker.http.write("sys/leases/revoke", {"lease_id": lease_id})).status == 204
    assert not await mount.user_exists("pg", username)


async def test_a_connection_deleted_after_issuance_read_it_makes_no_user(
    broker: RunningBroker, mount: Mount
) -> None:
    """The interleaving a lease count alone cannot catch: the delete counts before the
    lease row is written, and deletes after the issuance read the connection. The test
    holds the connection row as a delete does (FOR UPDATE, before the request): the
    issuance's lease row must wait for that outcome, and once the delete commits, no row
    and no user are made. Without the wait it creates a user whose lease names a
    connection that no longer exists: nothing could ever revoke it."""
    await _role(broker, mount, "pg", "racing")
    await _creds(broker, mount, "racing")  # the issue context is cached from here on
    users_before = await _racing_users(mount)
    storage = await asyncpg.connect(broker.settings.storage_dsn)
    try:
        deleter = storage.transaction()
        await deleter.start()
        await storage.fetchval(
            "SELECT name FROM broker_connections WHERE mount = $1 AND name = 'pg' FOR UPDATE",
            mount.path,
        )
        before = await storage.fetchval(
            "SELECT count(*) FROM broker_leases WHERE mount = $1", mount.path
        )
        task = asyncio.create_task(broker.http.read(f"{mount.path}/creds/racing"))
        await asyncio.sleep(1.0)
        assert not task.done(), "the issuance did not wait for the connection delete"
        await storage.execute(
            "DELETE FROM broker_connections WHERE mount = $1 AND name = 'pg'", mount.path
        )
        await deleter.commit()
        reply = await task
        assert reply.status == 400, reply.body
        assert "unknown database connection" in reply.errors[0]
        after = await storage.fetchval(
            "SELECT count(*) FROM broker_leases WHERE mount = $1", mount.path
        )
    finally:
        if not storage.is_closed():
            await storage.close()
    assert after == before  # no lease row was written for it...
    assert await _racing_users(mount) == users_before  # ...and no user made
    # The first lease lost its connection to the test's raw delete; the fixture writes the
    # connection again and disables the mount, which revokes it.


async def _racing_users(mount: Mount) -> set[str]:
    conn = await asyncpg.connect(mount.pg.dsn())
    try:
        rows = await conn.fetch("SELECT rolname FROM pg_roles WHERE rolname LIKE '%racing%'")
    finally:
        await conn.close()
    return {r["rolname"] for r in rows}


# -- (5) static roles -------------------------------------------------------------------------


async def test_deleting_a_static_role_leaves_the_account(
    broker: RunningBroker, mount: Mount
) -> None:
    """As in Vault: the broker stops managing the account and leaves it (it never made it)."""
    name = "brkt_dd_static_" + secrets.token_hex(3)
    admin = await asyncpg.connect(mount.pg.dsn())
    try:
        await admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'initial-pw'")
        # A CREATEROLE admin manages only roles it holds ADMIN OPTION on (PostgreSQL 16).
        await admin.execute(f"GRANT {name} TO {PG_ADMIN} WITH ADMIN OPTION")
        reply = await broker.http.write(
            f"{mount.path}/static-roles/keep",
            {"db_name": "pg", "username": name, "rotation_period": "1h"},
        )
        assert reply.status == 204, reply.body
        ISSUED_PASSWORDS.add(
            (await broker.http.read(f"{mount.path}/static-creds/keep")).data["password"]
        )
        assert (await broker.http.delete(f"{mount.path}/static-roles/keep")).status == 204
        assert await pg_role_exists(mount.pg.dsn(), name)
    finally:
        await admin.execute(f"DROP ROLE IF EXISTS {name}")
        await admin.close()


async def test_cli_connection_delete_refuses_then_forces(
    broker: RunningBroker, mount: Mount
) -> None:
    await _role(broker, mount, "pg", "cli")
    _, username = await _creds(broker, mount, "cli")
    env = {"BROKER_ADDR": broker.address, "BROKER_TOKEN": broker.http.token}

    def cli(*args: str) -> tuple[int, str, str]:
        done = run_cli("connection", "delete", "pg", "--mount", mount.path, *args, env=env)
        return done.returncode, done.stdout, done.stderr

    code, _, err = await asyncio.to_thread(cli)
    assert code != 0 and "1 live lease(s)" in err, err
    assert await mount.user_exists("pg", username)
    code, out, err = await asyncio.to_thread(cli, "--force")
    assert code == 0, err
    assert "revoked 1 lease(s)" in out and f"deleted {mount.path}/config/pg" in out
    assert not await mount.user_exists("pg", username)
