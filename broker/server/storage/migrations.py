"""Applies the numbered SQL files in ``sql/migrations`` once each, under an advisory lock.

Several nodes may start together against one storage database; the lock makes the
first one migrate and the others find the work done. The bookkeeping queries are
``sql/migrations.sql``, run through the connector like every other store's.
"""

from __future__ import annotations

from broker.server.storage import sql
from broker.server.storage.connector import Connector


async def apply_migrations(connector: Connector) -> list[str]:
    """Apply pending migrations in one transaction; returns the versions applied by this
    call."""
    q = sql.queries("migrations")
    applied_now: list[str] = []
    async with connector.transaction() as conn:
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
