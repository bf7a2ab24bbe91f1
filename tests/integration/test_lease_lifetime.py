"""Expiry by the scheduler alone, and renewal bounded by max_ttl, with PostgreSQL's
VALID UNTIL following along."""

from __future__ import annotations

import datetime as dt

import asyncpg

from tests.conftest import PG_READONLY, PgCluster, RunningBroker
from tests.support import eventually, mysql_user_exists, pg_role_exists


async def _valid_until(pg: PgCluster, username: str) -> dt.datetime:
    admin = await asyncpg.connect(pg.dsn())
    try:
        value = await admin.fetchval(
            "SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1", username
        )
    finally:
        await admin.close()
    assert isinstance(value, dt.datetime)
    return value


async def test_two_second_leases_are_revoked_by_the_scheduler(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    http = broker.http
    assert (
        await http.write(
            "database/roles/brkt-my-short",
            {
                "db_name": "my",
                "creation_statements": "CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}'",
                "default_ttl": 2,
                "max_ttl": 2,
            },
        )
    ).status == 204
    assert (
        await http.write(
            "database/roles/brkt-pg-short",
            {"db_name": "pg", "creation_statements": [PG_READONLY], "default_ttl": "2s"},
        )
    ).status == 204
    my = await http.creds("brkt-my-short")
    pg = await http.creds("brkt-pg-short")
    assert my.body["lease_duration"] == 2
    assert await mysql_user_exists(my.data["username"])

    async def both_gone() -> bool:
        return not await mysql_user_exists(my.data["username"]) and not await pg_role_exists(
            pg_target.dsn(), pg.data["username"]
        )

    await eventually(both_gone, within=15)
    lookup = await http.read(f"sys/leases/history/{my.body['lease_id']}")
    assert lookup.data["state"] in ("revoked", "revoking")  # 'revoking' = awaiting re-check


async def test_renewal_extends_but_never_past_max_ttl(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    http = broker.http
    assert (
        await http.write(
            "database/roles/brkt-pg-renew",
            {
                "db_name": "pg",
                "creation_statements": [PG_READONLY],
                "default_ttl": 10,
                "max_ttl": 60,
            },
        )
    ).status == 204
    issued = await http.creds("brkt-pg-renew")
    lease_id, username = issued.body["lease_id"], issued.data["username"]
    issued_at = dt.datetime.now(dt.UTC)
    first = await _valid_until(pg_target, username)
    assert abs((first - issued_at).total_seconds() - 15) < 3  # expiry + 5 s grace

    renewed = await http.write("sys/leases/renew", {"lease_id": lease_id, "increment": "30s"})
    assert renewed.status == 200, renewed.body
    assert renewed.body["lease_id"] == lease_id
    assert 28 <= renewed.body["lease_duration"] <= 30
    assert renewed.body["warnings"] is None
    second = await _valid_until(pg_target, username)
    assert abs((second - dt.datetime.now(dt.UTC)).total_seconds() - 35) < 3

    capped = await http.write("sys/leases/renew", {"lease_id": lease_id, "increment": 3600})
    assert capped.status == 200
    assert capped.body["lease_duration"] <= 60
    assert capped.body["warnings"] and "capped" in capped.body["warnings"][0]
    third = await _valid_until(pg_target, username)
    assert abs((third - issued_at).total_seconds() - 65) < 3  # max_ttl from issue + grace

    lookup = await http.write("sys/leases/lookup", {"lease_id": lease_id})
    assert lookup.data["renewable"] is True and lookup.data["last_renewal"]
    assert lookup.body["id"] == lease_id  # sys/ data is copied to the top level
    await http.write("sys/leases/revoke", {"lease_id": lease_id})
    assert (await http.write("sys/leases/renew", {"lease_id": lease_id})).status == 400
