"""Issued passwords reach the target server only in its stored form (issue 14, item 2).

A statement's text lands in the server's log (``log_statement = 'ddl'``), in
``pg_stat_activity`` and in MariaDB's general and binary logs. PostgreSQL gets the SCRAM
verifier the broker computes (Vault's ``password_authentication = scram-sha-256``, the
broker's default); MariaDB gets the ``mysql_native_password`` hash. Each test logs in with
the plaintext password to show nothing changed for the user, and the
``password_authentication = password`` case shows the password in the log: what every
issuance did before.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiomysql
import asyncpg
import pytest

from broker.server.engines.postgres_common import quote_literal
from broker.server.engines.verifiers import mysql_native_hash, scram_sha256_verifier
from tests.conftest import (
    PG_ADMIN,
    PG_READERS,
    PG_READONLY,
    PgCluster,
    RunningBroker,
    pg_connection_config,
)
from tests.support import ISSUED_PASSWORDS, MARIADB, mysql_admin, pg_logs_in

#: Passwords whose SASLprep differs from the text (and one that fails it, so both
#: PostgreSQL and the client fall back to the raw bytes): the verifier must be the
#: server's own for each.
SASLPREP_CASES = (
    "plain-ASCII-0123",
    "a\u00a0b\u2003c-long-enough",  # non-ASCII spaces: mapped to ' '
    "soft\u00adhyphen\u200bzero",  # U+00AD mapped to nothing, U+200B to ' '
    "\u00ad\u200d",  # nothing left after mapping: raw bytes
    "\u2168\ufb01\u00aa-roman-ligature",  # NFKC: 'IX', 'fi', 'a'
    "caf\u00e9-e\u0301-composed",  # NFKC composes
    "\u05d0\u05d1\u05d2",  # right-to-left only: allowed
    "\u0627-mixed-bidi",  # RandALCat with LCat: prohibited, raw bytes
    "emoji-\U0001f600-unassigned",  # unassigned in Unicode 3.2: prohibited, raw bytes
)


@dataclass
class ServerLog:
    """The suite cluster's log file (pg_ctl -l, next to the data directory), read from
    where it ended when the test began."""

    path: Path
    start: int

    def read(self) -> str:
        with self.path.open("rb") as handle:
            handle.seek(self.start)
            return handle.read().decode("utf-8", "replace")


@pytest.fixture
async def ddl_log(pg_target: PgCluster) -> AsyncIterator[ServerLog]:
    """``log_statement = 'ddl'`` on the suite's cluster for the test, reset afterwards."""
    admin = await asyncpg.connect(pg_target.dsn())
    try:
        data = Path(str(await admin.fetchval("SHOW data_directory")))
        path = data.parent / "log"
        await admin.execute("ALTER SYSTEM SET log_statement = 'ddl'")
        await admin.fetchval("SELECT pg_reload_conf()")
        await asyncio.sleep(0.5)  # every backend re-reads the file before its next query
        yield ServerLog(path, path.stat().st_size)
    finally:
        await admin.execute("ALTER SYSTEM RESET log_statement")
        await admin.fetchval("SELECT pg_reload_conf()")
        await admin.close()


async def _superuser_fetchval(pg: PgCluster, query: str, *args: object) -> object:
    conn = await asyncpg.connect(pg.dsn())
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def _activity(pg: PgCluster) -> str:
    """Every session's current or last statement, as a superuser sees them."""
    text = await _superuser_fetchval(
        pg, "SELECT coalesce(string_agg(query, E'\\n'), '') FROM pg_stat_activity"
    )
    return str(text)


# -- the verifiers are the servers' own -----------------------------------------------------


async def test_scram_verifier_is_what_postgresql_computes(pg_target: PgCluster) -> None:
    """For each password, PostgreSQL hashes it (with ``password_encryption``), the broker's
    function recomputes the verifier with the same salt and iterations: equal. A role
    given the broker's verifier then logs in with the password exactly when one given
    the server's does (asyncpg does SASLprep on the client side too)."""
    admin = await asyncpg.connect(pg_target.dsn())
    names: list[str] = []
    try:
        await admin.execute("SET password_encryption = 'scram-sha-256'")
        for index, password in enumerate(SASLPREP_CASES):
            by_server = f"brkt_pv_srv_{index}_{secrets.token_hex(2)}"
            by_broker = f"brkt_pv_brk_{index}_{secrets.token_hex(2)}"
            names += [by_server, by_broker]
            await admin.execute(f"CREATE ROLE {by_server} LOGIN PASSWORD {quote_literal(password)}")
            stored = str(
                await admin.fetchval(
                    "SELECT rolpassword FROM pg_authid WHERE rolname = $1", by_server
                )
            )
            head, _, _ = stored.partition("$")[2].partition("$")
            iterations, salt = head.split(":")
            mine = scram_sha256_verifier(
                password, salt=base64.b64decode(salt), iterations=int(iterations)
            )
            assert mine == stored, (index, password)
            verifier = scram_sha256_verifier(password)
            await admin.execute(f"CREATE ROLE {by_broker} LOGIN PASSWORD '{verifier}'")
            assert (
                await admin.fetchval(
                    "SELECT rolpassword FROM pg_authid WHERE rolname = $1", by_broker
                )
                == verifier
            ), "stored as given, not hashed again"
            port = pg_target.server.port
            server_login = await pg_logs_in(port, by_server, password, "postgres")
            assert await pg_logs_in(port, by_broker, password, "postgres") == server_login
            # asyncpg drops U+200B where PostgreSQL maps it to a space (a client bug), so
            # that password fails for the server's own verifier too; every other logs in.
            assert server_login or "\u200b" in password, (index, password)
            assert not await pg_logs_in(port, by_broker, verifier, "postgres")
    finally:
        for name in names:
            await admin.execute(f"DROP ROLE IF EXISTS {name}")
        await admin.close()


