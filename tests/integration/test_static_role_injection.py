"""Static-role usernames are data, never SQL (issue 11.6).

A token allowed only ``database/static-roles/*`` once wrote a username that closed the
quoted identifier of the default rotation statement and appended ``CREATE ROLE ...
SUPERUSER``: the broker ran it as the connection's admin. Each test here performs such an
attack against a running broker with a least-privilege token and checks, on the target
itself, that nothing was created or altered; and that legitimate accounts with unusual
names still rotate.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import aiomysql
import asyncpg
import pytest

from broker.exceptions import InvalidRequest
from broker.server.engines import mysql as mysql_engine
from broker.server.engines import postgres as pg_engine
from broker.server.engines.templates import check_account_name, render_sql
from tests.conftest import PgCluster, RunningBroker
from tests.support import (
    ISSUED_PASSWORDS,
    VaultHTTP,
    mysql_admin,
    mysql_user_exists,
    pg_logs_in,
    pg_role_exists,
)

STATIC_ONLY_POLICY = """
path "database/static-roles/*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}
"""
MY_ROLE = "brkt-inj-my"  # the one static role name connection 'my' is made to allow


@pytest.fixture
async def static_only(broker: RunningBroker) -> AsyncIterator[VaultHTTP]:
    """An HTTP client whose token may only manage static roles."""
    policy = "brkt-inj-" + secrets.token_hex(3)
    http = broker.http
    assert (await http.write(f"sys/policy/{policy}", {"policy": STATIC_ONLY_POLICY})).status == 204
    made = await http.write("auth/token/create", {"policies": [policy], "ttl": "10m"})
    assert made.status == 200, made.body
    token = made.body["auth"]["client_token"]
    yield VaultHTTP(http.session, http.address, token)
    await http.write("auth/token/revoke", {"token": token})
    await http.delete(f"sys/policy/{policy}")


@pytest.fixture
async def pg_admin(pg_target: PgCluster) -> AsyncIterator[asyncpg.Connection]:
    """The cluster's superuser, to make and inspect accounts behind the broker's back."""
    conn = await asyncpg.connect(pg_target.dsn())
    yield conn
    await conn.close()


async def _pg_account(broker: RunningBroker, admin: asyncpg.Connection, name: str) -> None:
    """A login the 'pg' connection's admin may manage, superuser or not (a CREATEROLE
    admin needs the ADMIN option on it)."""
    owner = (await broker.http.read("database/config/pg")).data["connection_details"]["username"]
    await admin.execute(f"CREATE ROLE {_q(name)} LOGIN PASSWORD 'initial-pw'")
    if owner != "postgres":
        await admin.execute(f"GRANT {_q(name)} TO {_q(owner)} WITH ADMIN OPTION")


@pytest.fixture
async def my_allows_role(broker: RunningBroker) -> AsyncIterator[None]:
    reply = await broker.http.read("database/config/my")
    before = reply.data["allowed_roles"]
    await broker.http.write("database/config/my", {"allowed_roles": [*before, MY_ROLE]})
    yield
    await broker.http.write("database/config/my", {"allowed_roles": before})


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _pg_flags(conn: asyncpg.Connection, name: str) -> tuple[bool, bool, bool] | None:
    row = await conn.fetchrow(
        "SELECT rolsuper, rolcreaterole, rolcanlogin FROM pg_roles WHERE rolname = $1", name
    )
    return None if row is None else (row[0], row[1], row[2])


async def _my_logs_in(user: str, password: str) -> bool:
    try:
        conn = await aiomysql.connect(host="127.0.0.1", user=user, password=password)
    except aiomysql.OperationalError:
        return False
    conn.close()
    return True


async def test_hostile_usernames_on_postgres_change_nothing(
    broker: RunningBroker,
    pg_target: PgCluster,
    pg_admin: asyncpg.Connection,
    static_only: VaultHTTP,
) -> None:
    tag = secrets.token_hex(3)
    victim, evil = f"brkt_inj_victim_{tag}", f"brkt_evil_{tag}"
    await _pg_account(broker, pg_admin, victim)
    hostile = [
        # Against an existing role the unfixed broker ran all of it, as the admin: with a
        # superuser admin even the SUPERUSER; a CREATEROLE admin still made the login.
        f'{victim}" SUPERUSER; CREATE ROLE {evil} SUPERUSER LOGIN; --',
        f'{victim}" NOLOGIN; CREATE ROLE {evil} LOGIN; --',
        f'x" SUPERUSER; CREATE ROLE {evil} SUPERUSER LOGIN; --',
        f"{victim}' SUPERUSER; CREATE ROLE {evil} SUPERUSER LOGIN; --",
        f'{victim}"\nSUPERUSER',
        f"{victim}\\",
        f"{victim}\x00",
        f" {victim}",
        victim + "x" * 60,  # PostgreSQL would cut it to 63 bytes: another role's name
    ]
    try:
        for username in hostile:
            for statements in ([], ["ALTER ROLE \"{{name}}\" WITH PASSWORD '{{password}}'"]):
                body = {
                    "db_name": "pg",
                    "username": username,
                    "rotation_period": "1h",
                    "rotation_statements": statements,
                }
                reply = await static_only.write("database/static-roles/brkt-inj-pg", body)
                assert reply.status == 400, (username, reply.body)
                assert reply.errors and reply.errors[0], reply.body
                assert (await static_only.read("database/static-roles/brkt-inj-pg")).status == 404
                assert not await pg_role_exists(pg_target.dsn(), evil)
                assert await _pg_flags(pg_admin, victim) == (False, False, True)
                assert await pg_logs_in(pg_target.server.port, victim, "initial-pw")
        reply = await static_only.write(
            "database/static-roles/brkt-inj-pg", {"db_name": "pg", "username": hostile[0]}
        )
        assert "quote" in reply.errors[0], reply.errors
    finally:
        await static_only.delete("database/static-roles/brkt-inj-pg")
        await pg_admin.execute(f"DROP ROLE IF EXISTS {evil}")
        await pg_admin.execute(f"DROP ROLE IF EXISTS {victim}")


async def test_unusual_but_allowed_names_rotate_on_postgres(
    broker: RunningBroker,
    pg_target: PgCluster,
    pg_admin: asyncpg.Connection,
    static_only: VaultHTTP,
) -> None:
    name = f"brkt-inj.ok@x_{secrets.token_hex(3)} Z"
    await _pg_account(broker, pg_admin, name)
    port = pg_target.server.port
    try:
        for statements in ([], ["ALTER ROLE \"{{name}}\" WITH PASSWORD '{{password}}'"]):
            body = {
                "db_name": "pg",
                "username": name,
                "rotation_period": "1h",
                "rotation_statements": statements,
            }
            reply = await static_only.write("database/static-roles/brkt-inj-pg-ok", body)
            assert reply.status == 204, reply.body
            creds = (await broker.http.read("database/static-creds/brkt-inj-pg-ok")).data
            ISSUED_PASSWORDS.add(creds["password"])
            assert creds["username"] == name
            assert await pg_logs_in(port, name, creds["password"])
            assert not await pg_logs_in(port, name, "initial-pw")
            assert (await broker.http.write("database/rotate-role/brkt-inj-pg-ok")).status == 204
            again = (await broker.http.read("database/static-creds/brkt-inj-pg-ok")).data
            ISSUED_PASSWORDS.add(again["password"])
            assert await pg_logs_in(port, name, again["password"])
            assert not await pg_logs_in(port, name, creds["password"])
            assert (await static_only.delete("database/static-roles/brkt-inj-pg-ok")).status == 204
            await pg_admin.execute(f"ALTER ROLE {_q(name)} PASSWORD 'initial-pw'")
        # An account that does not exist is refused, and nothing is stored.
        reply = await static_only.write(
            "database/static-roles/brkt-inj-pg-ok",
            {"db_name": "pg", "username": name + "-nobody", "rotation_period": "1h"},
        )
        assert reply.status == 400 and "does not exist" in reply.errors[0], reply.body
        assert (await static_only.read("database/static-roles/brkt-inj-pg-ok")).status == 404
    finally:
        await static_only.delete("database/static-roles/brkt-inj-pg-ok")
        await pg_admin.execute(f"DROP ROLE IF EXISTS {_q(name)}")


async def test_hostile_usernames_on_mariadb_change_nothing(
    broker: RunningBroker, static_only: VaultHTTP, my_allows_role: None
) -> None:
    tag = secrets.token_hex(3)
    victim, evil = f"brkt_inj_v_{tag}", f"brkt_evil_{tag}"
    await mysql_admin(f"CREATE USER '{victim}'@'%' IDENTIFIED BY 'initial-pw'")
    hostile = [
        f"x'@'%'; CREATE USER '{evil}'@'%'; --",
        f"{victim}'@'%'; CREATE USER '{evil}'@'%'; -- ",
        # Closes the quotes of a Vault-style rotation statement: on the unfixed broker the
        # victim got a password the attacker chose.
        f"{victim}'@'%' IDENTIFIED BY 'brkt-known-pw' -- ",
        f"x`@`%`; CREATE USER `{evil}`@`%`; --",
        f'{victim}"@"%"; CREATE USER "{evil}"@"%"; -- ',
        f"{victim}\\",
        f"{victim}\x00",
        f"{victim} ",
    ]
    statements_variants: list[list[str]] = [
        [],
        ["ALTER USER '{{name}}'@'%' IDENTIFIED BY '{{password}}'"],
        ["SET PASSWORD FOR `{{name}}`@`%` = PASSWORD('{{password}}')"],
    ]
    try:
        for username in hostile:
            for statements in statements_variants:
                body = {
                    "db_name": "my",
                    "username": username,
                    "rotation_period": "1h",
                    "rotation_statements": statements,
                }
                reply = await static_only.write(f"database/static-roles/{MY_ROLE}", body)
                assert reply.status == 400, (username, statements, reply.body)
                assert reply.errors and reply.errors[0], reply.body
                assert (await static_only.read(f"database/static-roles/{MY_ROLE}")).status == 404
                assert not await mysql_user_exists(evil)
                assert await _my_logs_in(victim, "initial-pw")
                assert not await _my_logs_in(victim, "brkt-known-pw")
    finally:
        await static_only.delete(f"database/static-roles/{MY_ROLE}")
        await mysql_admin(
            f"DROP USER IF EXISTS '{evil}'@'%'", f"DROP USER IF EXISTS '{victim}'@'%'"
        )


async def test_unusual_but_allowed_names_rotate_on_mariadb(
    broker: RunningBroker, static_only: VaultHTTP, my_allows_role: None
) -> None:
    name = f"brkt-inj.ok@{secrets.token_hex(3)}"
    await mysql_admin(f"CREATE USER '{name}'@'%' IDENTIFIED BY 'initial-pw'")
    try:
        for statements in ([], ["ALTER USER '{{name}}'@'%' IDENTIFIED BY '{{password}}'"]):
            body = {
                "db_name": "my",
                "username": name,
                "rotation_period": "1h",
                "rotation_statements": statements,
            }
            reply = await static_only.write(f"database/static-roles/{MY_ROLE}", body)
            assert reply.status == 204, reply.body
            creds = (await broker.http.read(f"database/static-creds/{MY_ROLE}")).data
            ISSUED_PASSWORDS.add(creds["password"])
            assert await _my_logs_in(name, creds["password"])
            assert not await _my_logs_in(name, "initial-pw")
            assert (await static_only.delete(f"database/static-roles/{MY_ROLE}")).status == 204
            await mysql_admin(f"ALTER USER '{name}'@'%' IDENTIFIED BY 'initial-pw'")
        reply = await static_only.write(
            f"database/static-roles/{MY_ROLE}",
            {"db_name": "my", "username": "brkt-inj-nobody", "rotation_period": "1h"},
        )
        assert reply.status == 400 and "does not exist" in reply.errors[0], reply.body
        assert (await static_only.read(f"database/static-roles/{MY_ROLE}")).status == 404
    finally:
        await static_only.delete(f"database/static-roles/{MY_ROLE}")
        await mysql_admin(f"DROP USER IF EXISTS '{name}'@'%'")


def test_quoting_helpers() -> None:
    """The helpers every engine path uses: quote characters are doubled, NUL refused."""
    assert pg_engine.quote_ident('a"b') == '"a""b"'
    assert pg_engine.quote_literal("a'b") == "'a''b'"
    assert pg_engine.quote_literal("a\\'b") == "E'a\\\\''b'"
    assert mysql_engine.quote_ident("a`b") == "`a``b`"
    for quote in (pg_engine.quote_ident, pg_engine.quote_literal, mysql_engine.quote_ident):
        with pytest.raises(InvalidRequest):
            quote("a\x00b")
    check_account_name("username", "brkt-ok.name@host x")
    for bad in ("", "a'b", 'a"b', "a`b", "a\\b", "a\nb", "a\x00b", " ab", "ab ", "a\u2028b"):
        with pytest.raises(InvalidRequest):
            check_account_name("username", bad)
    assert render_sql("ALTER ROLE \"{{name}}\" PASSWORD '{{password}}'", {"name": "a.b"}) == (
        "ALTER ROLE \"a.b\" PASSWORD '{{password}}'"
    )
    with pytest.raises(InvalidRequest):
        render_sql('ALTER ROLE "{{name}}"', {"name": 'a" SUPERUSER; --'})
