"""The pure parts of the token answers agents rely on: the row MAC's canonical form for a
column added after rows were authenticated (0010_token_period), Vault's mount-access rule
for sys/internal/ui/mounts, and the time format of token lookups."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from broker.server.auth.acl import ACL, parse_policy
from broker.server.auth.tokens import rfc3339
from broker.server.storage import integrity

_NOW = dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC)


def _token_row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "accessor": "acc",
        "token_hmac": b"\x01\x02",
        "parent_accessor": None,
        "policies": ["default"],
        "display_name": "token",
        "meta": {},
        "num_uses": 0,
        "ttl": 60,
        "explicit_max_ttl": 0,
        "renewable": True,
        "path": "auth/token/create",
        "bound_cidrs": [],
        "expires_at": _NOW,
        "max_expires_at": _NOW,
        "period": 0,
    }
    row.update(changes)
    return row


def _approle_row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "mount": "approle",
        "name": "app",
        "role_id": "rid",
        "bind_secret_id": True,
        "token_policies": ["app"],
        "token_ttl": 0,
        "token_max_ttl": 0,
        "token_num_uses": 0,
        "token_bound_cidrs": [],
        "secret_id_ttl": 0,
        "secret_id_num_uses": 0,
        "secret_id_bound_cidrs": [],
        "token_period": 0,
    }
    row.update(changes)
    return row


@pytest.mark.parametrize(
    ("spec", "row", "column"),
    [
        (integrity.TOKENS, _token_row, "period"),
        (integrity.APPROLE_ROLES, _approle_row, "token_period"),
    ],
)
def test_rows_macd_before_the_period_column_keep_their_message(
    spec: integrity.RowSpec, row: Any, column: str
) -> None:
    """A row written before 0010 was MAC'd over the spec without the column; with the
    column at its default 0 the message is byte for byte the same, so its MAC still
    checks. Any other value, and setting it back to 0, changes the message."""
    before = dataclasses.replace(spec, added=())  # the spec as it was before 0010
    old_row = {k: v for k, v in row().items() if k != column}
    assert integrity.row_message(spec, row()) == integrity.row_message(before, old_row)
    periodic = integrity.row_message(spec, row(**{column: 3600}))
    assert periodic != integrity.row_message(spec, row())
    assert periodic != integrity.row_message(spec, row(**{column: 7200}))
    assert column in periodic.decode()


def _acl(text: str) -> ACL:
    return ACL(parse_policy(text))


@pytest.mark.parametrize(
    ("policy", "mount", "reaches"),
    [
        ('path "database/creds/app" { capabilities = ["read"] }', "database/", True),
        ('path "database/*" { capabilities = ["read"] }', "database/", True),
        ('path "data*" { capabilities = ["read"] }', "database/", True),
        ('path "*" { capabilities = ["list"] }', "team/db/", True),
        ('path "+/creds/app" { capabilities = ["read"] }', "database/", True),
        ('path "team/+/creds/*" { capabilities = ["read"] }', "team/db/", True),
        ('path "auth/approle/login" { capabilities = ["update"] }', "auth/approle/", True),
        ('path "database" { capabilities = ["read"] }', "database/", False),
        ('path "db*" { capabilities = ["read"] }', "database/", False),
        ('path "other/creds/app" { capabilities = ["read"] }', "database/", False),
        ('path "database/creds/app" { capabilities = ["deny"] }', "database/", False),
        ('path "auth/approle/login" { capabilities = ["update"] }', "auth/other/", False),
        (
            'path "database/*" { capabilities = ["deny"] }\n'
            'path "database/creds/app" { capabilities = ["read"] }',
            "database/",
            True,  # Vault: denied on the mount itself, reached by a path below it
        ),
    ],
)
def test_mount_access_is_vaults_has_mount_access(policy: str, mount: str, reaches: bool) -> None:
    assert _acl(policy).reaches_under(mount) is reaches


def test_root_reaches_every_mount_and_no_policy_reaches_none() -> None:
    assert ACL((), root=True).reaches_under("anything/")
    assert not ACL(()).reaches_under("database/")


def test_lookup_times_are_rfc3339_as_go_writes_them() -> None:
    assert rfc3339(_NOW) == "2026-01-02T03:04:05.123456Z"
    elsewhere = _NOW.astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert rfc3339(elsewhere) == "2026-01-02T03:04:05.123456Z"
    assert dt.datetime.fromisoformat(rfc3339(_NOW)) == _NOW
