"""Reconciliation touches only what this install made (issue 14, item 6): a ``v_`` user
made by someone else (another broker, Vault, a person) on the same servers is reported as
an unmarked look-alike and left alone by ``broker reconcile --revoke``; a user this
install made whose lease row is gone is dropped."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys

import asyncpg

from tests.conftest import PgCluster, RunningBroker
from tests.support import mysql_admin, mysql_user_exists, pg_role_exists


def _reconcile(storage_dsn: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", "reconcile", *extra],
        env=dict(os.environ, BROKER_STORAGE_DSN=storage_dsn),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _forget_lease(storage_dsn: str, lease_id: str) -> None:
    """What a lost or rolled-back storage row looks like: the user lives, its lease does not."""
    conn = await asyncpg.connect(storage_dsn)
    try:
        assert await conn.execute("DELETE FROM broker_leases WHERE lease_id = $1", lease_id) == (
            "DELETE 1"
        )
    finally:
        await conn.close()


async def test_reconcile_drops_only_this_install_users(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    tag = secrets.token_hex(4)
    # Shaped like issued names, made by hand (one per server: the report names each once).
    foreign_pg, foreign_my = f"v_token_brkt_foreign_pg_{tag}", f"v_token_brkt_foreign_{tag}"
    admin = await asyncpg.connect(pg_target.dsn())
    await admin.execute(f"CREATE ROLE {foreign_pg} LOGIN")
    await mysql_admin(f"CREATE USER '{foreign_my}'@'%' IDENTIFIED BY 'x'")
    storage_dsn = broker.settings.storage_dsn
    try:
        leaked_pg = await broker.http.creds("brkt-pg-ro")
        leaked_my = await broker.http.creds("brkt-my-ro")
        pg_name, my_name = leaked_pg.data["username"], leaked_my.data["username"]
        comment = await admin.fetchval(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
            pg_name,
        )
        assert comment and comment.startswith("broker:")
        for reply in (leaked_pg, leaked_my):
            await _forget_lease(storage_dsn, reply.body["lease_id"])

        fixed = await asyncio.to_thread(_reconcile, storage_dsn, "--revoke")
        out = fixed.stdout
        assert f"unmarked\tdatabase/pg\t{foreign_pg}" in out, (out, fixed.stderr)
        assert f"unmarked\tdatabase/my\t{foreign_my}" in out, (out, fixed.stderr[-3000:])
        assert f"revoked\tdatabase/pg\t{pg_name}" in out, out
        assert f"revoked\tdatabase/my\t{my_name}" in out, out
        assert await pg_role_exists(pg_target.dsn(), foreign_pg)
        assert await mysql_user_exists(foreign_my)
        assert not await pg_role_exists(pg_target.dsn(), pg_name)
        assert not await mysql_user_exists(my_name)
    finally:
        await admin.execute(f"DROP ROLE IF EXISTS {foreign_pg}")
        await admin.close()
        await mysql_admin(f"DROP USER IF EXISTS '{foreign_my}'@'%'")
