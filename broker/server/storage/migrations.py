"""Applies the numbered SQL files in ``broker/sql/migrations`` once each, under an advisory lock.

Several nodes may start together against one storage database; the lock makes the
first one migrate and the others find the work done.
"""

from __future__ import annotations

import asyncpg

from broker.server.storage import sql


async def apply_migrations(pool: asyncpg.Pool) -> list[str]:
    """Apply pending migrations; returns the versions applied by this call."""
    q = sql.queries()
    applied_now: list[str] = []
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(q["migration_lock"])
        await conn.execute(q["create_migrations_table"])
        done = {row["version"] for row in await conn.fetch(q["applied_migrations"])}
        for version, script in sql.migrations():
            if version in done:
                continue
            await conn.execute(script)
            await conn.execute(q["record_migration"], version)
            applied_now.append(version)
    return applied_now
