"""Revoking PostgreSQL roles: ending their sessions, removing what they own or were granted
in every database, and dropping them, one by one or many in one statement.

Revocation is best effort across steps, not one transaction: access goes first (no login,
no sessions), and a failing step does not stop the later ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from broker.exceptions import TargetError
from broker.server.engines.driver_errors import describe
from broker.server.engines.postgres_common import (
    CONNECT_ERRORS,
    RETRIES,
    is_retryable,
    pause_before_retry,
    quote_ident,
    quote_literal,
    run_in_transaction,
    with_retries,
)
from broker.server.engines.templates import expand_statements
from broker.server.redaction import redact

# How long revocation waits for terminated sessions to end: pg_terminate_backend only
# signals; PostgreSQL 13 has no variant that waits.
_SESSION_EXIT_WAIT = 5.0
_COUNT_SESSIONS = (
    "SELECT count(*) FROM pg_stat_activity WHERE usesysid = ANY($1::oid[]) "
    "AND pid <> pg_backend_pid()"
)
_TERMINATE_SESSIONS = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usesysid = ANY($1::oid[]) "
    "AND pid <> pg_backend_pid()"
)
#: A role that still owns something after this many cleanups is reported, not retried.
_CLEANUP_ATTEMPTS = 3


def sessions_remain(name: str, remaining: int, why: str) -> str:
    """The reason a revocation is not complete, naming the cause and its fix."""
    return f"{remaining} session(s) of {name} remain: {why}"


async def end_sessions(
    conn: asyncpg.Connection, oids: list[int], secrets: tuple[str, ...]
) -> tuple[int, str]:
    """Terminate the sessions of the roles ``oids`` and wait (briefly) for them to end;
    returns how many remain and, when some do, why. By OID, so the sessions of a role
    dropped meanwhile are still found (``pg_stat_activity`` shows every session's
    ``usesysid``, to any role)."""
    why = ""
    try:
        await conn.fetch(_TERMINATE_SESSIONS, oids)
    except asyncpg.InsufficientPrivilegeError:
        me = await conn.fetchval("SELECT current_user")
        why = (
            "the admin lacks pg_signal_backend, which ending another role's sessions "
            f"needs (GRANT pg_signal_backend TO {quote_ident(str(me))})"
        )
    except asyncpg.PostgresError as exc:
        why = "pg_terminate_backend failed: " + redact(str(exc), secrets)
    deadline = time.monotonic() + (0 if why else _SESSION_EXIT_WAIT)
    while True:
        remaining = int(await conn.fetchval(_COUNT_SESSIONS, oids))
        if not remaining or time.monotonic() >= deadline:
            return remaining, why or "they were signalled but did not end"
        await asyncio.sleep(0.02)


async def strip_memberships(conn: asyncpg.Connection, oid: int, ident: str) -> None:
    """Best effort for a role that must stay (its sessions live on): revoke the group
    roles it was granted, which takes their privileges from those sessions too."""
    rows = await conn.fetch(
        "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
        "WHERE m.member = $1",
        oid,
    )
    for row in rows:
        with contextlib.suppress(asyncpg.PostgresError):
            await conn.execute(f"REVOKE {quote_ident(row['rolname'])} FROM {ident}")


async def drop_dependencies(
    conn: asyncpg.Connection, name: str, connect_args: Mapping[str, Any], secrets: tuple[str, ...]
) -> None:
    """REASSIGN OWNED and DROP OWNED in each database where the role owns or holds
    something: both only act on the current database, and Vault's default stops at the
    first object owned elsewhere (hashicorp/vault#1535, #1857).

    Both need the privileges of the role. A superuser has them; a ``CREATEROLE`` admin
    grants itself the role first (allowed on PostgreSQL 15 for any role it may manage,
    and on 16 through the ADMIN OPTION it holds on the roles it created); the grant
    goes with the role. Other databases are reached with ``connect_args``."""
    # Indented as when this was a method: the text sent stays byte for byte the same.
    rows = await conn.fetch(
        """
            SELECT DISTINCT d.datname, d.datname = current_database() AS is_current
            FROM pg_shdepend s
            JOIN pg_roles r ON r.oid = s.refobjid
            LEFT JOIN pg_database d ON d.oid = s.dbid
            WHERE s.refclassid = 'pg_authid'::regclass AND r.rolname = $1
            """,
        name,
    )
    if not rows:
        return
    ident = quote_ident(name)
    if not await conn.fetchval("SELECT pg_has_role(current_user, $1::name, 'USAGE')", name):
        version = int(await conn.fetchval("SELECT current_setting('server_version_num')"))
        inherit = " WITH INHERIT TRUE" if version >= 160000 else ""
        await conn.execute(f"GRANT {ident} TO CURRENT_USER{inherit}")
    cleanup = [f"REASSIGN OWNED BY {ident} TO CURRENT_USER", f"DROP OWNED BY {ident}"]
    others = sorted({r["datname"] for r in rows if r["datname"] and not r["is_current"]})
    # dbid 0 (shared objects such as database privileges) is cleaned from any database.
    await run_in_transaction(conn, cleanup, {})
    for database in others:
        args = dict(connect_args, database=database)
        try:
            other = await asyncpg.connect(**args)
        except CONNECT_ERRORS as exc:
            raise TargetError(
                f"cannot connect to database {database} to remove what {name} holds "
                f"there (GRANT CONNECT ON DATABASE {quote_ident(database)} to the admin): "
                + redact(str(exc), secrets)
            ) from exc
        try:
            await run_in_transaction(other, cleanup, {})
        finally:
            await other.close()


class RoleRevocation:
    """One role's revocation, as its steps (``run``); what failed in a best-effort step is
    kept in ``errors`` while the later steps still run."""

    def __init__(
        self, name: str, connect_args: Mapping[str, Any], secrets: tuple[str, ...]
    ) -> None:
        self._name = name
        self._ident = quote_ident(name)  # refuses a NUL before anything is sent
        self._connect_args = connect_args
        self._secrets = secrets
        self.errors: list[str] = []

    async def run(self, conn: asyncpg.Connection, revocation_statements: Sequence[str]) -> bool:
        """True when the role is gone with no session left (or never existed); False when
        it may remain, ``errors`` saying why. Sessions that cannot be ended raise
        ``TargetError`` at once, the role kept (see ``PostgresEngine.revoke_user``)."""
        oid = await conn.fetchval("SELECT oid FROM pg_roles WHERE rolname = $1", self._name)
        if oid is None:
            return True
        # Access goes first: no new logins, then no open sessions.
        if not await self._disable_login(conn):
            return True
        await self._end_sessions_or_keep_role(conn, oid)
        if revocation_statements:
            await self._run_statements(conn, revocation_statements)
        # Whatever the statements did, the login must not survive.
        await self._drop_role(conn)
        return await self._confirm_gone(conn, oid)

    async def _disable_login(self, conn: asyncpg.Connection) -> bool:
        """ALTER ROLE ... NOLOGIN; False when the role was dropped meanwhile."""
        try:
            await conn.execute(f"ALTER ROLE {self._ident} NOLOGIN")
        except asyncpg.UndefinedObjectError:
            return False
        except asyncpg.PostgresError as exc:
            self.errors.append(str(exc))
        return True

    async def _end_sessions_or_keep_role(self, conn: asyncpg.Connection, oid: int) -> None:
        """End the role's sessions; if some remain, strip its group memberships and stop
        here with a ``TargetError``: a dropped role's sessions would live on with no name
        left to find them by, so the retry needs the role."""
        remaining, why = await end_sessions(conn, [oid], self._secrets)
        if remaining:
            await strip_memberships(conn, oid, self._ident)
            raise TargetError(sessions_remain(self._name, remaining, why))

    async def _run_statements(
        self, conn: asyncpg.Connection, revocation_statements: Sequence[str]
    ) -> None:
        try:
            await run_in_transaction(
                conn,
                expand_statements(revocation_statements),
                {"name": self._name, "username": self._name},
            )
        except asyncpg.PostgresError as exc:  # its text would quote the statement
            self.errors.append(f"revocation statements failed: {describe(exc)}")

    async def _drop_role(self, conn: asyncpg.Connection) -> None:
        """DROP ROLE, retried on concurrency failures. The common case is one DROP; only
        a role that owns or was granted something needs the cleanup (in every database
        it touched) first, and after a few cleanups the error is reported instead."""
        for attempt in range(RETRIES):
            try:
                await conn.execute(f"DROP ROLE IF EXISTS {self._ident}")
                return
            except asyncpg.DependentObjectsStillExistError as exc:
                if attempt >= _CLEANUP_ATTEMPTS - 1:
                    self.errors.append(str(exc))
                    return
                try:
                    await drop_dependencies(conn, self._name, self._connect_args, self._secrets)
                except (asyncpg.PostgresError, TargetError) as cleanup_exc:
                    self.errors.append(str(cleanup_exc))
                    return
            except asyncpg.PostgresError as exc:
                if not is_retryable(exc):
                    self.errors.append(str(exc))
                    return
                await pause_before_retry(attempt)

    async def _confirm_gone(self, conn: asyncpg.Connection, oid: int) -> bool:
        """Whether the role is gone and no session of it remains: a login may have slipped
        in while the role was being dropped, so its sessions are ended once more."""
        found = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", self._name)
        if found is not None:
            return False
        remaining, why = await end_sessions(conn, [oid], self._secrets)
        if not remaining:
            return True
        self.errors.append(sessions_remain(self._name, remaining, why))
        return False


async def drop_roles_together(
    conn: asyncpg.Connection, names: Sequence[str], secrets: tuple[str, ...]
) -> list[str | None] | None:
    """One outcome per name (None: revoked), or None when they must go one by one.

    Only when none of the roles has a session open: end any session that opened
    meanwhile and ``DROP ROLE a, b, ...`` in one implicit transaction; then, after the
    commit, make sure no session of theirs remains."""
    rows = await conn.fetch(
        "SELECT oid, rolname FROM pg_roles WHERE rolname = ANY($1::text[])", list(names)
    )
    oids = {row["rolname"]: int(row["oid"]) for row in rows}
    if not oids:
        return [None] * len(names)
    if await conn.fetchval(_COUNT_SESSIONS, list(oids.values())):
        return None
    idents = ", ".join(quote_ident(n) for n in names)
    literals = ", ".join(quote_literal(n) for n in names)
    script = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE usename IN ({literals}) AND pid <> pg_backend_pid(); "
        f"DROP ROLE IF EXISTS {idents}"
    )
    try:
        await with_retries(lambda: conn.execute(script))
    except asyncpg.PostgresError:
        return None  # e.g. a role owns objects: one by one instead
    remaining, why = await end_sessions(conn, list(oids.values()), secrets)
    if not remaining:
        return [None] * len(names)
    rows = await conn.fetch(
        "SELECT usesysid, count(*) AS n FROM pg_stat_activity "
        "WHERE usesysid = ANY($1::oid[]) GROUP BY 1",
        list(oids.values()),
    )
    counts = {int(row["usesysid"]): int(row["n"]) for row in rows}
    outcomes: list[str | None] = []
    for name in names:
        left = counts.get(oids.get(name, -1), 0)
        outcomes.append(
            f"{left} session(s) of {name} remain after its role was dropped: {why}"
            if left
            else None
        )
    return outcomes
