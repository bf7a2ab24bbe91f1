"""Encryption at rest and the Shamir seal, through hvac: init hands out unseal keys, a
sealed broker answers 503 to everything but the seal endpoints and issues nothing, the
threshold of keys unseals it (after a restart too), rotation adds a key term, and a
pg_dump of storage shows no secret."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import hvac
import hvac.exceptions
import pytest

from broker.server.assembly import start_server
from broker.server.security.seal import SealConfigError, generate_seal_key
from broker.server.settings import Settings
from broker.server.storage.embedded import free_port
from tests.conftest import PG_ADMIN_PASSWORD, PG_READONLY, PgCluster, pg_connection_config
from tests.support import (
    ISSUED_PASSWORDS,
    VaultHTTP,
    eventually,
    pg_logs_in,
    pg_role_exists,
    run_cli,
)


def _settings(pg: PgCluster, database: str) -> Settings:
    return Settings(
        storage_dsn=pg.dsn(database),
        listen_address=f"127.0.0.1:{free_port()}",
        seal_type="shamir",
        sweep_interval=0.2,
    )


async def test_init_unseal_seal_restart_and_rotate(
    pg_target: PgCluster, fresh_storage_db: str, http_session: Any
) -> None:
    settings = _settings(pg_target, fresh_storage_db)
    runner = await start_server(settings)
    address = f"http://{settings.listen_address}"
    try:
        client = hvac.Client(url=address)
        assert await asyncio.to_thread(client.sys.is_initialized) is False
        init: dict[str, Any] = await asyncio.to_thread(client.sys.initialize, 5, 3)
        keys, root_token = init["keys"], init["root_token"]
        assert len(keys) == 5 and root_token.startswith("hvs.")
        http = VaultHTTP(http_session, address, root_token)

        # Sealed after init (Vault's rule): every other path is a 503, token or not.
        assert await asyncio.to_thread(client.sys.is_sealed) is True
        for method, path in (("GET", "sys/mounts"), ("GET", "database/creds/x")):
            reply = await http.call(method, path)
            assert (reply.status, reply.body) == (503, {"errors": ["Vault is sealed"]})
        assert (await http.call("GET", "sys/health")).status == 503
        assert (await http.write("sys/init", {"secret_shares": 1})).status == 400  # once only

        # Below the threshold nothing opens; a key given twice is not counted twice.
        status = await asyncio.to_thread(client.sys.submit_unseal_key, keys[0])
        status = await asyncio.to_thread(client.sys.submit_unseal_key, keys[0])
        assert status["sealed"] is True and status["progress"] == 1
        status = await asyncio.to_thread(client.sys.submit_unseal_keys, keys[1:3])
        assert status["sealed"] is False
        client.token = root_token

        password = await _configure_and_issue(http, pg_target)
        stored = await _stored_connection_password(pg_target, fresh_storage_db)
        assert stored.startswith("enc:1:") and password not in stored

        # Sealing drops the keys: nothing is served, nothing is issued, nothing revoked.
        reply = await http.write(
            "database/roles/brkt-pg-short",
            {"db_name": "pg", "creation_statements": [PG_READONLY], "default_ttl": "1s"},
        )
        assert reply.status == 204, reply.body
        short = (await http.creds("brkt-pg-short")).data["username"]
        await asyncio.to_thread(client.sys.seal)
        reply = await http.call("GET", "database/creds/brkt-pg-sealed")
        assert (reply.status, reply.body) == (503, {"errors": ["Vault is sealed"]})
        await asyncio.sleep(2.0)  # expired, but the sweep cannot read the password
        assert await pg_role_exists(pg_target.dsn(), short)
    finally:
        await runner.cleanup()

    # A restart comes up sealed; any three of the five keys open it, and the stored
    # connection password decrypts: issuance works again.
    runner = await start_server(settings)
    try:
        client = hvac.Client(url=address, token=root_token)
        assert await asyncio.to_thread(client.sys.is_sealed) is True
        status = await asyncio.to_thread(client.sys.submit_unseal_keys, keys[2:5])
        assert status["sealed"] is False

        async def revoked() -> bool:
            return not await pg_role_exists(pg_target.dsn(), short)

        await eventually(revoked, within=10)  # unsealed: the overdue lease goes first
        creds = await http.creds("brkt-pg-sealed")
        await _log_in(pg_target, creds.data["username"], creds.data["password"])

        # Rotation adds a term; the re-encrypt job moves the stored password to it.
        assert (await http.write("sys/rotate")).status == 204
        status_reply = await http.read("sys/key-status")
        assert status_reply.data["term"] == 2
        stored = await _stored_connection_password(pg_target, fresh_storage_db)
        assert stored.startswith("enc:2:")
        creds = await http.creds("brkt-pg-sealed")
        await _log_in(pg_target, creds.data["username"], creds.data["password"])

        # A dump of storage holds no secret in plain text.
        token = (await http.write("auth/token/create", {"ttl": "5m"})).body["auth"]
        dump = _pg_dump(pg_target, fresh_storage_db)
        assert "broker_connections" in dump and "enc:2:" in dump
        secrets_ = [
            pg_target.server.password,
            PG_ADMIN_PASSWORD,
            root_token,
            token["client_token"],
            creds.data["password"],
            *keys,
        ]
        for secret in secrets_:
            assert secret not in dump
        await http.write("sys/leases/revoke-prefix/database/")
    finally:
        await runner.cleanup()


async def test_wrong_unseal_keys_reset_and_bad_init(
    pg_target: PgCluster, fresh_storage_db: str, http_session: Any
) -> None:
    settings = _settings(pg_target, fresh_storage_db)
    runner = await start_server(settings)
    address = f"http://{settings.listen_address}"
    try:
        http = VaultHTTP(http_session, address, "")
        for body in ({"secret_shares": 3, "secret_threshold": 4}, {"secret_shares": "x"}):
            reply = await http.write("sys/init", body)
            assert reply.status == 400 and reply.errors, reply.body
        init = (await http.write("sys/init", {"secret_shares": 3, "secret_threshold": 2})).body
        other = "ab" * 33  # the right length, the wrong key
        first = await http.write("sys/unseal", {"key": init["keys"][0]})
        assert first.body["progress"] == 1
        reply = await http.write("sys/unseal", {"key": other})
        assert reply.status == 400 and reply.errors
        status = (await http.read("sys/seal-status")).body
        assert status["sealed"] is True and status["progress"] == 0
        assert (await http.write("sys/unseal", {"key": "not hex!"})).status == 400
        reply = await http.write("sys/unseal", {"key": init["keys"][1]})
        assert reply.body["progress"] == 1  # the reset cleared the first share
        reply = await http.write("sys/unseal", {"reset": True})
        assert reply.body["progress"] == 0
        for key in init["keys"][1:]:
            reply = await http.write("sys/unseal", {"key": key})
        assert reply.body["sealed"] is False
    finally:
        await runner.cleanup()


async def _configure_and_issue(http: VaultHTTP, pg: PgCluster) -> str:
    assert (await http.write("sys/mounts/database", {"type": "database"})).status == 204
    reply = await http.write("database/config/pg", pg_connection_config(pg))
    assert reply.status == 204, reply.body
    reply = await http.write(
        "database/roles/brkt-pg-sealed",
        {"db_name": "pg", "creation_statements": [PG_READONLY], "default_ttl": "5m"},
    )
    assert reply.status == 204, reply.body
    creds = await http.creds("brkt-pg-sealed")
    ISSUED_PASSWORDS.add(creds.data["password"])
    await _log_in(pg, creds.data["username"], creds.data["password"])
    return PG_ADMIN_PASSWORD  # the connection's admin (pg_connection_config)


async def _log_in(pg: PgCluster, user: str, password: str) -> None:
    assert await pg_logs_in(pg.server.port, user, password)


async def _stored_connection_password(pg: PgCluster, database: str) -> str:
    conn = await asyncpg.connect(pg.dsn(database))
    try:
        return str(await conn.fetchval("SELECT password FROM broker_connections"))
    finally:
        await conn.close()


def _pg_dump(pg: PgCluster, database: str) -> str:
    result = subprocess.run(
        [str(pg.server.bin_dir / "pg_dump"), "--dbname", pg.dsn(database)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout


async def test_operator_cli_init_and_unseal(pg_target: PgCluster, fresh_storage_db: str) -> None:
    settings = _settings(pg_target, fresh_storage_db)
    runner = await start_server(settings)
    env = {"BROKER_ADDR": f"http://{settings.listen_address}"}

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return run_cli("operator", *args, env=env, stdin=stdin)

    try:
        status = await asyncio.to_thread(run, "seal-status")
        assert "Initialized: false" in status.stdout, status.stdout + status.stderr
        init = await asyncio.to_thread(
            run, "init", "--key-shares", "3", "--key-threshold", "2", "--format", "json"
        )
        assert init.returncode == 0, init.stderr
        keys = json.loads(init.stdout)["keys"]
        first = await asyncio.to_thread(run, "unseal", stdin=keys[0] + "\n")
        assert "Sealed: true" in first.stdout and "Progress: 1/2" in first.stdout
        second = await asyncio.to_thread(run, "unseal", stdin=keys[2] + "\n")
        assert "Sealed: false" in second.stdout, second.stdout + second.stderr
        assert keys[0] not in first.stdout + first.stderr  # the key is not echoed
        key = await asyncio.to_thread(run, "generate-seal-key")
        assert len(bytes.fromhex(key.stdout.strip())) == 32
    finally:
        await runner.cleanup()


async def test_file_auto_unseal_initialises_and_reopens(
    pg_target: PgCluster, fresh_storage_db: str, http_session: Any, tmp_path: Path
) -> None:
    key_file = tmp_path / "seal.key"
    key_file.write_text(generate_seal_key() + "\n")
    settings = _settings(pg_target, fresh_storage_db).replace(
        seal_type="file", seal_key_file=str(key_file)
    )
    address = f"http://{settings.listen_address}"
    runner = await start_server(settings)
    try:
        http = VaultHTTP(http_session, address, "")
        assert (await http.read("sys/health")).status == 501  # not initialised yet
        init = (await http.write("sys/init", {"recovery_shares": 1, "recovery_threshold": 1})).body
        assert init["recovery_keys"] == init["keys"] and len(init["keys"]) == 1
        status = (await http.read("sys/seal-status")).body
        assert status["sealed"] is False and status["type"] == "file"
        http.token = init["root_token"]
        assert (await http.write("sys/mounts/brkt-auto", {"type": "database"})).status == 204
    finally:
        await runner.cleanup()
    runner = await start_server(settings)  # a restart opens itself
    try:
        assert (await http.read("sys/mounts/brkt-auto")).status == 200
    finally:
        await runner.cleanup()
    key_file.write_text(generate_seal_key())  # the wrong key: refuses to start
    with pytest.raises(SealConfigError):
        await start_server(settings)
