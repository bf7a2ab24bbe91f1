"""The storage PostgreSQL fails over under the nodes: its primary stops abruptly, a
streaming standby is promoted, and the nodes (given both hosts in one DSN) carry on by
themselves.

Each test has a replication cluster of its own (tests/pgcluster.py: ``initdb``,
``pg_basebackup -R``, ``pg_ctl promote``, run as an unprivileged user); the target is the
suite's PostgreSQL. The load version with figures is ``python -m tests.chaos failover``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest

from broker.server.assembly import start_server
from broker.server.storage.connector import CATALOG_CHANNEL, Connector, create_pool
from tests.conftest import PG_READONLY, TOKEN, PgCluster, own_broker_settings, pg_connection_config
from tests.pgcluster import ReplicatedStorage, Server
from tests.support import VaultHTTP, eventually, pg_logs_in

STORAGE_DB = "broker"
ROLE = "brkt-fo"


@dataclass
class Node:
    http: VaultHTTP
    runner: Any


@dataclass
class Setup:
    cluster: ReplicatedStorage
    nodes: list[Node]
    prefix: str  # of every user these tests' role makes


async def _replicated(synchronous: bool) -> ReplicatedStorage:
    cluster = ReplicatedStorage()
    primary = await cluster.start_primary()
    await primary.sql(f"CREATE DATABASE {STORAGE_DB}")
    await cluster.add_standby()
    await cluster.wait_streaming()
    if synchronous:
        await cluster.set_synchronous(True)
    return cluster


@contextlib.asynccontextmanager
async def _setup(
    pg_target: PgCluster,
    session: aiohttp.ClientSession,
    *,
    synchronous: bool,
    nodes: int = 2,
    **settings: Any,
) -> AsyncIterator[Setup]:
    """A replicated storage, ``nodes`` brokers on its two-host DSN, a database mount and a
    role whose users all start with a prefix of this test's own."""
    cluster = await _replicated(synchronous)
    prefix = f"brktfo{secrets.token_hex(3)}_"
    running: list[Node] = []
    try:
        for i in range(nodes):
            config = own_broker_settings(
                cluster.dsn(STORAGE_DB),
                node_id=f"failover-{i}",
                sweep_interval=0.2,
                heartbeat_interval=0.5,
                creation_timeout=3,
                **settings,
            )
            runner = await start_server(config)
            running.append(
                Node(VaultHTTP(session, f"http://{config.listen_address}", TOKEN), runner)
            )
        http = running[0].http
        assert (await http.write("sys/mounts/database", {"type": "database"})).status == 204
        body = {**pg_connection_config(pg_target), "username_template": prefix + "{{random 12}}"}
        assert (await http.write("database/config/pg", body)).status == 204
        reply = await http.write(
            f"database/roles/{ROLE}",
            {"db_name": "pg", "creation_statements": [PG_READONLY], "default_ttl": 4},
        )
        assert reply.status == 204, reply.body
        yield Setup(cluster, running, prefix)
    finally:
        for node in running:
            await node.runner.cleanup()
        await _drop_users(pg_target, prefix)
        await cluster.close()


async def _target_users(pg_target: PgCluster, prefix: str) -> set[str]:
    conn = await asyncpg.connect(pg_target.dsn())
    try:
        rows = await conn.fetch(
            "SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", prefix
        )
    finally:
        await conn.close()
    return {row["rolname"] for row in rows}


async def _drop_users(pg_target: PgCluster, prefix: str) -> None:
    conn = await asyncpg.connect(pg_target.dsn())
    try:
        for name in await _target_users(pg_target, prefix):
            await conn.execute(f'DROP ROLE IF EXISTS "{name}"')
    finally:
        await conn.close()


async def _lease_rows(server: Server, column: str = "lease_id") -> set[str]:
    conn = await asyncpg.connect(server.dsn(STORAGE_DB))
    try:
        rows = await conn.fetch(f"SELECT {column} FROM broker_leases")
    finally:
        await conn.close()
    return {row[column] for row in rows}


