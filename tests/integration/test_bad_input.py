"""Bad input: a clear 4xx with Vault's {"errors": [...]} body, and nothing changed."""

from __future__ import annotations

import io

import asyncpg

from tests.conftest import PgCluster, RunningBroker


async def _lease_count(broker: RunningBroker) -> int:
    conn = await asyncpg.connect(broker.settings.storage_dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM broker_leases"))
    finally:
        await conn.close()


async def test_unknown_role(broker: RunningBroker) -> None:
    before = await _lease_count(broker)
    reply = await broker.http.read("database/creds/no-such-role")
    assert reply.status == 400 and reply.errors == ["unknown role: no-such-role"]
    assert await _lease_count(broker) == before


async def test_role_on_unknown_connection(broker: RunningBroker) -> None:
    assert (
        await broker.http.write("database/roles/brkt-orphan", {"db_name": "nope"})
    ).status == 204
    reply = await broker.http.read("database/creds/brkt-orphan")
    assert reply.status == 400 and "unknown database connection" in reply.errors[0]


async def test_role_not_allowed_by_connection(broker: RunningBroker) -> None:
    assert (
        await broker.http.write(
            "database/roles/brkt-not-allowed",
            {"db_name": "my", "creation_statements": "CREATE USER '{{name}}'@'%'"},
        )
    ).status == 204
    before = await _lease_count(broker)
    reply = await broker.http.read("database/creds/brkt-not-allowed")
    assert reply.status == 400 and "not an allowed role" in reply.errors[0]
    assert await _lease_count(broker) == before


async def test_malformed_ttl_changes_nothing(broker: RunningBroker) -> None:
    reply = await broker.http.write(
        "database/roles/brkt-bad-ttl", {"db_name": "pg", "default_ttl": "ten minutes"}
    )
    assert reply.status == 400 and "default_ttl" in reply.errors[0]
    assert (await broker.http.read("database/roles/brkt-bad-ttl")).status == 404
    reply = await broker.http.write(
        "database/roles/brkt-pg-ro", {"max_ttl": "1h", "default_ttl": "2h"}
    )
    assert reply.status == 400
    assert (await broker.http.read("database/roles/brkt-pg-ro")).data["max_ttl"] == 86400


async def test_unknown_template_variable_is_refused_on_write(broker: RunningBroker) -> None:
    reply = await broker.http.write(
        "database/roles/brkt-bad-var",
        {"db_name": "pg", "revocation_statements": "DROP ROLE {{password}}"},
    )
    assert reply.status == 400 and "{{password}}" in reply.errors[0]


async def test_statement_failing_on_database(broker: RunningBroker, pg_target: PgCluster) -> None:
    bad = (
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}'; "
        'GRANT no_such_group TO "{{name}}";'
    )
    assert (
        await broker.http.write(
            "database/roles/brkt-pg-bad", {"db_name": "pg", "creation_statements": bad}
        )
    ).status == 204
    reply = await broker.http.read("database/creds/brkt-pg-bad")
    assert reply.status == 400
    # The error names the SQLSTATE (42704, undefined object), never the statement's text.
    assert "42704" in reply.errors[0] and "no_such_group" not in reply.errors[0]
    admin = await asyncpg.connect(pg_target.dsn())
    try:
        left = await admin.fetchval(
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v_root_brkt_pg_bad_%'"
        )
    finally:
        await admin.close()
    assert left == 0
    conn = await asyncpg.connect(broker.settings.storage_dsn)
    try:
        states = await conn.fetch(
            "SELECT state, last_error FROM broker_leases WHERE role_name = 'brkt-pg-bad'"
        )
    finally:
        await conn.close()
    assert [s["state"] for s in states] == ["failed"]
    assert (await broker.http.delete("database/roles/brkt-pg-bad")).status == 204


async def test_mysql_statement_failing_rolls_back(broker: RunningBroker) -> None:
    bad = (
        "CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}'; "
        "GRANT SELECT ON no_such_db.nothing TO '{{name}}'@'%'"
    )
    await broker.http.write(
        "database/roles/brkt-my-bad", {"db_name": "my", "creation_statements": bad}
    )
    reply = await broker.http.read("database/creds/brkt-my-bad")
    assert reply.status == 400 and reply.errors[0].startswith("creation statements failed")
    import aiomysql

    from tests.support import MARIADB

    conn = await aiomysql.connect(**MARIADB)
    try:
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT COUNT(*) FROM mysql.user WHERE User LIKE 'v\\_root\\_brkt\\_my\\_bad%'"
            )
            assert (await cur.fetchone()) == (0,)  # the user created first was rolled back
    finally:
        conn.close()


