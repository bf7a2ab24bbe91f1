"""Helpers shared by the integration tests: a Vault-style HTTP client, polling, and
access to the target databases as their administrators."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiomysql
import asyncpg

ROOT = Path(__file__).resolve().parent.parent
#: Every password a test was issued: the session checks that none reached a log line.
ISSUED_PASSWORDS: set[str] = set()
MARIADB = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


@dataclass
class Reply:
    status: int
    body: dict[str, Any]

    @property
    def data(self) -> dict[str, Any]:
        data = self.body.get("data")
        assert isinstance(data, dict), self.body
        return data

    @property
    def errors(self) -> list[str]:
        errors = self.body.get("errors")
        assert isinstance(errors, list), self.body
        return errors


class VaultHTTP:
    """Speaks to the broker exactly as a Vault client would: verbs, token header, JSON."""

    def __init__(self, session: aiohttp.ClientSession, address: str, token: str) -> None:
        self.session = session
        self.address = address
        self.token = token

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        raw: bytes | io.BytesIO | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        all_headers = {"X-Vault-Token": self.token if token is None else token}
        all_headers.update(headers or {})
        async with self.session.request(
            method,
            f"{self.address}/v1/{path}",
            json=body if raw is None else None,
            data=raw,
            headers=all_headers,
        ) as resp:
            text = await resp.read()
            parsed = await resp.json(content_type=None) if text else {}
            if text:
                assert resp.headers["Content-Type"] == "application/json"
            return Reply(resp.status, parsed)

    async def read(self, path: str) -> Reply:
        return await self.call("GET", path)

    async def write(self, path: str, body: Any = None) -> Reply:
        return await self.call("PUT", path, body or {})

    async def list(self, path: str) -> Reply:
        return await self.call("LIST", path)

    async def delete(self, path: str) -> Reply:
        return await self.call("DELETE", path)

    async def creds(self, role: str, mount: str = "database") -> Reply:
        reply = await self.read(f"{mount}/creds/{role}")
        assert reply.status == 200, reply.body
        ISSUED_PASSWORDS.add(reply.data["password"])
        return reply


async def eventually(
    check: Callable[[], Awaitable[bool]], within: float = 15.0, interval: float = 0.1
) -> None:
    deadline = time.monotonic() + within
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)


async def pg_role_exists(admin_dsn: str, name: str) -> bool:
    conn = await asyncpg.connect(admin_dsn)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name))
    finally:
        await conn.close()


async def mysql_user_exists(name: str) -> bool:
    conn = await aiomysql.connect(**MARIADB)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT COUNT(*) FROM mysql.user WHERE User = %s", (name,))
            row = await cur.fetchone()
            return bool(row and row[0])
    finally:
        conn.close()


async def mysql_admin(*statements: str) -> None:
    conn = await aiomysql.connect(autocommit=True, **MARIADB)
    try:
        async with conn.cursor() as cur:
            for statement in statements:
                await cur.execute(statement)
    finally:
        conn.close()


def run_cli(
    *args: str, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """``broker ARGS`` as a user runs it: a fresh process, this environment with ``env``
    over it, minus any token variable the caller did not set."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("VAULT_TOKEN", "BROKER_TOKEN")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        env=full_env,
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def broker_process(env: dict[str, str], *args: str, crash_at: str = "") -> subprocess.Popen[bytes]:
    full_env = dict(os.environ, **env)
    full_env.pop("BROKER_CRASH_AT", None)
    if crash_at:
        full_env["BROKER_CRASH_AT"] = crash_at
    return subprocess.Popen(
        [sys.executable, "-m", "broker", *args],
        env=full_env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def wait_healthy(session: aiohttp.ClientSession, address: str, within: float = 30) -> None:
    async def healthy() -> bool:
        try:
            async with session.get(f"{address}/v1/sys/health") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    await eventually(healthy, within=within, interval=0.2)


async def unseal_for_test(stores: Any) -> None:
    """Domain-level tests that write connections need an open barrier: initialise the
    fresh storage and unseal it with the suite's auto-unseal key (see conftest)."""
    from broker.server.auth.tokens import TokenManager
    from broker.server.security.seal import SealManager
    from broker.server.settings import Settings

    settings = Settings(seal_type="env", auto_init=True)
    await SealManager(
        stores.keyring, settings, TokenManager(stores.auth, settings).create_root
    ).try_auto_unseal()


async def pg_logs_in(port: int, user: str, password: str, database: str = "app") -> bool:
    """Whether ``user``/``password`` log in on the test cluster (it checks passwords)."""
    try:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=port, user=user, password=password, database=database
        )
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError):
        return False
    await conn.close()
    return True
