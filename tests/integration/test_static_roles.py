"""Static roles and root rotation through hvac, against accounts on real PostgreSQL and
MariaDB: each returned password logs in, the one before stops working, scheduled rotations
happen, a crash mid-rotation is finished after a restart, and rotate-root leaves only the
broker knowing its admin password."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import aiomysql
import asyncpg
import hvac
import pytest

from broker.server.storage.embedded import free_port
from tests.conftest import (
    MYSQL_READONLY,
    PG_ADMIN,
    PG_READERS,
    PG_READONLY,
    TOKEN,
    PgCluster,
    RunningBroker,
    pg_connection_config,
)
from tests.support import (
    ISSUED_PASSWORDS,
    VaultHTTP,
    broker_process,
    eventually,
    mysql_admin,
    pg_logs_in,
    wait_healthy,
)


@pytest.fixture
async def pg_account(pg_target: PgCluster) -> AsyncIterator[str]:
    name = "brkt_static_" + secrets.token_hex(3)
    admin = await asyncpg.connect(pg_target.dsn())
    try:
        await admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'initial-pw'")
        # PostgreSQL 16: a CREATEROLE admin manages only roles it holds ADMIN OPTION on
        # (README, "What the admin needs").
        await admin.execute(f"GRANT {name} TO {PG_ADMIN} WITH ADMIN OPTION")
        yield name
        await admin.execute(f"DROP ROLE IF EXISTS {name}")
    finally:
        await admin.close()


@pytest.fixture
async def my_account() -> AsyncIterator[str]:
    name = "brkt_smy_" + secrets.token_hex(3)
    await mysql_admin(f"CREATE USER '{name}'@'%' IDENTIFIED BY 'initial-pw'")
    yield name
    await mysql_admin(f"DROP USER IF EXISTS '{name}'@'%'")


async def _my_logs_in(user: str, password: str) -> bool:
    try:
        conn = await aiomysql.connect(host="127.0.0.1", user=user, password=password)
    except aiomysql.OperationalError:
        return False
    conn.close()
    return True


def _client(broker: RunningBroker) -> hvac.Client:
    return hvac.Client(url=broker.address, token=broker.http.token)


async def test_static_role_rotations_on_postgres(
    broker: RunningBroker, pg_target: PgCluster, pg_account: str
) -> None:
    client = _client(broker)
    port = pg_target.server.port
    assert await pg_logs_in(port, pg_account, "initial-pw")

    def create_and_read() -> dict[str, Any]:
        client.secrets.database.create_static_role(
            "brkt-static-pg", "pg", pg_account, [], rotation_period=3600
        )
        creds: dict[str, Any] = client.secrets.database.get_static_credentials("brkt-static-pg")
        data: dict[str, Any] = creds["data"]
        return data

    first = await asyncio.to_thread(create_and_read)
    ISSUED_PASSWORDS.add(first["password"])
    # Created means rotated: only the broker's password works now.
    assert first["username"] == pg_account and 3590 <= first["ttl"] <= 3600
    assert first["last_vault_rotation"] is not None
    assert await pg_logs_in(port, pg_account, first["password"])
    assert not await pg_logs_in(port, pg_account, "initial-pw")

    await asyncio.to_thread(
        client.secrets.database.rotate_static_role_credentials, "brkt-static-pg"
    )
    second = (await broker.http.read("database/static-creds/brkt-static-pg")).data
    ISSUED_PASSWORDS.add(second["password"])
    assert second["password"] != first["password"]
    assert await pg_logs_in(port, pg_account, second["password"])
    assert not await pg_logs_in(port, pg_account, first["password"])

    # On a schedule: a short period rotates by itself.
    reply = await broker.http.write("database/static-roles/brkt-static-pg", {"rotation_period": 5})
    assert reply.status == 204, reply.body

    async def rotated() -> bool:
        now = (await broker.http.read("database/static-creds/brkt-static-pg")).data
        return bool(now["password"] != second["password"])

    await eventually(rotated, within=20, interval=0.5)
    third = (await broker.http.read("database/static-creds/brkt-static-pg")).data
    ISSUED_PASSWORDS.add(third["password"])
    assert await pg_logs_in(port, pg_account, third["password"])
    assert "brkt-static-pg" in (await broker.http.list("database/static-roles")).data["keys"]
    assert (await broker.http.delete("database/static-roles/brkt-static-pg")).status == 204


async def test_static_role_on_mariadb_and_refusals(broker: RunningBroker, my_account: str) -> None:
    http = broker.http
    reply = await http.write(
        "database/static-roles/brkt-static-my",
        {"db_name": "my", "username": my_account, "rotation_schedule": "0 3 * * *"},
    )
    assert reply.status == 400  # not an allowed role of connection "my"
    await http.write(
        "database/config/my", {"allowed_roles": ["brkt-my-ro", "brkt-static-my", "brkt-my-short"]}
    )
    reply = await http.write(
        "database/static-roles/brkt-static-my",
        {
            "db_name": "my",
            "username": my_account,
            "rotation_schedule": "0 3 * * *",
            "rotation_window": "1h",
        },
    )
    assert reply.status == 204, reply.body
    creds = (await http.read("database/static-creds/brkt-static-my")).data
    ISSUED_PASSWORDS.add(creds["password"])
    assert await _my_logs_in(my_account, creds["password"])
    assert not await _my_logs_in(my_account, "initial-pw")
    assert creds["rotation_schedule"] == "0 3 * * *" and creds["ttl"] <= 24 * 3600
    for body in (
        {"db_name": "my", "username": "x", "rotation_period": 2},
        {"db_name": "my", "username": "x", "rotation_schedule": "not cron"},
        {"db_name": "my", "username": "x"},
        {"db_name": "my", "username": "root", "rotation_period": 60},  # the broker's own
        {"db_name": "my", "username": "brkt_nobody", "rotation_period": 60},  # no account
    ):
        reply = await http.write("database/static-roles/brkt-static-my2", body)
        assert reply.status == 400, (body, reply.body)
    assert (await http.read("database/static-roles/brkt-static-my2")).status == 404
    assert (await http.delete("database/static-roles/brkt-static-my")).status == 204
    await http.write("database/config/my", {"allowed_roles": ["brkt-my-ro", "brkt-my-short"]})


@pytest.mark.parametrize("crash_at", ["after_static_pending", "after_static_change"])
async def test_crash_mid_rotation_is_finished_after_restart(
    crash_at: str,
    pg_target: PgCluster,
    pg_account: str,
    fresh_storage_db: str,
    http_session: aiohttp.ClientSession,
) -> None:
    port = free_port()
    env = {
        "BROKER_STORAGE_DSN": pg_target.dsn(fresh_storage_db),
        "BROKER_LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "BROKER_ROOT_TOKEN": TOKEN,
        "BROKER_ROTATION_CHECK_INTERVAL": "0.2",
    }
    address = f"http://127.0.0.1:{port}"
    http = VaultHTTP(http_session, address, TOKEN)
    first = broker_process(env, "server", crash_at=crash_at)
    try:
        await wait_healthy(http_session, address)
        assert (await http.write("sys/mounts/database", {"type": "database"})).status == 204
        reply = await http.write("database/config/pg", pg_connection_config(pg_target))
        assert reply.status == 204, reply.body
        with pytest.raises(aiohttp.ClientError):
            await http.write(
                "database/static-roles/brkt-crash",
                {"db_name": "pg", "username": pg_account, "rotation_period": 3600},
            )
        await asyncio.to_thread(first.communicate, timeout=30)
        assert first.returncode == 86
    finally:
        if first.poll() is None:
            first.kill()
            await asyncio.to_thread(first.communicate)
    second = broker_process(env, "server")
    try:
        await wait_healthy(http_session, address)

        async def finished() -> bool:
            role = (await http.read("database/static-roles/brkt-crash")).data
            return bool(role["last_vault_rotation"])

        await eventually(finished, within=15, interval=0.3)
        creds = (await http.read("database/static-creds/brkt-crash")).data
        ISSUED_PASSWORDS.add(creds["password"])
        assert await pg_logs_in(pg_target.server.port, pg_account, creds["password"])
        assert not await pg_logs_in(pg_target.server.port, pg_account, "initial-pw")
    finally:
        second.terminate()
        await asyncio.to_thread(second.communicate, timeout=30)


async def test_rotate_root_leaves_only_the_broker_knowing_it(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    admin_name = "brkt_admin_" + secrets.token_hex(3)
    admin = await asyncpg.connect(pg_target.dsn())
    await admin.execute(
        f"CREATE ROLE {admin_name} LOGIN CREATEROLE PASSWORD 'admin-pw'; "
        f"GRANT {PG_READERS} TO {admin_name} WITH ADMIN OPTION"
    )
    http = broker.http
    try:
        url = pg_target.url_template
        client = _client(broker)
        await asyncio.to_thread(
            client.secrets.database.configure,
            "brkt-rot",
            "postgresql-database-plugin",
            allowed_roles=["brkt-rot-ro"],
            connection_url=url,
            username=admin_name,
            password="admin-pw",
        )
        reply = await http.write(
            "database/roles/brkt-rot-ro",
            {"db_name": "brkt-rot", "creation_statements": [PG_READONLY], "default_ttl": "5m"},
        )
        assert reply.status == 204, reply.body
        await asyncio.to_thread(client.secrets.database.rotate_root_credentials, "brkt-rot")
        assert not await pg_logs_in(pg_target.server.port, admin_name, "admin-pw", "postgres")
        # The broker still issues with the password only it knows.
        creds = await http.creds("brkt-rot-ro")
        assert await pg_logs_in(
            pg_target.server.port, creds.data["username"], creds.data["password"]
        )
        connection = (await http.read("database/config/brkt-rot")).data
        assert connection["connection_details"]["username"] == admin_name
        assert (await http.write("database/reset/brkt-rot")).status == 204
        assert (await http.write("database/rotate-root/brkt-nope")).status == 400
        revoked = await http.write("sys/leases/revoke-prefix/database/creds/brkt-rot-ro/")
        assert revoked.status == 204, revoked.body
    finally:
        await http.delete("database/roles/brkt-rot-ro")
        await http.delete("database/config/brkt-rot")
        await admin.execute(f"DROP ROLE IF EXISTS {admin_name}")
        await admin.close()


async def test_failed_rotation_keeps_the_old_password_and_backs_off(
    broker: RunningBroker, pg_target: PgCluster, pg_account: str
) -> None:
    http = broker.http
    reply = await http.write(
        "database/static-roles/brkt-static-fail",
        {"db_name": "pg", "username": pg_account, "rotation_period": "1h"},
    )
    assert reply.status == 204, reply.body
    before = (await http.read("database/static-creds/brkt-static-fail")).data["password"]
    ISSUED_PASSWORDS.add(before)
    admin = await asyncpg.connect(pg_target.dsn())
    try:  # the rotation statements now fail on the target
        await admin.execute(f"ALTER ROLE {pg_account} RENAME TO {pg_account}_gone")
        reply = await http.write("database/rotate-role/brkt-static-fail")
        assert reply.status == 400 and "rotation statements failed" in reply.errors[0]
        role = (await http.read("database/static-roles/brkt-static-fail")).data
        assert role["rotation_attempts"] == 1 and role["last_error"]
        assert role["ttl"] <= 300  # retried after a backoff, not at the next period
        after = (await http.read("database/static-creds/brkt-static-fail")).data["password"]
        assert after == before  # nothing confirmed: the old password is still served
        await admin.execute(f"ALTER ROLE {pg_account}_gone RENAME TO {pg_account}")
        # (A rename keeps a SCRAM password; only MD5 ones, salted with the name, are lost.)
        assert (await http.write("database/rotate-role/brkt-static-fail")).status == 204
        final = (await http.read("database/static-creds/brkt-static-fail")).data["password"]
        ISSUED_PASSWORDS.add(final)
        assert await pg_logs_in(pg_target.server.port, pg_account, final)
    finally:
        with contextlib.suppress(asyncpg.PostgresError):  # already renamed back
            await admin.execute(f"ALTER ROLE {pg_account}_gone RENAME TO {pg_account}")
        await admin.close()
        await http.delete("database/static-roles/brkt-static-fail")


async def test_rotate_root_on_mariadb(broker: RunningBroker) -> None:
    admin_name = "brkt_madm_" + secrets.token_hex(3)
    await mysql_admin(
        f"CREATE USER '{admin_name}'@'%' IDENTIFIED BY 'admin-pw'",
        f"GRANT ALL PRIVILEGES ON *.* TO '{admin_name}'@'%' WITH GRANT OPTION",
    )
    http = broker.http
    try:
        reply = await http.write(
            "database/config/brkt-mrot",
            {
                "plugin_name": "mysql-database-plugin",
                "connection_url": "{{username}}:{{password}}@tcp(127.0.0.1:3306)/",
                "username": admin_name,
                "password": "admin-pw",
                "allowed_roles": "brkt-mrot-ro",
            },
        )
        assert reply.status == 204, reply.body
        reply = await http.write(
            "database/roles/brkt-mrot-ro",
            {"db_name": "brkt-mrot", "creation_statements": [MYSQL_READONLY], "default_ttl": "5m"},
        )
        assert reply.status == 204, reply.body
        client = _client(broker)
        await asyncio.to_thread(client.secrets.database.rotate_root_credentials, "brkt-mrot")
        assert not await _my_logs_in(admin_name, "admin-pw")
        creds = await http.creds("brkt-mrot-ro")
        assert await _my_logs_in(creds.data["username"], creds.data["password"])
        revoked = await http.write("sys/leases/revoke-prefix/database/creds/brkt-mrot-ro/")
        assert revoked.status == 204, revoked.body
    finally:
        await http.delete("database/roles/brkt-mrot-ro")
        await http.delete("database/config/brkt-mrot")
        await mysql_admin(f"DROP USER IF EXISTS '{admin_name}'@'%'")
