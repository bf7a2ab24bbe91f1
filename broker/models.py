"""Plain records passed between storage, engines, leases and the API."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

LIVE_STATES = ("creating", "active", "revoking")


@dataclass(frozen=True, slots=True)
class Mount:
    path: str
    type: str
    description: str
    accessor: str
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Connection:
    mount: str
    name: str
    plugin_name: str
    connection_url: str
    username: str
    password: str = field(repr=False)
    allowed_roles: tuple[str, ...]
    username_template: str
    verify_connection: bool
    options: dict[str, Any]
    version: int = 0

    def allows_role(self, role: str) -> bool:
        """Vault's rule: an empty list allows nothing, ``*`` allows every role."""
        return "*" in self.allowed_roles or role in self.allowed_roles


@dataclass(frozen=True, slots=True)
class Role:
    mount: str
    name: str
    db_name: str
    creation_statements: tuple[str, ...]
    revocation_statements: tuple[str, ...]
    rollback_statements: tuple[str, ...]
    renew_statements: tuple[str, ...]
    default_ttl: int
    max_ttl: int


@dataclass(frozen=True, slots=True)
class Lease:
    lease_id: str
    mount: str
    role_name: str
    connection_name: str
    plugin_name: str
    username: str
    revocation_statements: tuple[str, ...]
    renew_statements: tuple[str, ...]
    issued_at: dt.datetime
    last_renewed_at: dt.datetime | None
    expires_at: dt.datetime
    max_expires_at: dt.datetime
    state: str
    due_at: dt.datetime
    attempts: int
    last_error: str | None
    revoked_at: dt.datetime | None

    @property
    def is_live(self) -> bool:
        return self.state in LIVE_STATES


@dataclass(frozen=True, slots=True)
class ClaimedLease:
    """A lease a sweep (or an explicit revocation) now owns until its claim times out."""

    lease_id: str
    mount: str
    role_name: str
    connection_name: str
    plugin_name: str
    username: str
    revocation_statements: tuple[str, ...]
    issued_at: dt.datetime
    expires_at: dt.datetime
    attempts: int
    prior_state: str


@dataclass(frozen=True, slots=True)
class NewLease:
    lease_id: str
    mount: str
    role_name: str
    connection_name: str
    plugin_name: str
    username: str
    revocation_statements: tuple[str, ...]
    renew_statements: tuple[str, ...]
    issued_at: dt.datetime
    expires_at: dt.datetime
    max_expires_at: dt.datetime
