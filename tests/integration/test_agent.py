"""`broker agent` keeps a credentials file fresh: renews while it can, re-issues only near
max_ttl, revokes what it replaced, runs the reload command after each change."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import asyncpg

from tests.conftest import PG_READONLY, PgCluster, RunningBroker
from tests.support import ROOT, eventually, pg_role_exists


def _read(path: Path) -> dict[str, str]:
    try:
        data: dict[str, str] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return {}


async def _login(pg: PgCluster, creds: dict[str, str]) -> int:
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=pg.server.port,
        database="app",
        user=creds["username"],
        password=creds["password"],
    )
    try:
        return int(await conn.fetchval("SELECT count(*) FROM items"))
    finally:
        await conn.close()


async def test_agent_renews_then_reissues_near_max_ttl(
    broker: RunningBroker, pg_target: PgCluster, tmp_path: Path
) -> None:
    assert (
        await broker.http.write(
            "database/roles/brkt-pg-agent",
            {"db_name": "pg", "creation_statements": [PG_READONLY], "default_ttl": 2, "max_ttl": 5},
        )
    ).status == 204
    target, reloads = tmp_path / "db.json", tmp_path / "reloads"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[[template]]\nrole = "brkt-pg-agent"\ndestination = "{target}"\n'
        f'format = "json"\ncommand = "echo reload >> {reloads}"\n'
    )
    env = dict(os.environ, VAULT_ADDR=broker.address, VAULT_TOKEN=broker.http.token)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker",
        "agent",
        "--config",
        str(config),
        env=env,
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await eventually(lambda: asyncio.to_thread(lambda: bool(_read(target))), within=15)
        first = await asyncio.to_thread(_read, target)
        assert oct(target.stat().st_mode & 0o777) == "0o600"
        assert await _login(pg_target, first) == 2
        await asyncio.sleep(2.6)  # past the 2 s TTL: the same login, renewed
        assert (await asyncio.to_thread(_read, target))["username"] == first["username"]
        assert await _login(pg_target, first) == 2

        async def reissued() -> bool:
            return (await asyncio.to_thread(_read, target)).get("username") not in (
                None,
                first["username"],
            )

        await eventually(reissued, within=10)
        second = await asyncio.to_thread(_read, target)
        assert await _login(pg_target, second) == 2

        async def old_gone() -> bool:
            return not await pg_role_exists(pg_target.dsn(), first["username"])

        await eventually(old_gone, within=5)
        assert len((await asyncio.to_thread(reloads.read_text)).splitlines()) >= 2
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    current = await asyncio.to_thread(_read, target)
    assert not await pg_role_exists(pg_target.dsn(), current["username"])
