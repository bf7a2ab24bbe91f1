"""The load generator, run in its own process so its CPU is not the broker's.

``python -m bench.loadgen SPEC_JSON`` runs one measurement and prints one JSON object:
``ok``, ``errors``, ``seconds``, ``throughput`` (successes per second), ``p50_ms``,
``p99_ms``, a few error samples, and for raw modes the names it created (for clean-up).

Modes:
- ``http``: ``GET`` a path on one or more broker URLs (round robin), keep-alive;
- ``raw_pg``: what issuance costs PostgreSQL without the broker: a lease row INSERT in the
  storage database, then the creation statements as one implicit transaction;
- ``raw_mysql``: the same with MariaDB/MySQL as the target (statements one by one, as
  account statements commit implicitly there).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import aiomysql
import asyncpg


def _summary(latencies: list[float], errors: list[str], seconds: float) -> dict[str, Any]:
    ordered = sorted(latencies)

    def pct(q: float) -> float | None:
        return (
            round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)
            if (ordered)
            else None
        )

    return {
        "ok": len(latencies),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:3],
        "seconds": round(seconds, 3),
        "throughput": round(len(latencies) / seconds, 1) if seconds else 0.0,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
    }


async def _drive(concurrency: int, requests: int, one: Any) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    remaining = requests

    async def worker(index: int) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            try:
                await one(index)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {str(exc)[:120]}")
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return _summary(latencies, errors, time.perf_counter() - started)


async def http_mode(spec: dict[str, Any]) -> dict[str, Any]:
    urls: list[str] = spec["urls"]
    connector = aiohttp.TCPConnector(limit=spec["concurrency"] * 2)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers={"X-Vault-Token": spec["token"]}
    ) as session:
        counter = 0

        async def one(_: int) -> None:
            nonlocal counter
            counter += 1
            url = f"{urls[counter % len(urls)]}/v1/{spec['path']}"
            async with session.request(spec.get("method", "GET"), url) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")

        return await _drive(spec["concurrency"], spec["requests"], one)


def _render(statement: str, name: str) -> str:
    return (
        statement.replace("{{name}}", name)
        .replace("{{password}}", secrets.token_urlsafe(24))
        .replace("{{expiration}}", "2100-01-01")
    )


async def _raw(
    spec: dict[str, Any], name_bytes: int, create: Callable[[str], Awaitable[None]]
) -> dict[str, Any]:
    """The part of a raw baseline shared by both databases: a lease row INSERT in the
    storage database, then ``create(name)`` on the target; returns names for clean-up."""
    size = min(spec["concurrency"], spec.get("pool", 16))
    storage = await asyncpg.create_pool(spec["storage_dsn"], min_size=size, max_size=size)
    names: list[str] = []
    try:
        await storage.execute(
            "CREATE TABLE IF NOT EXISTS bench_raw_leases (id text PRIMARY KEY, "
            "username text, expires_at timestamptz)"
        )

        async def one(_: int) -> None:
            name = f"bench_raw_{secrets.token_hex(name_bytes)}"
            names.append(name)
            await storage.execute("INSERT INTO bench_raw_leases VALUES ($1, $1, now())", name)
            await create(name)

        result = await _drive(spec["concurrency"], spec["requests"], one)
    finally:
        await storage.close()
    result["names"] = names
    return result


async def raw_pg_mode(spec: dict[str, Any]) -> dict[str, Any]:
    size = min(spec["concurrency"], spec.get("pool", 16))
    target = await asyncpg.create_pool(spec["target_dsn"], min_size=size, max_size=size)

    async def create(name: str) -> None:
        # One implicit transaction, as the broker runs them.
        await target.execute(";".join(_render(s, name) for s in spec["statements"]))

    try:
        return await _raw(spec, 8, create)
    finally:
        await target.close()


async def raw_mysql_mode(spec: dict[str, Any]) -> dict[str, Any]:
    size = min(spec["concurrency"], spec.get("pool", 16))
    target = await aiomysql.create_pool(
        minsize=size, maxsize=size, autocommit=True, **spec["mysql"]
    )

    async def create(name: str) -> None:
        async with target.acquire() as conn, conn.cursor() as cur:
            for statement in spec["statements"]:
                await cur.execute(_render(statement, name))

    try:
        return await _raw(spec, 6, create)
    finally:
        target.close()
        await target.wait_closed()


MODES = {"http": http_mode, "raw_pg": raw_pg_mode, "raw_mysql": raw_mysql_mode}


def main() -> int:
    spec = json.loads(sys.argv[1])
    result = asyncio.run(MODES[spec["mode"]](spec))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
