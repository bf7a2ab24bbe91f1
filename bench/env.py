"""What the benchmarks run against: one throwaway PostgreSQL (storage databases and the
target database ``broker_demo``), the machine's MariaDB, and broker processes."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import aiomysql
import asyncpg

from broker.server.storage.embedded import EmbeddedPostgres, free_port

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-" + secrets.token_hex(8)
MARIADB = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
MYSQL_DB = "broker_bench_app"
GROUP_ROLE = "broker_demo_readers"
PG_GROUP_STATEMENTS = [
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
    f'GRANT {GROUP_ROLE} TO "{{{{name}}}}"',
]
PG_VAULT_DOC_STATEMENTS = [
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
    'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{{name}}"',
]
MYSQL_STATEMENTS = [
    "CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}'",
    f"GRANT SELECT ON {MYSQL_DB}.* TO '{{{{name}}}}'@'%'",
]
#: Target connection pool on both sides of every comparison.
POOL = 16


class Broker:
    """One ``broker server --dev --dev-storage-dsn`` process."""

    def __init__(self, storage_dsn: str, *, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.address = f"http://127.0.0.1:{self.port}"
        self._env = dict(os.environ, **(env or {}))
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "broker",
                "server",
                "--dev",
                "--dev-storage-dsn",
                storage_dsn,
                "--dev-root-token-id",
                TOKEN,
                "--dev-listen-address",
                f"127.0.0.1:{self.port}",
            ],
            cwd=ROOT,
            env=self._env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def ready(self) -> float:
        """Seconds from process start until sys/health answers 200."""
        async with aiohttp.ClientSession() as session:
            for _ in range(600):
                try:
                    async with session.get(f"{self.address}/v1/sys/health") as resp:
                        if resp.status == 200:
                            return time.perf_counter() - self.started_at
                except aiohttp.ClientError:
                    pass
                if self.proc.poll() is not None:
                    raise RuntimeError("broker exited during start-up")
                await asyncio.sleep(0.02)
        raise RuntimeError("broker did not start")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return float("nan")

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with (
            aiohttp.ClientSession(headers={"X-Vault-Token": TOKEN}) as session,
            session.request(method, f"{self.address}/v1/{path}", json=body) as resp,
        ):
            text = await resp.text()
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path}: {resp.status} {text}")
            return json.loads(text) if text else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class BenchWorld:
    def __init__(self) -> None:
        self.pg = EmbeddedPostgres()

    async def open(self) -> None:
        await asyncio.to_thread(self.pg.start)
        conn = await aiomysql.connect(autocommit=True, **MARIADB)
        try:
            async with conn.cursor() as cur:
                await cur.execute(f"DROP DATABASE IF EXISTS {MYSQL_DB}")
                await cur.execute(f"CREATE DATABASE {MYSQL_DB}")
                await cur.execute(f"CREATE TABLE {MYSQL_DB}.items (id int)")
        finally:
            conn.close()

    async def close(self) -> None:
        await self.drop_mysql_users("bench_raw_")
        await self.drop_mysql_users("v_root_")
        conn = await aiomysql.connect(autocommit=True, **MARIADB)
        try:
            async with conn.cursor() as cur:
                await cur.execute(f"DROP DATABASE IF EXISTS {MYSQL_DB}")
                # The install-marker roles the bench's brokers made on MariaDB
                # (broker_<install id>_<admin>): each run is a new install.
                await cur.execute(
                    "SELECT User FROM mysql.user WHERE is_role = 'Y' AND User LIKE 'broker\\_%'"
                )
                for (role,) in await cur.fetchall():
                    await cur.execute(f"DROP ROLE IF EXISTS `{role}`")
        finally:
            conn.close()
        await asyncio.to_thread(self.pg.stop)

    @property
    def target_dsn(self) -> str:
        return self.pg.dsn("broker_demo")

    async def new_storage(self) -> str:
        name = f"bench_storage_{secrets.token_hex(4)}"
        conn = await asyncpg.connect(self.pg.dsn())
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()
        return self.pg.dsn(name)

    async def start_brokers(self, storage_dsn: str, count: int = 1) -> list[Broker]:
        brokers = [Broker(storage_dsn) for _ in range(count)]
        for broker in brokers:
            await broker.ready()
        await self.configure(brokers[0])
        return brokers

    async def configure(self, broker: Broker) -> None:
        """Roles for every measurement, on the dev server's demo connection and MariaDB."""
        await broker.call(
            "PUT", "database/config/demo", {"max_open_connections": POOL, "allowed_roles": "*"}
        )
        await broker.call(
            "PUT",
            "database/config/mariadb",
            {
                "plugin_name": "mariadb-database-plugin",
                "connection_url": "{{username}}:{{password}}@tcp(127.0.0.1:3306)/",
                "username": "root",
                "password": "",
                "allowed_roles": "*",
                "max_open_connections": POOL,
            },
        )
        for name, db, statements in (
            ("pg-group", "demo", PG_GROUP_STATEMENTS),
            ("pg-tables", "demo", PG_VAULT_DOC_STATEMENTS),
            ("mysql", "mariadb", MYSQL_STATEMENTS),
        ):
            await broker.call(
                "PUT",
                f"database/roles/{name}",
                {"db_name": db, "creation_statements": statements, "default_ttl": "1h"},
            )

    async def drop_pg_roles(self, names: list[str]) -> None:
        conn = await asyncpg.connect(self.target_dsn)
        try:
            for i in range(0, len(names), 500):
                chunk = [n for n in names[i : i + 500]]
                existing = await conn.fetch(
                    "SELECT rolname FROM pg_roles WHERE rolname = ANY($1)", chunk
                )
                if existing:
                    idents = ", ".join(f'"{r["rolname"]}"' for r in existing)
                    await conn.execute(f"DROP OWNED BY {idents}; DROP ROLE {idents}")
        finally:
            await conn.close()

    async def drop_mysql_users(self, prefix: str) -> None:
        conn = await aiomysql.connect(autocommit=True, **MARIADB)
        try:
            async with conn.cursor() as cur:
                await cur.execute(
                    "SELECT User, Host FROM mysql.user WHERE LEFT(User, %s) = %s",
                    (len(prefix), prefix),
                )
                for user, host in await cur.fetchall():
                    await cur.execute("DROP USER IF EXISTS %s@%s", (user, host))
        finally:
            conn.close()


async def loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    """Run bench.loadgen in its own process; returns its JSON."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.loadgen",
        json.dumps(spec),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed: {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    return result
