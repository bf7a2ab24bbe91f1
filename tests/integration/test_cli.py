"""The `broker` command as developers and operators use it."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys

import aiohttp
import asyncpg

from broker.models import NewLease
from broker.server.database.catalog import Catalog, ConnectionUpdate, RoleUpdate
from broker.server.database.leases import LeaseManager
from broker.server.database.revocation import Revocations
from broker.server.engines.registry import EngineRegistry
from broker.server.settings import Settings
from broker.server.storage.connector import create_pool
from broker.server.storage.embedded import free_port
from broker.server.storage.stores import Stores
from tests.conftest import MYSQL_READONLY, PgCluster, RunningBroker, create_database
from tests.support import (
    ROOT,
    VaultHTTP,
    broker_process,
    mysql_user_exists,
    pg_role_exists,
    unseal_for_test,
    wait_healthy,
)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        env=dict(os.environ, **env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _client_env(broker: RunningBroker) -> dict[str, str]:
    return {"VAULT_ADDR": broker.address, "VAULT_TOKEN": broker.http.token}


async def test_creds_formats_and_lease_commands(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    env = _client_env(broker)
    out = await asyncio.to_thread(_cli, env, "creds", "brkt-pg-ro", "--format", "json")
    assert out.returncode == 0, out.stderr
    issued = json.loads(out.stdout)
    assert issued["lease_id"].startswith("database/creds/brkt-pg-ro/")

    dsn = await asyncio.to_thread(_cli, env, "creds", "brkt-pg-ro", "--format", "dsn")
    conn = await asyncpg.connect(dsn.stdout.strip())
    assert await conn.fetchval("SELECT count(*) FROM items") == 2
    await conn.close()

    shell = await asyncio.to_thread(_cli, env, "creds", "brkt-my-ro", "--format", "env")
    exported = dict(
        line.removeprefix("export ").split("=", 1) for line in shell.stdout.splitlines()
    )
    assert {"MYSQL_USER", "MYSQL_PWD", "DATABASE_URL"} <= set(exported)

    lookup = await asyncio.to_thread(_cli, env, "lease", "lookup", issued["lease_id"])
    assert json.loads(lookup.stdout)["state"] == "active"
    renew = await asyncio.to_thread(
        _cli, env, "lease", "renew", issued["lease_id"], "--increment", "2h"
    )
    assert "7200s" in renew.stdout
    listing = await asyncio.to_thread(_cli, env, "lease", "list", "database/creds/brkt-pg-ro/")
    assert issued["lease_id"].rsplit("/", 1)[1] in listing.stdout.split()
    revoke = await asyncio.to_thread(_cli, env, "lease", "revoke", issued["lease_id"])
    assert revoke.returncode == 0
    assert not await pg_role_exists(pg_target.dsn(), issued["username"])

    bad = await asyncio.to_thread(_cli, env, "creds", "no-such-role")
    assert bad.returncode == 2 and "unknown role" in bad.stderr
    assert "Traceback" not in bad.stderr


async def test_revoke_expired_sweeps_once_and_reports_failures(pg_target: PgCluster) -> None:
    storage_dsn = pg_target.dsn(await create_database(pg_target, "cron_storage"))
    settings = Settings(storage_dsn=storage_dsn)
    pool = await create_pool(storage_dsn)
    engines = EngineRegistry()
    try:
        stores = Stores.open(pool)
        await stores.migrate()
        await unseal_for_test(stores)
        revocations = Revocations(stores.leases, stores.catalog, engines, settings)
        leases = LeaseManager(stores.leases, stores.catalog, engines, settings, revocations)
        catalog = Catalog(stores.catalog, engines, revocations, settings)
        await catalog.enable_mount("database", "database")
        await catalog.write_connection(
            "database",
            "my",
            ConnectionUpdate(
                plugin_name="mysql-database-plugin",
                connection_url="{{username}}:{{password}}@tcp(127.0.0.1:3306)/",
                username="root",
                password="",
                allowed_roles=("*",),
            ),
        )
        await catalog.write_role(
            "database",
            "brkt-cron",
            RoleUpdate(db_name="my", creation_statements=(MYSQL_READONLY,), default_ttl=1),
        )
        issued = await leases.issue("database", "brkt-cron", "root")
        assert await mysql_user_exists(issued.username)
        await asyncio.sleep(1.2)

        ok = await asyncio.to_thread(_cli, {"BROKER_STORAGE_DSN": storage_dsn}, "revoke-expired")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "revoked 1 lease(s), 0 failed" in ok.stdout
        assert not await mysql_user_exists(issued.username)

        # A target that is down: the revocation fails, is reported, and stays queued.
        await catalog.write_connection(
            "database",
            "down",
            ConnectionUpdate(
                plugin_name="mysql-database-plugin",
                connection_url="{{username}}:{{password}}@tcp(127.0.0.1:1)/",
                username="root",
                password="",
                verify_connection=False,
            ),
        )
        now = dt.datetime.now(dt.UTC)
        await stores.leases.bulk_insert_leases(
            [
                NewLease(
                    "database/creds/brkt-cron/unreachable000000000000",
                    "database",
                    "brkt-cron",
                    "down",
                    "mysql-database-plugin",
                    "v_brkt_unreachable",
                    (),
                    (),
                    now,
                    now,
                    now,
                )
            ],
            "active",
        )
        failed = await asyncio.to_thread(
            _cli, {"BROKER_STORAGE_DSN": storage_dsn}, "revoke-expired"
        )
        assert failed.returncode == 1
        assert "0 lease(s), 1 failed" in failed.stdout
        lease = await stores.leases.get_lease("database/creds/brkt-cron/unreachable000000000000")
        assert lease is not None and lease.state == "revoking" and lease.attempts == 1
        assert lease.last_error and "connect" in lease.last_error
    finally:
        await engines.close()
        await pool.close()


async def test_two_dev_servers_share_one_storage(
    pg_target: PgCluster, http_session: aiohttp.ClientSession
) -> None:
    storage_dsn = pg_target.dsn(await create_database(pg_target, "shared_dev"))
    token = "shared-dev-token"
    ports = [free_port(), free_port()]
    procs = [
        broker_process(
            {},
            "server",
            "--dev",
            "--dev-storage-dsn",
            storage_dsn,
            "--dev-root-token-id",
            token,
            "--dev-listen-address",
            f"127.0.0.1:{p}",
        )
        for p in ports
    ]
    try:
        usernames = []
        for port in ports:
            address = f"http://127.0.0.1:{port}"
            await wait_healthy(http_session, address)
            http = VaultHTTP(http_session, address, token)
            assert (await http.list("database/config")).data["keys"] == ["demo"]
            usernames.append((await http.creds("readonly")).data["username"])
            # A lease issued on one node can be revoked through the other.
        other = VaultHTTP(http_session, f"http://127.0.0.1:{ports[0]}", token)
        assert (await other.write("sys/leases/revoke-prefix/database/creds/readonly")).status == 204
        for name in usernames:
            assert not await pg_role_exists(pg_target.dsn(), name)
    finally:
        for proc in procs:
            proc.terminate()
        outputs = [proc.communicate(timeout=30)[0].decode() for proc in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