async def _health(http: VaultHTTP) -> tuple[int, str]:
    reply = await http.call("GET", "sys/health")
    return reply.status, str(reply.body.get("storage"))


async def _issue(http: VaultHTTP) -> dict[str, Any]:
    reply = await http.creds(ROLE)
    return {"lease_id": reply.body["lease_id"], **reply.data}


async def _waiting_on_leases(server: Server) -> int:
    value = await server.sql(
        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
        "WHERE c.relname = 'broker_leases' AND NOT l.granted",
        database=STORAGE_DB,
    )
    return int(str(value))


async def test_synchronous_failover_nodes_reconnect_and_nothing_acknowledged_is_lost(
    pg_target: PgCluster, http_session: aiohttp.ClientSession
) -> None:
    async with _setup(pg_target, http_session, synchronous=True) as s:
        a, b = s.nodes[0].http, s.nodes[1].http
        before = [await _issue(node) for node in (a, b, a, b)]
        old_primary = s.cluster.primary
        assert old_primary is not None

        # Issuances caught mid group commit: a session holds the lease table, so their
        # INSERT waits on the primary when it dies.
        blocker = await asyncpg.connect(old_primary.dsn(STORAGE_DB))
        await blocker.execute("BEGIN; LOCK TABLE broker_leases IN SHARE MODE")
        stuck = [asyncio.create_task(n.read(f"database/creds/{ROLE}")) for n in (a, a, b)]

        async def waiting() -> bool:
            return await _waiting_on_leases(old_primary) >= 2

        await eventually(waiting, within=10)
        await s.cluster.crash_primary()
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            await blocker.close(timeout=1)
        for reply in await asyncio.gather(*stuck):
            assert reply.status == 503, reply.body
            assert reply.errors and "storage" in reply.errors[0]

        # No writable server: both nodes say so and refuse, with Vault's error body.
        for node in (a, b):
            assert await _health(node) == (503, "unavailable")
            refused = await node.read(f"database/creds/{ROLE}")
            assert refused.status == 503 and refused.errors, refused.body

        new_primary = await s.cluster.promote()
        for node in (a, b):

            async def healthy(node: VaultHTTP = node) -> bool:
                return await _health(node) == (200, "ok")

            await eventually(healthy, within=15)
        after = [await _issue(node) for node in (a, b)]

        # Synchronous replication: every lease a client got is on the new primary, and
        # every user on the target has its lease row (the refused ones made none).
        rows = await _lease_rows(new_primary)
        assert {x["lease_id"] for x in before + after} <= rows
        assert await _target_users(pg_target, s.prefix) <= await _lease_rows(
            new_primary, "username"
        )

        # Both nodes LISTEN again (auth and catalog channels), on the new primary...
        async def listening() -> bool:
            count = await new_primary.sql(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = $1 AND query ILIKE 'LISTEN%'",
                STORAGE_DB,
            )
            return int(str(count)) == 4

        await eventually(listening, within=15)
        # ...and a role changed through one node is what the other issues next.
        await b.creds(ROLE)  # cached on b
        reply = await a.write(f"database/roles/{ROLE}", {"default_ttl": 7})
        assert reply.status == 204, reply.body

        async def b_sees_it() -> bool:
            reply = await b.creds(ROLE)
            await b.write("sys/leases/revoke", {"lease_id": reply.body["lease_id"]})
            return bool(reply.body["lease_duration"] == 7)

        await eventually(b_sees_it, within=10)

        # The sweep resumed: the leases issued before the failover expire (4 s) and their
        # users go, with no revocation asked for.
        names = {x["username"] for x in before + after}

        async def swept() -> bool:
            return not names & await _target_users(pg_target, s.prefix)

        await eventually(swept, within=20)
        assert not await pg_logs_in(
            pg_target.server.port, before[0]["username"], before[0]["password"]
        )


