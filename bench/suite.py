"""The measurements. Each puts the broker beside a baseline taken in the same run: the
database doing the same work without the broker."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench.env import (
    MARIADB,
    MYSQL_STATEMENTS,
    PG_GROUP_STATEMENTS,
    PG_VAULT_DOC_STATEMENTS,
    POOL,
    TOKEN,
    BenchWorld,
    Broker,
    loadgen,
)
from broker.models import NewLease
from broker.server.database.revocation import Revocations
from broker.server.engines.registry import EngineRegistry
from broker.server.engines.verifiers import scram_sha256_verifier
from broker.server.security.seal import SealManager
from broker.server.settings import Settings
from broker.server.storage import integrity
from broker.server.storage.connector import create_pool
from broker.server.storage.embedded import EmbeddedPostgres
from broker.server.storage.stores import Stores

CONCURRENCY = (1, 8, 32, 64)


def _requests(concurrency: int, quick: bool) -> int:
    return max(10, concurrency * 2) if quick else max(150, concurrency * 12)


async def issuance(world: BenchWorld, quick: bool) -> dict[str, Any]:
    """1 and 2: throughput, p50, p99 and errors per concurrency, broker and raw, for the
    group-role pattern on PostgreSQL, MariaDB, and Vault's per-table GRANT."""
    storage = await world.new_storage()
    brokers = await world.start_brokers(storage)
    levels = CONCURRENCY[:2] if quick else CONCURRENCY
    out: dict[str, Any] = {"levels": list(levels), "pg": [], "mysql": [], "pg_tables": []}
    try:
        url = [brokers[0].address]
        # Warm-up (pools, caches, the target's catalogs), not measured.
        for role in ("pg-group", "mysql", "pg-tables"):
            await loadgen(
                {
                    "mode": "http",
                    "urls": url,
                    "token": TOKEN,
                    "path": f"database/creds/{role}",
                    "concurrency": 4,
                    "requests": 40,
                }
            )
            await brokers[0].call("PUT", f"sys/leases/revoke-prefix/database/creds/{role}")
        for c in levels:
            n = _requests(c, quick)
            for key, role, raw_spec in (
                (
                    "pg",
                    "pg-group",
                    {
                        "mode": "raw_pg",
                        "statements": PG_GROUP_STATEMENTS,
                        "target_dsn": world.target_dsn,
                    },
                ),
                (
                    "mysql",
                    "mysql",
                    {"mode": "raw_mysql", "statements": MYSQL_STATEMENTS, "mysql": MARIADB},
                ),
            ):
                via_broker = await loadgen(
                    {
                        "mode": "http",
                        "urls": url,
                        "token": TOKEN,
                        "path": f"database/creds/{role}",
                        "concurrency": c,
                        "requests": n,
                    }
                )
                await brokers[0].call("PUT", f"sys/leases/revoke-prefix/database/creds/{role}")
                raw = await loadgen(
                    {
                        **raw_spec,
                        "storage_dsn": storage,
                        "concurrency": c,
                        "requests": n,
                        "pool": POOL,
                    }
                )
                await _drop_raw(world, key, raw.pop("names"))
                out[key].append(
                    {
                        "concurrency": c,
                        "broker": via_broker,
                        "raw": raw,
                        "ratio": _ratio(via_broker, raw),
                    }
                )
            tables = await loadgen(
                {
                    "mode": "http",
                    "urls": url,
                    "token": TOKEN,
                    "path": "database/creds/pg-tables",
                    "concurrency": c,
                    "requests": n,
                }
            )
            await brokers[0].call("PUT", "sys/leases/revoke-prefix/database/creds/pg-tables")
            out["pg_tables"].append({"concurrency": c, "broker": tables})
        # The baseline Vault's statement can have: one at a time (concurrently it fails).
        serial = await loadgen(
            {
                "mode": "raw_pg",
                "statements": PG_VAULT_DOC_STATEMENTS,
                "target_dsn": world.target_dsn,
                "storage_dsn": storage,
                "concurrency": 1,
                "requests": _requests(8, quick),
            }
        )
        await world.drop_pg_roles(serial.pop("names"))
        concurrent = await loadgen(
            {
                "mode": "raw_pg",
                "statements": PG_VAULT_DOC_STATEMENTS,
                "target_dsn": world.target_dsn,
                "storage_dsn": storage,
                "concurrency": 8,
                "requests": _requests(8, quick),
            }
        )
        await world.drop_pg_roles(concurrent.pop("names"))
        out["pg_tables_raw_serialised"] = serial
        out["pg_tables_raw_concurrent_8"] = concurrent
        for row in out["pg_tables"]:
            row["ratio_to_serialised"] = round(
                row["broker"]["throughput"] / max(serial["throughput"], 0.1), 2
            )
        # Overhead at concurrency 1: broker p50 minus raw p50.
        for key in ("pg", "mysql"):
            first = out[key][0]
            out[f"{key}_overhead_c1_ms"] = round(
                first["broker"]["p50_ms"] - first["raw"]["p50_ms"], 2
            )
    finally:
        for broker in brokers:
            broker.stop()
    return out


