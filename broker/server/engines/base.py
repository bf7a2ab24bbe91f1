"""The interface every database plugin implements, the requests it receives, and the values
its statement templates are rendered with.

Plugins see only these request records: the lease manager owns TTLs, passwords and
leases; a plugin knows nothing of HTTP or of the broker's storage.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    connection_url: str
    username: str
    password: str = field(repr=False)
    options: dict[str, Any] = field(default_factory=dict)
    #: This install's id (storage's ``broker_install``): every user the engine creates is
    #: marked with it, so reconciliation touches only this install's users. Empty: no mark
    #: (an engine built only to check a URL or change a password).
    install_id: str = ""

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.password,)


@dataclass(frozen=True, slots=True)
class NewUserRequest:
    username: str
    password: str = field(repr=False)
    expiration: dt.datetime
    creation_statements: tuple[str, ...]
    rollback_statements: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RenewUserRequest:
    username: str
    expiration: dt.datetime
    renew_statements: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RevokeUserRequest:
    username: str
    revocation_statements: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SetPasswordRequest:
    """A new password for an existing account: a static role's, or the broker's own admin
    account (rotate-root). Running it twice with the same password is harmless, which is
    what lets a rotation interrupted by a crash simply be run again."""

    username: str
    password: str = field(repr=False)
    statements: tuple[str, ...]


class DatabaseEngine(Protocol):
    """One configured connection to one target database server."""

    #: The longest user name the database accepts.
    username_limit: int
    #: How many revocations ``revoke_users`` takes at once to good effect.
    revoke_batch_size: int

    def target_hosts(self) -> tuple[str, ...]:
        """Where the connection goes, as written (host names, IP addresses, or a socket
        path starting with '/'), for ``allowed_target_hosts``."""

    async def user_exists(self, username: str) -> bool:
        """Whether an account of that name exists, asked with a parameterised query: a
        static role may only manage an account that is already there (as in Vault)."""
        ...

    async def set_password(self, request: SetPasswordRequest) -> None:
        """Run the statements (or the engine's default) to change an account's password;
        ``StatementError`` if they fail. The default quotes the name in code; statements
        given get their values through ``render_sql``, which refuses quote characters."""

    async def verify_connection(self) -> None:
        """Connect and run a trivial query; raise ``TargetUnavailable`` saying why not."""

    async def create_user(self, request: NewUserRequest) -> None:
        """Run the creation statements, atomically where the database allows.

        On failure the rollback statements (or a default drop) run before the error is
        raised, so no half-created user survives. Raises ``StatementError`` when the
        statements are at fault, ``TargetUnavailable`` when the database cannot be reached.
        """

    async def renew_user(self, request: RenewUserRequest) -> None:
        """Move the user's database-side expiry, if the database has one."""

    async def revoke_user(self, request: RevokeUserRequest) -> None:
        """Remove the login and everything it can do, and end its sessions.

        Succeeds only when the user is gone and none of its sessions remain: a session the
        admin may not end (or cannot see) is a ``TargetError`` naming the cause and the
        grant that fixes it, so the lease keeps failing and is retried instead of being
        marked revoked while the session lives on. Idempotent: succeeds if the user does
        not exist (and, where the database still names them, none of its sessions do).
        Best effort across steps: access is removed first, and a failing step does not
        stop the later ones.
        """

    async def revoke_users(self, requests: Sequence[RevokeUserRequest]) -> list[str | None]:
        """``revoke_user`` for many users at once where the database allows; returns one
        error message (None: revoked) per request, in order. Raises only when nothing
        could be attempted (the target cannot be reached)."""
        ...

    async def check_admin(self, creation_statements: Sequence[str] = ()) -> list[str]:
        """One warning per privilege the connection's admin lacks for issuing and revoking
        (``creation_statements``: those of the roles on the connection), each naming the
        statement that grants it; nothing when it can do everything."""
        ...

    async def list_users(self, prefix: str) -> list[str]:
        """Names of the users on the server that start with ``prefix`` (for reconciliation)."""
        ...

    async def marked_users(self, prefix: str) -> set[str]:
        """Those of ``list_users(prefix)`` that carry this install's mark (the only ones
        reconciliation may drop); empty without an install id."""
        ...

    def pool_stats(self) -> dict[str, int]:
        """Connections of the pool: ``in_use``, ``idle`` and ``max``."""
        ...

    async def close(self) -> None:
        """Close the connection pool, waiting for operations in flight."""


def install_marker(install_id: str) -> str:
    """The mark a user of this install carries (a PostgreSQL role comment)."""
    return f"broker:{install_id}"


def format_expiration(moment: dt.datetime) -> str:
    """``{{expiration}}`` as both PostgreSQL and MySQL parse it, in UTC."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S+00:00")


def template_values(
    username: str,
    *,
    password: str | None = None,
    password_hash: str | None = None,
    expiration: dt.datetime | None = None,
) -> dict[str, str]:
    """The ``{{variables}}`` a statement is rendered with: the user under both of Vault's
    names for it, plus the password and the expiry where the statement kind is given them
    (``templates.STATEMENT_VARIABLES``; revocation, for one, never sees a password).

    ``password`` is what the engine renders ``{{password}}`` as (PostgreSQL: its SCRAM
    verifier unless the connection says ``password_authentication=password``);
    ``password_hash`` is the server's stored form (``verifiers``), for statements that
    say where it goes (``IDENTIFIED BY PASSWORD '{{password_hash}}'``)."""
    values = {"name": username, "username": username}
    if password is not None:
        values["password"] = password
    if password_hash is not None:
        values["password_hash"] = password_hash
    if expiration is not None:
        values["expiration"] = format_expiration(expiration)
    return values
