"""Production-mode pieces: TLS on the listener, and `broker migrate` run twice."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from broker.server.assembly import start_server
from broker.server.storage.embedded import free_port
from tests.conftest import TOKEN, PgCluster, RunningBroker, create_database
from tests.support import ROOT


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_listener(broker: RunningBroker, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    settings = broker.settings.replace(
        listen_address=f"127.0.0.1:{free_port()}",
        tls_cert_file=str(cert),
        tls_key_file=str(key),
    )
    runner = await start_server(settings)
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as session:
            url = f"https://{settings.listen_address}/v1/database/roles/brkt-pg-ro"
            async with session.get(url, ssl=trust, headers={"X-Vault-Token": TOKEN}) as resp:
                assert resp.status == 200
                assert (await resp.json())["data"]["db_name"] == "pg"
            try:
                async with session.get(url.replace("https://", "http://")) as resp:
                    raise AssertionError(f"plain HTTP was answered: {resp.status}")
            except aiohttp.ClientError:
                pass
    finally:
        await runner.cleanup()


async def test_migrate_is_idempotent(pg_target: PgCluster) -> None:
    dsn = pg_target.dsn(await create_database(pg_target, "migrate"))

    def migrate() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "broker", "migrate"],
            env=dict(os.environ, BROKER_STORAGE_DSN=dsn),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    first, second = await asyncio.to_thread(migrate), await asyncio.to_thread(migrate)
    assert first.returncode == 0 and "0001_initial, 0002_nodes" in first.stdout
    assert second.returncode == 0 and "none pending" in second.stdout


async def test_role_change_on_one_node_reaches_another_nodes_cache(
    broker: RunningBroker, http_session: aiohttp.ClientSession
) -> None:
    """Each node caches roles and connections for issuance; a write on any node reaches
    every cache (NOTIFY), so no node keeps issuing with an old role."""
    from tests.support import VaultHTTP, eventually

    settings = broker.settings.replace(listen_address=f"127.0.0.1:{free_port()}")
    other = await start_server(settings)
    try:
        second = VaultHTTP(http_session, f"http://{settings.listen_address}", TOKEN)
        await broker.http.write(
            "database/roles/brkt-cache",
            {
                "db_name": "pg",
                "creation_statements": 'CREATE ROLE "{{name}}" LOGIN PASSWORD '
                "'{{password}}' VALID UNTIL '{{expiration}}'",
                "default_ttl": 600,
            },
        )
        first_lease = await second.creds("brkt-cache")  # now cached on the second node
        assert first_lease.body["lease_duration"] == 600
        await broker.http.write("database/roles/brkt-cache", {"default_ttl": 120})

        async def updated() -> bool:
            reply = await second.creds("brkt-cache")
            return bool(reply.body["lease_duration"] == 120)

        await eventually(updated, within=5, interval=0.05)
        await broker.http.delete("database/roles/brkt-cache")

        async def gone() -> bool:
            return (await second.read("database/creds/brkt-cache")).status == 400

        await eventually(gone, within=5, interval=0.05)
    finally:
        await broker.http.write("sys/leases/revoke-prefix/database/creds/brkt-cache")
        await other.cleanup()
