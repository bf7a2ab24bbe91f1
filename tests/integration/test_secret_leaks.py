"""Secrets never come back: not the stored admin password through a connection URL
template, not a header or path through aiohttp's 400, not statement text through a
driver's error; and every request that reaches the API is audited, refusals included.

Each test performs the attack against the suite's running broker and scans what an
attacker or a log reader gets: the answers, the broker's log (the session's capture, which
``no_password_in_logs`` scans for every password in ``ISSUED_PASSWORDS``) and an audit
file device's content.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningBroker, _LogCapture, pg_connection_config
from tests.support import ISSUED_PASSWORDS, Reply

PLANTED = "Pl4nted" + secrets.token_hex(12)
ISSUED_PASSWORDS.add(PLANTED)

#: PostgreSQL templates putting a placeholder where no credential belongs (libpq URL and
#: key=value forms), as ``{port}`` of the suite's cluster.
PG_BAD = (
    "postgresql://{{username}}:{{password}}@127.0.0.1:{port}/app?port={{password}}",
    "postgresql://{{username}}:{{password}}@127.0.0.1:{{password}}/app",
    "postgresql://{{username}}:{{password}}@{{password}}:{port}/app",
    "postgresql://{{username}}:{{password}}@127.0.0.1:{port}/{{password}}",
    "postgresql://{{password}}@127.0.0.1:{port}/app",
    "postgresql://{{username}}:{{password}}@127.0.0.1:{port}/app?connect_timeout={{password}}",
    "postgresql://{{username}}:{{password}}@127.0.0.1:{port}/app?sslmode={{password}}",
    "postgresql://{{username}}:{{password}}@127.0.0.1:{port}/app?options={{password}}",
    "postgresql://{{username}}:{{password}}@127.0.0.1:{port}/app?application_name={{password}}",
    "postgresql://{{username}}:{{password}}@127.0.0.1:{port}/app?host={{password}}",
    "host=127.0.0.1 port={{password}} dbname=app user={{username}} password={{password}}",
    "host={{password}} port={port} dbname=app user={{username}} password={{password}}",
    "host=127.0.0.1 port={port} dbname={{password}} user={{username}} password={{password}}",
    "host=127.0.0.1 port={port} connect_timeout={{password}} user={{username}}",
    "host=127.0.0.1 port={port} sslmode={{password}} user={{username}} password={{password}}",
    "host=127.0.0.1 port={port} options='-c search_path={{password}}' user={{username}}",
    "host=127.0.0.1 port={port} user={{password}}",
    "host=127.0.0.1 port={port} dbname=app user={{username}} password={{username}}",
)
#: Where the credentials belong, in every form: accepted.
PG_GOOD = (
    "postgresql://{{username}}:{{password}}@127.0.0.1:{port}/app",
    "postgresql://127.0.0.1:{port}/app?user={{username}}&password={{password}}",
    "host=127.0.0.1 port={port} dbname=app user={{username}} password={{password}}",
    "host=127.0.0.1 port={port} dbname=app connect_timeout=5 sslmode=disable",
)
MY_BAD = (
    "{{username}}:{{password}}@tcp(127.0.0.1:{{password}})/",
    "{{username}}:{{password}}@tcp({{password}}:3306)/",
    "{{username}}:{{password}}@tcp({{password}})/",
    "{{username}}:{{password}}@tcp(127.0.0.1:3306)/{{password}}",
    "{{username}}:{{password}}@tcp(127.0.0.1:3306)/?timeout={{password}}",
    "{{username}}:{{password}}@tcp(127.0.0.1:3306)/app?tls={{password}}&x=1",
    "{{password}}@tcp(127.0.0.1:3306)/",
    "{{username}}:{{password}}@unix({{password}})/",
    "mysql://{{username}}:{{password}}@127.0.0.1:{{password}}/",
    "mysql://{{username}}:{{password}}@{{password}}:3306/",
    "mysql://{{username}}:{{password}}@127.0.0.1:3306/{{password}}",
    "mysql://{{username}}:{{password}}@127.0.0.1:3306/app?ssl={{password}}",
    "mysql://{{password}}@127.0.0.1:3306/",
)
MY_GOOD = (
    "{{username}}:{{password}}@tcp(127.0.0.1:3306)/",
    "{{username}}:{{password}}@tcp(127.0.0.1:3306)/app",
    "mysql://{{username}}:{{password}}@127.0.0.1:3306/app",
)


def _scan(reply: Reply) -> str:
    text = json.dumps(reply.body)
    assert PLANTED not in text, reply.body
    return text


@pytest.fixture
async def audit_file(broker: RunningBroker, tmp_path: Path) -> AsyncIterator[Path]:
    """A file audit device for the test's duration: its content is scanned too."""
    path = tmp_path / "leaks-audit.log"
    name = "brkt-leaks-" + secrets.token_hex(3)
    reply = await broker.http.write(
        f"sys/audit/{name}", {"type": "file", "options": {"file_path": str(path)}}
    )
    assert reply.status == 204, reply.body
    try:
        yield path
    finally:
        assert (await broker.http.delete(f"sys/audit/{name}")).status == 204


