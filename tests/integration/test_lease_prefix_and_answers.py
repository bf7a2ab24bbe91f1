"""Lease prefixes are whole path segments, and leases that are gone get Vault's answers.

Issue 11.5: a token allowed ``sys/leases/revoke-prefix/database/creds/<role>`` revoked the
leases of every role whose name merely starts with ``<role>`` (and revoke-force forgot
them, leaving their users alive). Vault takes a prefix as whole segments, or as the one
lease it names. Issue 12.5: lookup and renew of a revoked, expired or unknown lease answer
as Vault does (clients read the 400 as "this login is over"), the broker's history has a
path of its own, and Vault's legacy aliases ``sys/renew``, ``sys/revoke``,
``sys/revoke-prefix`` and ``sys/revoke-force`` are served.
"""

from __future__ import annotations

import asyncio
import secrets

import asyncpg
import hvac
import hvac.exceptions
import pytest

from broker.client import lease_views
from broker.client.http import BrokerClient
from tests.conftest import PG_READONLY, PgCluster, RunningBroker
from tests.support import Reply, pg_logs_in

#: Two roles whose names share a prefix (the attack), and one for wildcard characters.
NARROW, WIDE, WILD = "brkt-seg-r", "brkt-seg-ro", "brkt-segw1"


@pytest.fixture(scope="module", autouse=True)
async def roles(broker: RunningBroker) -> None:
    for name in (NARROW, WIDE, WILD):
        reply = await broker.http.write(
            f"database/roles/{name}",
            {"db_name": "pg", "creation_statements": [PG_READONLY], "default_ttl": "1h"},
        )
        assert reply.status == 204, reply.body


async def _token(broker: RunningBroker, rules: str) -> str:
    name = "brkt-seg-" + secrets.token_hex(3)
    assert (await broker.http.write(f"sys/policies/acl/{name}", {"policy": rules})).status == 204
    reply = await broker.http.write("auth/token/create", {"policies": [name], "ttl": "10m"})
    assert reply.status == 200, reply.body
    token: str = reply.body["auth"]["client_token"]
    return token


async def _alive(pg_target: PgCluster, reply: Reply) -> bool:
    return await pg_logs_in(pg_target.server.port, reply.data["username"], reply.data["password"])


async def _lookup(broker: RunningBroker, lease_id: str) -> Reply:
    return await broker.http.write("sys/leases/lookup", {"lease_id": lease_id})


async def _cleanup(broker: RunningBroker) -> None:
    for role in (NARROW, WIDE, WILD):
        assert (
            await broker.http.write(f"sys/leases/revoke-prefix/database/creds/{role}/")
        ).status == 204


# -- issue 11.5: prefixes are whole segments ------------------------------------------------


@pytest.mark.parametrize("operation", ["revoke-prefix", "revoke-force"])
async def test_prefix_does_not_reach_a_longer_role_name(
    broker: RunningBroker, pg_target: PgCluster, operation: str
) -> None:
    """The attack: a token allowed exactly ``<operation>/database/creds/brkt-seg-r``."""
    token = await _token(
        broker,
        f'path "sys/leases/{operation}/database/creds/{NARROW}" '
        '{ capabilities = ["update", "sudo"] }',
    )
    mine = [await broker.http.creds(NARROW) for _ in range(2)]
    theirs = [await broker.http.creds(WIDE) for _ in range(2)]
    try:
        reply = await broker.http.call(
            "PUT", f"sys/leases/{operation}/database/creds/{NARROW}", {}, token=token
        )
        assert reply.status == 204, reply.body
        for issued in theirs:
            assert await _alive(pg_target, issued), "a lease outside the prefix was revoked"
            looked = await _lookup(broker, issued.body["lease_id"])
            assert looked.status == 200 and looked.data["state"] == "active"
        for issued in mine:
            assert not await _alive(pg_target, issued)
        # The longer name is refused to this token outright.
        refused = await broker.http.call(
            "PUT", f"sys/leases/{operation}/database/creds/{WIDE}", {}, token=token
        )
        assert refused.status == 403
    finally:
        await _cleanup(broker)


