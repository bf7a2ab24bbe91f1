"""Kill the broker (os._exit, like kill -9) between writing the lease row and creating the
user, and between creating the user and activating the lease: after a restart, the sweep
leaves no user behind. The lease's TTL is an hour: a lease stuck in 'creating' is rolled
back after the creation timeout, not at its expiry."""

from __future__ import annotations

import aiohttp
import asyncpg
import pytest

from broker.server.storage.embedded import free_port
from tests.conftest import MYSQL_READONLY, TOKEN, PgCluster, RunningBroker, create_database
from tests.support import VaultHTTP, broker_process, eventually, mysql_user_exists, wait_healthy


@pytest.mark.parametrize("crash_at", ["after_lease_insert", "after_user_create"])
async def test_crash_during_issuance_leaves_no_user(
    crash_at: str,
    broker: RunningBroker,
    pg_target: PgCluster,
    http_session: aiohttp.ClientSession,
) -> None:
    storage_dsn = pg_target.dsn(await create_database(pg_target, "crash_storage"))
    port = free_port()
    env = {
        "BROKER_STORAGE_DSN": storage_dsn,
        "BROKER_LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "BROKER_ROOT_TOKEN": TOKEN,
        "BROKER_SWEEP_INTERVAL": "0.2",
        "BROKER_CREATION_TIMEOUT": "3",
    }
    address = f"http://127.0.0.1:{port}"
    http = VaultHTTP(http_session, address, TOKEN)

    first = broker_process(env, "server", crash_at=crash_at)
    try:
        await wait_healthy(http_session, address)
        await http.write("sys/mounts/database", {"type": "database"})
        assert (
            await http.write(
                "database/config/my",
                {
                    "plugin_name": "mysql-database-plugin",
                    "connection_url": "{{username}}:{{password}}@tcp(127.0.0.1:3306)/",
                    "username": "root",
                    "password": "",
                    "allowed_roles": "*",
                },
            )
        ).status == 204
        assert (
            await http.write(
                "database/roles/brkt-crash",
                {
                    "db_name": "my",
                    "creation_statements": [MYSQL_READONLY],
                    "default_ttl": "1h",
                },
            )
        ).status == 204
        with pytest.raises(aiohttp.ClientError):
            await http.read("database/creds/brkt-crash")
        first.communicate(timeout=10)
        assert first.returncode == 86
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate()

    storage = await asyncpg.connect(storage_dsn)
    try:
        row = await storage.fetchrow("SELECT username, state FROM broker_leases")
    finally:
        await storage.close()
    assert row is not None and row["state"] == "creating"
    username = row["username"]
    assert await mysql_user_exists(username) == (crash_at == "after_user_create")

    second = broker_process(env, "server")
    try:

        async def revoked() -> bool:
            conn = await asyncpg.connect(storage_dsn)
            try:
                state = await conn.fetchval("SELECT state FROM broker_leases")
            finally:
                await conn.close()
            return bool(state == "revoked" and not await mysql_user_exists(username))

        await eventually(revoked, within=20)
    finally:
        second.terminate()
        output = second.communicate(timeout=15)[0].decode()
    assert second.returncode == 0, output
