"""Core figures, each with a baseline from the same run on the same throwaway cluster:

1. issuance: one ``GET database/creds/readonly`` at a time over HTTP (keep-alive) against
   the same work done directly with asyncpg (CREATE ROLE with password, GRANT of the group
   role, one lease row INSERT in the storage database);
2. sweep: 1,000 expired leases revoked by one ``LeaseManager.sweep()`` against plain
   ``DROP ROLE`` of 1,000 roles at the same concurrency;
3. HTTP parsing: requests per second through the broker's LIST-rewriting C parser against
   aiohttp's pure-Python parser (``AIOHTTP_NO_EXTENSIONS=1``, the other fix for LIST).

``python -m bench [--quick]`` prints a table and writes bench/results/<date>-<commit>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from broker.embedded import EmbeddedPostgres, free_port
from broker.engines.registry import EngineRegistry
from broker.leases import LeaseManager
from broker.migrations import apply_migrations
from broker.models import NewLease
from broker.settings import Settings
from broker.storage import Storage, create_pool

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-" + secrets.token_hex(8)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _start_broker(
    storage_dsn: str, port: int, python_parser: bool = False
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if python_parser:
        env["AIOHTTP_NO_EXTENSIONS"] = "1"
    return subprocess.Popen(
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
            f"127.0.0.1:{port}",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _wait_up(session: aiohttp.ClientSession, address: str) -> None:
    for _ in range(300):
        try:
            async with session.get(f"{address}/v1/sys/health") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"broker at {address} did not start")


async def bench_issuance(pg: EmbeddedPostgres, storage_dsn: str, n: int) -> dict[str, Any]:
    port = free_port()
    proc = _start_broker(storage_dsn, port)
    address = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(headers={"X-Vault-Token": TOKEN}) as session:
            await _wait_up(session, address)
            for _ in range(20):  # warm-up: pools, caches
                async with session.get(f"{address}/v1/database/creds/readonly") as resp:
                    await resp.read()
            broker_ms = []
            for _ in range(n):
                t0 = time.perf_counter()
                async with session.get(f"{address}/v1/database/creds/readonly") as resp:
                    assert resp.status == 200, await resp.text()
                    await resp.read()
                broker_ms.append((time.perf_counter() - t0) * 1000)
            async with session.put(
                f"{address}/v1/sys/leases/revoke-prefix/database/creds/readonly"
            ) as resp:
                assert resp.status == 204, await resp.text()
    finally:
        proc.terminate()
        proc.wait()

    target = await asyncpg.connect(pg.dsn("broker_demo"))
    storage = await asyncpg.connect(storage_dsn)
    await storage.execute(
        "CREATE TABLE IF NOT EXISTS bench_leases (id text primary key, "
        "username text, expires_at timestamptz)"
    )
    raw_ms = []
    names = []
    try:
        for i in range(n):
            name = f"bench_raw_{i}_{secrets.token_hex(4)}"
            t0 = time.perf_counter()
            await storage.execute("INSERT INTO bench_leases VALUES ($1, $2, now())", name, name)
            async with target.transaction():
                await target.execute(
                    f"CREATE ROLE \"{name}\" WITH LOGIN PASSWORD '{secrets.token_urlsafe(24)}' "
                    f"VALID UNTIL '2100-01-01'"
                )
                await target.execute(f'GRANT broker_demo_readers TO "{name}"')
            raw_ms.append((time.perf_counter() - t0) * 1000)
            names.append(name)
        for name in names:
            await target.execute(f'DROP ROLE "{name}"')
    finally:
        await target.close()
        await storage.close()
    return {
        "requests": n,
        "broker_p50_ms": round(statistics.median(broker_ms), 2),
        "broker_p99_ms": round(_pct(broker_ms, 0.99), 2),
        "raw_p50_ms": round(statistics.median(raw_ms), 2),
        "raw_p99_ms": round(_pct(raw_ms, 0.99), 2),
        "overhead_p50_ms": round(statistics.median(broker_ms) - statistics.median(raw_ms), 2),
    }


async def _raw_drop(dsn: str, names: list[str], concurrency: int) -> float:
    """Seconds for plain DROP ROLE of ``names`` at ``concurrency``: the baseline."""
    pool = await asyncpg.create_pool(dsn, max_size=concurrency)
    sem = asyncio.Semaphore(concurrency)

    async def drop(name: str) -> None:
        async with sem:
            await pool.execute(f'DROP ROLE "{name}"')

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(drop(name) for name in names))
        return time.perf_counter() - t0
    finally:
        await pool.close()


async def bench_sweep(pg: EmbeddedPostgres, storage_dsn: str, n: int) -> dict[str, Any]:
    target = await asyncpg.connect(pg.dsn("broker_demo"))
    settings = Settings(storage_dsn=storage_dsn)
    pool = await create_pool(storage_dsn)
    engines = EngineRegistry()
    try:
        storage = Storage(pool)
        leases = LeaseManager(storage, engines, settings)
        timings = {}
        for mode in ("raw", "broker"):
            names = [f"bench_sweep_{mode}_{i}_{secrets.token_hex(3)}" for i in range(n)]
            await target.execute(
                ";".join(
                    f'CREATE ROLE "{name}" LOGIN; GRANT broker_demo_readers TO "{name}"'
                    for name in names
                )
            )
            if mode == "raw":
                timings["raw"] = await _raw_drop(
                    pg.dsn("broker_demo"), names, settings.revoke_concurrency
                )
            else:
                past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
                await storage.bulk_insert_leases(
                    [
                        NewLease(
                            f"database/creds/readonly/bench{i:019d}",
                            "database",
                            "readonly",
                            "demo",
                            "postgresql-database-plugin",
                            name,
                            (),
                            (),
                            past,
                            past,
                            past,
                        )
                        for i, name in enumerate(names)
                    ],
                    "active",
                )
                t0 = time.perf_counter()
                result = await leases.sweep()
                timings["broker"] = time.perf_counter() - t0
                assert result.revoked == n and result.failed == 0, result
                left = await target.fetchval(
                    "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'bench_sweep_broker_%'"
                )
                assert left == 0
    finally:
        await engines.close()
        await pool.close()
        await target.close()
    return {
        "leases": n,
        "broker_seconds": round(timings["broker"], 3),
        "raw_drop_seconds": round(timings["raw"], 3),
        "ratio_raw_over_broker": round(timings["raw"] / timings["broker"], 2),
    }


def _wrk(address: str, path: str, method: str, seconds: float, concurrency: int) -> float:
    """Requests per second from wrk (one thread, so the server keeps the other core)."""
    script = Path(f"/tmp/broker-bench-{method}.lua")
    script.write_text(f'wrk.method = "{method}"\nwrk.headers["X-Vault-Token"] = "{TOKEN}"\n')
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, int(seconds))}s",
            "-s",
            str(script),
            f"{address}/v1/{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors: {out}")
    return float(
        next(line for line in out.splitlines() if line.startswith("Requests/sec")).split()[1]
    )


async def _hammer(address: str, path: str, method: str, n: int, concurrency: int) -> float:
    """Requests per second for ``n`` requests, ``concurrency`` keep-alive connections;
    measured with wrk when installed (an aiohttp client costs as much CPU as the server).
    wrk's own request check refuses LIST, so LIST always goes through aiohttp."""
    if shutil.which("wrk") and method != "LIST":
        async with aiohttp.ClientSession() as session:
            await _wait_up(session, address)
        return await asyncio.to_thread(_wrk, address, path, method, n / 1000, concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, headers={"X-Vault-Token": TOKEN}
    ) as session:
        await _wait_up(session, address)
        remaining = n

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                async with session.request(method, f"{address}/v1/{path}") as resp:
                    assert resp.status == 200, resp.status
                    await resp.read()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n / (time.perf_counter() - t0)