def _ratio(broker: dict[str, Any], raw: dict[str, Any]) -> float:
    return round(float(broker["throughput"]) / max(float(raw["throughput"]), 0.1), 2)


async def _drop_raw(world: BenchWorld, key: str, names: list[str]) -> None:
    if key == "pg":
        await world.drop_pg_roles(names)
    else:
        await world.drop_mysql_users("bench_raw_")


async def two_nodes(world: BenchWorld, quick: bool) -> dict[str, Any]:
    """5 (issuance): PostgreSQL issuance at concurrency 32 through two broker processes."""
    storage = await world.new_storage()
    brokers = await world.start_brokers(storage, count=2)
    c = 8 if quick else 32
    try:
        result = await loadgen(
            {
                "mode": "http",
                "urls": [b.address for b in brokers],
                "token": TOKEN,
                "path": "database/creds/pg-group",
                "concurrency": c,
                "requests": _requests(c, quick),
            }
        )
        await brokers[0].call("PUT", "sys/leases/revoke-prefix/database/creds/pg-group")
    finally:
        for broker in brokers:
            broker.stop()
    return {"concurrency": c, "nodes": 2, "broker": result}


async def _seed_roles(world: BenchWorld, names: list[str]) -> None:
    conn = await asyncpg.connect(world.target_dsn)
    try:
        for i in range(0, len(names), 1000):
            await conn.execute(
                ";".join(
                    f'CREATE ROLE "{n}" LOGIN; GRANT broker_demo_readers TO "{n}"'
                    for n in names[i : i + 1000]
                )
            )
    finally:
        await conn.close()


async def _raw_drop_rate(world: BenchWorld, names: list[str], concurrency: int = 16) -> float:
    pool = await asyncpg.create_pool(world.target_dsn, min_size=concurrency, max_size=concurrency)
    sem = asyncio.Semaphore(concurrency)

    async def drop(name: str) -> None:
        async with sem:
            await pool.execute(f'DROP ROLE "{name}"')

    try:
        started = time.perf_counter()
        await asyncio.gather(*(drop(n) for n in names))
        return float(len(names) / (time.perf_counter() - started))
    finally:
        await pool.close()