async def test_mysql_native_hash_is_what_mariadb_computes() -> None:
    conn = await aiomysql.connect(**MARIADB)
    try:
        async with conn.cursor() as cur:
            for password in ("plain-ASCII-0123", "caf\u00e9-\u05d0-\u2168"):
                await cur.execute("SELECT PASSWORD(%s)", (password,))
                row = await cur.fetchone()
                assert row is not None and mysql_native_hash(password) == row[0], password
    finally:
        conn.close()


# -- issuance on PostgreSQL -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["default", "scram-sha-256", "password"])
async def test_issued_password_reaches_postgresql_only_as_a_verifier(
    broker: RunningBroker, pg_target: PgCluster, ddl_log: ServerLog, mode: str
) -> None:
    http = broker.http
    connection, role = f"brkt-pv-{mode}", f"brkt-pv-{mode}-ro"
    config = {**pg_connection_config(pg_target), "allowed_roles": [role]}
    if mode != "default":
        config["password_authentication"] = mode
    try:
        reply = await http.write(f"database/config/{connection}", config)
        assert reply.status in (200, 204), reply.body
        shown = (await http.read(f"database/config/{connection}")).data["connection_details"]
        assert shown.get("password_authentication", "") == ("" if mode == "default" else mode)
        reply = await http.write(
            f"database/roles/{role}",
            {"db_name": connection, "creation_statements": [PG_READONLY], "default_ttl": "5m"},
        )
        assert reply.status == 204, reply.body
        creds = (await http.creds(role)).data
        username, password = creds["username"], creds["password"]
        # The login works with the password, exactly as before.
        assert await pg_logs_in(pg_target.server.port, username, password)

        log, activity = ddl_log.read(), await _activity(pg_target)
        stored = str(
            await _superuser_fetchval(
                pg_target, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", username
            )
        )
        assert stored.startswith("SCRAM-SHA-256$4096:")
        assert f'CREATE ROLE "{username}"' in log, "log_statement = 'ddl' is on"
        if mode == "password":
            # Vault's default, kept for compatibility: the password is in the server's log
            # and in pg_stat_activity (what every issuance sent before the verifier).
            assert password in log
            assert password in activity
        else:
            assert password not in log
            assert password not in activity
            assert stored in log, "the statement carried the verifier, stored as it was"
        revoked = await http.write(f"sys/leases/revoke-prefix/database/creds/{role}/")
        assert revoked.status == 204, revoked.body
    finally:
        await http.delete(f"database/roles/{role}")
        await http.delete(f"database/config/{connection}")


@pytest.fixture
async def pv_accounts(pg_target: PgCluster) -> AsyncIterator[tuple[str, str]]:
    """(a static role's account, an admin account for rotate-root), made by a superuser."""
    static = "brkt_pv_static_" + secrets.token_hex(3)
    root = "brkt_pv_admin_" + secrets.token_hex(3)
    admin = await asyncpg.connect(pg_target.dsn())
    try:
        await admin.execute(
            f"CREATE ROLE {static} LOGIN PASSWORD 'initial-pw'; "
            f"GRANT {static} TO {PG_ADMIN} WITH ADMIN OPTION; "
            f"CREATE ROLE {root} LOGIN CREATEROLE PASSWORD 'admin-pw'; "
            f"GRANT {PG_READERS} TO {root} WITH ADMIN OPTION"
        )
        yield static, root
    finally:
        await admin.execute(f"DROP ROLE IF EXISTS {static}; DROP ROLE IF EXISTS {root}")
        await admin.close()


