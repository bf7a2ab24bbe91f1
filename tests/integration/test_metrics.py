"""sys/metrics: what operators alert on, from real traffic; never a secret or an id."""

from __future__ import annotations

import datetime as dt
import re

import aiohttp
import asyncpg

from broker.models import NewLease
from broker.server.storage.stores import Stores
from tests.conftest import PG_READONLY, TOKEN, RunningBroker
from tests.support import eventually


async def _prometheus(broker: RunningBroker) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{broker.address}/v1/sys/metrics?format=prometheus", headers={"X-Vault-Token": TOKEN}
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return await resp.text()


def _value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_metrics_follow_issuance_revocation_and_failures(broker: RunningBroker) -> None:
    http = broker.http
    await http.write(
        "database/roles/brkt-metrics",
        {"db_name": "pg", "creation_statements": [PG_READONLY], "default_ttl": 1},
    )
    await http.write(
        "database/roles/brkt-metrics-bad",
        {"db_name": "pg", "creation_statements": 'GRANT nothing_here TO "{{name}}"'},
    )
    before = await _prometheus(broker)
    issued = [await http.creds("brkt-metrics") for _ in range(3)]
    assert (await http.read("database/creds/brkt-metrics-bad")).status == 400

    # A revocation that keeps failing: a lease on a target that is down.
    assert (
        await http.write(
            "database/config/brkt-metrics-dead",
            {
                "plugin_name": "postgresql-database-plugin",
                "verify_connection": False,
                "connection_url": "postgresql://{{username}}:{{password}}@127.0.0.1:1/x",
                "username": "u",
                "password": "p",
            },
        )
    ).status == 204
    pool = await asyncpg.create_pool(broker.settings.storage_dsn, min_size=1, max_size=1)
    now = dt.datetime.now(dt.UTC)
    try:
        await Stores.open(pool).leases.bulk_insert_leases(
            [
                NewLease(
                    "database/creds/brkt-metrics/deadtargetlease000000000",
                    "database",
                    "brkt-metrics",
                    "brkt-metrics-dead",
                    "postgresql-database-plugin",
                    "v_dead_user",
                    (),
                    (),
                    now,
                    now,
                    now,
                )
            ],
            "active",
        )
    finally:
        await pool.close()

    async def settled() -> bool:
        text = await _prometheus(broker)
        return (
            _value(text, "broker_leases", role="brkt-metrics", state="active") == 0
            and _value(text, "broker_leases_failing") >= 1
        )

    await eventually(settled, within=15)
    after = await _prometheus(broker)
    grew = _value(after, "broker_credentials_issued_total", role="brkt-metrics") - _value(
        before, "broker_credentials_issued_total", role="brkt-metrics"
    )
    assert grew == 3
    assert (
        _value(
            after,
            "broker_credentials_failed_total",
            role="brkt-metrics-bad",
            reason="StatementError",
        )
        >= 1
    )
    assert _value(after, "broker_revocations_total", outcome="revoked") >= 3
    assert _value(after, "broker_revocations_total", outcome="failed") >= 1
    assert _value(after, "broker_revocation_lag_seconds_count") >= 3
    assert _value(after, "broker_issuance_seconds_count", plugin="postgresql-database-plugin") >= 3
    assert (
        _value(after, "broker_http_requests_total", route=":mount/creds/:name", status="200") >= 3
    )
    assert _value(after, "broker_target_pool_connections", connection="pg", state="max") > 0
    assert 'route="sys/metrics"' in after

    # Bounded labels only: no lease id, user name, password or raw path in any series.
    for reply in issued:
        for secret in (
            reply.data["password"],
            reply.data["username"],
            reply.body["lease_id"].rsplit("/", 1)[1],
        ):
            assert secret not in after
    assert not re.search(r"route=\"[^\"]*brkt", after)

    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{broker.address}/v1/sys/metrics", headers={"X-Vault-Token": TOKEN}) as resp,
    ):
        body = await resp.json()
    assert {"Gauges", "Counters", "Samples"} <= set(body)
    assert (await http.read("sys/metrics?format=xml")).status == 400
    assert (await http.call("GET", "sys/metrics", token="wrong")).status == 403

    await http.write("sys/leases/revoke-force/database/creds/brkt-metrics/")
    await http.delete("database/config/brkt-metrics-dead")