def _text(path: Path) -> str:
    return path.read_text()


def _entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _text(path).splitlines() if line]


async def test_stored_admin_password_never_leaves_through_the_url(
    broker: RunningBroker, pg_target: Any, audit_file: Path, no_password_in_logs: _LogCapture
) -> None:
    """The stored password is kept by a write without ``password``; every template that
    puts a placeholder elsewhere is a 400 quoting the template, never the password, and
    leaves the stored connection as it was."""
    http = broker.http
    port = pg_target.server.port
    pg_base = {**pg_connection_config(pg_target), "password": PLANTED, "verify_connection": False}
    my_base = {
        "plugin_name": "mysql-database-plugin",
        "connection_url": MY_GOOD[0],
        "username": "root",
        "password": PLANTED,
        "verify_connection": False,
        "allowed_roles": [],
    }
    cases = (
        ("brkt-leak-pg", pg_base, [t.replace("{port}", str(port)) for t in PG_BAD], PG_GOOD),
        ("brkt-leak-my", my_base, list(MY_BAD), MY_GOOD),
    )
    try:
        for name, base, bad, good in cases:
            reply = await http.write(f"database/config/{name}", base)
            assert reply.status == 204, reply.body
            for template in bad:
                reply = await http.write(
                    f"database/config/{name}",
                    {"connection_url": template, "verify_connection": False},
                )
                text = _scan(reply)
                assert reply.status == 400, (template, reply.body)
                assert template in text.replace('\\"', '"'), (template, reply.body)
                stored = (await http.read(f"database/config/{name}")).data
                assert stored["connection_details"]["connection_url"] == base["connection_url"]
                # And with verification on (the broker would connect): the same refusal.
                again = await http.write(f"database/config/{name}", {"connection_url": template})
                _scan(again)
                assert again.status == 400, (template, again.body)
            for template in good:
                template = template.replace("{port}", str(port))
                reply = await http.write(
                    f"database/config/{name}",
                    {"connection_url": template, "verify_connection": False},
                )
                _scan(reply)
                assert reply.status == 204, (template, reply.body)
        # The planted password still works where it belongs: the real admin password,
        # kept through template-only writes, verifies against the cluster.
        real = pg_connection_config(pg_target)
        assert (await http.write("database/config/brkt-leak-pg", real)).status == 204
        reply = await http.write(
            "database/config/brkt-leak-pg",
            {"connection_url": real["connection_url"].replace("/app", "/app?port={{password}}")},
        )
        assert reply.status == 400 and real["password"] not in json.dumps(reply.body)
    finally:
        for name in ("brkt-leak-pg", "brkt-leak-my"):
            await http.delete(f"database/config/{name}")
    content = _text(audit_file)
    assert PLANTED not in content
    assert pg_connection_config(pg_target)["password"] not in content
    refused = [e for e in _entries(audit_file) if e["type"] == "response" and e.get("error")]
    assert refused, "the refusals were audited"
    for entry in refused:
        assert entry["error"].startswith("hmac-sha256:"), entry
        assert entry["error_kind"] == "InvalidRequest", entry
    assert not any(PLANTED in line for line in no_password_in_logs.lines)


async def test_refusals_are_audited(broker: RunningBroker, audit_file: Path) -> None:
    """404, 405, a body that does not parse, NUL, a bad wrap TTL, a nested body: each
    leaves a request and a response entry, with the token accessor hashed."""
    http = broker.http
    marker = secrets.token_hex(4)
    attempts: list[tuple[str, str, Reply]] = []
    attempts.append(
        ("404", f"brkt-nomount-{marker}/x", await http.read(f"brkt-nomount-{marker}/x"))
    )
    attempts.append(("405", "sys/health", await http.call("DELETE", "sys/health")))
    path = f"database/roles/brkt-audit-{marker}"
    attempts.append(("body", path, await http.call("PUT", path, raw=b"{not json")))
    attempts.append(("utf8", path, await http.call("PUT", path, raw=b'{"a": "\xff\xfe"}')))
    attempts.append(("nul", path, await http.write(path, {"db_name": "pg\x00"})))
    deep = b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}"
    attempts.append(("deep", path, await http.call("PUT", path, raw=deep)))
    ttl = await http.call("GET", "database/creds/brkt-pg-ro", headers={"X-Vault-Wrap-TTL": "xyz"})
    attempts.append(("wrap", "database/creds/brkt-pg-ro", ttl))
    for kind, _, reply in attempts:
        assert 400 <= reply.status < 500, (kind, reply.body)
    entries = _entries(audit_file)
    for kind, where, reply in attempts:
        mine = [e for e in entries if e["request"]["path"] == where]
        statuses = [e["response"]["status"] for e in mine if e["type"] == "response"]
        assert reply.status in statuses, (kind, statuses)
        assert any(e["type"] == "request" for e in mine), kind
    # Accessors are HMAC'd (Vault's hmac_accessor default).
    made = await http.write("auth/token/create", {"ttl": "5m", "policies": ["default"]})
    token = made.body["auth"]
    denied = await http.call("GET", "sys/mounts", token=token["client_token"])
    assert denied.status == 403
    content = _text(audit_file)
    assert token["accessor"] not in content
    assert (await http.write("auth/token/revoke-accessor", {"accessor": token["accessor"]})).status