async def storm(world: BenchWorld, quick: bool, nodes: int = 1) -> dict[str, Any]:
    """3 and 5 (storm): N leases expiring within one second, revoked by the running
    broker(s) with the default one-second sweep; against plain DROP ROLE of N roles."""
    n = 500 if quick else 10_000
    storage = await world.new_storage()
    brokers = await world.start_brokers(storage, count=nodes)
    try:
        raw_names = [f"bench_rawdrop_{i}" for i in range(n)]
        await _seed_roles(world, raw_names)
        raw_rate = await _raw_drop_rate(world, raw_names)

        names = [f"bench_storm_{nodes}_{i}" for i in range(n)]
        await _seed_roles(world, names)
        first_expiry = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3)
        leases = [
            NewLease(
                f"database/creds/pg-group/storm{nodes}x{i:016d}",
                "database",
                "pg-group",
                "demo",
                "postgresql-database-plugin",
                name,
                (),
                (),
                first_expiry - dt.timedelta(hours=1),
                first_expiry + dt.timedelta(seconds=i / n),
                first_expiry + dt.timedelta(hours=1),
            )
            for i, name in enumerate(names)
        ]
        pool = await create_pool(storage, min_size=1, max_size=2)
        try:
            # Unsealed, so the seeded rows carry their MACs like issued ones (a row
            # without one is never revoked: storage/integrity.py).
            await (await _unsealed_stores(pool, storage)).leases.bulk_insert_leases(
                leases, "active"
            )
            timeline: list[tuple[float, int]] = []
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                done = await pool.fetchval(
                    "SELECT count(*) FROM broker_leases WHERE state = 'revoked'"
                )
                since = (dt.datetime.now(dt.UTC) - first_expiry).total_seconds()
                timeline.append((round(since, 2), int(done)))
                if done >= n:
                    break
                await asyncio.sleep(0.1)
            rows = await pool.fetch(
                "SELECT extract(epoch FROM revoked_at - expires_at) AS lag, revoked_at "
                "FROM broker_leases WHERE state = 'revoked'"
            )
        finally:
            await pool.close()
        left = await _count_roles(world, f"bench_storm_{nodes}_")
    finally:
        for broker in brokers:
            broker.stop()
    lags = sorted(float(r["lag"]) for r in rows)
    all_done = max(r["revoked_at"] for r in rows) if rows else first_expiry
    seconds = (all_done - first_expiry).total_seconds()
    rate = n / seconds if seconds > 0 else float("inf")
    return {
        "leases": n,
        "nodes": nodes,
        "revoked": len(rows),
        "roles_left": left,
        "seconds_from_first_expiry_to_all_dropped": round(seconds, 3),
        "broker_rate_per_s": round(rate, 1),
        "raw_drop_rate_per_s": round(raw_rate, 1),
        "ratio_to_raw": round(rate / raw_rate, 2),
        "lag_p50_s": round(statistics.median(lags), 3) if lags else None,
        "lag_p99_s": round(lags[int(0.99 * (len(lags) - 1))], 3) if lags else None,
        "timeline": timeline,
    }


async def _count_roles(world: BenchWorld, prefix: str) -> int:
    conn = await asyncpg.connect(world.target_dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_roles WHERE starts_with(rolname, $1)", prefix
            )
        )
    finally:
        await conn.close()


async def scale(world: BenchWorld, quick: bool) -> dict[str, Any]:
    """4: storage holding 1,000,000 lease rows (90 % revoked, 10 % live) against an empty
    one: broker start-up, RSS, issuance p50 and the latency of a sweep revoking 1,000."""
    total = 20_000 if quick else 1_000_000
    out: dict[str, Any] = {"rows": total}
    for label, rows in (("empty", 0), ("full", total)):
        storage = await world.new_storage()
        if rows:
            # Initialised (keyring with its row key) before the fill, so the live filler rows
            # get their MACs here rather than in the measured start-up's one-time upgrade.
            first = Broker(storage)
            try:
                await first.ready()
            finally:
                first.stop()
        pool = await create_pool(storage, min_size=1, max_size=4)
        try:
            await Stores.open(pool).migrate()
            if rows:
                await _fill_leases(pool, rows)
                await _authenticate_live_leases(await _unsealed_stores(pool, storage), pool)
        finally:
            await pool.close()
        broker = Broker(storage)
        startup = await broker.ready()
        try:
            await world.configure(broker)
            result = await loadgen(
                {
                    "mode": "http",
                    "urls": [broker.address],
                    "token": TOKEN,
                    "path": "database/creds/pg-group",
                    "concurrency": 1,
                    "requests": 50 if quick else 200,
                }
            )
            await broker.call("PUT", "sys/leases/revoke-prefix/database/creds/pg-group")
            rss = broker.rss_mb()
        finally:
            broker.stop()
        sweep = await _sweep_latency(world, storage, 100 if quick else 1000)
        out[label] = {
            "startup_s": round(startup, 3),
            "rss_mb": rss,
            "issuance_p50_ms": result["p50_ms"],
            "issuance_errors": result["errors"],
            "sweep_1000_s": sweep,
        }
    out["issuance_p50_ratio_full_over_empty"] = round(
        out["full"]["issuance_p50_ms"] / out["empty"]["issuance_p50_ms"], 3
    )
    return out


