"""The disaster-recovery drill at size: how long restoring storage takes with 100,000
leases in it (``python -m tests.chaos dr --leases 100000``).

One storage primary (fsync on, WAL archived) holds an install with ``leases`` lease rows
seeded the fast way (COPY, each row authenticated like an issued one); ``due`` of them
expire during the outage and have real users on the target. The drill, timed step by
step: ``pg_dump -Fc`` and ``pg_basebackup``; the cluster is lost; a new one is made
(``initdb``) and the dump restored (``pg_restore -j 2``); a node starts on it and unseals
itself with the key file kept apart; until it serves (``sys/health`` 200) and its sweep
has revoked every lease that fell due (the users are gone). Then the same from the base
backup and the WAL archive (copy, replay, promote).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from broker.models import NewLease
from broker.server.auth.tokens import TokenManager
from broker.server.security.seal import SealManager, generate_seal_key
from broker.server.settings import Settings
from broker.server.storage.connector import create_pool
from broker.server.storage.embedded import EmbeddedPostgres, free_port
from broker.server.storage.stores import Stores
from tests.chaos.harness import TOKEN, Node
from tests.pgcluster import ReplicatedStorage, Server

STORAGE_DB = "broker"
ROLE = "dr"
#: When the due leases expire, counted from the seeding: inside the backup-to-restore
#: window, so the restored node finds them due at once.
DUE_AFTER = dt.timedelta(seconds=3)


class _Timer:
    def __init__(self) -> None:
        self.figures: dict[str, float] = {}

    def step(self, name: str, started: float) -> float:
        now = time.monotonic()
        self.figures[name] = round(now - started, 2)
        return now


async def restore_drill(leases: int = 100_000, due: int = 1_000) -> dict[str, Any]:
    """Run the drill; the figures, in seconds and bytes."""
    due = min(due, leases)
    work = Path(tempfile.mkdtemp(prefix="broker-dr-"))
    keys = work / "keys"  # never beside the backups
    keys.mkdir(mode=0o700)
    key_file = keys / "seal.key"
    key_file.write_text(generate_seal_key() + "\n")
    cluster = ReplicatedStorage(archive=True, durable=True)
    target = EmbeddedPostgres(fsync=True)
    prefix = f"drx{secrets.token_hex(3)}_"
    nodes: list[Node] = []
    timer = _Timer()
    try:
        await asyncio.to_thread(target.start)
        primary = await cluster.start_primary()
        await primary.sql(f"CREATE DATABASE {STORAGE_DB}")
        node = _node(work, primary, key_file, len(nodes))
        nodes.append(node)
        async with aiohttp.ClientSession(headers={"X-Vault-Token": TOKEN}) as session:
            await _serving(session, node)
            await _configure(session, node, target)
        node.stop()

        started = time.monotonic()
        await _seed(primary, key_file, leases, due, prefix, target)
        timer.step("seed_seconds", started)
        backups = cluster.writable_dir("backups")
        dump = backups / "broker.dump"
        started = time.monotonic()
        await cluster.dump(STORAGE_DB, dump)
        timer.step("pg_dump_seconds", started)
        started = time.monotonic()
        await cluster.base_backup(backups / "base")
        segment = await cluster.switch_wal()
        await cluster.wait_archived(segment)
        timer.step("pg_basebackup_seconds", started)
        sizes = {
            "dump_bytes": dump.stat().st_size,
            "base_backup_bytes": sum(
                p.stat().st_size for p in (backups / "base").rglob("*") if p.is_file()
            ),
        }

        await cluster.lose(primary)

        # From the dump: a new cluster, the restore, a node.
        started = time.monotonic()
        fresh = await cluster.new_empty_primary()
        step = timer.step("dump_initdb_seconds", started)
        await cluster.restore_dump(dump, STORAGE_DB)
        step = timer.step("dump_pg_restore_seconds", step)
        await _node_catches_up(work, fresh, key_file, nodes, timer, "dump", step, prefix, target)
        timer.figures["dump_total_seconds"] = round(time.monotonic() - started, 2)
        await _recreate_due_users(target, prefix, due)
        for running in nodes:
            running.stop()
        await cluster.lose(fresh)

        # From the base backup and the WAL archive: copy, replay, promote, a node.
        started = time.monotonic()
        restored = await cluster.restore_base_backup(backups / "base")
        step = timer.step("base_restore_and_replay_seconds", started)
        await _node_catches_up(work, restored, key_file, nodes, timer, "base", step, prefix, target)
        timer.figures["base_total_seconds"] = round(time.monotonic() - started, 2)
    finally:
        codes = {f"node-{i}": n.stop() for i, n in enumerate(nodes)}
        await cluster.close()
        await asyncio.to_thread(target.stop)
        shutil.rmtree(work, ignore_errors=True)
    return {
        "scenario": "disaster-recovery restore",
        "leases": leases,
        "due_during_outage": due,
        **sizes,
        **timer.figures,
        "exit_codes": codes,
    }


def _node(work: Path, server: Server, key_file: Path, index: int) -> Node:
    port = free_port()
    node = Node(
        port,
        {
            "BROKER_STORAGE_DSN": server.dsn(STORAGE_DB),
            "BROKER_LISTEN_ADDRESS": f"127.0.0.1:{port}",
            "BROKER_NODE_ID": f"dr-{index}",
            "BROKER_ROOT_TOKEN": TOKEN,
            "BROKER_SEAL_TYPE": "file",
            "BROKER_SEAL_KEY_FILE": str(key_file),
            "BROKER_AUTO_INIT": "true",
            "BROKER_SHUTDOWN_TIMEOUT": "5",
        },
        work / f"node-{index}.log",
    )
    node.start()
    return node


async def _serving(session: aiohttp.ClientSession, node: Node, within: float = 120) -> None:
    """Until ``sys/health`` answers 200: initialised, unsealed, storage writable."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            async with session.get(f"{node.address}/v1/sys/health") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{node.address} did not come up; see {node.log}")