async def bench_parser(storage_dsn: str, n: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for label, python_parser in (("c_parser_with_list_rewrite", False), ("python_parser", True)):
        port = free_port()
        proc = _start_broker(storage_dsn, port, python_parser=python_parser)
        try:
            address = f"http://127.0.0.1:{port}"
            # A cheap, storage-free path isolates what the parser costs.
            results[f"{label}_rps_get"] = round(
                await _hammer(address, "auth/token/lookup-self", "GET", n, 8)
            )
            results[f"{label}_rps_list"] = round(
                await _hammer(address, "database/roles", "LIST", n // 4, 8)
            )
        finally:
            proc.terminate()
            proc.wait()
    results["load_generator"] = "wrk" if shutil.which("wrk") else "aiohttp"
    results["get_ratio_c_over_python"] = round(
        results["c_parser_with_list_rewrite_rps_get"] / results["python_parser_rps_get"], 2
    )
    return results


async def run(quick: bool) -> dict[str, Any]:
    pg = EmbeddedPostgres()
    await asyncio.to_thread(pg.start)
    try:
        admin = await asyncpg.connect(pg.dsn())
        await admin.execute("CREATE DATABASE broker_storage")
        await admin.close()
        storage_dsn = pg.dsn("broker_storage")
        pool = await create_pool(storage_dsn)
        await apply_migrations(pool)
        await pool.close()
        issuance = await bench_issuance(pg, storage_dsn, 30 if quick else 300)
        sweep = await bench_sweep(pg, storage_dsn, 100 if quick else 1000)
        parser = await bench_parser(storage_dsn, 400 if quick else 4000)
    finally:
        await asyncio.to_thread(pg.stop)
    return {"issuance": issuance, "sweep": sweep, "http_parser": parser}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="a few seconds; CI smoke run")
    args = parser.parse_args()
    results = asyncio.run(run(args.quick))
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        or "nogit"
    )
    meta = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "quick": args.quick,
        "cpus": os.cpu_count(),
    }
    print(json.dumps({**meta, **results}, indent=2))
    if not args.quick:
        out = ROOT / "bench" / "results" / f"{meta['date'][:10]}-{commit}.json"
        out.write_text(json.dumps({**meta, **results}, indent=2) + "\n")
        print(f"wrote {out.relative_to(ROOT)}")
    return 0