async def _fill_leases(pool: asyncpg.Pool, rows: int) -> None:
    now = dt.datetime.now(dt.UTC)
    far = now + dt.timedelta(days=30)
    async with pool.acquire() as conn:
        # Generated server side: a million Python tuples would measure the bench, not storage.
        await conn.execute(
            """
            INSERT INTO broker_leases (lease_id, mount, role_name, connection_name, plugin_name,
                username, issued_at, expires_at, max_expires_at, due_at, state, revoked_at)
            SELECT 'database/creds/old/' || lpad(i::text, 24, '0'), 'database', 'old', 'demo',
                   'postgresql-database-plugin', 'v_old_' || i, $1::timestamptz,
                   $2::timestamptz, $2::timestamptz, $2::timestamptz,
                   CASE WHEN i % 10 = 0 THEN 'active' ELSE 'revoked' END,
                   CASE WHEN i % 10 = 0 THEN NULL ELSE $1::timestamptz END
            FROM generate_series(1, $3::int) AS i
            """,
            now - dt.timedelta(days=1),
            far,
            rows,
        )
        # Steady state, not the aftermath of a bulk load: without this, autovacuum starts on
        # the fresh million rows in the middle of the measurement.
        await conn.execute("VACUUM ANALYZE broker_leases")


async def _never_initialise() -> str:
    raise RuntimeError("the bench's storage is initialised by its dev servers")


async def _unsealed_stores(pool: asyncpg.Pool, storage: str) -> Stores:
    """Stores over the dev servers' storage, unsealed (its dev seal key derives from the
    dev root token): lease rows seeded through them carry valid MACs."""
    stores = Stores.open(pool)
    settings = Settings(storage_dsn=storage, seal_type="dev", root_token=TOKEN)
    await SealManager(stores.keyring, settings, _never_initialise).try_auto_unseal()
    return stores


async def _authenticate_live_leases(stores: Stores, pool: asyncpg.Pool) -> None:
    """The MACs of the live rows ``_fill_leases`` generated server side, computed by the
    broker's own function (storage/integrity.py): revoked rows are never acted on."""
    rows = await pool.fetch(
        "SELECT lease_id, mount, role_name, connection_name, plugin_name, username, "
        "revocation_statements, renew_statements, issued_at, max_expires_at, token_accessor "
        "FROM broker_leases WHERE mac IS NULL AND state = 'active'"
    )
    macs = [await stores.keyring.mac_row(integrity.LEASES, row) for row in rows]
    await pool.execute(
        "UPDATE broker_leases t SET mac = k.mac "
        "FROM unnest($1::text[], $2::bytea[]) AS k(lease_id, mac) WHERE t.lease_id = k.lease_id",
        [row["lease_id"] for row in rows],
        macs,
    )