async def test_nested_json_is_a_400_without_a_traceback(
    broker: RunningBroker, no_password_in_logs: _LogCapture
) -> None:
    http = broker.http
    before = len(no_password_in_logs.lines)
    deep = b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}"
    with_token = await http.call("PUT", "database/roles/brkt-deep", raw=deep)
    assert with_token.status == 400, with_token.body
    without = await http.call("PUT", "database/roles/brkt-deep", raw=deep, token="")
    assert without.status in (400, 403), without.body
    moderately = b'{"a":' + b"[" * 400 + b"]" * 400 + b"}"
    capped = await http.call("PUT", "database/roles/brkt-deep", raw=moderately)
    assert capped.status == 400 and "nested deeper" in capped.errors[0], capped.body
    logged = "\n".join(no_password_in_logs.lines[before:])
    assert "RecursionError" not in logged and "Traceback" not in logged


async def test_overlong_header_or_path_is_not_echoed(
    broker: RunningBroker, no_password_in_logs: _LogCapture
) -> None:
    session = broker.http.session
    secret = "Lng" + secrets.token_hex(10)
    before = len(no_password_in_logs.lines)
    async with session.get(
        f"{broker.address}/v1/sys/health",
        headers={"X-Vault-Token": secret + "A" * 9000},
    ) as resp:
        body = await resp.read()
        assert resp.status == 400
        assert secret.encode() not in body and b"AAAA" not in body
    async with session.get(f"{broker.address}/v1/{secret}{'b' * 9000}") as resp:
        body = await resp.read()
        assert resp.status in (400, 414)
        assert secret.encode() not in body and b"bbbb" not in body
    logged = "\n".join(no_password_in_logs.lines[before:])
    assert secret not in logged


async def test_statement_errors_never_quote_the_statement(broker: RunningBroker) -> None:
    """MySQL quotes the statement near a syntax error and PostgreSQL names the value
    it could not take; the answer names the error and the statement, not the text."""
    http = broker.http
    my = {
        "plugin_name": "mysql-database-plugin",
        "connection_url": "{{username}}:{{password}}@tcp(127.0.0.1:3306)/",
        "username": "root",
        "password": "",
        "allowed_roles": ["brkt-leak-mysyntax"],
    }
    assert (await http.write("database/config/brkt-leak-my2", my)).status == 204
    cases = {
        ("brkt-leak-mysyntax", "brkt-leak-my2"): (
            "CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}'; "
            "GRANT SELEKT ON brkt_marker_db.* TO '{{name}}'@'%'",
            ("1064", "statement 2 of 2"),
            ("SELEKT", "brkt_marker_db", "near"),
        ),
        ("brkt-pg-leak2", "pg"): (
            "SELECT 'brkt_marker_value_{{password}}'::int",
            ("22P02",),
            ("brkt_marker_value", "invalid input"),
        ),
    }
    try:
        for (role, db), (statement, present, absent) in cases.items():
            reply = await http.write(
                f"database/roles/{role}", {"db_name": db, "creation_statements": statement}
            )
            assert reply.status == 204, reply.body
            reply = await http.read(f"database/creds/{role}")
            assert reply.status == 400, reply.body
            message = reply.errors[0]
            for text in present:
                assert text in message, message
            for text in absent:
                assert text not in message, message
    finally:
        for role, _db in cases:
            await http.delete(f"database/roles/{role}")
        await http.delete("database/config/brkt-leak-my2")


async def test_hmac_accessor_option(broker: RunningBroker, tmp_path: Path) -> None:
    """``hmac_accessor=false`` keeps accessors readable on that device only; a value that
    is not a boolean is refused."""
    http = broker.http
    path = tmp_path / "plain-accessor.log"
    bad = await http.write(
        "sys/audit/brkt-leaks-bad",
        {"type": "file", "options": {"file_path": str(path), "hmac_accessor": "maybe"}},
    )
    assert bad.status == 400 and "hmac_accessor" in bad.errors[0], bad.body
    reply = await http.write(
        "sys/audit/brkt-leaks-plain",
        {"type": "file", "options": {"file_path": str(path), "hmac_accessor": "false"}},
    )
    assert reply.status == 204, reply.body
    try:
        made = await http.write("auth/token/create", {"ttl": "5m", "policies": ["default"]})
        accessor = made.body["auth"]["accessor"]
        assert (
            await http.call("GET", "sys/mounts", token=made.body["auth"]["client_token"])
        ).status
        assert accessor in _text(path)
    finally:
        assert (await http.delete("sys/audit/brkt-leaks-plain")).status == 204
    await http.write("auth/token/revoke-accessor", {"accessor": accessor})
