"""Chaos scenarios against real broker processes, a real PostgreSQL target, MariaDB and a
storage PostgreSQL, all on loopback, bounded in time. Each returns its figures; the
invariants are ``orphans == 0`` (no user on a target without a live lease) and
``late_revocations == 0`` (no lease left unrevoked past expiry plus the sweep interval,
once the run has settled).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomysql
import asyncpg

from broker.server.storage.embedded import EmbeddedPostgres, free_port

ROOT = Path(__file__).resolve().parents[2]
MARIADB = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
TOKEN = "chaos-" + secrets.token_hex(8)
TTL = 3
SWEEP_INTERVAL = 0.5
CLAIM_TIMEOUT = 3.0
CREATION_TIMEOUT = 3.0
#: Per user (revoked one by one, 50 to an engine batch): a batch of 50 takes ~2.5 s.
SLOW_REVOCATION = 'SELECT pg_sleep(0.05); DROP ROLE IF EXISTS "{{name}}";'
#: After the load stops: every lease has expired, every claim of a killed node timed out,
#: every stuck creation was taken over, and one more sweep ran.
SETTLE = TTL + CLAIM_TIMEOUT + CREATION_TIMEOUT + 3


@dataclass
class Node:
    port: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = dict(os.environ, **self.env)
        env.pop("BROKER_CRASH_AT", None)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "broker", "server"],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None


@dataclass
class Load:
    issued: int = 0
    refused: int = 0  # 5xx answers: the broker said no (target or storage down)
    unreachable: int = 0  # connection errors: the node was dead
    other: list[str] = field(default_factory=list)


class World:
    """Clusters and nodes for one scenario; ``close()`` removes everything."""

    def __init__(self, nodes: int, env: dict[str, str] | None = None) -> None:
        """``env``: settings of this scenario over the suite's (BROKER_* variables)."""
        self.tag = secrets.token_hex(3)
        self.env = env or {}
        self.prefix = f"cx{self.tag}_"
        self.storage = EmbeddedPostgres(fsync=True)
        self.target = EmbeddedPostgres(fsync=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="broker-chaos-"))
        self.node_count = nodes
        self.nodes: list[Node] = []

    async def open(self) -> None:
        await asyncio.gather(
            asyncio.to_thread(self.storage.start), asyncio.to_thread(self.target.start)
        )
        await self.start_nodes(self.storage.dsn())

    async def start_nodes(self, storage_dsn: str) -> None:
        """The nodes on ``storage_dsn``, up, and the mount, connections and roles made."""
        env = {
            "BROKER_STORAGE_DSN": storage_dsn,
            "BROKER_ROOT_TOKEN": TOKEN,
            "BROKER_SWEEP_INTERVAL": str(SWEEP_INTERVAL),
            "BROKER_CLAIM_TIMEOUT": str(CLAIM_TIMEOUT),
            "BROKER_CREATION_TIMEOUT": str(CREATION_TIMEOUT),
            "BROKER_REVOKE_BACKOFF_MAX": "2",
            "BROKER_SHUTDOWN_TIMEOUT": "5",
            "BROKER_SEAL_TYPE": "env",
            "BROKER_SEAL_KEY": secrets.token_hex(32),
            "BROKER_AUTO_INIT": "true",
            **self.env,
        }
        for i in range(self.node_count):
            port = free_port()
            node = Node(
                port,
                dict(env, BROKER_LISTEN_ADDRESS=f"127.0.0.1:{port}", BROKER_NODE_ID=f"chaos-{i}"),
                self.tmp / f"node-{i}.log",
            )
            node.start()
            self.nodes.append(node)
        async with aiohttp.ClientSession(headers={"X-Vault-Token": TOKEN}) as session:
            for node in self.nodes:
                await wait_up(session, node.address)
            await self._configure(session, self.nodes[0].address)

    async def _configure(self, session: aiohttp.ClientSession, address: str) -> None:
        template = self.prefix + "{{random 16}}"
        calls: list[tuple[str, dict[str, Any]]] = [
            ("sys/mounts/database", {"type": "database"}),
            (
                "database/config/pg",
                {
                    "plugin_name": "postgresql-database-plugin",
                    "connection_url": "postgresql://{{username}}:{{password}}@127.0.0.1:"
                    f"{self.target.port}/postgres",
                    "username": "postgres",
                    "password": self.target.password,
                    "allowed_roles": "*",
                    "username_template": template,
                    "connect_timeout": 2,
                },
            ),
            (
                "database/config/my",
                {
                    "plugin_name": "mysql-database-plugin",
                    "connection_url": "{{username}}:{{password}}@tcp(127.0.0.1:3306)/",
                    "username": "root",
                    "password": "",
                    "allowed_roles": "*",
                    "username_template": template,
                },
            ),
            ("database/roles/pg", {"db_name": "pg", "default_ttl": TTL}),
            (
                "database/roles/slow",
                {
                    "db_name": "pg",
                    "default_ttl": TTL,
                    "revocation_statements": SLOW_REVOCATION,
                },
            ),
            (
                "database/roles/my",
                {
                    "db_name": "my",
                    "default_ttl": TTL,
                    "creation_statements": "CREATE USER '{{name}}'@'%' "
                    "IDENTIFIED BY '{{password}}'",
                },
            ),
        ]
        for path, body in calls:
            async with session.put(f"{address}/v1/{path}", json=body) as resp:
                if resp.status not in (200, 204):
                    raise RuntimeError(f"{path}: {resp.status} {await resp.text()}")

    async def close(self) -> dict[str, int | None]:
        codes = {f"node-{i}": node.stop() for i, node in enumerate(self.nodes)}
        await self._drop_mysql_users()
        await asyncio.gather(
            asyncio.to_thread(self.storage.stop), asyncio.to_thread(self.target.stop)
        )
        return codes

    async def _drop_mysql_users(self) -> None:
        conn = await aiomysql.connect(autocommit=True, **MARIADB)
        try:
            async with conn.cursor() as cur:
                await cur.execute(
                    "SELECT User, Host FROM mysql.user WHERE LEFT(User, %s) = %s",
                    (len(self.prefix), self.prefix),
                )
                for user, host in await cur.fetchall():
                    await cur.execute("DROP USER IF EXISTS %s@%s", (user, host))
        finally:
            conn.close()

    # -- the invariants -------------------------------------------------------------------

    async def target_users(self) -> set[str]:
        conn = await asyncpg.connect(self.target.dsn())
        try:
            rows = await conn.fetch(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", self.prefix
            )
        finally:
            await conn.close()
        users = {row["rolname"] for row in rows}
        my = await aiomysql.connect(**MARIADB)
        try:
            async with my.cursor() as cur:
                await cur.execute(
                    "SELECT DISTINCT User FROM mysql.user WHERE LEFT(User, %s) = %s",
                    (len(self.prefix), self.prefix),
                )
                users |= {row[0] for row in await cur.fetchall()}
        finally:
            my.close()
        return users

    async def figures(self) -> dict[str, Any]:
        conn = await asyncpg.connect(self.storage.dsn())
        try:
            leases = await conn.fetch(
                "SELECT username, state, expires_at, revoked_at, revoked_at - expires_at AS lag "
                "FROM broker_leases"
            )
            late = await conn.fetchval(
                "SELECT count(*) FROM broker_leases WHERE state IN ('creating','active','revoking')"
                " AND revoked_at IS NULL AND expires_at < now() - make_interval(secs => $1)",
                SWEEP_INTERVAL,
            )
        finally:
            await conn.close()
        live = {r["username"] for r in leases if r["state"] in ("creating", "active")}
        orphans = sorted(u for u in await self.target_users() if u not in live)
        if orphans:  # what the lease table says about each: the first clue when one appears
            conn = await asyncpg.connect(self.storage.dsn())
            try:
                rows = await conn.fetch(
                    "SELECT * FROM broker_leases WHERE username = ANY($1)", orphans
                )
            finally:
                await conn.close()
            print("ORPHAN LEASES:", [dict(r) for r in rows], flush=True)
        lags = [
            r["lag"].total_seconds()
            for r in leases
            if r["state"] == "revoked" and r["lag"] is not None
        ]
        return {
            "leases": len(leases),
            "revoked": sum(1 for r in leases if r["state"] == "revoked"),
            "failed_creations": sum(1 for r in leases if r["state"] == "failed"),
            "orphans": len(orphans),
            "orphan_names": orphans[:5],
            "late_revocations": int(late),
            "revocation_lag_p50_s": round(statistics.median(lags), 3) if lags else None,
            "revocation_lag_p99_s": round(sorted(lags)[int(0.99 * (len(lags) - 1))], 3)
            if lags
            else None,
        }


