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
    #: Leases that outlive the token that asked for them (External Secrets and other
    #: clients that revoke their token right after reading).
    orphan_leases: bool = False
    #: Lease quota: at most this many live leases (0: no limit).
    max_leases: int = 0


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
    token_accessor: str | None = None

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
    #: The row failed its integrity check (storage/integrity.py): it is never handed to an
    #: engine, and its revocation is recorded as failing.
    tampered: bool = False


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
    token_accessor: str | None = None


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """A token as stored: everything but the token itself (kept only as an HMAC)."""

    accessor: str
    parent_accessor: str | None
    policies: tuple[str, ...]
    display_name: str
    meta: dict[str, str]
    num_uses: int
    uses_left: int
    ttl: int
    explicit_max_ttl: int
    renewable: bool
    path: str
    bound_cidrs: tuple[str, ...]
    created_at: dt.datetime
    expires_at: dt.datetime | None
    max_expires_at: dt.datetime | None
    #: Vault's periodic tokens: every renewal sets the TTL back to this many seconds and
    #: no maximum applies but ``explicit_max_ttl``. 0: not periodic.
    period: int = 0


@dataclass(frozen=True, slots=True)
class AppRole:
    mount: str
    name: str
    role_id: str
    bind_secret_id: bool
    token_policies: tuple[str, ...]
    token_ttl: int
    token_max_ttl: int
    token_num_uses: int
    token_bound_cidrs: tuple[str, ...]
    secret_id_ttl: int
    secret_id_num_uses: int
    secret_id_bound_cidrs: tuple[str, ...]
    #: The ``period`` of the tokens its logins get (0: not periodic).
    token_period: int = 0


@dataclass(frozen=True, slots=True)
class SealRecord:
    secret_shares: int
    secret_threshold: int
    keyring: bytes
    keyring_version: int
    wrapped_root_key: bytes | None
    initialized_at: dt.datetime


@dataclass(frozen=True, slots=True)
class AuditDevice:
    path: str
    type: str
    description: str
    options: dict[str, str]


@dataclass(frozen=True, slots=True)
class StaticRole:
    """A static role as stored; ``password`` and ``pending_password`` are decrypted by
    storage on the way out."""

    mount: str
    name: str
    db_name: str
    username: str
    rotation_period: int
    rotation_schedule: str
    rotation_window: int
    rotation_statements: tuple[str, ...]
    password: str = field(repr=False)
    pending_password: str | None = field(repr=False)
    last_rotation: dt.datetime | None
    next_rotation: dt.datetime
    attempts: int
    last_error: str | None
