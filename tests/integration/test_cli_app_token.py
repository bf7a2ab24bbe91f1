"""The developer client with an application's token, not an admin's: the README's
least-privilege policy (read the role's creds, renew and revoke leases) is enough for
`broker creds` in every format, `exec`, `connect` and `agent`, none of which reads the
role or the connection. And a command that fails after issuing a login revokes it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiomysql
import asyncpg
import pytest

from tests.conftest import PG_ADMIN_PASSWORD, PG_READONLY, PgCluster, RunningBroker
from tests.support import (
    ISSUED_PASSWORDS,
    ROOT,
    eventually,
    mysql_user_exists,
    pg_logs_in,
    pg_role_exists,
    run_cli,
)

POLICY = """
path "database/creds/brkt-pg-ro" { capabilities = ["read"] }
path "database/creds/brkt-my-ro" { capabilities = ["read"] }
path "database/creds/brkt-pg-apptok-literal" { capabilities = ["read"] }
path "sys/leases/renew"  { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
"""
FORMATS = ("env", "json", "dsn", "pgpass", "table")


async def _app_token(broker: RunningBroker, display_name: str) -> str:
    assert (await broker.http.write("sys/policy/brkt-apptok-app", {"policy": POLICY})).status == 204
    made = await broker.http.write(
        "auth/token/create",
        {"policies": ["brkt-apptok-app"], "ttl": "10m", "display_name": display_name},
    )
    assert made.status == 200, made.body
    token: str = made.body["auth"]["client_token"]
    return token


@pytest.fixture
async def app_env(broker: RunningBroker) -> AsyncIterator[dict[str, str]]:
    """BROKER_ADDR/BROKER_TOKEN for a token holding only the app policy; every login its
    tests got is revoked afterwards, whatever they asserted."""
    token = await _app_token(broker, "apptok")
    yield {"BROKER_ADDR": broker.address, "BROKER_TOKEN": token}
    await broker.http.write("auth/token/revoke", {"token": token})


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = run_cli(*args, env=env)
    return done


async def _pg_users_like(pg: PgCluster, fragment: str) -> list[str]:
    conn = await asyncpg.connect(pg.dsn())
    try:
        rows = await conn.fetch(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE '%' || $1 || '%'", fragment
        )
        return [r["rolname"] for r in rows]
    finally:
        await conn.close()


def _admin_secrets(pg: PgCluster) -> tuple[str, ...]:
    return (pg.server.password, PG_ADMIN_PASSWORD)


async def test_the_app_token_cannot_read_the_connection(
    broker: RunningBroker, app_env: dict[str, str]
) -> None:
    """The premise: the policy really is least privilege (no role, no config reads)."""
    token = app_env["BROKER_TOKEN"]
    for path in ("database/roles/brkt-pg-ro", "database/config/pg"):
        assert (await broker.http.call("GET", path, token=token)).status == 403


async def test_creds_answer_describes_the_endpoint_only_when_asked(
    broker: RunningBroker, app_env: dict[str, str], pg_target: PgCluster
) -> None:
    token = app_env["BROKER_TOKEN"]
    plain = await broker.http.call("GET", "database/creds/brkt-pg-ro", token=token)
    assert plain.status == 200 and set(plain.data) == {"username", "password"}  # Vault's shape
    described = await broker.http.call(
        "GET", "database/creds/brkt-pg-ro?connection=true", token=token
    )
    assert described.status == 200, described.body
    assert described.data["connection"] == {
        "plugin": "postgresql",
        "host": "127.0.0.1",
        "port": str(pg_target.server.port),
        "database": "app",
    }
    my = await broker.http.call("GET", "database/creds/brkt-my-ro?connection=true", token=token)
    assert my.data["connection"] == {
        "plugin": "mysql",
        "host": "127.0.0.1",
        "port": "3306",
        "database": "",
    }
    for reply in (plain, described, my):
        ISSUED_PASSWORDS.add(reply.data["password"])
        await broker.http.write("sys/leases/revoke", {"lease_id": reply.body["lease_id"]})


async def test_bad_connection_flag_is_a_400_before_any_login(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    token = await _app_token(broker, "apptokbadflag")
    reply = await broker.http.call("GET", "database/creds/brkt-pg-ro?connection=maybe", token=token)
    assert reply.status == 400 and reply.errors
    assert await _pg_users_like(pg_target, "apptokbadflag") == []


async def test_endpoint_never_carries_admin_credentials_written_into_the_url(
    broker: RunningBroker, app_env: dict[str, str], pg_target: PgCluster
) -> None:
    """A connection_url with the admin login written in (userinfo and a password=
    parameter) instead of placeholders: the endpoint keeps host, port, database and
    sslmode, and neither the admin user nor its password reaches the app's token."""
    password = pg_target.server.password
    url = (
        f"postgresql://postgres:{password}@127.0.0.1:{pg_target.server.port}/app"
        f"?sslmode=disable&password={password}&user=postgres"
    )
    reply = await broker.http.write(
        "database/config/brkt-apptok-literal",
        {
            "plugin_name": "postgresql-database-plugin",
            "connection_url": url,
            "allowed_roles": "brkt-pg-apptok-literal",
        },
    )
    assert reply.status == 204, reply.body
    reply = await broker.http.write(
        "database/roles/brkt-pg-apptok-literal",
        {"db_name": "brkt-apptok-literal", "creation_statements": [PG_READONLY]},
    )
    assert reply.status == 204, reply.body
    try:
        issued = await broker.http.call(
            "GET",
            "database/creds/brkt-pg-apptok-literal?connection=true",
            token=app_env["BROKER_TOKEN"],
        )
        assert issued.status == 200, issued.body
        ISSUED_PASSWORDS.add(issued.data["password"])
        assert issued.data["connection"] == {
            "plugin": "postgresql",
            "host": "127.0.0.1",
            "port": str(pg_target.server.port),
            "database": "app",
            "sslmode": "disable",
        }
        raw = json.dumps(issued.body)
        assert password not in raw and "postgres" not in raw.replace("postgresql", "")
        dsn = await asyncio.to_thread(
            _cli, app_env, "creds", "brkt-pg-apptok-literal", "--format", "dsn"
        )
        assert dsn.returncode == 0, dsn.stderr
        assert password not in dsn.stdout and dsn.stdout.strip().endswith("?sslmode=disable")
        conn = await asyncpg.connect(dsn.stdout.strip())
        assert await conn.fetchval("SELECT count(*) FROM items") == 2
        await conn.close()
    finally:
        await broker.http.write("sys/leases/revoke-prefix/database/creds/brkt-pg-apptok-literal/")
        await broker.http.delete("database/roles/brkt-pg-apptok-literal")
        await broker.http.delete("database/config/brkt-apptok-literal")


async def test_creds_every_format_with_the_app_token(
    broker: RunningBroker, app_env: dict[str, str], pg_target: PgCluster
) -> None:
    port = str(pg_target.server.port)
    for form in FORMATS:
        out = await asyncio.to_thread(_cli, app_env, "creds", "brkt-pg-ro", "--format", form)
        assert out.returncode == 0, (form, out.stderr)
        for secret in _admin_secrets(pg_target):
            assert secret not in out.stdout
        text = out.stdout.strip()
        if form == "env":
            env = dict(line.removeprefix("export ").split("=", 1) for line in text.splitlines())
            assert (env["PGHOST"], env["PGPORT"], env["PGDATABASE"]) == ("127.0.0.1", port, "app")
            user, password = env["PGUSER"], env["PGPASSWORD"]
            assert env["DATABASE_URL"].startswith("postgresql://") and env["BROKER_LEASE_ID"]
        elif form == "json":
            shown = json.loads(text)
            user, password = shown["username"], shown["password"]
            assert shown["connection"]["port"] == port
        elif form == "dsn":
            conn = await asyncpg.connect(text)
            user = str(await conn.fetchval("SELECT current_user"))
            await conn.close()
            password = text.split("@")[0].rsplit(":", 1)[1]
        elif form == "pgpass":
            host, pg_port, database, user, password = text.split(":")
            assert (host, pg_port, database) == ("127.0.0.1", port, "app")
        else:
            rows = dict(line.split(None, 1) for line in text.splitlines())
            user, password = rows["username"], rows["password"]
        ISSUED_PASSWORDS.add(password)
        assert user.startswith("v_token_apptok_brkt_pg_ro_"), user
        assert await pg_logs_in(pg_target.server.port, user, password), form

    my = await asyncio.to_thread(_cli, app_env, "creds", "brkt-my-ro", "--format", "env")
    assert my.returncode == 0, my.stderr
    env = dict(line.removeprefix("export ").split("=", 1) for line in my.stdout.splitlines())
    ISSUED_PASSWORDS.add(env["MYSQL_PWD"])
    conn = await aiomysql.connect(
        host=env["MYSQL_HOST"],
        port=int(env["MYSQL_TCP_PORT"]),
        user=env["MYSQL_USER"],
        password=env["MYSQL_PWD"],
    )
    conn.close()


async def test_exec_with_the_app_token_logs_in_and_revokes(
    broker: RunningBroker, app_env: dict[str, str], pg_target: PgCluster
) -> None:
    script = (
        "import asyncio, os, asyncpg\n"
        "async def main():\n"
        "    conn = await asyncpg.connect()\n"  # libpq's PG* variables
        "    print(await conn.fetchval('SELECT current_user'),"
        " await conn.fetchval('SELECT count(*) FROM items'))\n"
        "    await conn.close()\n"
        "asyncio.run(main())\n"
    )
    done = await asyncio.to_thread(
        _cli, app_env, "exec", "brkt-pg-ro", "--", sys.executable, "-c", script
    )
    assert done.returncode == 0, done.stderr
    user, count = done.stdout.split()
    assert user.startswith("v_token_apptok_brkt_pg_ro_") and count == "2"
    assert not await pg_role_exists(pg_target.dsn(), user)

    my_script = (
        "import os, pymysql\n"
        "c = pymysql.connect(host=os.environ['MYSQL_HOST'],"
        " port=int(os.environ['MYSQL_TCP_PORT']), user=os.environ['MYSQL_USER'],"
        " password=os.environ['MYSQL_PWD'])\n"
        "cur = c.cursor()\n"
        "cur.execute('SELECT current_user(), 1')\n"
        "print(*cur.fetchone())\n"
    )
    done = await asyncio.to_thread(
        _cli, app_env, "exec", "brkt-my-ro", "--", sys.executable, "-c", my_script
    )
    assert done.returncode == 0, done.stderr
    account, one = done.stdout.split()
    assert account.startswith("v_") and one == "1"
    assert not await mysql_user_exists(account.split("@")[0])


@pytest.mark.skipif(not (shutil.which("psql") and shutil.which("mysql")), reason="no clients")
async def test_connect_with_the_app_token(broker: RunningBroker, app_env: dict[str, str]) -> None:
    pg = await asyncio.to_thread(
        _cli, app_env, "connect", "brkt-pg-ro", "--", "-tAc", "select current_user"
    )
    assert pg.returncode == 0, pg.stderr
    assert pg.stdout.strip().startswith("v_token_apptok_brkt_pg_ro_")
    my = await asyncio.to_thread(
        _cli,
        app_env,
        "connect",
        "brkt-my-ro",
        "--",
        "-N",
        "-e",
        "select current_user(), 1",  # (the shared MariaDB's test tables may be gone)
    )
    assert my.returncode == 0, my.stderr
    account, one = my.stdout.split()
    assert account.startswith("v_") and one == "1"
    assert not await mysql_user_exists(account.split("@")[0])


async def test_agent_with_the_app_token(
    broker: RunningBroker, app_env: dict[str, str], pg_target: PgCluster, tmp_path: Path
) -> None:
    target = tmp_path / "db.env"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[[template]]\nrole = "brkt-pg-ro"\ndestination = "{target}"\nformat = "env"\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker",
        "agent",
        "--config",
        str(config),
        env={**os.environ, **app_env},
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await eventually(lambda: asyncio.to_thread(target.exists), within=15)
        lines = (await asyncio.to_thread(target.read_text)).splitlines()
        env = dict(line.split("=", 1) for line in lines)
        ISSUED_PASSWORDS.add(env["PGPASSWORD"])
        assert env["PGPORT"] == str(pg_target.server.port)
        assert await pg_logs_in(pg_target.server.port, env["PGUSER"], env["PGPASSWORD"])
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr
    assert not await pg_role_exists(pg_target.dsn(), env["PGUSER"])


# -- failures after issuance revoke the login -------------------------------------------


async def _live_leases(broker: RunningBroker, role: str) -> set[str]:
    reply = await broker.http.list(f"sys/leases/lookup/database/creds/{role}/")
    return set(reply.body.get("data", {}).get("keys", [])) if reply.status == 200 else set()


async def _no_login_left(pg: PgCluster, fragment: str) -> None:
    async def gone() -> bool:
        return await _pg_users_like(pg, fragment) == []

    await eventually(gone, within=10)


async def test_exec_of_a_missing_command_revokes_its_login(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    token = await _app_token(broker, "apptokexecfail")
    env = {"BROKER_ADDR": broker.address, "BROKER_TOKEN": token}
    done = await asyncio.to_thread(_cli, env, "exec", "brkt-pg-ro", "--", "/nonexistent/cmd")
    assert done.returncode == 127
    assert "cannot run /nonexistent/cmd" in done.stderr  # said after the login was issued
    assert "warning" not in done.stderr
    await _no_login_left(pg_target, "apptokexecfail")


async def test_connect_without_the_client_revokes_its_login(
    broker: RunningBroker, pg_target: PgCluster, tmp_path: Path
) -> None:
    token = await _app_token(broker, "apptokconnfail")
    env = {"BROKER_ADDR": broker.address, "BROKER_TOKEN": token, "PATH": str(tmp_path)}
    done = await asyncio.to_thread(_cli, env, "connect", "brkt-pg-ro")
    assert done.returncode == 127
    assert "cannot run psql" in done.stderr
    await _no_login_left(pg_target, "apptokconnfail")


async def _creds_into_a_closed_pipe(
    broker: RunningBroker, token: str, role: str, form: str
) -> subprocess.CompletedProcess[str]:
    """``broker creds`` whose stdout is a pipe nobody reads (closed): the login is issued
    but can never be handed over."""
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("VAULT_TOKEN", "BROKER_TOKEN")},
        "BROKER_ADDR": broker.address,
        "BROKER_TOKEN": token,
    }
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "broker", "creds", role, "--format", form],
            env=env,
            cwd=ROOT,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)


async def test_creds_that_cannot_be_printed_are_revoked(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    """A login issued but never handed over must not stay alive for its TTL."""
    token = await _app_token(broker, "apptokpipefail")
    done = await _creds_into_a_closed_pipe(broker, token, "brkt-pg-ro", "env")
    assert done.returncode != 0
    assert "Broken pipe" in done.stderr or "EPIPE" in done.stderr, done.stderr
    await _no_login_left(pg_target, "apptokpipefail")


async def test_creds_failure_before_output_revokes_on_mysql_too(
    broker: RunningBroker,
) -> None:
    """The same for MariaDB, checked on the leases the broker still knows (MariaDB's
    user names keep too little of the display name to find them by it)."""
    token = await _app_token(broker, "apptokmypipe")
    before = await _live_leases(broker, "brkt-my-ro")
    done = await _creds_into_a_closed_pipe(broker, token, "brkt-my-ro", "dsn")
    assert done.returncode != 0
    assert await _live_leases(broker, "brkt-my-ro") == before
