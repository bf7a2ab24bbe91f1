"""Revocation by id, by prefix and by the scheduler: the login stops working, open sessions
end, and the user is gone from the server's catalog."""

from __future__ import annotations

import aiomysql
import asyncpg
import pymysql
import pytest

from tests.conftest import PG_ADMIN, PgCluster, RunningBroker
from tests.support import eventually, mysql_user_exists, pg_role_exists


async def _pg_login(pg: PgCluster, username: str, password: str) -> asyncpg.Connection:
    return await asyncpg.connect(
        host="127.0.0.1", port=pg.server.port, user=username, password=password, database="app"
    )


async def test_revoke_by_id_postgres_ends_open_session(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    reply = await broker.http.creds("brkt-pg-ro")
    username, password = reply.data["username"], reply.data["password"]
    session = await _pg_login(pg_target, username, password)
    assert await session.fetchval("SELECT 1") == 1

    revoked = await broker.http.write("sys/leases/revoke", {"lease_id": reply.body["lease_id"]})
    assert revoked.status == 204

    # Terminated: depending on timing asyncpg reports the dead connection as a server error,
    # an interface error, a socket error or an internal protocol-state error.
    with pytest.raises(
        (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.exceptions.InternalClientError,
            OSError,
        )
    ):
        await session.fetchval("SELECT 1")
    session.terminate()
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
        await _pg_login(pg_target, username, password)
    assert not await pg_role_exists(pg_target.dsn(), username)
    lookup = await broker.http.write("sys/leases/lookup", {"lease_id": reply.body["lease_id"]})
    assert (lookup.status, lookup.errors) == (400, ["invalid lease"])  # gone, as in Vault
    history = await broker.http.read(f"sys/leases/history/{reply.body['lease_id']}")
    assert history.data["state"] == "revoked"


async def test_revoke_by_id_in_url_and_again_is_idempotent(broker: RunningBroker) -> None:
    reply = await broker.http.creds("brkt-my-ro")
    lease_id = reply.body["lease_id"]
    assert (await broker.http.write(f"sys/leases/revoke/{lease_id}")).status == 204
    assert (await broker.http.write(f"sys/leases/revoke/{lease_id}")).status == 204
    assert not await mysql_user_exists(reply.data["username"])


async def test_revoke_prefix_mariadb_ends_open_sessions(broker: RunningBroker) -> None:
    replies = [await broker.http.creds("brkt-my-ro") for _ in range(3)]
    sessions = [
        await aiomysql.connect(
            host="127.0.0.1", user=r.data["username"], password=r.data["password"]
        )
        for r in replies
    ]
    keys = (await broker.http.list("sys/leases/lookup/database/creds/brkt-my-ro/")).data["keys"]
    assert {r.body["lease_id"].rsplit("/", 1)[1] for r in replies} <= set(keys)

    assert (
        await broker.http.write("sys/leases/revoke-prefix/database/creds/brkt-my-ro")
    ).status == 204
    for reply, session in zip(replies, sessions, strict=True):
        assert not await mysql_user_exists(reply.data["username"])
        with pytest.raises(pymysql.err.MySQLError):
            async with session.cursor() as cur:
                await cur.execute("SELECT 1")
        session.close()
        with pytest.raises(pymysql.err.OperationalError):
            await aiomysql.connect(
                host="127.0.0.1", user=reply.data["username"], password=reply.data["password"]
            )
    listed = await broker.http.list("sys/leases/lookup/database/creds/brkt-my-ro/")
    assert listed.status == 404 or not set(keys) & set(listed.data["keys"])


async def test_revoke_force_forgets_leases(broker: RunningBroker) -> None:
    reply = await broker.http.creds("brkt-my-ro")
    assert (
        await broker.http.write(f"sys/leases/revoke-force/{reply.body['lease_id']}")
    ).status == 204
    assert not await mysql_user_exists(reply.data["username"])


async def test_async_revoke_answers_202_and_scheduler_finishes(broker: RunningBroker) -> None:
    reply = await broker.http.creds("brkt-my-ro")
    answer = await broker.http.write(
        "sys/leases/revoke", {"lease_id": reply.body["lease_id"], "sync": False}
    )
    assert answer.status == 202

    async def gone() -> bool:
        return not await mysql_user_exists(reply.data["username"])

    await eventually(gone)


async def test_postgres_user_owning_objects_in_two_databases_is_dropped(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    """Vault's default revocation stops at the first object the user owns; ours reassigns
    and drops what it owns in every database, then drops the role."""
    creation = (
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"
        ' GRANT app_writers TO "{{name}}";'
    )
    assert (
        await broker.http.write(
            "database/roles/brkt-pg-writer", {"db_name": "pg", "creation_statements": creation}
        )
    ).status == 204
    reply = await broker.http.creds("brkt-pg-writer")
    username, password = reply.data["username"], reply.data["password"]
    for db in ("app", "app2"):
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=pg_target.server.port,
            user=username,
            password=password,
            database=db,
        )
        try:
            await conn.execute(f'CREATE TABLE "t_{username}" (id int)')
            await conn.execute(f'GRANT SELECT ON "t_{username}" TO app_readers')
        finally:
            await conn.close()

    assert (
        await broker.http.write("sys/leases/revoke", {"lease_id": reply.body["lease_id"]})
    ).status == 204
    assert not await pg_role_exists(pg_target.dsn(), username)
    for db in ("app", "app2"):
        admin = await asyncpg.connect(pg_target.dsn(db))
        try:
            owner = await admin.fetchval(
                "SELECT tableowner FROM pg_tables WHERE tablename = $1", f"t_{username}"
            )
            assert owner == PG_ADMIN  # reassigned to the admin, data kept
            await admin.execute(f'DROP TABLE "t_{username}"')
        finally:
            await admin.close()


async def test_postgres_user_in_open_transaction_who_granted_onward_is_dropped(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    creation = (
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"
        ' GRANT app_readers TO "{{name}}"; GRANT SELECT ON payroll TO "{{name}}" WITH GRANT OPTION;'
    )
    assert (
        await broker.http.write(
            "database/roles/brkt-pg-granter", {"db_name": "pg", "creation_statements": creation}
        )
    ).status == 204
    reply = await broker.http.creds("brkt-pg-granter")
    username, password = reply.data["username"], reply.data["password"]
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=pg_target.server.port,
        user=username,
        password=password,
        database="app",
    )
    await conn.execute("GRANT SELECT ON payroll TO app_writers")  # passed on
    tx = conn.transaction()
    await tx.start()
    await conn.execute("LOCK TABLE items IN ACCESS SHARE MODE")  # held open

    assert (
        await broker.http.write("sys/leases/revoke", {"lease_id": reply.body["lease_id"]})
    ).status == 204, "revocation must not wait for or fail on the open transaction"
    assert not await pg_role_exists(pg_target.dsn(), username)
    conn.terminate()
    admin = await asyncpg.connect(pg_target.dsn("app"))
    try:
        acl = await admin.fetchval("SELECT relacl::text FROM pg_class WHERE relname = 'payroll'")
    finally:
        await admin.close()
    assert username not in (acl or "")


async def test_batch_revocation_falls_back_when_one_role_owns_objects(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    """The sweep drops a target's roles in one statement; one role owning a table makes that
    statement fail, and then each is revoked on its own, the owner with its clean-up."""
    creation = (
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"
        ' GRANT app_writers TO "{{name}}";'
    )
    assert (
        await broker.http.write(
            "database/roles/brkt-pg-batch", {"db_name": "pg", "creation_statements": creation}
        )
    ).status == 204
    replies = [await broker.http.creds("brkt-pg-batch") for _ in range(4)]
    owner = replies[2].data
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=pg_target.server.port,
        user=owner["username"],
        password=owner["password"],
        database="app",
    )
    await conn.execute(f'CREATE TABLE "batch_{owner["username"]}" (id int)')
    await conn.close()

    assert (
        await broker.http.write("sys/leases/revoke-prefix/database/creds/brkt-pg-batch/")
    ).status == 204
    for reply in replies:
        assert not await pg_role_exists(pg_target.dsn(), reply.data["username"])
    admin = await asyncpg.connect(pg_target.dsn("app"))
    try:
        await admin.execute(f'DROP TABLE "batch_{owner["username"]}"')
    finally:
        await admin.close()
