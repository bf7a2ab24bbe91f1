"""Vault parity beyond roles: password policies (and connections that use them), username
templates, response wrapping, and lease tidy, through hvac and plain HTTP."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import string

import hvac
import hvac.exceptions
import pytest

from broker.models import NewLease
from broker.server.storage.connector import create_pool
from broker.server.storage.stores import Stores
from tests.conftest import PG_READONLY, PgCluster, RunningBroker
from tests.support import ISSUED_PASSWORDS, pg_logs_in

POLICY = """
length = 24
rule "charset" {
  charset = "abcdefghijklmnopqrstuvwxyz"
  min-chars = 2
}
rule "charset" {
  charset = "0123456789"
  min-chars = 3
}
rule "charset" {
  charset = "!#$%&*+-=?@^_"
  min-chars = 1
}
"""


def _follows_policy(password: str) -> bool:
    return (
        len(password) == 24
        and sum(c in string.ascii_lowercase for c in password) >= 2
        and sum(c in string.digits for c in password) >= 3
        and sum(c in "!#$%&*+-=?@^_" for c in password) >= 1
        and all(c in string.ascii_lowercase + string.digits + "!#$%&*+-=?@^_" for c in password)
    )


async def test_password_policy_and_username_template_on_a_connection(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    http = broker.http
    assert (await http.write("sys/policies/password/brkt-pp", {"policy": POLICY})).status == 204
    assert "brkt-pp" in (await http.list("sys/policies/password")).data["keys"]
    assert (await http.read("sys/policies/password/brkt-pp")).data["policy"] == POLICY
    for _ in range(5):
        generated = await http.read("sys/policies/password/brkt-pp/generate")
        assert _follows_policy(generated.data["password"]), generated.data
    for bad in (
        'length = 10\nrule "charset" {\n  charset = "ab\'c"\n}',  # a quote
        'length = 3\nrule "charset" {\n  charset = "abc"\n}',  # too short
        'length = 8\nrule "charset" {\n  charset = "abc"\n  min-chars = 9\n}',
        "length = ",
        "length = 10",  # no rule
    ):
        reply = await http.write("sys/policies/password/brkt-bad", {"policy": bad})
        assert reply.status == 400, (bad, reply.body)

    reply = await http.write(
        "database/config/brkt-pp",
        {
            "plugin_name": "postgresql-database-plugin",
            "connection_url": pg_target.url_template,
            "username": "postgres",
            "password": pg_target.server.password,
            "allowed_roles": "brkt-pp-ro",
            "password_policy": "brkt-pp",
            "username_template": '{{.RoleName | replace "-" "_"}}_{{random 6 | uppercase}}'
            '_{{timestamp "20060102"}}',
        },
    )
    assert reply.status == 204, reply.body
    config = (await http.read("database/config/brkt-pp")).data
    assert config["password_policy"] == "brkt-pp"
    reply = await http.write(
        "database/roles/brkt-pp-ro",
        {"db_name": "brkt-pp", "creation_statements": [PG_READONLY], "default_ttl": "5m"},
    )
    assert reply.status == 204, reply.body
    creds = await http.creds("brkt-pp-ro")
    username, password = creds.data["username"], creds.data["password"]
    today = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    assert re.fullmatch(rf"brkt_pp_ro_[A-Z0-9]{{6}}_{today}", username), username
    assert _follows_policy(password)
    assert await pg_logs_in(pg_target.server.port, username, password)
    await http.write("sys/leases/revoke-prefix/database/creds/brkt-pp-ro/")
    # A connection may not name a policy that does not exist.
    reply = await http.write("database/config/brkt-pp", {"password_policy": "brkt-none"})
    assert reply.status == 400
    await http.delete("database/roles/brkt-pp-ro")
    assert (await http.delete("database/config/brkt-pp")).status == 204
    assert (await http.delete("sys/policies/password/brkt-pp")).status == 204
    assert (await http.read("sys/policies/password/brkt-pp/generate")).status == 404


async def test_response_wrapping_hands_credentials_over_once(
    broker: RunningBroker, pg_target: PgCluster
) -> None:
    http = broker.http
    wrapped = await http.call(
        "GET", "database/creds/brkt-pg-ro", headers={"X-Vault-Wrap-TTL": "2m"}
    )
    assert wrapped.status == 200, wrapped.body
    assert wrapped.body["data"] is None and wrapped.body["lease_id"] == ""
    info = wrapped.body["wrap_info"]
    assert info["ttl"] == 120 and info["creation_path"] == "database/creds/brkt-pg-ro"

    looked = await http.call("POST", "sys/wrapping/lookup", {"token": info["token"]}, token="")
    assert looked.data["creation_ttl"] == 120

    rewrapped = await http.call("POST", "sys/wrapping/rewrap", {"token": info["token"]})
    new_token = rewrapped.body["wrap_info"]["token"]
    assert new_token != info["token"]

    # A third party holding only the wrapping token unwraps, once (hvac sends it as its
    # own token).
    def unwrap(token: str) -> dict[str, object]:
        client = hvac.Client(url=broker.address, token=token)
        response: dict[str, object] = client.sys.unwrap()
        return response

    with pytest.raises(hvac.exceptions.InvalidRequest):
        await asyncio.to_thread(unwrap, info["token"])  # rewrapped: the old one is void
    response = await asyncio.to_thread(unwrap, new_token)
    data = response["data"]
    assert isinstance(data, dict)
    ISSUED_PASSWORDS.add(str(data["password"]))
    assert await pg_logs_in(pg_target.server.port, str(data["username"]), str(data["password"]))
    with pytest.raises(hvac.exceptions.InvalidRequest):
        await asyncio.to_thread(unwrap, new_token)
    assert (await http.write(f"sys/leases/revoke/{response['lease_id']}")).status == 204

    # sys/wrapping/wrap wraps arbitrary data; a bad TTL is a 400.
    wrapped = await http.call(
        "POST", "sys/wrapping/wrap", {"k": "v"}, headers={"X-Vault-Wrap-TTL": "60"}
    )
    token = wrapped.body["wrap_info"]["token"]
    unwrapped = await http.call("POST", "sys/wrapping/unwrap", {"token": token}, token="")
    assert unwrapped.body["data"] == {"k": "v"}
    bad = await http.call("GET", "sys/mounts", headers={"X-Vault-Wrap-TTL": "soon"})
    assert bad.status == 400


async def test_tidy_removes_old_finished_leases_only(broker: RunningBroker) -> None:
    pool = await create_pool(broker.settings.storage_dsn, min_size=1, max_size=2)
    try:
        storage = Stores.open(pool).leases
        old = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
        leases = [
            NewLease(
                f"database/creds/brkt-tidy/old{i:03d}",
                "database",
                "brkt-tidy",
                "pg",
                "postgresql-database-plugin",
                f"brkt_tidy_{i}",
                (),
                (),
                old,
                old,
                old,
            )
            for i in range(30)
        ]
        await storage.bulk_insert_leases(leases[:25], "revoked")
        await storage.bulk_insert_leases(leases[25:], "active")  # live, however old
        reply = await broker.http.write("sys/leases/tidy")
        assert reply.status == 202 and reply.data["removed"] >= 25
        remaining = await pool.fetchval(
            "SELECT count(*) FROM broker_leases WHERE role_name = 'brkt-tidy'"
        )
        assert remaining == 5
        await pool.execute(
            "UPDATE broker_leases SET state = 'revoked', revoked_at = now() "
            "WHERE role_name = 'brkt-tidy'"
        )
        await broker.http.write("sys/leases/tidy")  # recent: kept for the retention
        assert (
            await pool.fetchval("SELECT count(*) FROM broker_leases WHERE role_name = 'brkt-tidy'")
            == 5
        )
        await pool.execute("DELETE FROM broker_leases WHERE role_name = 'brkt-tidy'")
    finally:
        await pool.close()
