"""A node killed mid-sweep: the revocations it had claimed are taken over within seconds.

Two broker processes share one storage. A role's revocation statements include a
``pg_sleep``, so revoking a batch takes seconds; the leases become due together and one
node's sweep claims the whole batch. That node is SIGKILLed while revoking it. Before the
claims named their owner, the rest of the batch stayed hidden for the claim timeout (60 s);
now the survivor's heartbeat sees the dead node (three missed heartbeats) and hands the
claims back, and its next sweep revokes them.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import aiohttp
import asyncpg

from broker.server.storage.embedded import free_port
from tests.conftest import TOKEN, PgCluster, create_database, pg_connection_config
from tests.support import VaultHTTP, broker_process, eventually, wait_healthy

LEASES = 60
ROLE = "brkt-takeover"
#: Per user: 50 users per engine batch, revoked one by one (custom statements) -> ~3 s.
REVOCATION = 'SELECT pg_sleep(0.05); DROP ROLE IF EXISTS "{{name}}";'
TAKEOVER_WITHIN = 12.0


async def _users_left(admin: asyncpg.Connection, names: list[str]) -> int:
    return int(await admin.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = ANY($1)", names))


async def test_dead_nodes_claims_taken_over_within_seconds(
    pg_target: PgCluster, http_session: aiohttp.ClientSession
) -> None:
    storage_db = await create_database(pg_target, "brkt_takeover_storage")
    storage_dsn = pg_target.dsn(storage_db)
    ports = [free_port(), free_port()]
    procs = [
        broker_process(
            {
                "BROKER_STORAGE_DSN": storage_dsn,
                "BROKER_ROOT_TOKEN": TOKEN,
                "BROKER_LISTEN_ADDRESS": f"127.0.0.1:{port}",
                "BROKER_NODE_ID": f"takeover-{i}",
                "BROKER_SWEEP_INTERVAL": "1",
                "BROKER_CLAIM_TIMEOUT": "60",  # the default, said out loud: not what frees them
            },
            "server",
        )
        for i, port in enumerate(ports)
    ]
    storage = await asyncpg.connect(storage_dsn)
    target = await asyncpg.connect(pg_target.dsn())
    names: list[str] = []
    try:
        for port in ports:
            await wait_healthy(http_session, f"http://127.0.0.1:{port}")
        http = VaultHTTP(http_session, f"http://127.0.0.1:{ports[0]}", TOKEN)
        assert (await http.write("sys/mounts/database", {"type": "database"})).status == 204
        reply = await http.write("database/config/pg", pg_connection_config(pg_target))
        assert reply.status == 204, reply.body
        reply = await http.write(
            f"database/roles/{ROLE}",
            {
                "db_name": "pg",
                "default_ttl": 600,
                "creation_statements": "CREATE ROLE \"{{name}}\" LOGIN PASSWORD '{{password}}'",
                "revocation_statements": REVOCATION,
            },
        )
        assert reply.status == 204, reply.body
        issued = await asyncio.gather(*(http.creds(ROLE) for _ in range(LEASES)))
        names = [reply.data["username"] for reply in issued]
        assert await _users_left(target, names) == LEASES

        # All due at once (not waited for): the next sweep of one node claims them all.
        reply = await http.write(f"sys/leases/revoke-prefix/database/creds/{ROLE}", {"sync": False})
        assert reply.status == 202, reply.body
        claimer = None
        deadline = time.monotonic() + 10
        while claimer is None and time.monotonic() < deadline:
            claimer = await storage.fetchval(
                "SELECT n.node_id FROM broker_leases l "
                "JOIN broker_nodes n ON n.instance_id = l.claimed_by "
                "WHERE l.state = 'revoking' AND l.revoked_at IS NULL LIMIT 1"
            )
            await asyncio.sleep(0.02)
        assert claimer is not None, "no node claimed the due leases"
        victim = procs[int(claimer.rsplit("-", 1)[1])]

        await asyncio.sleep(0.8)  # mid-batch: some users dropped, most still waiting
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed_at = time.monotonic()
        left_at_kill = await _users_left(target, names)
        assert 0 < left_at_kill < LEASES, left_at_kill

        left = left_at_kill
        while left and time.monotonic() - killed_at < 30:
            await asyncio.sleep(0.1)
            left = await _users_left(target, names)
        took = time.monotonic() - killed_at
        print(f"{left_at_kill} users left at the kill, {left} left {took:.1f} s after it")
        assert left == 0, f"{left} users still there {took:.0f} s after the kill"
        assert took < TAKEOVER_WITHIN, f"the takeover took {took:.1f} s"

        async def all_recorded() -> bool:  # recorded once the survivor's batch is done
            return not await storage.fetchval(
                "SELECT count(*) FROM broker_leases WHERE revoked_at IS NULL"
            )

        await eventually(all_recorded, within=10)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        for name in names:
            await target.execute(f'DROP ROLE IF EXISTS "{name}"')
        await storage.close()
        await target.close()
        admin = await asyncpg.connect(pg_target.dsn())
        try:
            await admin.execute(f"DROP DATABASE {storage_db} WITH (FORCE)")
        finally:
            await admin.close()
