"""Vault's documented per-table GRANT fails under concurrency on PostgreSQL ("tuple
concurrently updated", deadlocks); the engine serialises and retries so callers never see it."""

from __future__ import annotations

import asyncio

from tests.conftest import PgCluster, RunningBroker
from tests.support import pg_role_exists

VAULT_DOC_STATEMENTS = [
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
    'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{{name}}";',
]


async def test_per_table_grants_succeed_under_concurrency(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    http = broker.http
    write = await http.write(
        "database/roles/brkt-pg-tables",
        {"db_name": "pg", "creation_statements": VAULT_DOC_STATEMENTS},
    )
    assert write.status == 200 and "2,400" in write.body["warnings"][0]

    replies = await asyncio.gather(*(http.read("database/creds/brkt-pg-tables") for _ in range(24)))
    assert [r.status for r in replies] == [200] * 24, [r.body for r in replies if r.status != 200]
    revoke = await http.write("sys/leases/revoke-prefix/database/creds/brkt-pg-tables/")
    assert revoke.status == 204, revoke.body
    for reply in replies:
        assert not await pg_role_exists(pg_target.dsn(), reply.data["username"])
