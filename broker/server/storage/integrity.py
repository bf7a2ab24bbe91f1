"""Authenticated rows: what each security-relevant table's MAC covers, and the canonical
bytes it is computed over.

Storage is not trusted (docs/storage-threat-model.md): a row's MAC (HMAC-SHA256 under the
keyring's row key, which only an unsealed node holds) covers the table name, the primary
key and every column that decides what the broker does with the row, so an edited row, a
row moved to another key or table, and a row copied from another install (another
keyring) all fail the check. Counters the broker itself moves on every use (a token's
uses left, a static role's next rotation) are left out; see the threat model for each.

Pure functions: no storage, no keys.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
_PLAIN = (str, int, float)  # bool is an int
_SEQUENCES = (list, tuple)
_BYTES = (bytes, bytearray, memoryview)


@dataclass(frozen=True, slots=True)
class RowSpec:
    """A table's primary key and the columns its MAC covers.

    ``added`` are columns that came after rows were first authenticated (a migration adds
    them with default 0). They are covered too, but a column's entry is in the message only
    when its value is not 0: a row MAC'd before the column existed (so 0 in it now) has the
    very message it was MAC'd over and still checks, with no re-authentication pass
    (which would have to trust whatever storage holds at that moment). The form stays
    unambiguous: the entry's presence follows from the value, so setting the column
    from 0 to anything, or back to 0, changes the message and fails the check.
    """

    table: str
    key: tuple[str, ...]
    columns: tuple[str, ...]
    added: tuple[str, ...] = ()


CONNECTIONS = RowSpec(
    "broker_connections",
    ("mount", "name"),
    (
        "plugin_name",
        "connection_url",
        "username",
        "password",  # the ciphertext: bound to the rest, so an older one cannot be mixed in
        "allowed_roles",
        "username_template",
        "verify_connection",
        "options",
    ),
)
ROLES = RowSpec(
    "broker_roles",
    ("mount", "name"),
    (
        "db_name",
        "creation_statements",
        "revocation_statements",
        "rollback_statements",
        "renew_statements",
        "default_ttl",
        "max_ttl",
        "orphan_leases",
        "max_leases",
    ),
)
STATIC_ROLES = RowSpec(
    "broker_static_roles",
    ("mount", "name"),
    (
        "db_name",
        "username",
        "rotation_period",
        "rotation_schedule",
        "rotation_window",
        "rotation_statements",
    ),
)
PASSWORD_POLICIES = RowSpec("broker_password_policies", ("name",), ("policy",))
POLICIES = RowSpec("broker_policies", ("name",), ("policy",))
TOKENS = RowSpec(
    "broker_tokens",
    ("accessor",),
    (
        "token_hmac",
        "parent_accessor",
        "policies",
        "display_name",
        "meta",
        "num_uses",
        "ttl",
        "explicit_max_ttl",
        "renewable",
        "path",
        "bound_cidrs",
        "expires_at",
        "max_expires_at",
    ),
    added=("period",),  # 0010_token_period
)
APPROLE_ROLES = RowSpec(
    "broker_approle_roles",
    ("mount", "name"),
    (
        "role_id",
        "bind_secret_id",
        "token_policies",
        "token_ttl",
        "token_max_ttl",
        "token_num_uses",
        "token_bound_cidrs",
        "secret_id_ttl",
        "secret_id_num_uses",
        "secret_id_bound_cidrs",
    ),
    added=("token_period",),  # 0010_token_period
)
AUDIT_DEVICES = RowSpec("broker_audit_devices", ("path",), ("type", "description", "options"))
#: What a lease row makes the broker do at revocation and renewal (run statements as the
#: connection's admin, for a user, on a target), fixed at issuance. State, due time,
#: expiry, attempts and errors move on every sweep and renewal and are left out: editing
#: them can only delay or hasten a revocation (see the threat model).
LEASES = RowSpec(
    "broker_leases",
    ("lease_id",),
    (
        "mount",
        "role_name",
        "connection_name",
        "plugin_name",
        "username",
        "revocation_statements",
        "renew_statements",
        "issued_at",
        "max_expires_at",
        "token_accessor",
    ),
)

#: Every authenticated table, in the order the upgrade authenticates them.
#: Sealed, not MACed: each body is AES-GCM under the keyring with this key as associated
#: data (storage/auth.py), which authenticates it. Named here for the integrity alert only;
#: not in ALL_SPECS, whose rows carry a MAC column.
AUTH_ENTRIES = RowSpec("broker_auth_entries", ("mount", "kind", "name"), ("body",))
ALL_SPECS = (
    CONNECTIONS,
    ROLES,
    STATIC_ROLES,
    PASSWORD_POLICIES,
    POLICIES,
    TOKENS,
    APPROLE_ROLES,
    AUDIT_DEVICES,
    LEASES,
)


def _canonical(value: Any) -> Any:
    """One JSON value per stored value, whichever way it came (a model's tuple or the
    driver's list, an aware datetime in any zone, bytes). Plain values first: this runs
    for every column of every checked row."""
    if value is None or isinstance(value, _PLAIN):
        return value
    if isinstance(value, _SEQUENCES):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
        return {"t": (aware - _EPOCH) // _MICROSECOND}  # PostgreSQL keeps microseconds
    if isinstance(value, _BYTES):
        return {"b": bytes(value).hex()}
    return value


def row_message(spec: RowSpec, row: Mapping[str, Any]) -> bytes:
    """The bytes a row's MAC is computed over: table, key values and covered columns, as
    JSON with sorted keys (unambiguous: every string is quoted and escaped). An ``added``
    column is in it only when not 0 (see ``RowSpec``)."""
    covered = {c: _canonical(row[c]) for c in spec.columns}
    for column in spec.added:
        value = row[column]
        if value != 0 or isinstance(value, bool):
            covered[column] = _canonical(value)
    return json.dumps(
        [
            "broker-row/v1",
            spec.table,
            [_canonical(row[k]) for k in spec.key],
            covered,
        ],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode()


def row_key(spec: RowSpec, row: Mapping[str, Any]) -> str:
    """The row's key for an alert (``mount/name``); tokens are named by table only, since
    an accessor is a credential of sorts."""
    if spec is TOKENS:
        return "(a token)"
    return "/".join(str(row[k]) for k in spec.key)
