"""Faults: a target or the storage going away and coming back, a broker killed while its
MySQL logins are live, orphans, and nodes joining and leaving."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import aiomysql
import asyncpg
import pymysql
import pytest

from broker.server.assembly import start_server
from broker.server.settings import Settings
from broker.server.storage.embedded import EmbeddedPostgres, free_port
from tests.conftest import (
    MYSQL_APP_DB,
    MYSQL_READONLY,
    TOKEN,
    PgCluster,
    RunningBroker,
    create_database,
)
from tests.support import (
    MARIADB,
    VaultHTTP,
    broker_process,
    eventually,
    mysql_admin,
    mysql_user_exists,
    pg_role_exists,
    wait_healthy,
)


@pytest.fixture(scope="module")
def flaky_pg() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of its own, so a test can take it down."""
    server = EmbeddedPostgres(fsync=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _storage_rows(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def test_target_outage_503_then_backlog_drains(
    broker: RunningBroker, flaky_pg: EmbeddedPostgres
) -> None:
    http = broker.http
    reply = await http.write(
        "database/config/flaky",
        {
            "plugin_name": "postgresql-database-plugin",
            "connection_url": f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:"
            f"{flaky_pg.port}/postgres",
            "username": "postgres",
            "password": flaky_pg.password,
            "allowed_roles": "*",
            "connect_timeout": 2,
        },
    )
    assert reply.status == 204, reply.body
    assert (
        await http.write("database/roles/brkt-flaky", {"db_name": "flaky", "default_ttl": 2})
    ).status == 204
    issued = await http.creds("brkt-flaky")
    username = issued.data["username"]

    await asyncio.to_thread(flaky_pg.pause)
    try:
        started = time.monotonic()
        down = await http.read("database/creds/brkt-flaky")
        assert down.status == 503, down.body
        assert time.monotonic() - started < 10
        assert "connect" in down.errors[0]
        # Nothing half-created: the refused request's lease is failed, not pending.
        states = await _storage_rows(
            broker.settings.storage_dsn,
            "SELECT state FROM broker_leases WHERE role_name = 'brkt-flaky' ORDER BY issued_at",
        )
        assert [r["state"] for r in states] == ["active", "failed"]

        async def failing() -> bool:
            look = await http.write("sys/leases/lookup", {"lease_id": issued.body["lease_id"]})
            return bool(look.data["state"] == "revoking" and look.data["last_error"])

        await eventually(failing, within=15)
        count = await http.read("sys/leases/count?type=irrevocable")
        assert count.data["counts"].get("database/creds/brkt-flaky/", 0) >= 1
        listed = await http.read("sys/leases?type=irrevocable")
        assert issued.body["lease_id"] in [x["lease_id"] for x in listed.data["leases"]]
        assert (await http.read("sys/leases/count?type=bogus")).status == 400
    finally:
        await asyncio.to_thread(flaky_pg.resume)

    async def revoked() -> bool:
        look = await http.read(f"sys/leases/history/{issued.body['lease_id']}")
        return bool(look.data["state"] == "revoked")

    await eventually(revoked, within=30)
    assert not await pg_role_exists(flaky_pg.dsn(), username)
    assert (await http.read("database/creds/brkt-flaky")).status == 200  # pool recovered
    await http.write("sys/leases/revoke-prefix/database/creds/brkt-flaky")


async def test_storage_outage_503_and_recovery_without_restart(
    http_session: aiohttp.ClientSession,
) -> None:
    storage = EmbeddedPostgres(fsync=True)
    await asyncio.to_thread(storage.start)
    runner = None
    try:
        settings_ = Settings(
            storage_dsn=storage.dsn(),
            root_token=TOKEN,
            listen_address=f"127.0.0.1:{free_port()}",
            sweep_interval=0.2,
            seal_type="env",
            auto_init=True,
        )
        runner = await start_server(settings_)
        http = VaultHTTP(http_session, f"http://{settings_.listen_address}", TOKEN)
        assert (await http.write("sys/mounts/db1", {"type": "database"})).status == 204

        await asyncio.to_thread(storage.pause)
        health = await http.call("GET", "sys/health")
        assert health.status == 503 and health.body["storage"] == "unavailable"
        refused = await http.write("sys/mounts/db2", {"type": "database"})
        assert refused.status == 503 and refused.errors
        assert (await http.read("db1/roles/x")).status == 503

        await asyncio.to_thread(storage.resume)

        async def recovered() -> bool:
            return (await http.call("GET", "sys/health")).status == 200

        await eventually(recovered, within=15)
        assert (await http.write("sys/mounts/db2", {"type": "database"})).status == 204
    finally:
        if runner is not None:
            await runner.cleanup()
        await asyncio.to_thread(storage.stop)


@pytest.fixture
async def event_scheduler() -> AsyncIterator[None]:
    conn = await aiomysql.connect(autocommit=True, **MARIADB)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT @@event_scheduler")
            before = (await cur.fetchone())[0]
            await cur.execute("SET GLOBAL event_scheduler = ON")
        yield
        async with conn.cursor() as cur:
            await cur.execute(f"SET GLOBAL event_scheduler = {before}")
    finally:
        conn.close()


async def test_mysql_expiry_event_drops_login_with_broker_dead(
    pg_target: PgCluster,
    mysql_target: None,
    event_scheduler: None,
    http_session: aiohttp.ClientSession,
) -> None:
    storage_dsn = pg_target.dsn(await create_database(pg_target, "event_storage"))
    port = free_port()
    env = {
        "BROKER_STORAGE_DSN": storage_dsn,
        "BROKER_LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "BROKER_ROOT_TOKEN": TOKEN,
    }
    http = VaultHTTP(http_session, f"http://127.0.0.1:{port}", TOKEN)
    proc = broker_process(env, "server")
    try:
        await wait_healthy(http_session, http.address)
        await http.write("sys/mounts/database", {"type": "database"})
        reply = await http.write(
            "database/config/my",
            {
                "plugin_name": "mariadb-database-plugin",
                "connection_url": "{{username}}:{{password}}@tcp(127.0.0.1:3306)/" + MYSQL_APP_DB,
                "username": "root",
                "password": "",
                "allowed_roles": "*",
                "expiry_event": True,
            },
        )
        assert reply.status == 204, reply.body
        await http.write(
            "database/roles/brkt-event",
            {"db_name": "my", "creation_statements": [MYSQL_READONLY], "default_ttl": 1},
        )
        issued = await http.creds("brkt-event")
        username, password = issued.data["username"], issued.data["password"]
        session = await aiomysql.connect(host="127.0.0.1", user=username, password=password)
        # Renewal moves the event; revocation drops it.
        renewed = await http.creds("brkt-event")
        assert (
            await http.write(
                "sys/leases/renew", {"lease_id": renewed.body["lease_id"], "increment": 60}
            )
        ).status == 200
        revoked = await http.creds("brkt-event")
        await http.write("sys/leases/revoke", {"lease_id": revoked.body["lease_id"]})
        events = await _mysql_events()
        assert f"brk_exp_{username}" in events and f"brk_exp_{renewed.data['username']}" in events
        assert f"brk_exp_{revoked.data['username']}" not in events
        # Kill -9: no revocation will come from the broker.
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert await mysql_user_exists(username)

    async def dropped() -> bool:
        return not await mysql_user_exists(username)

    await eventually(dropped, within=20)  # expiry (1 s) + grace (5 s) + scheduler tick
    with pytest.raises(pymysql.err.MySQLError):
        async with session.cursor() as cur:
            await cur.execute("SELECT 1")
    session.close()
    # The renewed lease's login outlives the first one's expiry; clean it up by hand, since
    # that broker is gone.
    assert await mysql_user_exists(renewed.data["username"])
    await mysql_admin(
        f"DROP EVENT IF EXISTS {MYSQL_APP_DB}.brk_exp_{renewed.data['username']}",
        f"DROP USER '{renewed.data['username']}'@'%'",
    )


async def _mysql_events() -> set[str]:
    conn = await aiomysql.connect(**MARIADB)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT EVENT_NAME FROM information_schema.EVENTS")
            return {row[0] for row in await cur.fetchall()}
    finally:
        conn.close()


async def test_reconcile_reports_and_drops_orphans(broker: RunningBroker) -> None:
    import subprocess
    import sys

    orphan = f"v_orphan_brkt_{secrets.token_hex(4)}"
    await mysql_admin(f"CREATE USER '{orphan}'@'%' IDENTIFIED BY 'x'")
    leased = await broker.http.creds("brkt-my-ro")
    env = dict(os.environ, BROKER_STORAGE_DSN=broker.settings.storage_dsn)

    def reconcile(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "broker", "reconcile", *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    try:
        # Made by hand, so not marked as this install's: reported, never dropped (the
        # drop of a marked one is in test_reconcile_markers.py).
        report = await asyncio.to_thread(reconcile)
        assert f"unmarked\tdatabase/my\t{orphan}" in report.stdout, report.stderr
        assert leased.data["username"] not in report.stdout
        assert await mysql_user_exists(orphan)
        fixed = await asyncio.to_thread(reconcile, "--revoke")
        assert f"unmarked\tdatabase/my\t{orphan}" in fixed.stdout
        assert await mysql_user_exists(orphan)
        assert await mysql_user_exists(leased.data["username"])
    finally:
        await mysql_admin(f"DROP USER IF EXISTS '{orphan}'@'%'")
        await broker.http.write("sys/leases/revoke", {"lease_id": leased.body["lease_id"]})


async def test_nodes_heartbeat_and_leave_on_sigterm(
    pg_target: PgCluster, http_session: aiohttp.ClientSession
) -> None:
    storage_dsn = pg_target.dsn(await create_database(pg_target, "ha_storage"))
    ports = [free_port(), free_port()]
    procs = [
        broker_process(
            {
                "BROKER_STORAGE_DSN": storage_dsn,
                "BROKER_ROOT_TOKEN": TOKEN,
                "BROKER_LISTEN_ADDRESS": f"127.0.0.1:{port}",
                "BROKER_NODE_ID": f"node-{i}",
                "BROKER_HEARTBEAT_INTERVAL": "0.5",
            },
            "server",
        )
        for i, port in enumerate(ports)
    ]
    try:
        for port in ports:
            await wait_healthy(http_session, f"http://127.0.0.1:{port}")
        first = VaultHTTP(http_session, f"http://127.0.0.1:{ports[0]}", TOKEN)
        health = await first.call("GET", "sys/health")
        assert health.body["node_id"] == "node-0"
        status = await first.read("sys/ha-status")
        assert sorted(n["node_id"] for n in status.data["nodes"]) == ["node-0", "node-1"]
        assert [n["this_node"] for n in status.data["nodes"] if n["node_id"] == "node-0"] == [True]

        procs[1].send_signal(signal.SIGTERM)
        out = procs[1].communicate(timeout=30)[0].decode()
        assert procs[1].returncode == 0, out
        status = await first.read("sys/ha-status")
        assert [n["node_id"] for n in status.data["nodes"]] == ["node-0"]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
            proc.communicate(timeout=30)
