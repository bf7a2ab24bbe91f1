"""Authorization edges (issue 14, item 5), each attacked against a running broker: a child
token escaping its parent's CIDR binding, probing mounts without a token, reading this
install's mounts from the OpenAPI document, losing the keys by wrapping sys/init, and
X-Forwarded-For from whoever sends it."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from broker.server.api.context import SERVICES
from broker.server.assembly import start_server
from broker.server.settings import Settings
from broker.server.storage.embedded import free_port
from tests.conftest import TOKEN, PgCluster, RunningBroker, own_broker_settings
from tests.support import VaultHTTP

EDGE_POLICY = """
path "auth/token/create" { capabilities = ["update"] }
path "auth/token/lookup" { capabilities = ["update"] }
path "auth/token/lookup-self" { capabilities = ["read"] }
"""


async def _token(http: VaultHTTP, **body: Any) -> str:
    reply = await http.write("auth/token/create", {"ttl": "10m", **body})
    assert reply.status == 200, reply.body
    token = reply.body["auth"]["client_token"]
    assert isinstance(token, str)
    return token


async def test_child_token_keeps_parent_bound_cidrs(broker: RunningBroker) -> None:
    """A token bound to 127.0.0.0/8 must not mint an unbound child (usable from anywhere)
    nor one bound wider than itself; it may narrow."""
    http = broker.http
    assert (await http.write("sys/policy/brkt-edges", {"policy": EDGE_POLICY})).status == 204
    parent = await _token(http, policies=["brkt-edges"], bound_cidrs=["127.0.0.0/8"])
    as_parent = VaultHTTP(http.session, http.address, parent)

    child = await _token(as_parent)
    looked = await http.write("auth/token/lookup", {"token": child})
    assert looked.data["bound_cidrs"] == ["127.0.0.0/8"]

    wider = await as_parent.write("auth/token/create", {"ttl": "10m", "bound_cidrs": ["0.0.0.0/0"]})
    assert wider.status == 400, wider.body
    assert "parent" in wider.errors[0]

    narrow = await _token(as_parent, bound_cidrs=["127.0.0.1/32"])
    looked = await http.write("auth/token/lookup", {"token": narrow})
    assert looked.data["bound_cidrs"] == ["127.0.0.1/32"]


@pytest.fixture
async def own_broker(
    pg_target: PgCluster, fresh_storage_db: str, http_session: aiohttp.ClientSession
) -> AsyncIterator[tuple[VaultHTTP, web.Application]]:
    settings = own_broker_settings(pg_target.dsn(fresh_storage_db))
    runner = await start_server(settings)
    try:
        yield (
            VaultHTTP(http_session, f"http://{settings.listen_address}", TOKEN),
            runner.app,
        )
    finally:
        await runner.cleanup()


async def test_no_token_gets_403_before_routing(
    own_broker: tuple[VaultHTTP, web.Application],
) -> None:
    """Without a valid token, an existing mount, a missing one, an auth method and a
    missing route all answer the same 403 (no 404 tells which exist), and no unknown
    path makes the broker reload its mounts from storage; a token its policies do not
    allow there gets the same 403, only one allowed learns of the 404."""
    http, app = own_broker
    assert (await http.write("sys/mounts/brkt-edge-db", {"type": "database"})).status == 204
    assert (await http.write("sys/auth/brkt-edge-ar", {"type": "approle"})).status == 204
    await asyncio.sleep(1)  # the change notifications of the two enables are handled
    services = app[SERVICES]
    reloads = 0
    catalog_refresh = services.catalog.refresh_mounts
    auth_refresh = services.auth_methods.refresh

    async def counted_catalog() -> None:
        nonlocal reloads
        reloads += 1
        await catalog_refresh()

    async def counted_auth() -> None:
        nonlocal reloads
        reloads += 1
        await auth_refresh()

    services.catalog.refresh_mounts = counted_catalog  # type: ignore[method-assign]
    services.auth_methods.refresh = counted_auth  # type: ignore[method-assign]
    probes = [
        ("GET", "brkt-edge-db/roles/x"),
        ("GET", "brkt-nosuch-mount/roles/x"),
        ("LIST", "brkt-edge-db/config"),
        ("GET", "brkt-edge-db/no/such/route"),
        ("LIST", "auth/brkt-edge-ar/role"),
        ("LIST", "auth/brkt-nosuch/role"),
        ("GET", "brkt-nosuch-mount-2"),
    ]
    for token in ("", "hvs.not-a-token-" + secrets.token_hex(8)):
        for method, path in probes:
            reply = await http.call(method, path, token=token)
            assert reply.status == 403, (method, path, reply.status, reply.body)
            assert reply.errors == ["permission denied"]
    assert reloads == 0

    default_only = await _token(http, policies=["default"])
    reply = await http.call("GET", "brkt-nosuch-mount/x", token=default_only)
    assert reply.status == 403, reply.body
    assert (await http.call("GET", "brkt-nosuch-mount/x")).status == 404  # root may know
    # The open paths still need no token.
    assert (await http.call("GET", "sys/health", token="")).status == 200
    assert (await http.call("GET", "sys/seal-status", token="")).status == 200
    login = await http.call("PUT", "auth/brkt-edge-ar/login", {"role_id": "x"}, token="")
    assert login.status not in (403, 404), login.body  # reached the login, which refuses it


async def test_openapi_without_token_hides_this_install_mounts(broker: RunningBroker) -> None:
    http = broker.http
    mount = f"brkt-hidden-{secrets.token_hex(4)}"
    assert (await http.write(f"sys/mounts/{mount}", {"type": "database"})).status == 204
    try:
        anonymous = await http.call("GET", "sys/internal/specs/openapi", token="")
        assert anonymous.status == 200
        assert mount not in str(anonymous.body["paths"])
        assert "/database/creds/{name}" in anonymous.body["paths"]  # the generic API
        assert "/auth/token/create" in anonymous.body["paths"]
        default_only = await _token(http, policies=["default"])
        limited = await http.call("GET", "sys/internal/specs/openapi", token=default_only)
        assert limited.status == 200 and mount not in str(limited.body["paths"])
        allowed = await http.call("GET", "sys/internal/specs/openapi")
        assert f"/{mount}/creds/{{name}}" in allowed.body["paths"]
    finally:
        await http.delete(f"sys/mounts/{mount}")


async def test_wrapped_init_is_refused_before_initialising(
    pg_target: PgCluster, fresh_storage_db: str, http_session: aiohttp.ClientSession
) -> None:
    """Asking for a wrapped sys/init used to initialise, then fail to wrap (503): the only
    copy of the unseal keys and the root token was lost. Now: 400, nothing initialised."""
    settings = Settings(
        storage_dsn=pg_target.dsn(fresh_storage_db),
        listen_address=f"127.0.0.1:{free_port()}",
        seal_type="shamir",
    )
    runner = await start_server(settings)
    try:
        http = VaultHTTP(http_session, f"http://{settings.listen_address}", "")
        body = {"secret_shares": 1, "secret_threshold": 1}
        wrapped = await http.call("PUT", "sys/init", body, headers={"X-Vault-Wrap-TTL": "60"})
        assert wrapped.status == 400, wrapped.body
        assert (await http.call("GET", "sys/init")).body["initialized"] is False
        plain = await http.call("PUT", "sys/init", body)
        assert plain.status == 200, plain.body
        assert len(plain.body["keys"]) == 1 and plain.body["root_token"]
    finally:
        await runner.cleanup()


async def test_x_forwarded_for_only_from_authorised_proxies(
    pg_target: PgCluster, fresh_storage_db: str, http_session: aiohttp.ClientSession
) -> None:
    """Behind a trusted proxy (here: loopback) the hop it appended is the client, for a
    token's bound_cidrs; a hop written further left by the client proves nothing; from a
    peer that is not a trusted proxy, the header is refused with a 400."""
    dsn = pg_target.dsn(fresh_storage_db)
    trusting = own_broker_settings(dsn, x_forwarded_for_authorized_addrs=("127.0.0.1/32",))
    distrusting = own_broker_settings(dsn, x_forwarded_for_authorized_addrs=("192.0.2.0/24",))
    runners = [await start_server(trusting)]
    try:
        runners.append(await start_server(distrusting))
        http = VaultHTTP(http_session, f"http://{trusting.listen_address}", TOKEN)
        # Documentation ranges: only header values here, nothing is sent there.
        token = await _token(http, policies=["default"], bound_cidrs=["203.0.113.0/24"])

        async def lookup(server: Settings, forwarded: str | None) -> int:
            headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
            reply = await VaultHTTP(http_session, f"http://{server.listen_address}", token).call(
                "GET", "auth/token/lookup-self", headers=headers
            )
            return reply.status

        assert await lookup(trusting, None) == 403  # from loopback: outside the binding
        assert await lookup(trusting, "203.0.113.9") == 200
        assert await lookup(trusting, "198.51.100.7, 203.0.113.9") == 200
        assert await lookup(trusting, "203.0.113.9, 198.51.100.7") == 403  # spoofed left hop
        assert await lookup(trusting, "not-an-address") == 400
        assert await lookup(distrusting, "203.0.113.9") == 400
        assert await lookup(distrusting, None) == 403
    finally:
        for runner in runners:
            await runner.cleanup()
