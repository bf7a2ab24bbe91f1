"""`broker exec` and `broker connect`: a program runs with a fresh login, the lease is
renewed while it runs, signals reach it, and the login is gone when it exits."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import MYSQL_APP_DB, PG_READONLY, PgCluster, RunningBroker
from tests.support import ROOT, eventually, mysql_user_exists, pg_role_exists


def _env(broker: RunningBroker) -> dict[str, str]:
    return dict(os.environ, VAULT_ADDR=broker.address, VAULT_TOKEN=broker.http.token)


def _broker(broker: RunningBroker, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        env=_env(broker),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_exec_runs_with_login_and_revokes_after(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    done = await asyncio.to_thread(
        _broker,
        broker,
        "exec",
        "brkt-pg-ro",
        "--",
        "sh",
        "-c",
        'psql -tAc "select current_user" && echo "$DATABASE_URL" | cut -c1-13 && exit 7',
    )
    assert done.returncode == 7, done.stderr
    username, url_start = done.stdout.split()[:2]
    assert username.startswith("v_root_brkt_pg_ro_") and url_start == "postgresql://"
    assert "PGPASSWORD" not in done.stdout
    assert not await pg_role_exists(pg_target.dsn(), username)


async def test_exec_renews_past_the_ttl(broker: RunningBroker, pg_target: PgCluster) -> None:
    assert (
        await broker.http.write(
            "database/roles/brkt-pg-exec-short",
            {
                "db_name": "pg",
                "creation_statements": [PG_READONLY],
                "default_ttl": 2,
                "max_ttl": 60,
            },
        )
    ).status == 204
    done = await asyncio.to_thread(
        _broker,
        broker,
        "exec",
        "brkt-pg-exec-short",
        "--",
        "sh",
        "-c",
        'sleep 4; psql -tAc "select count(*) from items"',
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"  # still logged in 2 s after the original TTL


async def test_exec_forwards_sigterm_and_revokes(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker",
        "exec",
        "brkt-pg-ro",
        "--",
        "sh",
        "-c",
        'psql -tAc "select current_user"; exec sleep 30',
        env=_env(broker),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        username = (await proc.stdout.readline()).decode().strip()
        assert await pg_role_exists(pg_target.dsn(), username)
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM

    async def revoked() -> bool:
        return not await pg_role_exists(pg_target.dsn(), username)

    await eventually(revoked, within=10)


async def test_connect_opens_the_database_client(broker: RunningBroker) -> None:
    pg = await asyncio.to_thread(
        _broker, broker, "connect", "brkt-pg-ro", "--", "-tAc", "select count(*) from items"
    )
    assert pg.returncode == 0 and pg.stdout.strip() == "2", pg.stderr
    my = await asyncio.to_thread(
        _broker,
        broker,
        "connect",
        "brkt-my-ro",
        "--",
        "-N",
        "-e",
        f"select current_user(), count(*) from {MYSQL_APP_DB}.items",
    )
    assert my.returncode == 0, my.stderr
    user = my.stdout.split()[0].split("@")[0]
    assert my.stdout.split()[1] == "2"
    assert not await mysql_user_exists(user)


async def test_creds_pgpass_format(broker: RunningBroker, pg_target: PgCluster) -> None:
    out = await asyncio.to_thread(_broker, broker, "creds", "brkt-pg-ro", "--format", "pgpass")
    host, port, database, user, password = out.stdout.strip().split(":")
    assert (host, port, database) == ("127.0.0.1", str(pg_target.server.port), "app")
    assert user.startswith("v_root_") and len(password) >= 20


async def test_login_keeps_token_0600_and_status_uses_it(
    broker: RunningBroker, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("VAULT_TOKEN", "BROKER_TOKEN")}
    env.update(HOME=str(tmp_path), VAULT_ADDR=broker.address)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "broker", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    refused = await asyncio.to_thread(run, "login", "not-the-token")
    assert refused.returncode == 2 and not (tmp_path / ".broker-token").exists()
    done = await asyncio.to_thread(run, "login", broker.http.token)
    assert done.returncode == 0, done.stderr
    token_file = tmp_path / ".broker-token"
    assert token_file.read_text().strip() == broker.http.token
    assert token_file.stat().st_mode & 0o777 == 0o600
    status = await asyncio.to_thread(run, "status")
    assert status.returncode == 0, status.stderr
    assert "storage  ok" in status.stdout and "nodes" in status.stdout


async def test_lease_table_and_prefix_revocation_with_progress(broker: RunningBroker) -> None:
    issued = [await broker.http.creds("brkt-my-ro") for _ in range(25)]
    table = await asyncio.to_thread(_broker, broker, "lease", "list", "database/creds/brkt-my-ro/")
    assert table.returncode == 0, table.stderr
    first = issued[0].body["lease_id"].rsplit("/", 1)[1]
    assert first in table.stdout and "active" in table.stdout and "0h59m" in table.stdout
    top = await asyncio.to_thread(_broker, broker, "lease", "list", "database/creds/")
    assert "brkt-my-ro/" in top.stdout and "lease(s)" in top.stdout

    revoked = await asyncio.to_thread(
        _broker, broker, "lease", "revoke", "--prefix", "database/creds/brkt-my-ro/"
    )
    assert revoked.returncode == 0, revoked.stderr
    done = re.search(r"revoked (\d+) of (\d+) lease", revoked.stdout)
    assert done and done.group(1) == done.group(2) and int(done.group(1)) >= 25, revoked.stdout
    for reply in issued:
        assert not await mysql_user_exists(reply.data["username"])


async def test_bash_completion_comes_from_the_parser(broker: RunningBroker) -> None:
    script = await asyncio.to_thread(_broker, broker, "completion", "bash")
    assert "complete -F _broker broker" in script.stdout
    assert "exec" in script.stdout and "--format" in script.stdout and "renew" in script.stdout
    check = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-n"],
        input=script.stdout,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
