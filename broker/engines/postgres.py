"""PostgreSQL plugin on asyncpg."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from broker.engines.base import (
    ConnectionConfig,
    NewUserRequest,
    RenewUserRequest,
    RevokeUserRequest,
    SetPasswordRequest,
    format_expiration,
)
from broker.exceptions import (
    BrokerError,
    InvalidRequest,
    StatementError,
    TargetError,
    TargetUnavailable,
    TargetUnreachable,
)
from broker.redaction import redact
from broker.templates import expand_statements, render

DEFAULT_CREATION = (
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
)
DEFAULT_SET_PASSWORD = ("ALTER ROLE \"{{name}}\" WITH PASSWORD '{{password}}'",)
DEFAULT_RENEW = ("ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}'",)

# Statements that rewrite an object's ACL or ownership. PostgreSQL updates the object's
# catalog row in place, so two sessions doing it at once fail with "tuple concurrently
# updated" or deadlock; the plugin serialises them per database with this advisory lock.
_ACL_STATEMENT = re.compile(
    r"\b(?:GRANT|REVOKE)\b[\s\S]*\bON\b|\bALTER\s+DEFAULT\s+PRIVILEGES\b|\bREASSIGN\s+OWNED\b"
    r"|\bDROP\s+OWNED\b",
    re.IGNORECASE,
)
_ACL_LOCK = "SELECT pg_advisory_xact_lock(hashtext('broker.acl'))"
# Sessions whose role no longer exists (usesysid set, name gone): logins that slipped in
# while their role was being dropped.
_TERMINATE_ORPHANED_SESSIONS = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
    "WHERE backend_type = 'client backend' AND usesysid IS NOT NULL AND usename IS NULL"
)
_RETRIES = 8

_CONNECT_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidCatalogNameError,
)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release hook: skip asyncpg's reset query (a round trip per release). Engine
    sessions set no state; asyncpg rolls back an open transaction before calling this."""


def _is_connection_loss(exc: asyncpg.PostgresError) -> bool:
    """Connection exceptions (08) and operator intervention (57P: shutdown, crash)."""
    state = getattr(exc, "sqlstate", "") or ""
    return state.startswith(("08", "57P"))


async def _with_retries(action: Callable[[], Awaitable[object]]) -> None:
    """Run ``action``, again after a short random pause when it failed only because of
    concurrent catalog updates (deadlock, serialization, "tuple concurrently updated")."""
    for attempt in range(_RETRIES):
        try:
            await action()
            return
        except asyncpg.PostgresError as exc:
            if not _is_retryable(exc) or attempt == _RETRIES - 1:
                raise
            await asyncio.sleep(random.uniform(0.005, 0.05) * (attempt + 1))


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.DeadlockDetectedError | asyncpg.SerializationError):
        return True
    return isinstance(exc, asyncpg.PostgresError) and "concurrently" in str(exc)


_CONNINFO_PAIR = re.compile(r"\s*([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']*)")


def parse_connection_url(template: str) -> dict[str, str]:
    """libpq parameters from a ``postgresql://`` URL or a ``key=value`` string.

    Parsed while ``{{username}}``/``{{password}}`` are still placeholders, so credentials
    containing ``@``, ``:`` or ``/`` cannot change where the broker connects.
    """
    text = template.strip()
    params: dict[str, str] = {}
    if text.startswith(("postgres://", "postgresql://")):
        url = urllib.parse.urlsplit(text)
        if url.username:
            params["user"] = urllib.parse.unquote(url.username)
        if url.password:
            params["password"] = urllib.parse.unquote(url.password)
        if url.hostname:
            params["host"] = urllib.parse.unquote(url.hostname)
        try:
            port = url.port
        except ValueError as exc:
            raise InvalidRequest(f"connection_url: invalid port: {exc}") from exc
        if port:
            params["port"] = str(port)
        if url.path.strip("/"):
            params["dbname"] = urllib.parse.unquote(url.path.strip("/"))
        for key, values in urllib.parse.parse_qs(url.query).items():
            params[key] = values[-1]
        return params
    pos = 0
    while pos < len(text):
        match = _CONNINFO_PAIR.match(text, pos)
        if not match or match.end() == pos:
            raise InvalidRequest("connection_url: not a postgresql:// URL or key=value string")
        key, value = match.group(1), match.group(2)
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[key] = value
        pos = match.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    if not params:
        raise InvalidRequest("connection_url is empty")
    return params