async def _sweep_latency(world: BenchWorld, storage: str, n: int) -> float:
    """Seconds for one Revocations.sweep() that revokes ``n`` due leases."""
    names = [f"bench_sweep_{os.getpid()}_{i}" for i in range(n)]
    await _seed_roles(world, names)
    pool = await create_pool(storage, min_size=1, max_size=4)
    engines = EngineRegistry()
    try:
        stores = await _unsealed_stores(pool, storage)
        settings = Settings(storage_dsn=storage, seal_type="dev", root_token=TOKEN)
        past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        await stores.leases.bulk_insert_leases(
            [
                NewLease(
                    f"database/creds/pg-group/sweep{i:019d}",
                    "database",
                    "pg-group",
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
        manager = Revocations(stores.leases, stores.catalog, engines, settings)
        started = time.perf_counter()
        result = await manager.sweep()
        seconds = time.perf_counter() - started
        if result.revoked != n:
            raise RuntimeError(f"sweep revoked {result.revoked} of {n}: {result.errors[:3]}")
        return round(seconds, 3)
    finally:
        await engines.close()
        await pool.close()


async def http_parser(world: BenchWorld, quick: bool) -> dict[str, Any]:
    """The broker as shipped (aiohttp's pure-Python request parser, which accepts LIST,
    on every connection; the rest of aiohttp compiled) against aiohttp built entirely
    without its C extensions, on a cheap path, measured with wrk when installed. (The
    C parser, which refuses LIST, is no longer an option: rewriting LIST in front of it
    was a request-smuggling hole; see broker/api/listmethod.py.)"""
    storage = await world.new_storage()
    results: dict[str, Any] = {"load_generator": "wrk" if shutil.which("wrk") else "aiohttp"}
    seconds = 2 if quick else 5
    for label, env in (
        ("shipped", {}),
        ("all_python", {"AIOHTTP_NO_EXTENSIONS": "1"}),
    ):
        broker = Broker(storage, env=env)
        try:
            await broker.ready()
            if label == "shipped":
                await world.configure(broker)
            results[f"{label}_rps"] = await _rps(broker.address, seconds)
            lists = await loadgen(
                {
                    "mode": "http",
                    "method": "LIST",
                    "urls": [broker.address],
                    "token": TOKEN,
                    "path": "database/roles",
                    "concurrency": 8,
                    "requests": 200,
                }
            )
            results[f"{label}_list_errors"] = lists["errors"]
        finally:
            broker.stop()
    results["ratio_shipped_over_all_python"] = round(
        results["shipped_rps"] / results["all_python_rps"], 2
    )
    return results


async def _rps(address: str, seconds: int, token: str = TOKEN) -> float:
    path = f"{address}/v1/auth/token/lookup-self"
    if shutil.which("wrk"):
        script = Path("/tmp/broker-bench-token.lua")
        await asyncio.to_thread(script.write_text, f'wrk.headers["X-Vault-Token"] = "{token}"\n')
        out = await asyncio.to_thread(
            subprocess.run,
            ["wrk", "-t1", "-c8", f"-d{seconds}s", "-s", str(script), path],
            capture_output=True,
            text=True,
            check=True,
        )
        line = next(x for x in out.stdout.splitlines() if x.startswith("Requests/sec"))
        return float(line.split()[1])
    result = await loadgen(
        {
            "mode": "http",
            "urls": [address],
            "token": token,
            "path": "auth/token/lookup-self",
            "concurrency": 8,
            "requests": seconds * 1000,
        }
    )
    return float(result["throughput"])


AUTH_BENCH_POLICY = """
path "database/creds/*" { capabilities = ["read"] }
path "secret/+/config" { capabilities = ["deny"] }
path "sys/leases/*" { capabilities = ["update"] }
"""


async def auth_overhead(world: BenchWorld, quick: bool) -> dict[str, Any]:
    """What the security layer costs per request: the cheapest authenticated path with the
    configured root token (no lookup, no ACL), a stored service token (keyed-hash lookup,
    cached, and its policies), and the root token with a file audit device (two chained,
    hashed entries per request); then issuance at concurrency 32 with each token."""
    storage = await world.new_storage()
    broker = Broker(storage)
    seconds = 2 if quick else 5
    out: dict[str, Any] = {}
    audit_file = Path(f"/tmp/broker-bench-audit-{os.getpid()}.log")
    try:
        await broker.ready()
        await world.configure(broker)
        await broker.call("PUT", "sys/policy/bench", {"policy": AUTH_BENCH_POLICY})
        made = await broker.call("POST", "auth/token/create", {"policies": ["bench"]})
        service = made["auth"]["client_token"]
        # Three rounds, alternating, so drift in the machine's load hits each alike.
        rounds: dict[str, list[float]] = {"root": [], "service_token": []}
        for _ in range(1 if quick else 3):
            rounds["root"].append(await _rps(broker.address, seconds))
            rounds["service_token"].append(await _rps(broker.address, seconds, service))
        await broker.call(
            "PUT", "sys/audit/bench", {"type": "file", "options": {"file_path": str(audit_file)}}
        )
        rounds["root_audited"] = [
            await _rps(broker.address, seconds) for _ in range(1 if quick else 3)
        ]
        await broker.call("DELETE", "sys/audit/bench")
        for label, values in rounds.items():
            out[f"{label}_rps"] = round(statistics.median(values), 1)
        out["service_token_ratio"] = round(out["service_token_rps"] / out["root_rps"], 2)
        out["audited_ratio"] = round(out["root_audited_rps"] / out["root_rps"], 2)
        n = _requests(32, quick)
        issues: dict[str, list[dict[str, Any]]] = {"root": [], "service_token": []}
        order = [("root", TOKEN), ("service_token", service)]
        for round_ in range(2 if quick else 4):
            for label, token in order if round_ % 2 == 0 else order[::-1]:
                issued = await loadgen(
                    {
                        "mode": "http",
                        "urls": [broker.address],
                        "token": token,
                        "path": "database/creds/pg-group",
                        "concurrency": 32,
                        "requests": n,
                    }
                )
                await broker.call("PUT", "sys/leases/revoke-prefix/database/creds/pg-group")
                issues[label].append(issued)
        for label, runs in issues.items():
            out[f"issue_{label}_throughput"] = round(
                statistics.median(r["throughput"] for r in runs), 1
            )
            out[f"issue_{label}_errors"] = sum(r["errors"] for r in runs)
        out["issue_ratio"] = round(
            out["issue_service_token_throughput"] / out["issue_root_throughput"], 2
        )
    finally:
        broker.stop()
        await asyncio.to_thread(audit_file.unlink, missing_ok=True)
    return out


# -- database-server CPU per issued login: SCRAM verifier against plaintext ----------------


def _cpu_seconds(pid: int, *, children_reaped: bool = False) -> float:
    """utime + stime of one process from /proc (and, with ``children_reaped``, of its
    children that have exited: a PostgreSQL backend's CPU lands there when it ends)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command: state is field 3, so utime (14) is index 11 here.
    ticks = int(fields[11]) + int(fields[12])
    if children_reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def _cluster_cpu(postmaster: int) -> float:
    """CPU seconds the whole cluster has used: the postmaster, every live child (backends,
    checkpointer, walwriter, ...) and every child that has ended."""
    total = _cpu_seconds(postmaster, children_reaped=True)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == postmaster:  # ppid
                total += _cpu_seconds(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile: its CPU is now in the postmaster's reaped total
    return total


async def _raw_create_role_cpu(
    target: EmbeddedPostgres, postmaster: int, n: int
) -> dict[str, float]:
    """Cluster CPU per bare ``CREATE ROLE ... LOGIN`` on one connection, without a
    password, with one, and with a verifier: where the server's time goes."""
    conn = await asyncpg.connect(target.dsn())
    out: dict[str, float] = {}
    try:
        passwords = [f"bench-{i:026d}" for i in range(n)]
        kinds = {
            "no_password": ["" for _ in passwords],
            "plaintext": [f" PASSWORD '{p}'" for p in passwords],
            "verifier": [f" PASSWORD '{scram_sha256_verifier(p)}'" for p in passwords],
        }
        for kind, clauses in kinds.items():
            before = _cluster_cpu(postmaster)
            for i, clause in enumerate(clauses):
                await conn.execute(f"CREATE ROLE bench_raw_{kind}_{i} LOGIN{clause}")
            out[kind] = round((_cluster_cpu(postmaster) - before) * 1000 / n, 3)
    finally:
        await conn.close()
    return out


async def verifier_cpu(world: BenchWorld, quick: bool) -> dict[str, Any]:
    """Target-server CPU per issued login with ``password_authentication`` =
    ``scram-sha-256`` (the broker sends the verifier it computed) and ``password`` (the
    server hashes the password itself: 4,096 PBKDF2 rounds), in alternating rounds on a
    PostgreSQL cluster of its own (so storage work is not counted), with the broker's
    CPU beside it: the hashing moves, it does not vanish."""
    target = EmbeddedPostgres()
    await asyncio.to_thread(target.start)
    storage = await world.new_storage()
    broker = Broker(storage)
    n, rounds, concurrency = (60, 1, 4) if quick else (400, 3, 8)
    modes = ("password", "scram-sha-256")
    totals = {
        m: {"db": 0.0, "broker": 0.0, "issued": 0, "errors": 0, "seconds": 0.0} for m in modes
    }
    try:
        conn = await asyncpg.connect(target.dsn())
        try:
            data = Path(str(await conn.fetchval("SHOW data_directory")))
            encryption = str(await conn.fetchval("SHOW password_encryption"))
        finally:
            await conn.close()
        postmaster = int((data / "postmaster.pid").read_text().split()[0])
        await broker.ready()
        url = f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{target.port}/postgres"
        for mode in modes:
            await broker.call(
                "PUT",
                f"database/config/cpu-{mode}",
                {
                    "plugin_name": "postgresql-database-plugin",
                    "connection_url": url,
                    "username": target.user,
                    "password": target.password,
                    "allowed_roles": "*",
                    "max_open_connections": POOL,
                    "password_authentication": mode,
                },
            )
            await broker.call(
                "PUT",
                f"database/roles/cpu-{mode}",
                {"db_name": f"cpu-{mode}", "creation_statements": PG_GROUP_STATEMENTS[:1]},
            )

        async def measure(mode: str, requests: int) -> dict[str, Any]:
            before = (_cluster_cpu(postmaster), _cpu_seconds(broker.proc.pid))
            result = await loadgen(
                {
                    "mode": "http",
                    "urls": [broker.address],
                    "token": TOKEN,
                    "path": f"database/creds/cpu-{mode}",
                    "concurrency": concurrency,
                    "requests": requests,
                }
            )
            after = (_cluster_cpu(postmaster), _cpu_seconds(broker.proc.pid))
            await broker.call("PUT", f"sys/leases/revoke-prefix/database/creds/cpu-{mode}")
            return {**result, "db": after[0] - before[0], "broker": after[1] - before[1]}

        for mode in modes:  # warm-up: pools, catalogs; not counted
            await measure(mode, 40)
        for round_ in range(rounds):
            for mode in modes if round_ % 2 == 0 else modes[::-1]:
                done = await measure(mode, n)
                t = totals[mode]
                t["db"] += done["db"]
                t["broker"] += done["broker"]
                t["issued"] += done["ok"]
                t["errors"] += done["errors"]
                t["seconds"] += done["seconds"]
        raw = await _raw_create_role_cpu(target, postmaster, 50 if quick else 200)
    finally:
        broker.stop()
        await asyncio.to_thread(target.stop)
    out: dict[str, Any] = {
        "password_encryption": encryption,
        "concurrency": concurrency,
        "raw_create_role_db_cpu_ms": raw,
    }
    for mode, t in totals.items():
        issued = max(1, int(t["issued"]))
        key = "verifier" if mode == "scram-sha-256" else "plaintext"
        out[key] = {
            "issued": t["issued"],
            "errors": t["errors"],
            "db_cpu_ms_per_login": round(t["db"] * 1000 / issued, 3),
            "broker_cpu_ms_per_login": round(t["broker"] * 1000 / issued, 3),
            "throughput": round(t["issued"] / t["seconds"], 1) if t["seconds"] else 0.0,
        }
    out["db_cpu_ratio"] = round(
        out["verifier"]["db_cpu_ms_per_login"] / max(out["plaintext"]["db_cpu_ms_per_login"], 1e-9),
        2,
    )
    return out