async def _configure(session: aiohttp.ClientSession, node: Node, target: EmbeddedPostgres) -> None:
    calls: list[tuple[str, dict[str, Any]]] = [
        ("sys/mounts/database", {"type": "database"}),
        (
            "database/config/pg",
            {
                "plugin_name": "postgresql-database-plugin",
                "connection_url": "postgresql://{{username}}:{{password}}@127.0.0.1:"
                f"{target.port}/postgres",
                "username": "postgres",
                "password": target.password,
                "allowed_roles": "*",
            },
        ),
        (f"database/roles/{ROLE}", {"db_name": "pg", "default_ttl": 3600}),
    ]
    for path, body in calls:
        async with session.put(f"{node.address}/v1/{path}", json=body) as resp:
            if resp.status not in (200, 204):
                raise RuntimeError(f"{path}: {resp.status} {await resp.text()}")


async def _seed(
    primary: Server,
    key_file: Path,
    leases: int,
    due: int,
    prefix: str,
    target: EmbeddedPostgres,
) -> None:
    """``leases`` active rows through an unsealed store (so they carry their MACs):
    ``due`` expire in ``DUE_AFTER`` and have a user on the target, the rest over the next
    day."""
    now = dt.datetime.now(dt.UTC)
    rows = []
    for i in range(leases):
        is_due = i < due
        expires = now + (DUE_AFTER if is_due else dt.timedelta(hours=1, seconds=i % 86_400))
        rows.append(
            NewLease(
                f"database/creds/{ROLE}/dr{i:016d}",
                "database",
                ROLE,
                "pg",
                "postgresql-database-plugin",
                f"{prefix}{i}" if is_due else f"{prefix}future_{i}",
                (),
                (),
                now,
                expires,
                expires + dt.timedelta(hours=24),
            )
        )
    await _recreate_due_users(target, prefix, due)
    pool = await create_pool(primary.dsn(STORAGE_DB), min_size=1, max_size=2)
    try:
        stores = Stores.open(pool)
        settings = Settings(seal_type="file", seal_key_file=str(key_file))
        never = TokenManager(stores.auth, settings).create_root  # initialised by the node
        manager = SealManager(stores.keyring, settings, never)
        if not await manager.try_auto_unseal():
            raise RuntimeError("the seeded storage did not unseal")
        for start in range(0, leases, 10_000):
            await stores.leases.bulk_insert_leases(rows[start : start + 10_000], "active")
    finally:
        await pool.close()


async def _recreate_due_users(target: EmbeddedPostgres, prefix: str, due: int) -> None:
    """The users of the due leases (again, for the second restore of the same backup)."""
    conn = await asyncpg.connect(target.dsn())
    try:
        await conn.execute(
            f"DO $$ BEGIN FOR i IN 0..{due - 1} LOOP "
            f"EXECUTE format('CREATE ROLE %I LOGIN', '{prefix}' || i); END LOOP; END $$"
        )
    finally:
        await conn.close()


async def _node_catches_up(
    work: Path,
    server: Server,
    key_file: Path,
    nodes: list[Node],
    timer: _Timer,
    kind: str,
    started: float,
    prefix: str,
    target: EmbeddedPostgres,
) -> None:
    """A node on the restored storage: seconds until it serves, then until the sweep has
    revoked every lease that fell due (none live and due, and their users gone)."""
    node = _node(work, server, key_file, len(nodes))
    nodes.append(node)
    async with aiohttp.ClientSession(headers={"X-Vault-Token": TOKEN}) as session:
        await _serving(session, node)
        step = timer.step(f"{kind}_node_serving_seconds", started)
        async with session.get(f"{node.address}/v1/database/creds/{ROLE}") as resp:
            if resp.status != 200:  # the keyring opened: the connection password decrypts
                raise RuntimeError(f"issuance after the restore: {resp.status}")
    storage = await asyncpg.connect(server.dsn(STORAGE_DB))
    admin = await asyncpg.connect(target.dsn())
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            pending = await storage.fetchval(
                "SELECT count(*) FROM broker_leases WHERE state IN ('creating', 'active', "
                "'revoking') AND revoked_at IS NULL AND expires_at < now()"
            )
            users = await admin.fetchval(
                "SELECT count(*) FROM pg_roles WHERE rolname ~ $1", f"^{prefix}[0-9]+$"
            )
            if pending == 0 and users == 0:
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError("the sweep did not catch up within 600 s")
    finally:
        await storage.close()
        await admin.close()
    timer.step(f"{kind}_sweep_caught_up_seconds", step)
