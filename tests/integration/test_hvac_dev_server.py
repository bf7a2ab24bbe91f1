"""The hvac client, unchanged, against `broker server --dev`: configure a connection and a
role, generate creds, look up, renew and revoke, and use the dev demo role."""

from __future__ import annotations

import asyncio
import secrets
import signal
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import aiomysql
import hvac
import pymysql
import pytest

from broker.server.storage.embedded import EmbeddedPostgres, free_port
from tests.conftest import MYSQL_READONLY
from tests.support import broker_process, mysql_user_exists, wait_healthy


def _hvac_workflow(address: str, token: str) -> dict[str, Any]:
    client = hvac.Client(url=address, token=token)
    assert client.is_authenticated()
    assert client.sys.read_health_status(method="GET")["initialized"] is True
    assert "database/" in client.sys.list_mounted_secrets_engines()["data"]
    client.secrets.database.configure(
        name="mariadb",
        plugin_name="mysql-database-plugin",
        connection_url="{{username}}:{{password}}@tcp(127.0.0.1:3306)/",
        username="root",
        password="",
        allowed_roles=["brkt-hvac"],
    )
    assert (
        client.secrets.database.read_connection("mariadb")["data"]["plugin_name"]
        == "mysql-database-plugin"
    )
    details = client.secrets.database.read_connection("mariadb")["data"]["connection_details"]
    assert "password" not in details
    assert "mariadb" in client.secrets.database.list_connections()["data"]["keys"]
    client.secrets.database.create_role(
        name="brkt-hvac",
        db_name="mariadb",
        creation_statements=[MYSQL_READONLY],
        default_ttl="1h",
        max_ttl="2h",
    )
    assert "brkt-hvac" in client.secrets.database.list_roles()["data"]["keys"]
    assert client.secrets.database.read_role("brkt-hvac")["data"]["default_ttl"] == 3600
    creds = client.secrets.database.generate_credentials("brkt-hvac")
    lease_id = creds["lease_id"]
    looked_up = client.sys.read_lease(lease_id)
    assert looked_up["data"]["id"] == lease_id and looked_up["data"]["ttl"] > 3500
    renewed = client.sys.renew_lease(lease_id, increment=5400)
    assert renewed["lease_id"] == lease_id and renewed["lease_duration"] == 5400
    listed = client.sys.list_leases("database/creds/brkt-hvac")
    assert lease_id.rsplit("/", 1)[1] in listed["data"]["keys"]
    demo = client.secrets.database.generate_credentials("readonly")
    with pytest.raises(hvac.exceptions.InvalidRequest) as refused:
        client.secrets.database.generate_credentials("no-such-role")
    assert "unknown role" in str(refused.value)
    with pytest.raises(hvac.exceptions.Forbidden):
        hvac.Client(url=address, token="wrong").secrets.database.list_roles()
    return {"creds": creds, "demo": demo}


async def test_hvac_against_dev_server(http_session: aiohttp.ClientSession) -> None:
    token = "dev-" + secrets.token_hex(8)
    port = free_port()
    address = f"http://127.0.0.1:{port}"
    proc = broker_process(
        {},
        "server",
        "--dev",
        "--dev-root-token-id",
        token,
        "--dev-listen-address",
        f"127.0.0.1:{port}",
    )
    try:
        await wait_healthy(http_session, address, within=60)
        result = await asyncio.to_thread(_hvac_workflow, address, token)
        creds = result["creds"]
        username, password = creds["data"]["username"], creds["data"]["password"]
        conn = await aiomysql.connect(host="127.0.0.1", user=username, password=password)
        conn.close()

        client = hvac.Client(url=address, token=token)
        await asyncio.to_thread(client.sys.revoke_lease, creds["lease_id"])
        assert not await mysql_user_exists(username)
        with pytest.raises(pymysql.err.OperationalError):
            await aiomysql.connect(host="127.0.0.1", user=username, password=password)
        # Dev mode demo credentials log in to the embedded PostgreSQL.
        assert result["demo"]["data"]["username"].startswith("v_root_readonly_")
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, output
    assert "Root Token:  " + token in output


def _clusters_of(pid: int) -> set[Path]:
    found = set()
    for root in Path(tempfile.gettempdir()).glob("broker-pg-*"):
        owner = root / "owner.pid"
        if owner.exists() and owner.read_text().strip() == str(pid):
            found.add(root)
    return found


async def test_dev_server_killed_hard_leaves_nothing_after_the_next_start(
    http_session: aiohttp.ClientSession,
) -> None:
    """SIGKILL gives the dev server no chance to stop its embedded PostgreSQL; the next dev
    server start stops and removes clusters whose owner is gone."""
    port = free_port()
    proc = broker_process({}, "server", "--dev", "--dev-listen-address", f"127.0.0.1:{port}")
    await wait_healthy(http_session, f"http://127.0.0.1:{port}", within=60)
    mine = await asyncio.to_thread(_clusters_of, proc.pid)
    assert len(mine) == 1
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert await asyncio.to_thread(_clusters_of, proc.pid) == mine  # left behind
    assert await asyncio.to_thread(EmbeddedPostgres.reap_orphans) >= 1
    assert not await asyncio.to_thread(_clusters_of, proc.pid)