async def test_prefix_naming_one_lease_revokes_that_lease(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    """Vault: no trailing slash and a lease by that id exists: that one lease."""
    first, second = await broker.http.creds(NARROW), await broker.http.creds(NARROW)
    try:
        lease_id = first.body["lease_id"]
        assert (await broker.http.write(f"sys/leases/revoke-prefix/{lease_id}")).status == 204
        assert not await _alive(pg_target, first)
        assert await _alive(pg_target, second)
    finally:
        await _cleanup(broker)


async def test_like_wildcards_in_a_prefix_are_literal(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    issued = await broker.http.creds(WILD)
    try:
        # '_' would match the '-' of brkt-segw1 and '%' anything, were they wildcards.
        for prefix in ("database/creds/brkt_segw1", "database/creds/brkt-seg%25", "database/%25"):
            for operation in ("revoke-prefix", "revoke-force"):
                reply = await broker.http.write(f"sys/leases/{operation}/{prefix}")
                assert reply.status == 204, reply.body
            listed = await broker.http.list(f"sys/leases/lookup/{prefix}")
            assert listed.status == 404, listed.body
        assert await _alive(pg_target, issued)
        assert (await _lookup(broker, issued.body["lease_id"])).data["state"] == "active"
    finally:
        await _cleanup(broker)


async def test_listing_and_cli_progress_count_whole_segments(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    mine = [await broker.http.creds(NARROW) for _ in range(2)]
    theirs = [await broker.http.creds(WIDE) for _ in range(3)]
    try:
        keys = (await broker.http.list(f"sys/leases/lookup/database/creds/{NARROW}")).data["keys"]
        assert sorted(keys) == sorted(r.body["lease_id"].rsplit("/", 1)[1] for r in mine)
        client = BrokerClient(broker.address, broker.http.token)
        prefix = f"database/creds/{NARROW}"
        assert await asyncio.to_thread(lease_views.count_leases, client, prefix) == 2
        assert await asyncio.to_thread(lease_views.count_leases, client, prefix + "/") == 2
        status = await asyncio.to_thread(lease_views.revoke_prefix, client, prefix, 20.0)
        assert status == 0
        assert await asyncio.to_thread(lease_views.count_leases, client, prefix) == 0
        assert all([await _alive(pg_target, r) for r in theirs])
        assert not any([await _alive(pg_target, r) for r in mine])
        # A lease id as the prefix: the bar counts that one lease.
        one = theirs[0].body["lease_id"]
        assert await asyncio.to_thread(lease_views.revoke_prefix, client, one, 20.0) == 0
        assert not await _alive(pg_target, theirs[0])
        assert await _alive(pg_target, theirs[1])
    finally:
        await _cleanup(broker)


# -- issue 12.5: Vault's answers for leases that are gone ------------------------------------


async def test_lookup_and_renew_of_gone_leases_answer_as_vault(broker: RunningBroker) -> None:
    issued = await broker.http.creds(NARROW)
    lease_id = issued.body["lease_id"]
    assert (await broker.http.write("sys/leases/revoke", {"lease_id": lease_id})).status == 204
    unknown = f"database/creds/{NARROW}/NoSuchLease0000000000000"
    for gone in (lease_id, unknown):
        looked = await _lookup(broker, gone)
        assert (looked.status, looked.body) == (400, {"errors": ["invalid lease"]})
        for path in ("sys/leases/renew", "sys/renew"):
            renewed = await broker.http.write(path, {"lease_id": gone})
            assert (renewed.status, renewed.body) == (400, {"errors": ["lease not found"]})
        # Revocation is idempotent: 204, or 202 when asked not to wait.
        assert (await broker.http.write(f"sys/leases/revoke/{gone}")).status == 204
        assert (await broker.http.write(f"sys/revoke/{gone}")).status == 204
        lazily = await broker.http.write("sys/leases/revoke", {"lease_id": gone, "sync": False})
        assert lazily.status == 202
    missing = await broker.http.write("sys/leases/lookup", {})
    assert (missing.status, missing.body) == (400, {"errors": ["lease_id must be specified"]})


async def test_expired_lease_not_yet_swept_is_not_renewed(broker: RunningBroker) -> None:
    """Between its expiry and the sweep, Vault answers renew with "lease expired"."""
    issued = await broker.http.creds(NARROW)
    lease_id = issued.body["lease_id"]
    storage = await asyncpg.connect(broker.settings.storage_dsn)
    try:
        await storage.execute(
            "UPDATE broker_leases SET expires_at = now() - interval '1 second', "
            "due_at = now() + interval '1 hour' WHERE lease_id = $1",
            lease_id,
        )
        renewed = await broker.http.write("sys/leases/renew", {"lease_id": lease_id})
        assert (renewed.status, renewed.body) == (400, {"errors": ["lease expired"]})
        looked = await _lookup(broker, lease_id)
        assert looked.status == 200
        assert looked.data["ttl"] == 0 and looked.data["renewable"] is False
    finally:
        await storage.close()
        await _cleanup(broker)


async def test_hvac_read_lease_raises_once_the_lease_is_gone(broker: RunningBroker) -> None:
    issued = await broker.http.creds(NARROW)
    lease_id = issued.body["lease_id"]
    client = hvac.Client(url=broker.address, token=broker.http.token)

    def scenario() -> None:
        assert client.sys.read_lease(lease_id)["data"]["id"] == lease_id
        client.sys.revoke_lease(lease_id)
        with pytest.raises(hvac.exceptions.InvalidRequest, match="invalid lease"):
            client.sys.read_lease(lease_id)
        with pytest.raises(hvac.exceptions.InvalidRequest, match="lease not found"):
            client.sys.renew_lease(lease_id)

    await asyncio.to_thread(scenario)


async def test_history_keeps_revoked_leases_behind_its_own_policy(
    broker: RunningBroker,
) -> None:
    issued = await broker.http.creds(NARROW)
    other = await broker.http.creds(WIDE)
    lease_id = issued.body["lease_id"]
    try:
        live = await broker.http.read(f"sys/leases/history/{lease_id}")
        assert live.status == 200 and live.data["state"] == "active"
        await broker.http.write(f"sys/leases/revoke/{lease_id}")
        history = await broker.http.read(f"sys/leases/history/{lease_id}")
        assert history.status == 200, history.body
        assert history.data["id"] == lease_id and history.data["state"] == "revoked"
        assert history.data["revoke_time"] and history.data["ttl"] == 0
        assert history.data["expire_time"] is None and history.data["renewable"] is False
        unknown = await broker.http.read(f"sys/leases/history/database/creds/{NARROW}/nope")
        assert (unknown.status, unknown.body) == (404, {"errors": []})

        # Its own path in the policy language, scoped by lease id; lookup does not grant it.
        token = await _token(
            broker,
            'path "sys/leases/lookup" { capabilities = ["update"] }\n'
            f'path "sys/leases/history/database/creds/{NARROW}/*" {{ capabilities = ["read"] }}',
        )
        allowed = await broker.http.call("GET", f"sys/leases/history/{lease_id}", token=token)
        assert allowed.status == 200 and allowed.data["state"] == "revoked"
        elsewhere = await broker.http.call(
            "GET", f"sys/leases/history/{other.body['lease_id']}", token=token
        )
        assert elsewhere.status == 403
        lookup_only = await _token(broker, 'path "sys/leases/lookup" { capabilities = ["update"] }')
        denied = await broker.http.call("GET", f"sys/leases/history/{lease_id}", token=lookup_only)
        assert denied.status == 403
    finally:
        await _cleanup(broker)


async def test_legacy_aliases(broker: RunningBroker, pg_target: PgCluster) -> None:
    renewable = await broker.http.creds(NARROW)
    lease_id = renewable.body["lease_id"]
    renewed = await broker.http.write(f"sys/renew/{lease_id}", {"increment": 600})
    assert renewed.status == 200 and renewed.body["lease_id"] == lease_id
    assert renewed.body["lease_duration"] == 600
    assert (await broker.http.write("sys/renew", {"lease_id": lease_id})).status == 200
    assert (await broker.http.write(f"sys/revoke/{lease_id}")).status == 204
    assert not await _alive(pg_target, renewable)

    # revoke-prefix and revoke-force: root-protected, the ACL on the path requested, and the
    # same whole-segment prefixes.
    for operation in ("revoke-prefix", "revoke-force"):
        mine, theirs = await broker.http.creds(NARROW), await broker.http.creds(WIDE)
        path = f"sys/{operation}/database/creds/{NARROW}"
        no_sudo = await _token(broker, f'path "{path}" {{ capabilities = ["update"] }}')
        other_path = await _token(
            broker,
            f'path "sys/leases/{operation}/database/creds/{NARROW}" '
            '{ capabilities = ["update", "sudo"] }',
        )
        allowed = await _token(broker, f'path "{path}" {{ capabilities = ["update", "sudo"] }}')
        for token in (no_sudo, other_path):
            assert (await broker.http.call("PUT", path, {}, token=token)).status == 403
        assert await _alive(pg_target, mine)
        assert (await broker.http.call("PUT", path, {}, token=allowed)).status == 204
        assert not await _alive(pg_target, mine)
        assert await _alive(pg_target, theirs)
        await _cleanup(broker)