def connect_arguments(config: ConnectionConfig) -> dict[str, Any]:
    """asyncpg keyword arguments for ``config``, placeholders filled."""
    params = parse_connection_url(config.connection_url)
    fill = {"username": config.username, "password": config.password}
    params = {key: render(value, fill) for key, value in params.items()}
    if not params.get("user") and config.username:
        params["user"] = config.username
    if not params.get("password") and config.password:
        params["password"] = config.password
    args: dict[str, Any] = {}
    for key, value in params.items():
        if key in ("host", "user", "password"):
            args[key] = value
        elif key == "port":
            if not value.isdigit() or not 0 < int(value) < 65536:
                raise InvalidRequest(f"connection_url: invalid port {value!r}")
            args["port"] = int(value)
        elif key == "dbname":
            args["database"] = value
        elif key == "sslmode":
            args["ssl"] = None if value in ("disable", "allow") else value
        elif key == "connect_timeout":
            args["timeout"] = float(value)
    return args


class PostgresEngine:
    username_limit = 63
    #: Revocations the sweep hands over at once (see ``revoke_users``).
    revoke_batch_size = 50

    def __init__(self, config: ConnectionConfig) -> None:
        self._config = config
        self._connect_args = connect_arguments(config)
        self._connect_args.setdefault("timeout", float(config.options.get("connect_timeout", 5)))
        self._max_size = int(config.options.get("max_open_connections", 8))
        # Waiting for a connection (saturated pool or slow target) is bounded too, so a
        # request fails with a 503 in bounded time instead of hanging.
        self._acquire_timeout = float(config.options.get("statement_timeout", 30))
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()

    def target_hosts(self) -> tuple[str, ...]:
        host = str(self._connect_args.get("host") or "localhost")  # libpq's default
        return tuple(h.strip() for h in host.split(",") if h.strip())

    # -- plumbing ---------------------------------------------------------------------------

    def _secrets(self, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
        return (*self._config.secrets, *extra)

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._pool_lock:
            if self._pool is None:
                try:
                    self._pool = await asyncpg.create_pool(
                        min_size=0,
                        max_size=self._max_size,
                        reset=_keep_session,
                        command_timeout=float(self._config.options.get("statement_timeout", 30)),
                        **self._connect_args,
                    )
                except _CONNECT_ERRORS as exc:
                    raise TargetUnreachable(
                        "cannot connect to PostgreSQL: " + redact(str(exc), self._secrets())
                    ) from exc
            assert self._pool is not None
            return self._pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection. Failing to get one is ``TargetUnreachable`` (nothing was
        sent); losing it mid-way is ``TargetUnavailable`` (the outcome is unknown)."""
        pool = await self._get_pool()
        try:
            conn = await pool.acquire(timeout=self._acquire_timeout)
        except _CONNECT_ERRORS as exc:
            raise TargetUnreachable(
                "cannot connect to PostgreSQL: "
                + redact(str(exc) or type(exc).__name__, self._secrets())
            ) from exc
        try:
            yield conn
        except _CONNECT_ERRORS as exc:
            raise TargetUnavailable(
                "PostgreSQL connection failed: " + redact(str(exc), self._secrets())
            ) from exc
        finally:
            await pool.release(conn)

    async def _run_in_transaction(
        self, conn: asyncpg.Connection, statements: list[str], values: Mapping[str, str]
    ) -> None:
        """Run ``statements`` atomically in one round trip, retrying what concurrency alone
        made fail.

        One simple-protocol query holding several statements is one implicit transaction
        (all or nothing), so no BEGIN/COMMIT round trips are needed. Statements that rewrite
        an ACL take the per-database advisory lock first; the lock is placed just before the
        first of them, so the password hashing of a CREATE ROLE before it still runs in
        parallel.
        """
        parts: list[str] = []
        for statement in statements:
            if _ACL_LOCK not in parts and _ACL_STATEMENT.search(statement):
                parts.append(_ACL_LOCK)
            parts.append(render(statement, values))
        script = ";\n".join(parts)
        await _with_retries(lambda: conn.execute(script))

    # -- DatabaseEngine ---------------------------------------------------------------------

    async def verify_connection(self) -> None:
        async with self._connection() as conn:
            await conn.fetchval("SELECT 1")

    async def create_user(self, request: NewUserRequest) -> None:
        statements = expand_statements(request.creation_statements or DEFAULT_CREATION)
        values = {
            "name": request.username,
            "username": request.username,
            "password": request.password,
            "expiration": format_expiration(request.expiration),
        }
        secrets = self._secrets((request.password,))
        async with self._connection() as conn:
            try:
                await self._run_in_transaction(conn, statements, values)
            except asyncpg.PostgresError as exc:
                message = redact(str(exc), secrets)
                if _is_connection_loss(exc):
                    # The server went away mid-way: the commit may or may not have happened.
                    raise TargetUnavailable(f"connection lost while creating: {message}") from exc
                try:
                    await self._rollback(conn, request, values)
                except (BrokerError, *_CONNECT_ERRORS) as rollback_exc:
                    # Only a confirmed rollback makes this a plain statement error; otherwise
                    # the outcome is unknown and the lease stays for the sweep.
                    raise TargetUnavailable(
                        f"creation statements failed ({message}) and the rollback could not "
                        "confirm the user is gone"
                    ) from rollback_exc
                raise StatementError(f"creation statements failed: {message}") from exc

    async def _rollback(
        self, conn: asyncpg.Connection, request: NewUserRequest, values: Mapping[str, str]
    ) -> None:
        # The creation transaction already rolled back; statements that cannot run in a
        # transaction are what explicit rollback statements are for.
        if request.rollback_statements:
            with contextlib.suppress(asyncpg.PostgresError):
                await self._run_in_transaction(
                    conn, expand_statements(request.rollback_statements), values
                )
        await self.revoke_user(RevokeUserRequest(request.username, ()))

    async def renew_user(self, request: RenewUserRequest) -> None:
        statements = expand_statements(request.renew_statements or DEFAULT_RENEW)
        values = {
            "name": request.username,
            "username": request.username,
            "expiration": format_expiration(request.expiration),
        }
        async with self._connection() as conn:
            try:
                await self._run_in_transaction(conn, statements, values)
            except asyncpg.PostgresError as exc:
                raise StatementError(
                    "renew statements failed: " + redact(str(exc), self._secrets())
                ) from exc

    async def set_password(self, request: SetPasswordRequest) -> None:
        statements = expand_statements(request.statements or DEFAULT_SET_PASSWORD)
        values = {
            "name": request.username,
            "username": request.username,
            "password": request.password,
        }
        async with self._connection() as conn:
            try:
                await self._run_in_transaction(conn, statements, values)
            except asyncpg.PostgresError as exc:
                message = redact(str(exc), self._secrets((request.password,)))
                if _is_connection_loss(exc):
                    raise TargetUnavailable(
                        f"connection lost changing a password: {message}"
                    ) from exc
                raise StatementError(f"rotation statements failed: {message}") from exc

    async def revoke_user(self, request: RevokeUserRequest) -> None:
        name = request.username
        ident = quote_ident(name)
        errors: list[str] = []
        async with self._connection() as conn:
            # Access goes first, in one round trip (simple query protocol): no new logins,
            # then no open sessions. A role that does not exist is already revoked.
            try:
                await conn.execute(
                    f"ALTER ROLE {ident} NOLOGIN; "
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE usename = {quote_literal(name)} AND pid <> pg_backend_pid()"
                )
            except asyncpg.UndefinedObjectError:
                return
            except asyncpg.PostgresError as exc:
                errors.append(str(exc))
            if request.revocation_statements:
                try:
                    await self._run_in_transaction(
                        conn,
                        expand_statements(request.revocation_statements),
                        {"name": name, "username": name},
                    )
                except asyncpg.PostgresError as exc:
                    errors.append(str(exc))
            # Whatever the statements did, the login must not survive. The common case is
            # one DROP; only a role that owns or was granted something needs the cleanup
            # (in every database it touched) first.
            for attempt in range(_RETRIES):
                try:
                    await conn.execute(f"DROP ROLE IF EXISTS {ident}")
                    await conn.execute(_TERMINATE_ORPHANED_SESSIONS)
                    return
                except asyncpg.DependentObjectsStillExistError as exc:
                    if attempt >= 2:
                        errors.append(str(exc))
                        break
                    try:
                        await self._drop_dependencies(conn, name)
                    except (asyncpg.PostgresError, TargetError) as cleanup_exc:
                        errors.append(str(cleanup_exc))
                        break
                except asyncpg.PostgresError as exc:
                    if not _is_retryable(exc):
                        errors.append(str(exc))
                        break
                    await asyncio.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
            if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name) is None:
                return
        raise TargetError(
            f"revoking {name} failed: " + redact("; ".join(errors[-3:]), self._secrets())
        )

    async def revoke_users(self, requests: Sequence[RevokeUserRequest]) -> list[str | None]:
        """Revoke many users; one error message (or None) per request.

        Users with their own revocation statements go one by one. The rest, the common
        case, are dropped together in one implicit transaction: end their sessions and
        ``DROP ROLE a, b, ...``; then, after the commit, end any session whose role is gone
        (one that logged in between the two steps: inside one transaction a NOLOGIN would
        not have stopped it either). If any of them owns something, the batch rolls back as
        a whole and each goes through ``revoke_user``, which cleans up first.
        """
        results: dict[int, str | None] = {}
        simple = [i for i, r in enumerate(requests) if not r.revocation_statements]
        if simple:
            names = [requests[i].username for i in simple]
            if await self._drop_roles_together(names):
                results.update(dict.fromkeys(simple))
        for i, request in enumerate(requests):
            if i in results:
                continue
            try:
                await self.revoke_user(request)
                results[i] = None
            except TargetError as exc:
                results[i] = exc.message
        return [results[i] for i in range(len(requests))]

    async def _drop_roles_together(self, names: Sequence[str]) -> bool:
        idents = ", ".join(quote_ident(n) for n in names)
        literals = ", ".join(quote_literal(n) for n in names)
        script = (
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE usename IN ({literals}) AND pid <> pg_backend_pid(); "
            f"DROP ROLE IF EXISTS {idents}"
        )
        async with self._connection() as conn:
            try:
                await _with_retries(lambda: conn.execute(script))
            except asyncpg.PostgresError:
                return False  # e.g. a role owns objects: one by one instead
            await conn.execute(_TERMINATE_ORPHANED_SESSIONS)
        return True

    async def _drop_dependencies(self, conn: asyncpg.Connection, name: str) -> None:
        """REASSIGN OWNED and DROP OWNED in each database where the role owns or holds
        something: both only act on the current database, and Vault's default stops at the
        first object owned elsewhere."""
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
        cleanup = [f"REASSIGN OWNED BY {ident} TO CURRENT_USER", f"DROP OWNED BY {ident}"]
        others = sorted({r["datname"] for r in rows if r["datname"] and not r["is_current"]})
        # dbid 0 (shared objects such as database privileges) is cleaned from any database.
        await self._run_in_transaction(conn, cleanup, {})
        for database in others:
            args = dict(self._connect_args, database=database)
            try:
                other = await asyncpg.connect(**args)
            except _CONNECT_ERRORS as exc:
                raise TargetError(f"cannot connect to database {database}: {exc}") from exc
            try:
                await self._run_in_transaction(other, cleanup, {})
            finally:
                await other.close()

    def pool_stats(self) -> dict[str, int]:
        pool = self._pool
        if pool is None:
            return {"in_use": 0, "idle": 0, "max": self._max_size}
        size, idle = pool.get_size(), pool.get_idle_size()
        return {"in_use": size - idle, "idle": idle, "max": pool.get_max_size()}

    async def list_users(self, prefix: str) -> list[str]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1) ORDER BY 1", prefix
            )
        return [row["rolname"] for row in rows]

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