async def test_database_errors_never_echo_the_password(broker: RunningBroker) -> None:
    """Both servers quote the statement text near a syntax error; the password sits there."""
    cases = {
        "brkt-my-bad": "CREATE USR '{{name}}'@'%' IDENTIFIED BY '{{password}}'",
        "brkt-pg-leak": "SELECT '{{password}}'::int",
    }
    for role, statement in cases.items():
        db = "my" if role.startswith("brkt-my") else "pg"
        assert (
            await broker.http.write(
                f"database/roles/{role}", {"db_name": db, "creation_statements": statement}
            )
        ).status == 204
        reply = await broker.http.read(f"database/creds/{role}")
        assert reply.status == 400, reply.body
        # Reported by structure (error number or SQLSTATE), never the server's text.
        assert "IDENTIFIED" not in reply.errors[0] and "::int" not in reply.errors[0]
        assert "1064" in reply.errors[0] or "22P02" in reply.errors[0], reply.errors


async def test_wrong_and_missing_token(broker: RunningBroker) -> None:
    for token in ("wrong", ""):
        reply = await broker.http.call("GET", "database/creds/brkt-pg-ro", token=token)
        assert reply.status == 403 and reply.errors == ["permission denied"]
    bearer = await broker.http.call(
        "GET",
        "database/roles/brkt-pg-ro",
        token="",
        headers={"Authorization": f"Bearer {broker.http.token}"},
    )
    assert bearer.status == 200


async def test_oversized_and_malformed_bodies(broker: RunningBroker) -> None:
    huge = io.BytesIO(b'{"db_name": "' + b"x" * (2 * 1024 * 1024) + b'"}')
    reply = await broker.http.call(
        "PUT", "database/roles/brkt-huge", raw=huge, headers={"Content-Type": "application/json"}
    )
    assert reply.status == 413 and reply.errors
    reply = await broker.http.call(
        "PUT",
        "database/roles/brkt-huge",
        raw=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert reply.status == 400 and "JSON" in reply.errors[0]
    reply = await broker.http.call(
        "PUT",
        "database/roles/brkt-huge",
        raw=b"[1, 2]",
        headers={"Content-Type": "application/json"},
    )
    assert reply.status == 400
    assert (await broker.http.read("database/roles/brkt-huge")).status == 404


async def test_unknown_path_and_operation(broker: RunningBroker) -> None:
    assert (await broker.http.read("nomount/creds/x")).status == 404
    assert (await broker.http.delete("database/creds/brkt-pg-ro")).status == 405
    missing = await broker.http.read("database/roles/does-not-exist")
    assert missing.status == 404 and missing.body == {"errors": []}


async def test_connection_that_cannot_connect_is_refused(broker: RunningBroker) -> None:
    reply = await broker.http.write(
        "database/config/brkt-dead",
        {
            "plugin_name": "postgresql-database-plugin",
            "connection_url": "postgresql://{{username}}:{{password}}@127.0.0.1:1/x",
            "username": "u",
            "password": "hunter2-secret",
        },
    )
    assert reply.status == 400 and "error verifying connection" in reply.errors[0]
    assert "hunter2-secret" not in reply.errors[0]
    assert (await broker.http.read("database/config/brkt-dead")).status == 404
    reply = await broker.http.write(
        "database/config/brkt-dead",
        {"plugin_name": "oracle-database-plugin", "connection_url": "x"},
    )
    assert reply.status == 400 and "unsupported plugin_name" in reply.errors[0]


async def test_form_encoded_and_comma_lists(broker: RunningBroker) -> None:
    reply = await broker.http.call(
        "POST",
        "database/roles/brkt-form",
        raw=b"db_name=pg&default_ttl=90s&max_ttl=1h",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert reply.status == 204, reply.body
    role = await broker.http.read("database/roles/brkt-form")
    assert role.data["default_ttl"] == 90 and role.data["max_ttl"] == 3600
    assert (await broker.http.delete("database/roles/brkt-form")).status == 204
