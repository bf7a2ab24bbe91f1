"""The disaster-recovery drill of docs/runbook.md, run: back up storage, lose the whole
storage cluster, restore into a new one, start a node and unseal it with the key kept
apart from the backups.

After the restore: every lease still due is revoked on time (those that expired during
the outage at once, the others at their expiry, not before); users created after the
backup, whose lease rows the restore cannot bring back, are reported by ``broker
reconcile`` and dropped by ``broker reconcile --revoke``; the keyring and the tokens in the
backup work. One test per backup kind: ``pg_dump -Fc`` (loses everything since the dump)
and ``pg_basebackup`` with a WAL archive (loses what was not archived yet).

The storage is a cluster of this file's own (tests/pgcluster.py), never the shared one; the
target is the suite's PostgreSQL. The restore time of 100,000 leases is measured by
``python -m tests.chaos dr``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from broker.server.assembly import start_server
from broker.server.security.seal import generate_seal_key
from broker.server.settings import Settings
from tests.conftest import PG_READONLY, TOKEN, PgCluster, own_broker_settings, pg_connection_config
from tests.pgcluster import ReplicatedStorage, Server
from tests.support import VaultHTTP, eventually, pg_logs_in, run_cli

STORAGE_DB = "broker"


@dataclass
class Drill:
    cluster: ReplicatedStorage
    target: PgCluster
    session: aiohttp.ClientSession
    key_file: Path
    prefix: str
    runners: list[Any] = field(default_factory=list)

    def settings(self, server: Server) -> Settings:
        # The unseal key lives in its own directory, never beside the backups.
        return own_broker_settings(
            server.dsn(STORAGE_DB), sweep_interval=0.2, heartbeat_interval=0.5
        ).replace(seal_type="file", seal_key_file=str(self.key_file))

    async def start_node(self, server: Server) -> VaultHTTP:
        settings = self.settings(server)
        self.runners.append(await start_server(settings))
        return VaultHTTP(self.session, f"http://{settings.listen_address}", TOKEN)

    async def stop_nodes(self) -> None:
        while self.runners:
            await self.runners.pop().cleanup()

    async def users(self) -> set[str]:
        conn = await asyncpg.connect(self.target.dsn())
        try:
            rows = await conn.fetch(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", self.prefix
            )
        finally:
            await conn.close()
        return {row["rolname"] for row in rows}

    def reconcile(self, server: Server, *extra: str) -> tuple[int, str]:
        """``broker reconcile`` as an operator runs it on the host, with the key file."""
        done = run_cli(
            "reconcile",
            *extra,
            env={
                "BROKER_STORAGE_DSN": server.dsn(STORAGE_DB),
                "BROKER_SEAL_TYPE": "file",
                "BROKER_SEAL_KEY_FILE": str(self.key_file),
            },
        )
        return done.returncode, done.stdout


@pytest.fixture
async def drill(
    pg_target: PgCluster, http_session: aiohttp.ClientSession, tmp_path: Path
) -> AsyncIterator[Drill]:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    key_file = keys / "seal.key"
    key_file.write_text(generate_seal_key() + "\n")
    cluster = ReplicatedStorage(archive=True)
    drill = Drill(cluster, pg_target, http_session, key_file, f"brktdr{secrets.token_hex(3)}_")
    try:
        yield drill
    finally:
        await drill.stop_nodes()
        conn = await asyncpg.connect(pg_target.dsn())
        try:
            for name in await drill.users():
                await conn.execute(f'DROP ROLE IF EXISTS "{name}"')
        finally:
            await conn.close()
        await cluster.close()


async def _configure(drill: Drill, http: VaultHTTP) -> str:
    """A mount, the target, a role; and a token of a policy of its own (to use after the
    restore). Returns the token."""
    assert (await http.write("sys/mounts/database", {"type": "database"})).status == 204
    body = {
        **pg_connection_config(drill.target),
        "username_template": drill.prefix + "{{random 12}}",
    }
    assert (await http.write("database/config/pg", body)).status == 204
    for name, ttl in (("brkt-dr-short", 1), ("brkt-dr-due", 8), ("brkt-dr-long", 600)):
        reply = await http.write(
            f"database/roles/{name}",
            {"db_name": "pg", "creation_statements": [PG_READONLY], "default_ttl": ttl},
        )
        assert reply.status == 204, reply.body
    policy = 'path "database/creds/brkt-dr-long" { capabilities = ["read"] }'
    assert (await http.write("sys/policies/acl/brkt-dr", {"policy": policy})).status == 204
    reply = await http.write("auth/token/create", {"policies": ["brkt-dr"], "ttl": "1h"})
    assert reply.status == 200, reply.body
    return str(reply.body["auth"]["client_token"])


async def _issue(http: VaultHTTP, role: str) -> dict[str, Any]:
    reply = await http.creds(role)
    return {"lease_id": reply.body["lease_id"], **reply.data}


async def _rows(server: Server) -> dict[str, asyncpg.Record]:
    conn = await asyncpg.connect(server.dsn(STORAGE_DB))
    try:
        rows = await conn.fetch("SELECT lease_id, state, expires_at, revoked_at FROM broker_leases")
    finally:
        await conn.close()
    return {row["lease_id"]: row for row in rows}


async def _check_restored(
    drill: Drill,
    server: Server,
    token: str,
    kept: dict[str, dict[str, Any]],
    lost: list[dict[str, Any]],
) -> VaultHTTP:
    """The checks after either restore: a node on ``server``, unsealed by the key file;
    ``kept`` (by role) were issued before the backup, ``lost`` after it."""
    rows = await _rows(server)
    assert all(x["lease_id"] in rows for x in kept.values())
    assert not any(x["lease_id"] in rows for x in lost)
    due = kept["brkt-dr-due"]
    assert due["username"] in await drill.users()  # not revoked before its time

    http = await drill.start_node(server)
    health = await http.call("GET", "sys/health")
    assert health.status == 200 and health.body["sealed"] is False, health.body

    # The keyring and tokens of the backup: the connection's password decrypts (a new
    # login is made), and the token made before the backup still works, with its policy.
    app = VaultHTTP(http.session, http.address, token)
    assert (await app.call("GET", "auth/token/lookup-self")).data["policies"] == [
        "brkt-dr",
        "default",
    ]
    fresh = await app.creds("brkt-dr-long")
    assert await pg_logs_in(
        drill.target.server.port, fresh.data["username"], fresh.data["password"]
    )
    assert (await app.read("database/creds/brkt-dr-short")).status == 403

    # Every lease still due is revoked: the one that expired meanwhile at once, the other
    # at its expiry.
    async def revoked(lease: dict[str, Any]) -> bool:
        return lease["username"] not in await drill.users()

    await eventually(lambda: revoked(kept["brkt-dr-short"]), within=10)
    await eventually(lambda: revoked(due), within=30)
    row = (await _rows(server))[due["lease_id"]]
    assert row["state"] == "revoked" and row["revoked_at"] >= row["expires_at"]
    assert not await pg_logs_in(drill.target.server.port, due["username"], due["password"])

    # Users made after the backup have no row: reconcile finds them, --revoke drops them,
    # and leaves the leased ones alone.
    names = {x["username"] for x in lost}
    assert names <= await drill.users()
    code, out = await asyncio.to_thread(drill.reconcile, server)
    assert code == 1 and {f"orphan\tdatabase/pg\t{n}" for n in names} <= set(out.splitlines())
    code, out = await asyncio.to_thread(drill.reconcile, server, "--revoke")
    assert code == 0, out
    assert {f"revoked\tdatabase/pg\t{n}" for n in names} <= set(out.splitlines())
    left = await drill.users()
    assert not names & left
    assert {kept["brkt-dr-long"]["username"], fresh.data["username"]} <= left
    await http.write("sys/leases/revoke-prefix/database/")
    return http


async def test_restore_from_pg_dump_into_a_new_cluster(drill: Drill) -> None:
    """RPO of a dump: everything since it was taken."""
    cluster = drill.cluster
    primary = await cluster.start_primary()
    await primary.sql(f"CREATE DATABASE {STORAGE_DB}")
    http = await drill.start_node(primary)
    token = await _configure(drill, http)
    kept = {role: await _issue(http, role) for role in ("brkt-dr-short", "brkt-dr-due")}
    kept["brkt-dr-long"] = await _issue(http, "brkt-dr-long")

    dump = cluster.writable_dir("backups") / "broker.dump"
    await cluster.dump(STORAGE_DB, dump)
    lost = [await _issue(http, "brkt-dr-long") for _ in range(2)]
    after = (await http.write("auth/token/create", {"ttl": "1h"})).body["auth"]["client_token"]

    # The storage cluster is gone (machine and disks); the node is stopped.
    await cluster.lose(primary)
    await drill.stop_nodes()

    restored = await cluster.new_empty_primary()
    await cluster.restore_dump(dump, STORAGE_DB)
    http = await _check_restored(drill, restored, token, kept, lost)
    # A token made after the dump does not exist any more.
    assert (await http.call("GET", "auth/token/lookup-self", token=after)).status == 403


async def test_point_in_time_restore_from_base_backup_and_wal_archive(drill: Drill) -> None:
    """RPO of a base backup with WAL archiving: what was not archived yet."""
    cluster = drill.cluster
    primary = await cluster.start_primary()
    await primary.sql(f"CREATE DATABASE {STORAGE_DB}")
    http = await drill.start_node(primary)
    token = await _configure(drill, http)
    kept = {"brkt-dr-short": await _issue(http, "brkt-dr-short")}

    backup = cluster.writable_dir("backups") / "base"
    await cluster.base_backup(backup)
    # After the base backup, but archived: the restore replays them.
    kept["brkt-dr-due"] = await _issue(http, "brkt-dr-due")
    kept["brkt-dr-long"] = await _issue(http, "brkt-dr-long")
    segment = await cluster.switch_wal()
    await cluster.wait_archived(segment)
    # In the WAL segment being written when the cluster is lost: never archived.
    lost = [await _issue(http, "brkt-dr-long") for _ in range(2)]

    await cluster.lose(primary)
    await drill.stop_nodes()
    restored = await cluster.restore_base_backup(backup)
    await _check_restored(drill, restored, token, kept, lost)