async def wait_up(session: aiohttp.ClientSession, address: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{address}/v1/sys/health") as resp:
                if resp.status in (200, 503):
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{address} did not come up")


async def drive_load(world: World, seconds: float, concurrency: int, rng: random.Random) -> Load:
    """Issue credentials on random nodes and roles until ``seconds`` have passed."""
    load = Load()
    deadline = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(headers={"X-Vault-Token": TOKEN}, timeout=timeout) as s:

        async def worker() -> None:
            while time.monotonic() < deadline:
                node = rng.choice(world.nodes)
                role = rng.choice(("pg", "my"))
                try:
                    async with s.get(f"{node.address}/v1/database/creds/{role}") as resp:
                        body = await resp.read()
                        if resp.status == 200:
                            load.issued += 1
                        elif resp.status >= 500:
                            load.refused += 1
                        else:
                            load.other.append(f"{resp.status} {body[:200]!r}")
                except (aiohttp.ClientError, TimeoutError):
                    load.unreachable += 1
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return load


async def kill_during_load(
    seconds: float = 10, kill_every: float = 2.0, concurrency: int = 16, seed: int = 1
) -> dict[str, Any]:
    """Scenario 1: three nodes; every few seconds one is killed with SIGKILL and restarted."""
    rng = random.Random(seed)
    world = World(nodes=3)
    await world.open()
    kills = 0
    try:

        async def killer() -> None:
            nonlocal kills
            end = time.monotonic() + seconds
            while time.monotonic() + kill_every < end:
                await asyncio.sleep(kill_every * rng.uniform(0.5, 1.5))
                victim = rng.choice(world.nodes)
                victim.kill()
                kills += 1
                await asyncio.sleep(0.3)
                victim.start()

        load, _ = await asyncio.gather(drive_load(world, seconds, concurrency, rng), killer())
        await asyncio.sleep(SETTLE)
        figures = await world.figures()
    finally:
        codes = await world.close()
    return {
        "scenario": "kill -9 during load",
        "seconds": seconds,
        "seed": seed,
        "issued": load.issued,
        "refused": load.refused,
        "unreachable": load.unreachable,
        "unexpected": load.other[:5],
        "kills": kills,
        **figures,
        "exit_codes": codes,
    }


async def target_outage(
    seconds: float = 10, outage: float = 4, concurrency: int = 8, seed: int = 2
) -> dict[str, Any]:
    """Scenario 2: the PostgreSQL target stops for ``outage`` seconds during load."""
    return await _outage("target outage", "target", seconds, outage, concurrency, seed)


async def storage_restart(
    seconds: float = 10, outage: float = 3, concurrency: int = 8, seed: int = 3
) -> dict[str, Any]:
    """Scenario 3: the storage PostgreSQL stops abruptly and comes back during load."""
    return await _outage("storage restart", "storage", seconds, outage, concurrency, seed)


async def _outage(
    scenario: str, which: str, seconds: float, outage: float, concurrency: int, seed: int
) -> dict[str, Any]:
    """Load on two nodes; a third of the way in, one cluster (``which``: the target or the
    storage) stops abruptly for ``outage`` seconds and restarts."""
    rng = random.Random(seed)
    world = World(nodes=2)
    await world.open()
    cluster = world.target if which == "target" else world.storage
    try:

        async def outage_window() -> float:
            await asyncio.sleep(seconds / 3)
            await asyncio.to_thread(cluster.pause)
            await asyncio.sleep(outage)
            await asyncio.to_thread(cluster.resume)
            return time.monotonic()

        load, back_at = await asyncio.gather(
            drive_load(world, seconds, concurrency, rng), outage_window()
        )
        drained_after = await _wait_drained(world, within=60)
        drain_seconds = round(drained_after - back_at, 2) if drained_after else None
        await asyncio.sleep(SETTLE)
        figures = await world.figures()
    finally:
        codes = await world.close()
    return {
        "scenario": scenario,
        "seconds": seconds,
        "outage_seconds": outage,
        "seed": seed,
        "issued": load.issued,
        "refused_503": load.refused,
        "unexpected": load.other[:5],
        "drained_seconds_after_return": drain_seconds,
        **figures,
        "exit_codes": codes,
    }


async def _wait_drained(world: World, within: float) -> float | None:
    """When no expired lease is left unrevoked (None if not within ``within`` s)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            conn = await asyncpg.connect(world.storage.dsn())
            try:
                pending = await conn.fetchval(
                    "SELECT count(*) FROM broker_leases WHERE state IN "
                    "('creating','active','revoking') AND revoked_at IS NULL "
                    "AND expires_at < now()"
                )
            finally:
                await conn.close()
            if pending == 0:
                return time.monotonic()
        await asyncio.sleep(0.2)
    return None


async def dead_claimer(leases: int = 300, seed: int = 4) -> dict[str, Any]:
    """Scenario 4: two nodes, ``leases`` leases of a role whose revocation is slowed by a
    ``pg_sleep``, expiring together; once all are claimed, the node holding the most
    unfinished claims is SIGKILLed while revoking them. Figure: seconds from the kill
    until the last of those users is gone. The claim timeout is the default 60 s and the
    sweep interval 1 s, so anything near a minute means the dead node's claims waited out
    their timeout."""
    rng = random.Random(seed)
    world = World(
        nodes=2,
        env={"BROKER_CLAIM_TIMEOUT": "60", "BROKER_SWEEP_INTERVAL": "1"},
    )
    await world.open()
    names: list[str] = []
    try:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(headers={"X-Vault-Token": TOKEN}, timeout=timeout) as s:
            semaphore = asyncio.Semaphore(16)

            async def issue() -> str:
                async with (
                    semaphore,
                    s.get(f"{rng.choice(world.nodes).address}/v1/database/creds/slow") as resp,
                ):
                    body = await resp.json()
                    if resp.status != 200:
                        raise RuntimeError(f"issuance: {resp.status} {body}")
                    return str(body["data"]["username"])

            names = list(await asyncio.gather(*(issue() for _ in range(leases))))
        storage = await asyncpg.connect(world.storage.dsn())
        target = await asyncpg.connect(world.target.dsn())
        try:
            victim_id, claims = await _busiest_claimer(storage, within=TTL + 15)
            await asyncio.sleep(0.5)  # into its batch: some users dropped, most waiting
            victim = next(n for n in world.nodes if n.env["BROKER_NODE_ID"] == victim_id)
            victim.kill()
            killed_at = time.monotonic()
            query = "SELECT count(*) FROM pg_roles WHERE rolname = ANY($1)"
            left_at_kill = left = int(await target.fetchval(query, names))
            while left and time.monotonic() - killed_at < 120:
                await asyncio.sleep(0.1)
                left = int(await target.fetchval(query, names))
            gone_after = time.monotonic() - killed_at
        finally:
            await storage.close()
            await target.close()
        await _wait_drained(world, within=30)
        figures = await world.figures()
    finally:
        codes = await world.close()
    return {
        "scenario": "node killed mid-sweep",
        "seed": seed,
        "leases": leases,
        "victim_claims_at_kill": claims,
        "users_left_at_kill": left_at_kill,
        "users_left_at_end": left,
        "all_gone_seconds_after_kill": round(gone_after, 2),
        "unexpected": [],
        **{k: v for k, v in figures.items() if k != "leases"},
        "exit_codes": {k: v for k, v in codes.items() if k != f"node-{victim_id[-1]}"},
    }


async def _busiest_claimer(storage: asyncpg.Connection, within: float) -> tuple[str, int]:
    """The node id holding the most unfinished revocation claims, once every unrevoked
    lease is claimed (the whole backlog is in the nodes' hands)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        unclaimed = await storage.fetchval(
            "SELECT count(*) FROM broker_leases WHERE revoked_at IS NULL AND claimed_by IS NULL"
        )
        if unclaimed:
            await asyncio.sleep(0.02)
            continue
        row = await storage.fetchrow(
            "SELECT n.node_id, count(*) AS claims FROM broker_leases l "
            "JOIN broker_nodes n ON n.instance_id = l.claimed_by "
            "WHERE l.state = 'revoking' AND l.revoked_at IS NULL "
            "GROUP BY n.node_id ORDER BY claims DESC LIMIT 1"
        )
        if row is not None:
            return str(row["node_id"]), int(row["claims"])
        await asyncio.sleep(0.02)
    raise RuntimeError("no node claimed a revocation")
