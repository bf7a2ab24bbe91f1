"""Two nodes on one storage: a key term added on one is read on the other, and a token
revoked on one is refused by the other at once (its cache is cleared by NOTIFY)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from broker.server.assembly import start_server
from tests.conftest import (
    PG_ADMIN_PASSWORD,
    PG_READONLY,
    TOKEN,
    PgCluster,
    own_broker_settings,
    pg_connection_config,
)
from tests.support import ISSUED_PASSWORDS, VaultHTTP, pg_logs_in


@pytest.fixture
async def two_nodes(
    pg_target: PgCluster, fresh_storage_db: str, http_session: aiohttp.ClientSession
) -> AsyncIterator[tuple[VaultHTTP, VaultHTTP]]:
    runners, clients = [], []
    for _ in range(2):
        settings = own_broker_settings(pg_target.dsn(fresh_storage_db))
        runners.append(await start_server(settings))
        clients.append(VaultHTTP(http_session, f"http://{settings.listen_address}", TOKEN))
    try:
        yield clients[0], clients[1]
    finally:
        await clients[0].write("sys/leases/revoke-prefix/database/")
        for runner in runners:
            await runner.cleanup()


async def test_rotation_and_revocation_reach_the_other_node(
    two_nodes: tuple[VaultHTTP, VaultHTTP], pg_target: PgCluster
) -> None:
    a, b = two_nodes
    assert (await a.write("sys/mounts/database", {"type": "database"})).status == 204
    assert (await a.write("database/config/pg", pg_connection_config(pg_target))).status == 204
    reply = await a.write(
        "database/roles/brkt-nodes",
        {"db_name": "pg", "creation_statements": [PG_READONLY], "default_ttl": "5m"},
    )
    assert reply.status == 204, reply.body
    assert (await b.creds("brkt-nodes")).status == 200  # b has read the term-1 password

    # A new key term on a; a rewrites the password under it; b reads it without restart.
    assert (await a.write("sys/rotate")).status == 204
    assert (await a.write("database/config/pg", {"password": PG_ADMIN_PASSWORD})).status == 204
    assert (await b.read("sys/key-status")).data["term"] == 2
    creds = await b.creds("brkt-nodes")
    assert await pg_logs_in(pg_target.server.port, creds.data["username"], creds.data["password"])

    # A token used on b (and cached there), revoked on a: b refuses it on the next call.
    token = (await a.write("auth/token/create", {"ttl": "5m"})).body["auth"]["client_token"]
    assert (await b.call("GET", "auth/token/lookup-self", token=token)).status == 200
    assert (await a.write("auth/token/revoke", {"token": token})).status == 204
    assert (await b.call("GET", "auth/token/lookup-self", token=token)).status == 403
    ISSUED_PASSWORDS.add(creds.data["password"])