async def test_rotations_send_the_verifier(
    broker: RunningBroker,
    pg_target: PgCluster,
    ddl_log: ServerLog,
    pv_accounts: tuple[str, str],
) -> None:
    """A static role with its own rotation statement (``{{password}}``), and rotate-root
    with the default one: the server gets verifiers, the broker keeps the password (it
    still issues after rotating its own), and each password logs in."""
    static, root = pv_accounts
    http = broker.http
    port = pg_target.server.port
    try:
        reply = await http.write(
            "database/config/brkt-pv-rot",
            {**pg_connection_config(pg_target), "allowed_roles": ["brkt-pv-static"]},
        )
        assert reply.status in (200, 204), reply.body
        reply = await http.write(
            "database/static-roles/brkt-pv-static",
            {
                "db_name": "brkt-pv-rot",
                "username": static,
                "rotation_period": 3600,
                "rotation_statements": ["ALTER ROLE \"{{name}}\" WITH PASSWORD '{{password}}'"],
            },
        )
        assert reply.status == 204, reply.body
        first = (await http.read("database/static-creds/brkt-pv-static")).data["password"]
        assert (await http.write("database/rotate-role/brkt-pv-static")).status == 204
        second = (await http.read("database/static-creds/brkt-pv-static")).data["password"]
        ISSUED_PASSWORDS.update((first, second))
        assert await pg_logs_in(port, static, second, "postgres")
        assert not await pg_logs_in(port, static, first, "postgres")

        reply = await http.write(
            "database/config/brkt-pv-root",
            {
                **pg_connection_config(pg_target),
                "username": root,
                "password": "admin-pw",
                "allowed_roles": ["brkt-pv-root-ro"],
            },
        )
        assert reply.status in (200, 204), reply.body
        reply = await http.write(
            "database/roles/brkt-pv-root-ro",
            {"db_name": "brkt-pv-root", "creation_statements": [PG_READONLY]},
        )
        assert reply.status == 204, reply.body
        assert (await http.write("database/rotate-root/brkt-pv-root")).status == 204
        assert not await pg_logs_in(port, root, "admin-pw", "postgres")
        creds = (await http.creds("brkt-pv-root-ro")).data  # the broker logs in with it
        assert await pg_logs_in(port, creds["username"], creds["password"])

        log = ddl_log.read()
        for password in (first, second, creds["password"]):
            assert password not in log
        assert log.count(f'ALTER ROLE "{static}" WITH PASSWORD \'SCRAM-SHA-256$4096:') == 2
        assert f'ALTER ROLE "{root}" WITH PASSWORD \'SCRAM-SHA-256$4096:' in log
        revoked = await http.write("sys/leases/revoke-prefix/database/creds/brkt-pv-root-ro/")
        assert revoked.status == 204, revoked.body
    finally:
        # Leases first: an issued user keeps the rotated admin's grant (a dependency).
        await http.write("sys/leases/revoke-prefix/database/creds/brkt-pv-root-ro/")
        await http.delete("database/static-roles/brkt-pv-static")
        await http.delete("database/roles/brkt-pv-root-ro")
        await http.delete("database/config/brkt-pv-rot")
        await http.delete("database/config/brkt-pv-root")


