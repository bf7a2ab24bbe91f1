"""Issued credentials really log in, over TCP, on servers that check passwords, and can do
exactly what their role grants."""

from __future__ import annotations

import aiomysql
import asyncpg
import pymysql
import pytest

from tests.conftest import MYSQL_APP_DB, MYSQL_OTHER_DB, PgCluster, RunningBroker


async def test_postgres_creds_log_in_and_follow_grants(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    reply = await broker.http.creds("brkt-pg-ro")
    assert reply.body["lease_id"].startswith("database/creds/brkt-pg-ro/")
    suffix = reply.body["lease_id"].rsplit("/", 1)[1]
    assert len(suffix) == 24 and suffix.isalnum()
    assert reply.body["renewable"] is True
    assert reply.body["lease_duration"] == 3600
    username, password = reply.data["username"], reply.data["password"]
    assert username.startswith("v_root_brkt_pg_ro_")
    assert len(password) >= 20

    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=pg_target.server.port,
        user=username,
        password=password,
        database="app",
    )
    try:
        assert await conn.fetchval("SELECT count(*) FROM items") == 2
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM payroll")
    finally:
        await conn.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(
            host="127.0.0.1",
            port=pg_target.server.port,
            user=username,
            password=password + "x",
            database="app",
        )


async def test_mariadb_creds_log_in_and_follow_grants(broker: RunningBroker) -> None:
    reply = await broker.http.creds("brkt-my-ro")
    username, password = reply.data["username"], reply.data["password"]
    assert len(username) <= 32

    conn = await aiomysql.connect(host="127.0.0.1", port=3306, user=username, password=password)
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"SELECT COUNT(*) FROM {MYSQL_APP_DB}.items")
            assert (await cur.fetchone()) == (2,)
            with pytest.raises(pymysql.err.OperationalError) as denied:
                await cur.execute(f"SELECT * FROM {MYSQL_OTHER_DB}.payroll")
            assert denied.value.args[0] in (1142, 1044)  # command denied / access denied
    finally:
        conn.close()
    with pytest.raises(pymysql.err.OperationalError):
        await aiomysql.connect(host="127.0.0.1", port=3306, user=username, password=password + "x")


async def test_two_leases_never_share_a_user(broker: RunningBroker) -> None:
    names = {(await broker.http.creds("brkt-my-ro")).data["username"] for _ in range(5)}
    assert len(names) == 5


async def test_lease_table_never_holds_the_password(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    reply = await broker.http.creds("brkt-pg-ro")
    password = reply.data["password"]
    storage = await asyncpg.connect(broker.settings.storage_dsn)
    try:
        rows = await storage.fetch("SELECT * FROM broker_leases")
    finally:
        await storage.close()
    assert rows
    assert all(password not in str(dict(row)) for row in rows)
