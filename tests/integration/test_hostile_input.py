"""Every endpoint, fed values of the wrong type and hostile strings: a clear 4xx with
Vault's error body (or success), never a 5xx or a traceback."""

from __future__ import annotations

import random
from typing import Any

from tests.conftest import RunningBroker

NASTY: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**63,
    1.5,
    float("-1e308"),
    "",
    " ",
    "x" * 5000,
    "1h30x",
    "-5s",
    "💥",
    "\x00",
    "'; DROP TABLE broker_leases; --",
    "{{password}}",
    "{{name",
    "%s%n",
    "../../etc/passwd",
    [],
    [1, 2],
    ["a", None],
    {},
    {"a": {"b": []}},
]
FIELDS: dict[str, list[str]] = {
    "sys/mounts/fuzz{n}": ["type", "description", "config"],
    "database/config/fuzz{n}": [
        "plugin_name",
        "connection_url",
        "username",
        "password",
        "allowed_roles",
        "verify_connection",
        "username_template",
        "max_open_connections",
        "connect_timeout",
        "expiry_event",
        "expiry_event_schema",
    ],
    "database/roles/fuzz{n}": [
        "db_name",
        "creation_statements",
        "revocation_statements",
        "rollback_statements",
        "renew_statements",
        "default_ttl",
        "max_ttl",
    ],
    "sys/leases/lookup": ["lease_id"],
    "sys/leases/renew": ["lease_id", "increment"],
    "sys/leases/revoke": ["lease_id", "sync"],
}
PATHS = [
    "database/creds/{x}",
    "database/roles/{x}",
    "database/config/{x}",
    "sys/mounts/{x}",
    "sys/leases/lookup/{x}",
    "sys/leases/revoke-prefix/{x}",
    "sys/leases/revoke/{x}",
]


async def test_hostile_bodies_and_paths_never_5xx(broker: RunningBroker) -> None:
    rng = random.Random(7)
    http = broker.http
    seen: list[tuple[int, str, Any]] = []
    for n in range(120):
        path, fields = rng.choice(list(FIELDS.items()))
        body = {
            field: rng.choice(NASTY) for field in rng.sample(fields, rng.randint(1, len(fields)))
        }
        if rng.random() < 0.3:
            body[rng.choice(["unknown", "🙂", ""])] = rng.choice(NASTY)
        method = rng.choice(["PUT", "POST"])
        reply = await http.call(method, path.format(n=n), body)
        seen.append((reply.status, path, body))
        assert reply.status < 500, (reply.status, path, body, reply.body)
        if reply.status >= 400:
            assert isinstance(reply.body.get("errors"), list), reply.body
            assert "Traceback" not in str(reply.body)
    for template in PATHS:
        for value in ["%00", "..", "a/b/c", "x" * 300, "%F0%9F%92%A5", "'--", "{{name}}"]:
            for method in ("GET", "LIST", "PUT", "DELETE"):
                reply = await http.call(method, template.format(x=value))
                assert reply.status < 500, (method, template, value, reply.body)
    # Clean up whatever the valid combinations created.
    for n in range(120):
        await http.delete(f"database/roles/fuzz{n}")
        await http.delete(f"database/config/fuzz{n}")
        await http.delete(f"sys/mounts/fuzz{n}")
    assert any(status < 300 for status, _, _ in seen) or seen


async def test_hostile_options_on_an_existing_connection_change_nothing(
    broker: RunningBroker,
) -> None:
    """The fuzz above mostly hits new connections, refused for other reasons first; these
    go at a connection that exists, where only the bad value can be refused."""
    http = broker.http
    before = (await http.read("database/config/pg")).data
    for key in (
        "max_open_connections",
        "max_idle_connections",
        "connect_timeout",
        "statement_timeout",
    ):
        for value in (
            0 if key != "max_idle_connections" else -1,
            -5,
            2**40,
            "abc",
            True,
            1.5e12,
            [3],
        ):
            reply = await http.write("database/config/pg", {key: value})
            assert reply.status == 400, (key, value, reply.body)
            assert key in reply.errors[0]
    assert (await http.read("database/config/pg")).data == before
    for url in (
        "host=127.0.0.1 port=abc user={{username}}",
        "port=70000",
        "postgresql://u@127.0.0.1:99999/x",
    ):
        reply = await http.write(
            "database/config/brkt-badport",
            {"plugin_name": "postgresql-database-plugin", "connection_url": url},
        )
        assert reply.status == 400 and "port" in reply.errors[0], (url, reply.body)
    for limit in ("abc", "0", "-1", "99999999"):
        reply = await http.read(f"sys/leases?type=irrevocable&limit={limit}")
        assert reply.status == 400 and "limit" in reply.errors[0], (limit, reply.body)


async def test_digits_that_are_not_ascii_are_a_400_not_a_500(broker: RunningBroker) -> None:
    """``"²".isdigit()`` is true but ``int("²")`` fails: a number parameter checked with
    ``isdigit`` alone was a 500 for anyone who may call the path (sys/init needs no token)."""
    listed = await broker.http.call("GET", "sys/leases?type=irrevocable&limit=%C2%B2")
    assert listed.status == 400, listed.body
    assert listed.body["errors"] == ["limit must be a whole number from 1 to 10000"]
    init = await broker.http.call("PUT", "sys/init", {"secret_shares": "²"}, token="")
    assert init.status == 400, init.body
    assert init.body["errors"] == ["secret_shares: expected a positive integer"]
