"""Revocation with a production-shaped admin (issue 12.1): a ``CREATEROLE`` role, not a
superuser, on PostgreSQL 15 and 16, and a MariaDB account without ``CONNECTION ADMIN``.

A revocation is successful only when the user is gone and none of its sessions remain.
Before the fix, an admin without ``pg_signal_backend`` dropped the role, marked the lease
revoked and left the open session answering queries, with nothing in the log, the
metrics or the lease to say so.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiomysql
import asyncpg
import pytest

from tests.conftest import (
    MYSQL_APP_DB,
    MYSQL_READONLY,
    PG_ADMIN,
    PG_ADMIN_PASSWORD,
    PG_READERS,
    PG_READONLY,
    PG_WRITERS,
    PgCluster,
    RunningBroker,
    pg_connection_config,
    pg_superuser_config,
)
from tests.support import (
    MARIADB,
    VaultHTTP,
    eventually,
    mysql_admin,
    mysql_user_exists,
    pg_role_exists,
)

#: The machine's PostgreSQL 15 (trust authentication), beside the suite's 16 (pgserver).
PG15_SUPERUSER_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class PgServer:
    """A target cluster for these tests: superuser DSN, and where logins go."""

    label: str
    superuser_dsn: str
    port: int
    database: str

    def url(self) -> str:
        return (
            f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{self.port}/{self.database}"
        )


async def _su(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _alive(conn: asyncpg.Connection) -> bool:
    """Whether the session still answers. A session the server ended can fail a check
    half-way (a reset socket) and leave asyncpg's protocol mid-operation, so the next
    check raises InternalClientError: that connection is gone too."""
    try:
        return bool(await conn.fetchval("SELECT 1"))
    except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError):
        return False


async def _failing(http: VaultHTTP, lease_id: str) -> dict[str, Any] | None:
    reply = await http.read("sys/leases?type=irrevocable")
    assert reply.status == 200, reply.body
    return next((x for x in reply.body["data"]["leases"] if x["lease_id"] == lease_id), None)


async def _failing_gauge(http: VaultHTTP) -> float:
    reply = await http.read("sys/metrics")
    gauges = {g["Name"]: g["Value"] for g in reply.body["Gauges"] if not g["Labels"]}
    return float(gauges["broker_leases_failing"])


@pytest.fixture(params=["pg16", "pg15"])
async def pg_server(request: pytest.FixtureRequest, pg_target: PgCluster) -> PgServer:
    if request.param == "pg16":
        return PgServer("pg16", pg_target.dsn(), pg_target.server.port, "app")
    try:
        await _su(PG15_SUPERUSER_DSN, "SELECT 1")
    except (OSError, asyncpg.PostgresError) as exc:  # pragma: no cover - machine-dependent
        pytest.skip(f"no PostgreSQL 15 on 127.0.0.1:5432: {exc}")
    return PgServer("pg15", PG15_SUPERUSER_DSN, 5432, "postgres")


@dataclass(frozen=True)
class NoSignalAdmin:
    name: str
    connection: str
    role: str
    server: PgServer


@pytest.fixture
async def no_signal_admin(
    broker: RunningBroker, pg_server: PgServer
) -> AsyncIterator[NoSignalAdmin]:
    """A ``LOGIN CREATEROLE`` admin without ``pg_signal_backend``, its connection and a
    role issuing plain logins on it."""
    tag = secrets.token_hex(3)
    name = f"brkt_nosig_{tag}"
    await _su(pg_server.superuser_dsn, f"CREATE ROLE {name} LOGIN CREATEROLE PASSWORD 'pw'")
    connection, role = f"brkt-nosig-{tag}", f"brkt-nosig-{tag}"
    http = broker.http
    reply = await http.write(
        f"database/config/{connection}",
        {
            "plugin_name": "postgresql-database-plugin",
            "connection_url": pg_server.url(),
            "username": name,
            "password": "pw",
            "allowed_roles": role,
        },
    )
    # (d) The write names what is missing and the statement that grants it.
    assert reply.status == 200, reply.body
    assert any(f'GRANT pg_signal_backend TO "{name}"' in w for w in reply.body["warnings"])
    creation = "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}'"
    reply = await http.write(
        f"database/roles/{role}",
        {"db_name": connection, "creation_statements": [creation], "default_ttl": "1h"},
    )
    assert reply.status == 204, reply.body
    yield NoSignalAdmin(name, connection, role, pg_server)
    await http.write(f"sys/leases/revoke-force/database/creds/{role}/")
    await http.delete(f"database/roles/{role}")
    await http.delete(f"database/config/{connection}")
    conn = await asyncpg.connect(pg_server.superuser_dsn)
    try:
        for (leftover,) in await conn.fetch(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE $1", f"v_%{tag}%"
        ):
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                leftover,
            )
            await conn.execute(f'DROP ROLE IF EXISTS "{leftover}"')
        await conn.execute(f"DROP ROLE IF EXISTS {name}")
    finally:
        await conn.close()


async def _session(server: PgServer, creds: dict[str, Any]) -> asyncpg.Connection:
    return await asyncpg.connect(
        host="127.0.0.1",
        port=server.port,
        user=creds["username"],
        password=creds["password"],
        database=server.database,
    )


async def _fails_loudly_then_recovers(
    http: VaultHTTP, admin: NoSignalAdmin, lease_id: str, username: str, session: Any
) -> None:
    """The lease stays failing with the cause and the fix; once granted, the retry ends
    the session and drops the role."""

    async def failing() -> bool:
        return await _failing(http, lease_id) is not None

    await eventually(failing, within=15)
    entry = await _failing(http, lease_id)
    assert entry is not None
    assert f"session(s) of {username} remain" in entry["error"], entry
    assert f'GRANT pg_signal_backend TO "{admin.name}"' in entry["error"], entry
    assert await _failing_gauge(http) >= 1
    lookup = await http.write("sys/leases/lookup", {"lease_id": lease_id})
    assert lookup.status == 200, "a lease whose session lives on is not revoked"
    assert await _alive(session), "the admin could not end it: the session is still there"
    assert await pg_role_exists(admin.server.superuser_dsn, username), "kept, to be found again"

    await _su(admin.server.superuser_dsn, f'GRANT pg_signal_backend TO "{admin.name}"')

    async def finished() -> bool:
        return (
            not await _alive(session)
            and not await pg_role_exists(admin.server.superuser_dsn, username)
            and await _failing(http, lease_id) is None
        )

    await eventually(finished, within=30, interval=0.25)
    assert (await http.write("sys/leases/lookup", {"lease_id": lease_id})).status == 400


async def test_revoke_with_a_session_the_admin_cannot_end_is_not_revoked(
    broker: RunningBroker, no_signal_admin: NoSignalAdmin
) -> None:
    """(a) Revoke by id: the answer is an error, the lease fails loudly and is retried."""
    http = broker.http
    creds = await http.creds(no_signal_admin.role)
    session = await _session(no_signal_admin.server, creds.data)
    try:
        answer = await http.write("sys/leases/revoke", {"lease_id": creds.body["lease_id"]})
        assert answer.status == 502, answer.body
        assert "pg_signal_backend" in answer.body["errors"][0]
        await _fails_loudly_then_recovers(
            http, no_signal_admin, creds.body["lease_id"], creds.data["username"], session
        )
    finally:
        session.terminate()


async def test_expiry_with_a_session_the_admin_cannot_end_is_not_revoked(
    broker: RunningBroker, no_signal_admin: NoSignalAdmin
) -> None:
    """(b) The same through the sweep, at expiry."""
    http = broker.http
    reply = await http.write(
        f"database/roles/{no_signal_admin.role}",
        {"default_ttl": 2, "max_ttl": 2},
    )
    assert reply.status == 204, reply.body
    creds = await http.creds(no_signal_admin.role)
    session = await _session(no_signal_admin.server, creds.data)
    try:
        await _fails_loudly_then_recovers(
            http, no_signal_admin, creds.body["lease_id"], creds.data["username"], session
        )
    finally:
        session.terminate()


async def test_group_privileges_are_taken_from_a_session_that_cannot_be_ended(
    broker: RunningBroker, pg_target: PgCluster, no_signal_admin: NoSignalAdmin
) -> None:
    """While the role must stay (its session lives on), it loses login and its group
    roles, so the session loses what they gave it."""
    if no_signal_admin.server.label != "pg16":
        pytest.skip("uses the suite cluster's groups and tables")
    http = broker.http
    await _su(pg_target.dsn(), f"GRANT {PG_READERS} TO {no_signal_admin.name} WITH ADMIN OPTION")
    reply = await http.write(
        f"database/roles/{no_signal_admin.role}", {"creation_statements": [PG_READONLY]}
    )
    assert reply.status == 204, reply.body
    creds = await http.creds(no_signal_admin.role)
    session = await _session(no_signal_admin.server, creds.data)
    try:
        assert await session.fetchval("SELECT count(*) FROM items") == 2
        answer = await http.write("sys/leases/revoke", {"lease_id": creds.body["lease_id"]})
        assert answer.status == 502, answer.body
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await session.fetchval("SELECT count(*) FROM items")
    finally:
        session.terminate()
    await _su(pg_target.dsn(), f"GRANT pg_signal_backend TO {no_signal_admin.name}")


@pytest.mark.parametrize("admin_kind", ["least-privilege", "superuser"])
async def test_user_owning_and_granted_in_two_databases_is_dropped(
    broker: RunningBroker, pg_target: PgCluster, admin_kind: str
) -> None:
    """(c) Owns a table in 'app', holds a privilege in 'app2': Vault stops at the first
    object (hashicorp/vault#1535, #1857); both admins remove it completely. The grant in
    'app2' is made by a role the admin can revoke for (itself, or the superuser)."""
    http = broker.http
    role = "brkt-lp-twodb-" + ("su" if admin_kind == "superuser" else "lp")
    db_name = "pg"
    granter_dsn = pg_target.dsn("app2")
    if admin_kind == "superuser":
        db_name = "brkt-lp-su"
        reply = await http.write(
            f"database/config/{db_name}", {**pg_superuser_config(pg_target), "allowed_roles": "*"}
        )
        assert reply.status == 204, reply.body
    else:
        granter_dsn = (
            f"postgresql://{PG_ADMIN}:{PG_ADMIN_PASSWORD}@127.0.0.1:{pg_target.server.port}/app2"
        )
    creation = (
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}';"
        f' GRANT {PG_WRITERS} TO "{{{{name}}}}";'
    )
    reply = await http.write(
        f"database/roles/{role}", {"db_name": db_name, "creation_statements": [creation]}
    )
    assert reply.status == 204, reply.body
    creds = await http.creds(role)
    username = creds.data["username"]
    session = await _session(PgServer("pg16", "", pg_target.server.port, "app"), creds.data)
    await session.execute(f'CREATE TABLE "lp_{username}" (id int)')
    await _su(granter_dsn, f'GRANT SELECT ON items TO "{username}"')
    try:
        answer = await http.write("sys/leases/revoke", {"lease_id": creds.body["lease_id"]})
        assert answer.status == 204, answer.body
        assert not await _alive(session)
        assert not await pg_role_exists(pg_target.dsn(), username)
        conn = await asyncpg.connect(pg_target.dsn("app2"))
        try:
            acl = await conn.fetchval("SELECT relacl::text FROM pg_class WHERE relname = 'items'")
            assert username not in (acl or "")
        finally:
            await conn.close()
    finally:
        session.terminate()
        await _su(pg_target.dsn("app"), f'DROP TABLE IF EXISTS "lp_{username}"')
        if admin_kind == "superuser":
            await http.delete(f"database/roles/{role}")
            await http.delete(f"database/config/{db_name}")


async def test_config_write_names_each_missing_privilege(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    """(d) An admin that can log in but not much else: every missing privilege is a
    warning with the GRANT that gives it; the write itself succeeds, as in Vault."""
    http = broker.http
    name = "brkt_weak_" + secrets.token_hex(3)
    await _su(pg_target.dsn(), f"CREATE ROLE {name} LOGIN PASSWORD 'pw'")
    connection = "brkt-weak"
    body = {
        "plugin_name": "postgresql-database-plugin",
        "connection_url": pg_target.url_template,
        "username": name,
        "password": "pw",
        "allowed_roles": "brkt-weak-ro",
    }
    try:
        reply = await http.write(f"database/config/{connection}", body)
        assert reply.status == 200, reply.body
        text = "\n".join(reply.body["warnings"])
        assert f'ALTER ROLE "{name}" CREATEROLE' in text
        assert f'GRANT pg_signal_backend TO "{name}"' in text
        reply = await http.write(
            "database/roles/brkt-weak-ro",
            {"db_name": connection, "creation_statements": [PG_READONLY]},
        )
        assert reply.status == 204, reply.body
        reply = await http.write(f"database/config/{connection}", body)
        text = "\n".join(reply.body["warnings"])
        # PostgreSQL 16: granting a group needs ADMIN OPTION on it.
        assert f'GRANT "{PG_READERS}" TO "{name}" WITH ADMIN OPTION' in text
        assert "password" not in text.replace("PASSWORD", "")
    finally:
        await http.delete("database/roles/brkt-weak-ro")
        await http.delete(f"database/config/{connection}")
        await _su(pg_target.dsn(), f"DROP ROLE IF EXISTS {name}")


async def test_the_suite_admin_has_no_warnings_and_is_no_superuser(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    """The README's grants are complete: the suite's own admin gets no warning."""
    conn = await asyncpg.connect(pg_target.dsn())
    try:
        row = await conn.fetchrow(
            "SELECT rolsuper, rolcreaterole, current_setting('server_version_num')::int AS v "
            "FROM pg_roles WHERE rolname = $1",
            PG_ADMIN,
        )
    finally:
        await conn.close()
    assert row is not None and not row["rolsuper"] and row["rolcreaterole"]
    assert row["v"] >= 160000, "(f) the suite's cluster is PostgreSQL 16 (pgserver)"
    written = await broker.http.write("database/config/pg", pg_connection_config(pg_target))
    assert written.status == 204, written.body


async def test_pg_session_is_ended_on_revoke_by_the_least_privilege_admin(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    """(f) On PostgreSQL 16 with the README's admin: issue, open a session, revoke; the
    session ends and the role is gone."""
    creds = await broker.http.creds("brkt-pg-ro")
    session = await _session(PgServer("pg16", "", pg_target.server.port, "app"), creds.data)
    try:
        assert await session.fetchval("SELECT count(*) FROM items") == 2
        answer = await broker.http.write("sys/leases/revoke", {"lease_id": creds.body["lease_id"]})
        assert answer.status == 204, answer.body
        assert not await _alive(session)
        assert not await pg_role_exists(pg_target.dsn(), creds.data["username"])
    finally:
        session.terminate()


# -- MariaDB ---------------------------------------------------------------------------


async def _my_session(creds: dict[str, Any]) -> aiomysql.Connection:
    return await aiomysql.connect(
        host="127.0.0.1", port=3306, user=creds["username"], password=creds["password"]
    )


async def _my_alive(conn: aiomysql.Connection) -> bool:
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT 1")
            return bool(await cur.fetchone())
    except (aiomysql.Error, OSError):
        return False


async def test_mariadb_session_is_killed_on_revoke(broker: RunningBroker) -> None:
    """(e) The suite's MariaDB connection: a session open at revocation is killed."""
    creds = await broker.http.creds("brkt-my-ro")
    session = await _my_session(creds.data)
    try:
        assert await _my_alive(session)
        answer = await broker.http.write("sys/leases/revoke", {"lease_id": creds.body["lease_id"]})
        assert answer.status == 204, answer.body
        assert not await _my_alive(session)
        assert not await mysql_user_exists(creds.data["username"])
    finally:
        session.close()


async def test_mariadb_admin_that_may_not_kill_leaves_the_lease_failing(
    broker: RunningBroker,
) -> None:
    """(e) An admin with CREATE USER and PROCESS but no CONNECTION ADMIN: the KILL it is
    refused is reported (it used to be swallowed) and the lease stays failing; once
    granted, the retry kills the session."""
    http = broker.http
    admin = "brkt_mnokill_" + secrets.token_hex(3)
    connection, role = "brkt-mnokill", "brkt-mnokill-ro"
    await mysql_admin(
        f"CREATE USER '{admin}'@'%' IDENTIFIED BY 'admin-pw'",
        f"GRANT CREATE USER, PROCESS ON *.* TO '{admin}'@'%'",
        f"GRANT SELECT ON mysql.user TO '{admin}'@'%'",
        f"GRANT SELECT ON {MYSQL_APP_DB}.* TO '{admin}'@'%' WITH GRANT OPTION",
    )
    session = None
    try:
        reply = await http.write(
            f"database/config/{connection}",
            {
                "plugin_name": "mysql-database-plugin",
                "connection_url": "{{username}}:{{password}}@tcp(127.0.0.1:3306)/",
                "username": admin,
                "password": "admin-pw",
                "allowed_roles": role,
            },
        )
        assert reply.status == 200, reply.body
        assert any(
            f"GRANT CONNECTION ADMIN ON *.* TO '{admin}'@'%'" in w for w in reply.body["warnings"]
        ), reply.body
        reply = await http.write(
            f"database/roles/{role}",
            {"db_name": connection, "creation_statements": [MYSQL_READONLY]},
        )
        assert reply.status == 204, reply.body
        creds = await http.creds(role)
        lease_id, username = creds.body["lease_id"], creds.data["username"]
        session = await _my_session(creds.data)
        answer = await http.write("sys/leases/revoke", {"lease_id": lease_id})
        assert answer.status == 502, answer.body
        entry = await _failing(http, lease_id)
        assert entry is not None
        assert f"session(s) of {username} remain" in entry["error"], entry
        assert "KILL was refused" in entry["error"] and "CONNECTION ADMIN" in entry["error"]
        assert await _my_alive(session)

        await mysql_admin(f"GRANT CONNECTION ADMIN ON *.* TO '{admin}'@'%'")
        # Global privileges apply to new connections: start the pool afresh.
        assert (await http.write(f"database/reset/{connection}")).status == 204

        async def finished() -> bool:
            return not await _my_alive(session) and await _failing(http, lease_id) is None

        await eventually(finished, within=30, interval=0.25)
        assert not await mysql_user_exists(username)
    finally:
        if session is not None:
            session.close()
        await http.write(f"sys/leases/revoke-force/database/creds/{role}/")
        await http.delete(f"database/roles/{role}")
        await http.delete(f"database/config/{connection}")
        await mysql_admin(f"DROP USER IF EXISTS '{admin}'@'%'")


async def test_mariadb_admin_without_process_cannot_claim_success() -> None:
    """Without PROCESS the admin sees no other session, so it cannot tell whether any
    remain: the revocation says so instead of succeeding blindly."""
    from broker.exceptions import TargetError
    from broker.server.engines.base import ConnectionConfig, RevokeUserRequest
    from broker.server.engines.mysql import MySQLEngine

    admin = "brkt_mnoproc_" + secrets.token_hex(3)
    victim = "v_brkt_mnoproc_" + secrets.token_hex(3)
    await mysql_admin(
        f"CREATE USER '{admin}'@'%' IDENTIFIED BY 'admin-pw'",
        f"GRANT CREATE USER, CONNECTION ADMIN ON *.* TO '{admin}'@'%'",
        f"GRANT SELECT ON mysql.user TO '{admin}'@'%'",
        f"CREATE USER '{victim}'@'%' IDENTIFIED BY 'victim-pw'",
    )
    session = await aiomysql.connect(
        host=MARIADB["host"], port=3306, user=victim, password="victim-pw"
    )
    engine = MySQLEngine(
        ConnectionConfig("{{username}}:{{password}}@tcp(127.0.0.1:3306)/", admin, "admin-pw")
    )
    try:
        warnings = await engine.check_admin()
        assert any(f"GRANT PROCESS ON *.* TO '{admin}'@'%'" in w for w in warnings)
        with pytest.raises(TargetError, match="lacks PROCESS"):
            await engine.revoke_user(RevokeUserRequest(victim, ()))
    finally:
        await engine.close()
        session.close()
        await mysql_admin(
            f"DROP USER IF EXISTS '{victim}'@'%'", f"DROP USER IF EXISTS '{admin}'@'%'"
        )
