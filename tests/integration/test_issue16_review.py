"""Review of issue 16 (storage failover, declarative bootstrap): the defects found, each
shown failing before its fix."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from pathlib import Path

import aiohttp
import asyncpg

from broker.server.assembly import start_server
from broker.server.security.seal import generate_seal_key
from broker.server.settings import Settings
from broker.server.storage.barrier import Barrier
from broker.server.storage.connector import create_pool
from broker.server.storage.embedded import free_port
from broker.server.storage.stores import Stores
from tests.conftest import PgCluster, RunningBroker
from tests.support import VaultHTTP, run_cli

_DECLARED_LOCK = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


async def test_an_apply_cancelled_while_unlocking_leaves_no_lock_behind(
    pg_target: PgCluster, fresh_storage_db: str
) -> None:
    """The apply's lock is a session lock on a pooled connection, and the pool does not
    reset sessions (``_keep_session``): an unlock that never ran would leave the lock with
    the pool, and every later apply, on every node, would wait for it."""
    dsn = pg_target.dsn(fresh_storage_db)
    pool = await create_pool(dsn, min_size=1, max_size=2)
    admin = await asyncpg.connect(dsn)
    try:
        stores = Stores.open(pool, Barrier())
        await stores.migrate()
        inside = asyncio.Event()

        async def apply() -> None:
            async with stores.declared.lock():
                inside.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(apply())
        await inside.wait()
        assert await admin.fetchval(_DECLARED_LOCK) == 1
        # Cancelled twice (a shutdown that cancels again, a timeout around a cancelled
        # task): the second cancellation lands on the unlock itself.
        task.cancel()
        await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        async with pool.acquire() as conn:  # the pool's connections are all usable
            assert await conn.fetchval("SELECT 1") == 1
        assert await admin.fetchval(_DECLARED_LOCK) == 0
    finally:
        await admin.close()
        await pool.close()


async def test_health_codes_that_are_not_ascii_numbers_are_no_500(broker: RunningBroker) -> None:
    """``sys/health`` is unauthenticated: a code Python's ``isdigit`` takes but ``int``
    does not ("²") must not be an internal error anyone can cause (and log)."""
    for value, status in (("\u00b2", 200), ("\u0663\u0660\u0660", 200), ("299", 299)):
        query = urllib.parse.urlencode({"activecode": value})
        reply = await broker.http.call("GET", f"sys/health?{query}")
        assert reply.status == status, (value, reply.status, reply.body)


async def test_storage_failing_during_the_unseal_work_leaves_the_node_sealed(
    pg_target: PgCluster, fresh_storage_db: str, http_session: aiohttp.ClientSession
) -> None:
    """Storage fails over (here: a table the unseal work reads is gone) while a node runs
    its unseal work: the unseal answers 503 and the node stays sealed, as Vault seals
    again when its post-unseal setup fails. Before, the barrier stayed open with the work
    half done: the node served with its audit devices not loaded (nothing audited) and
    its declarative configuration never applied."""
    dsn = pg_target.dsn(fresh_storage_db)
    settings = Settings(
        storage_dsn=dsn, listen_address=f"127.0.0.1:{free_port()}", seal_type="shamir"
    )
    runner = await start_server(settings)
    try:
        http = VaultHTTP(http_session, f"http://{settings.listen_address}", "")
        init = await http.write("sys/init", {"secret_shares": 1, "secret_threshold": 1})
        key, http.token = init.body["keys"][0], init.body["root_token"]
        assert (await http.write("sys/unseal", {"key": key})).body["sealed"] is False
        assert (await http.write("sys/audit/trail", {"type": "table"})).status == 204
        # Answered as Vault does, with an audit device enabled: the request is audited,
        # the node seals, 204 (it used to be a 503 from the response's audit entry).
        assert (await http.write("sys/seal")).status == 204
        assert (await http.read("sys/seal-status")).body["sealed"] is True

        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute("ALTER TABLE broker_audit_devices RENAME TO brkt_moved")
            try:
                reply = await http.write("sys/unseal", {"key": key})
                assert reply.status == 503, reply.body
                assert (await http.call("GET", "sys/health")).status == 503
                assert (await http.read("sys/mounts")).status == 503  # nothing served
            finally:
                await admin.execute("ALTER TABLE brkt_moved RENAME TO broker_audit_devices")
        finally:
            await admin.close()

        # Storage back: the same key unseals, and requests are audited again.
        assert (await http.write("sys/unseal", {"key": key})).body["sealed"] is False
        assert (await http.read("sys/mounts")).status == 200
        assert list((await http.read("sys/audit")).data) == ["trail/"]
    finally:
        await runner.cleanup()


async def test_a_dry_run_does_not_migrate_storage(
    pg_target: PgCluster, fresh_storage_db: str, tmp_path: Path
) -> None:
    """``broker apply --dry-run`` "changes nothing": not even the schema. A drift check
    run from CI with a newer broker must not migrate the storage the running (older)
    nodes use; ``broker apply`` itself migrates, as the server does."""
    dsn = pg_target.dsn(fresh_storage_db)
    key = tmp_path / "seal.key"
    key.write_text(generate_seal_key() + "\n")
    config = tmp_path / "broker.toml"
    config.write_text(
        f'storage_dsn = "{dsn}"\nseal_type = "file"\nseal_key_file = "{key}"\n\n'
        '[declarative.policies.brkt-dry]\npolicy = \'path "x" { capabilities = ["read"] }\'\n'
    )
    result = await asyncio.to_thread(run_cli, "apply", "--config", str(config), "--dry-run")
    assert result.returncode == 1, result.stdout + result.stderr
    admin = await asyncpg.connect(dsn)
    try:
        tables = await admin.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await admin.close()
    assert tables == 0, result.stderr