async def test_asynchronous_failover_loses_rows_and_reconcile_drops_their_users(
    pg_target: PgCluster, http_session: aiohttp.ClientSession
) -> None:
    """Asynchronous replication loses what the standby had not received: leases a client
    was given, whose users exist on the target. The scheduled reconcile (with
    ``reconcile_revoke``) drops those users; nothing else is touched."""
    async with _setup(
        pg_target,
        http_session,
        synchronous=False,
        nodes=1,
        reconcile_interval=0.5,
        reconcile_revoke=True,
    ) as s:
        http = s.nodes[0].http
        kept = await _issue(http)
        standby = s.cluster.standbys[0]
        await _replicated_up_to_now(s.cluster)
        await s.cluster.detach(standby)  # it stops receiving WAL, as a lagging one would
        lost = [await _issue(http) for _ in range(3)]
        assert {x["username"] for x in lost} <= await _target_users(pg_target, s.prefix)

        await s.cluster.crash_primary()
        new_primary = await s.cluster.promote(standby)

        async def healthy() -> bool:
            return await _health(http) == (200, "ok")

        await eventually(healthy, within=15)
        rows = await _lease_rows(new_primary)
        assert kept["lease_id"] in rows
        assert not {x["lease_id"] for x in lost} & rows  # acknowledged, and gone

        # Their users have no row now: the reconcile drops them, well before their TTL.
        async def reconciled() -> bool:
            users = await _target_users(pg_target, s.prefix)
            return not {x["username"] for x in lost} & users

        await eventually(reconciled, within=10)
        for x in lost:
            assert not await pg_logs_in(pg_target.server.port, x["username"], x["password"])
        fresh = await _issue(http)  # issuance goes on
        assert fresh["username"] in await _target_users(pg_target, s.prefix)
        await http.write("sys/leases/revoke-prefix/database/")


async def _replicated_up_to_now(cluster: ReplicatedStorage) -> None:
    async def caught_up() -> bool:
        return await cluster.replay_lag_bytes() == 0

    await eventually(caught_up, within=10)


async def test_read_only_storage_answers_503_and_drops_its_connections(
    http_session: aiohttp.ClientSession,
) -> None:
    """A server that stops taking writes under open connections (an old primary back as a
    standby behaves so; here ``default_transaction_read_only``): writes answer 503, health
    says read-only, and the nodes come back once it takes writes again."""
    cluster = ReplicatedStorage()
    runner = None
    try:
        primary = await cluster.start_primary()
        # target_session_attrs=any: connections are made to it whatever it is, so the
        # refusal comes from the writes themselves (SQLSTATE 25006).
        dsn = primary.dsn() + "?target_session_attrs=any"
        settings = own_broker_settings(dsn, sweep_interval=0.2)
        runner = await start_server(settings)
        http = VaultHTTP(http_session, f"http://{settings.listen_address}", TOKEN)
        assert (await http.write("sys/mounts/db1", {"type": "database"})).status == 204

        await primary.sql("ALTER SYSTEM SET default_transaction_read_only = on")
        await primary.sql("SELECT pg_reload_conf()")

        async def refused() -> bool:
            reply = await http.write(f"sys/mounts/db{secrets.token_hex(2)}", {"type": "database"})
            return reply.status == 503 and "read-only" in reply.errors[0]

        await eventually(refused, within=10)
        assert await _health(http) == (503, "read-only")
        assert (await http.read("db1/roles/x")).status in (404, 503)  # never a 500

        await primary.sql("ALTER SYSTEM RESET default_transaction_read_only")
        await primary.sql("SELECT pg_reload_conf()")

        async def recovered() -> bool:
            return await _health(http) == (200, "ok")

        await eventually(recovered, within=10)
        assert (await http.write("sys/mounts/db2", {"type": "database"})).status == 204
    finally:
        if runner is not None:
            await runner.cleanup()
        await cluster.close()