async def test_bad_password_authentication_is_refused_without_side_effect(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    http = broker.http
    for name, body in (
        ("brkt-pv-bad", {**pg_connection_config(pg_target), "password_authentication": "md5"}),
        (
            "brkt-pv-bad-my",
            {
                "plugin_name": "mysql-database-plugin",
                "connection_url": "{{username}}:{{password}}@tcp(127.0.0.1:3306)/",
                "username": "root",
                "password": "",
                "password_authentication": "scram-sha-256",
            },
        ),
    ):
        reply = await http.write(f"database/config/{name}", body)
        assert reply.status == 400, reply.body
        assert any("password_authentication" in e for e in reply.errors), reply.body
        assert (await http.read(f"database/config/{name}")).status == 404
    reply = await http.write(
        "database/roles/brkt-pv-bad-ro",
        {"db_name": "pg", "revocation_statements": ["DROP ROLE '{{password_hash}}'"]},
    )
    assert reply.status == 400 and "password_hash" in reply.errors[0], reply.body


# -- MariaDB -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _general_log() -> AsyncIterator[aiomysql.Connection]:
    """MariaDB's general log into its table for the block, then as it was. The server is
    shared with other test runs: only the two settings change, only for the block."""
    conn = await aiomysql.connect(autocommit=True, **MARIADB)
    async with conn.cursor() as cur:
        await cur.execute("SELECT @@global.general_log, @@global.log_output")
        previous = await cur.fetchone()
        outputs = {o for o in str(previous[1]).upper().split(",") if o and o != "NONE"}
        await cur.execute("SET GLOBAL log_output = %s", (",".join(sorted(outputs | {"TABLE"})),))
        await cur.execute("SET GLOBAL general_log = 1")
    try:
        yield conn
    finally:
        async with conn.cursor() as cur:
            await cur.execute("SET GLOBAL general_log = %s", (int(previous[0]),))
            await cur.execute("SET GLOBAL log_output = %s", (previous[1],))
        conn.close()


async def _mysql_logs_in(user: str, password: str) -> bool:
    try:
        conn = await aiomysql.connect(host="127.0.0.1", user=user, password=password)
    except aiomysql.OperationalError:
        return False
    conn.close()
    return True


@pytest.mark.parametrize(
    "statements",
    [
        [],  # the engine's default on MariaDB
        ["CREATE USER '{{name}}'@'%' IDENTIFIED BY PASSWORD '{{password_hash}}'"],
        ["CREATE USER '{{name}}'@'%' IDENTIFIED WITH mysql_native_password AS '{{password_hash}}'"],
    ],
    ids=["default", "by-password", "with-as"],
)
async def test_mariadb_gets_the_hash_not_the_password(
    broker: RunningBroker, statements: list[str]
) -> None:
    http = broker.http
    role = "brkt-pv-my-" + secrets.token_hex(2)
    try:
        reply = await http.write(
            "database/config/brkt-pv-my",
            {
                "plugin_name": "mysql-database-plugin",
                "connection_url": "{{username}}:{{password}}@tcp(127.0.0.1:3306)/",
                "username": "root",
                "password": "",
                "allowed_roles": [role],
            },
        )
        assert reply.status in (200, 204), reply.body
        body: dict[str, object] = {"db_name": "brkt-pv-my", "default_ttl": "5m"}
        if statements:
            body["creation_statements"] = statements
        assert (await http.write(f"database/roles/{role}", body)).status == 204
        async with _general_log() as conn:
            creds = (await http.creds(role)).data
            username, password = creds["username"], creds["password"]
            async with conn.cursor() as cur:
                await cur.execute(
                    "SELECT CONVERT(argument USING utf8mb4) FROM mysql.general_log "
                    "WHERE CONVERT(argument USING utf8mb4) LIKE %s",
                    (f"%CREATE USER%{username}%",),
                )
                logged = [str(row[0]) for row in await cur.fetchall()]
                await cur.execute(
                    "SELECT authentication_string FROM mysql.user WHERE User = %s", (username,)
                )
                row = await cur.fetchone()
        assert logged, "the general log saw the CREATE USER"
        assert all(password not in line for line in logged)
        assert any(mysql_native_hash(password) in line for line in logged)
        assert row is not None and row[0] == mysql_native_hash(password)
        assert await _mysql_logs_in(username, password)
        revoked = await http.write(f"sys/leases/revoke-prefix/database/creds/{role}/")
        assert revoked.status == 204, revoked.body
    finally:
        await http.delete(f"database/roles/{role}")
        await http.delete("database/config/brkt-pv-my")


async def test_mariadb_rotation_sends_the_hash(broker: RunningBroker) -> None:
    """The default rotation (no statements) on MariaDB: ``IDENTIFIED BY PASSWORD``."""
    account = "brkt_pv_smy_" + secrets.token_hex(3)
    await mysql_admin(f"CREATE USER '{account}'@'%' IDENTIFIED BY 'initial-pw'")
    http = broker.http
    try:
        reply = await http.write(
            "database/config/brkt-pv-myrot",
            {
                "plugin_name": "mysql-database-plugin",
                "connection_url": "{{username}}:{{password}}@tcp(127.0.0.1:3306)/",
                "username": "root",
                "password": "",
                "allowed_roles": "brkt-pv-mystatic",
            },
        )
        assert reply.status in (200, 204), reply.body
        async with _general_log() as conn:
            reply = await http.write(
                "database/static-roles/brkt-pv-mystatic",
                {"db_name": "brkt-pv-myrot", "username": account, "rotation_period": 3600},
            )
            assert reply.status == 204, reply.body
            password = (await http.read("database/static-creds/brkt-pv-mystatic")).data["password"]
            ISSUED_PASSWORDS.add(password)
            async with conn.cursor() as cur:
                await cur.execute(
                    "SELECT CONVERT(argument USING utf8mb4) FROM mysql.general_log "
                    "WHERE CONVERT(argument USING utf8mb4) LIKE %s",
                    (f"%ALTER USER%{account}%",),
                )
                logged = [str(row[0]) for row in await cur.fetchall()]
        assert logged and all(password not in line for line in logged)
        assert any(mysql_native_hash(password) in line for line in logged)
        assert await _mysql_logs_in(account, password)
    finally:
        await http.delete("database/static-roles/brkt-pv-mystatic")
        await http.delete("database/config/brkt-pv-myrot")
        await mysql_admin(f"DROP USER IF EXISTS '{account}'@'%'")
