"""Transport and limits: lease quotas and rate limits answer 429 with Retry-After, bodies
over the limit are refused, and a TLS listener can require client certificates."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker.server.assembly import start_server
from tests.conftest import (
    PG_READONLY,
    TOKEN,
    PgCluster,
    RunningBroker,
    own_broker_settings,
)
from tests.support import VaultHTTP


async def test_lease_quota_answers_429(broker: RunningBroker) -> None:
    role = "brkt-pg-quota"
    reply = await broker.http.write(
        f"database/roles/{role}",
        {"db_name": "pg", "creation_statements": [PG_READONLY], "max_leases": 2},
    )
    assert reply.status == 204, reply.body
    leases = [(await broker.http.creds(role)).body["lease_id"] for _ in range(2)]
    async with broker.http.session.get(
        f"{broker.address}/v1/database/creds/{role}", headers={"X-Vault-Token": TOKEN}
    ) as resp:
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) >= 1
        body = await resp.json()
    assert "lease quota" in body["errors"][0]
    assert (await broker.http.write(f"sys/leases/revoke/{leases[0]}")).status == 204
    leases.append((await broker.http.creds(role)).body["lease_id"])
    await broker.http.write(f"sys/leases/revoke-prefix/database/creds/{role}/")
    assert (await broker.http.write(f"database/roles/{role}", {"max_leases": -1})).status == 400
    await broker.http.delete(f"database/roles/{role}")


@pytest.fixture
def storage_db(pg_target: PgCluster, fresh_storage_db: str) -> str:
    return pg_target.dsn(fresh_storage_db)


async def test_rate_limits_per_address_and_per_token(
    storage_db: str, http_session: aiohttp.ClientSession
) -> None:
    settings = own_broker_settings(
        storage_db, rate_limit_per_address=20, rate_limit_per_token=3, max_request_bytes=4096
    )
    runner = await start_server(settings)
    base = f"http://{settings.listen_address}/v1"
    try:
        statuses = []
        for _ in range(6):
            async with http_session.get(
                f"{base}/auth/token/lookup-self", headers={"X-Vault-Token": TOKEN}
            ) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    assert int(resp.headers["Retry-After"]) >= 1
                    assert (await resp.json())["errors"] == [
                        "request rate limit exceeded for this token"
                    ]
        assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:]
        # Another client (no token, its own bucket) is not held back by that token.
        async with http_session.get(f"{base}/sys/health") as resp:
            assert resp.status == 200
        # The address limit covers everything from one address.
        codes = []
        for _ in range(30):
            async with http_session.get(f"{base}/sys/health") as resp:
                codes.append(resp.status)
        assert 429 in codes
        await asyncio.sleep(1.1)
        async with http_session.get(f"{base}/sys/health") as resp:
            assert resp.status == 200
        # A body over max_request_bytes: Vault's error body, nothing done.
        async with http_session.put(
            f"{base}/sys/policy/big",
            json={"policy": "#" * 10_000},
            headers={"X-Vault-Token": TOKEN},
        ) as resp:
            assert resp.status == 413
            assert (await resp.json())["errors"]
    finally:
        await runner.cleanup()


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer else (name, key)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


async def test_tls_listener_requires_client_certificates(storage_db: str, tmp_path: Path) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("broker test CA", ca_key, None, ca=True)
    server_key, client_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    issuer = (ca.subject, ca_key)
    _write(tmp_path / "ca", ca, ca_key)
    _write(
        tmp_path / "server",
        _cert("127.0.0.1", server_key, issuer, usage=ExtendedKeyUsageOID.SERVER_AUTH),
        server_key,
    )
    _write(
        tmp_path / "client",
        _cert("app", client_key, issuer, usage=ExtendedKeyUsageOID.CLIENT_AUTH),
        client_key,
    )
    settings = own_broker_settings(
        storage_db,
        tls_cert_file=str(tmp_path / "server.crt"),
        tls_key_file=str(tmp_path / "server.key"),
        tls_client_ca_file=str(tmp_path / "ca.crt"),
        tls_require_client_cert=True,
    )
    runner = await start_server(settings)
    url = f"https://{settings.listen_address}/v1/auth/token/lookup-self"
    try:
        with_cert = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        with_cert.load_cert_chain(tmp_path / "client.crt", tmp_path / "client.key")
        async with aiohttp.ClientSession() as session:
            async with session.get(url, ssl=with_cert, headers={"X-Vault-Token": TOKEN}) as resp:
                assert resp.status == 200
            without = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
            with pytest.raises(aiohttp.ClientError):
                async with session.get(url, ssl=without) as resp:
                    await resp.read()
    finally:
        await runner.cleanup()


async def test_connections_are_held_to_allowed_target_hosts(
    storage_db: str, http_session: aiohttp.ClientSession
) -> None:
    settings = own_broker_settings(storage_db, allowed_target_hosts="127.0.0.0/8, db.internal")
    runner = await start_server(settings)
    http = VaultHTTP(http_session, f"http://{settings.listen_address}", TOKEN)
    try:
        assert (await http.write("sys/mounts/database", {"type": "database"})).status == 204
        for url in (
            "postgresql://{{username}}:{{password}}@10.1.2.3:5432/app",
            "postgresql://{{username}}:{{password}}@example.com/app",
            "host=192.0.2.1 dbname=app",
        ):
            reply = await http.write(
                "database/config/x",
                {"plugin_name": "postgresql-database-plugin", "connection_url": url},
            )
            assert reply.status == 400, (url, reply.body)
            assert "allowed_target_hosts" in reply.errors[0]
        reply = await http.write(
            "database/config/x",
            {
                "plugin_name": "mysql-database-plugin",
                "connection_url": "{{username}}:{{password}}@tcp(8.8.8.8:3306)/",
            },
        )
        assert reply.status == 400 and "allowed_target_hosts" in reply.errors[0]
        # Loopback is allowed (and really connected to).
        reply = await http.write(
            "database/config/my",
            {
                "plugin_name": "mysql-database-plugin",
                "connection_url": "{{username}}:{{password}}@tcp(127.0.0.1:3306)/",
                "username": "root",
                "password": "",
            },
        )
        assert reply.status == 204, reply.body
    finally:
        await runner.cleanup()