#: The silent hosts' listening sockets, by port, for tests that count what reached them.
_SILENT_LISTENERS: dict[int, socket.socket] = {}


@pytest.fixture
def silent_host() -> Iterator[int]:
    """A port that accepts TCP connections and never answers (a hung or half-dead host):
    the handshake completes, the PostgreSQL startup never does."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    port = int(server.getsockname()[1])
    _SILENT_LISTENERS[port] = server
    try:
        yield port
    finally:
        del _SILENT_LISTENERS[port]
        server.close()


async def test_a_host_that_never_answers_is_skipped_and_dead_peers_are_noticed(
    pg_target: PgCluster, silent_host: int
) -> None:
    """asyncpg alone spends its whole connect timeout on the first host and never tries
    the second; the broker tries each within ``connect_timeout``."""
    server = pg_target.server
    dsn = (
        f"postgresql://{server.user}:{server.password}@127.0.0.1:{silent_host},"
        f"127.0.0.1:{server.port}/postgres?connect_timeout=1"
    )
    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT inet_server_port()") == server.port
            # A host that vanishes without closing its connections is noticed in seconds:
            # keepalive probes, and a bound on unacknowledged data.
            sock = conn._transport.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 20_000
    finally:
        await pool.close()


async def test_a_dead_first_host_costs_only_the_first_connection(
    pg_target: PgCluster, silent_host: int
) -> None:
    """After a failover the old primary (first in the DSN) may hang for as long as it is
    down: once a connection was made on the second host, new ones go there first instead of
    each spending ``connect_timeout`` on the dead one."""
    server = pg_target.server
    dsn = (
        f"postgresql://{server.user}:{server.password}@127.0.0.1:{silent_host},"
        f"127.0.0.1:{server.port}/postgres?connect_timeout=1"
    )
    pool = await create_pool(dsn, min_size=1, max_size=4)
    try:
        async with pool.acquire() as a, pool.acquire() as b, pool.acquire() as c:
            ports = {await conn.fetchval("SELECT inet_server_port()") for conn in (a, b, c)}
            assert ports == {server.port}
    finally:
        await pool.close()
    # Every attempt on the silent host is a connection waiting in its accept queue.
    listener = _SILENT_LISTENERS[silent_host]
    listener.setblocking(False)
    attempts = 0
    try:
        while True:
            listener.accept()[0].close()
            attempts += 1
    except BlockingIOError:
        pass
    assert attempts == 1


async def test_a_lost_listen_subscribes_again_and_says_so(
    pg_target: PgCluster, fresh_storage_db: str
) -> None:
    """The LISTEN connection dies (here its backend is terminated; in a failover its
    server): ``on_lost`` runs, the subscription is made again by itself, ``on_restored``
    runs (the caches drop what they hold: notifications were missed), and notifications
    arrive again."""
    dsn = pg_target.dsn(fresh_storage_db)
    pool = await create_pool(dsn, min_size=1, max_size=3)
    events: list[str] = []
    stop = await Connector(pool).listen(
        CATALOG_CHANNEL,
        lambda: events.append("message"),
        lambda: events.append("lost"),
        lambda: events.append("restored"),
    )
    admin = await asyncpg.connect(dsn)
    try:

        async def notified() -> bool:
            await admin.execute(f"NOTIFY {CATALOG_CHANNEL}")
            await asyncio.sleep(0.05)
            return "message" in events

        await eventually(notified, within=10)
        events.clear()
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query ILIKE 'LISTEN%'"
        )
        assert killed == 1

        async def restored() -> bool:
            return "restored" in events

        await eventually(restored, within=10)
        assert events[:2] == ["lost", "restored"]
        events.clear()
        await eventually(notified, within=10)
    finally:
        await admin.close()
        await stop()
        await pool.close()
