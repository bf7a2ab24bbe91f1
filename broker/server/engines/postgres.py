"""PostgreSQL plugin on asyncpg."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from broker.exceptions import (
    BrokerError,
    InvalidRequest,
    StatementError,
    TargetError,
    TargetUnavailable,
    TargetUnreachable,
)
from broker.server.engines.base import (
    ConnectionConfig,
    NewUserRequest,
    RenewUserRequest,
    RevokeUserRequest,
    SetPasswordRequest,
    format_expiration,
)
from broker.server.engines.templates import expand_statements, render, render_sql
from broker.server.redaction import redact

DEFAULT_CREATION = (
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
)
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
    """``name`` as a PostgreSQL identifier, as the server's ``quote_ident`` writes it
    (always quoted): ``"`` doubled. NUL ends a string in the server, so it is refused."""
    if "\x00" in name:
        raise InvalidRequest("a name may not contain a NUL character")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """``value`` as a string literal, as the server's ``quote_literal`` writes it: ``'``
    doubled, and with a backslash the ``E''`` form with backslashes doubled, so the result
    means the same whatever ``standard_conforming_strings`` is. NUL is refused."""
    if "\x00" in value:
        raise InvalidRequest("a value may not contain a NUL character")
    quoted = "'" + value.replace("'", "''") + "'"
    if "\\" in value:
        return "E" + quoted.replace("\\", "\\\\")
    return quoted


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


_NAME = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
# GRANT of roles (no ON clause): GRANT a, "b" TO ...
_GRANT_ROLES = re.compile(rf"\bGRANT\s+({_NAME}(?:\s*,\s*{_NAME})*)\s+TO\b", re.IGNORECASE)


def granted_roles(statements: Sequence[str]) -> list[str]:
    """The roles that ``GRANT role TO ...`` statements grant (the membership kind, without
    ON), for ``check_admin``: names as the server stores them (unquoted ones folded)."""
    found: list[str] = []
    for statement in statements:
        for match in _GRANT_ROLES.finditer(statement):
            for part in re.findall(_NAME, match.group(1)):
                quoted = part.startswith('"')
                name = part[1:-1].replace('""', '"') if quoted else part.lower()
                if name.upper() not in ("ALL", "SELECT", "USAGE") and name not in found:
                    found.append(name)
    return found


def _sessions_remain(name: str, remaining: int, why: str) -> str:
    """The reason a revocation is not complete, naming the cause and its fix."""
    return f"{remaining} session(s) of {name} remain: {why}"


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
            parts.append(render_sql(statement, values))
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

    async def user_exists(self, username: str) -> bool:
        """A parameterised look-up. A name longer than 63 bytes does not exist: PostgreSQL
        would cut it, in the query and in any statement, to another role's name."""
        if len(username.encode()) > self.username_limit or "\x00" in username:
            return False
        async with self._connection() as conn:
            try:
                found = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", username)
            except asyncpg.PostgresError as exc:
                raise TargetError(
                    "looking up the role failed: " + redact(str(exc), self._secrets())
                ) from exc
        return found is not None

    async def set_password(self, request: SetPasswordRequest) -> None:
        """The role's own statements, with values checked by ``render_sql``; without any,
        one ALTER ROLE with the name and password quoted in code (no template)."""
        values = {
            "name": request.username,
            "username": request.username,
            "password": request.password,
        }
        if request.statements:
            statements = expand_statements(request.statements)
        else:
            statements = [
                f"ALTER ROLE {quote_ident(request.username)} "
                f"WITH PASSWORD {quote_literal(request.password)}"
            ]
            values = {}
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
        """Successful only when the role is gone and none of its sessions remain.

        A role whose sessions cannot be ended (the admin lacks ``pg_signal_backend``) is
        kept, without login and without its group memberships, and the error says why: a
        dropped role's sessions live on with no name left to find them by, so the retry
        needs the role. A role that does not exist is already revoked.
        """
        name = request.username
        ident = quote_ident(name)
        errors: list[str] = []
        async with self._connection() as conn:
            oid = await conn.fetchval("SELECT oid FROM pg_roles WHERE rolname = $1", name)
            if oid is None:
                return
            # Access goes first: no new logins, then no open sessions.
            try:
                await conn.execute(f"ALTER ROLE {ident} NOLOGIN")
            except asyncpg.UndefinedObjectError:
                return
            except asyncpg.PostgresError as exc:
                errors.append(str(exc))
            remaining, why = await self._end_sessions(conn, [oid])
            if remaining:
                await self._strip_memberships(conn, oid, ident)
                raise TargetError(_sessions_remain(name, remaining, why))
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
                    break
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
                # A login that slipped in while the role was being dropped.
                remaining, why = await self._end_sessions(conn, [oid])
                if not remaining:
                    return
                errors.append(_sessions_remain(name, remaining, why))
        raise TargetError(
            f"revoking {name} failed: " + redact("; ".join(errors[-3:]), self._secrets())
        )

    async def _end_sessions(self, conn: asyncpg.Connection, oids: list[int]) -> tuple[int, str]:
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
            why = "pg_terminate_backend failed: " + redact(str(exc), self._secrets())
        deadline = time.monotonic() + (0 if why else _SESSION_EXIT_WAIT)
        while True:
            remaining = int(await conn.fetchval(_COUNT_SESSIONS, oids))
            if not remaining or time.monotonic() >= deadline:
                return remaining, why or "they were signalled but did not end"
            await asyncio.sleep(0.02)

    @staticmethod
    async def _strip_memberships(conn: asyncpg.Connection, oid: int, ident: str) -> None:
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

    async def revoke_users(self, requests: Sequence[RevokeUserRequest]) -> list[str | None]:
        """Revoke many users; one error message (or None) per request.

        Users with their own revocation statements go one by one. The rest, the common
        case, are dropped together in one implicit transaction when none of them has a
        session open: end any session that opened meanwhile and ``DROP ROLE a, b, ...``;
        then, after the commit, make sure no session of theirs remains. If one has a
        session, or owns something, or the admin may not end a session, each goes through
        ``revoke_user``, which deals with it (or says why it cannot).
        """
        results: dict[int, str | None] = {}
        simple = [i for i, r in enumerate(requests) if not r.revocation_statements]
        if simple:
            names = [requests[i].username for i in simple]
            together = await self._drop_roles_together(names)
            if together is not None:
                results.update(zip(simple, together, strict=True))
        for i, request in enumerate(requests):
            if i in results:
                continue
            try:
                await self.revoke_user(request)
                results[i] = None
            except TargetError as exc:
                results[i] = exc.message
        return [results[i] for i in range(len(requests))]

    async def _drop_roles_together(self, names: Sequence[str]) -> list[str | None] | None:
        """One outcome per name, or None when they must go one by one."""
        async with self._connection() as conn:
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
                await _with_retries(lambda: conn.execute(script))
            except asyncpg.PostgresError:
                return None  # e.g. a role owns objects: one by one instead
            remaining, why = await self._end_sessions(conn, list(oids.values()))
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

    async def _drop_dependencies(self, conn: asyncpg.Connection, name: str) -> None:
        """REASSIGN OWNED and DROP OWNED in each database where the role owns or holds
        something: both only act on the current database, and Vault's default stops at the
        first object owned elsewhere (hashicorp/vault#1535, #1857).

        Both need the privileges of the role. A superuser has them; a ``CREATEROLE`` admin
        grants itself the role first (allowed on PostgreSQL 15 for any role it may manage,
        and on 16 through the ADMIN OPTION it holds on the roles it created); the grant
        goes with the role."""
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
        await self._run_in_transaction(conn, cleanup, {})
        for database in others:
            args = dict(self._connect_args, database=database)
            try:
                other = await asyncpg.connect(**args)
            except _CONNECT_ERRORS as exc:
                raise TargetError(
                    f"cannot connect to database {database} to remove what {name} holds "
                    f"there (GRANT CONNECT ON DATABASE {quote_ident(database)} to the admin): "
                    + redact(str(exc), self._secrets())
                ) from exc
            try:
                await self._run_in_transaction(other, cleanup, {})
            finally:
                await other.close()

    async def check_admin(self, creation_statements: Sequence[str] = ()) -> list[str]:
        """What the admin cannot do of what issuing and revoking need, one warning per
        missing privilege with the statement that grants it: create roles, grant the group
        roles ``creation_statements`` grant (PostgreSQL 16 wants ADMIN OPTION on them),
        end other roles' sessions, and connect to every database to clean up there."""
        groups = granted_roles(creation_statements)
        async with self._connection() as conn:
            me_row = await conn.fetchrow(
                "SELECT current_user AS me, rolsuper, rolcreaterole, "
                "pg_has_role(current_user, 'pg_signal_backend', 'USAGE') AS can_signal, "
                "current_setting('server_version_num')::int AS version "
                "FROM pg_roles WHERE rolname = current_user"
            )
            if me_row is None:
                return []
            me = quote_ident(str(me_row["me"]))
            if me_row["rolsuper"]:
                return []
            warnings: list[str] = []
            if not me_row["rolcreaterole"]:
                warnings.append(
                    f"the admin {me} cannot create roles, so no credential can be issued: "
                    f"ALTER ROLE {me} CREATEROLE"
                )
            if not me_row["can_signal"]:
                warnings.append(
                    f"the admin {me} cannot end other roles' sessions: a lease whose user "
                    "still has a session open cannot be revoked (it stays failing): "
                    f"GRANT pg_signal_backend TO {me}"
                )
            rows = await conn.fetch(
                "SELECT g.name, r.rolsuper, "
                "r.oid IS NOT NULL AND pg_has_role(current_user, r.oid, "
                "'MEMBER WITH ADMIN OPTION') AS admin_option "
                "FROM unnest($1::text[]) AS g(name) LEFT JOIN pg_roles r ON r.rolname = g.name",
                groups,
            )
            for row in rows:
                group = quote_ident(str(row["name"]))
                if row["rolsuper"] is None:
                    warnings.append(f"creation statements grant role {group}, which does not exist")
                elif row["admin_option"]:
                    continue
                elif row["rolsuper"] or me_row["version"] >= 160000:
                    warnings.append(
                        f"the admin {me} cannot grant {group} to the users it creates: "
                        f"GRANT {group} TO {me} WITH ADMIN OPTION"
                    )
            databases = await conn.fetch(
                "SELECT datname FROM pg_database "
                "WHERE datallowconn AND NOT has_database_privilege(datname, 'CONNECT') "
                "ORDER BY 1"
            )
            for row in databases:
                database = quote_ident(str(row["datname"]))
                warnings.append(
                    f"the admin {me} cannot connect to database {database}, so it cannot "
                    "remove what a user owns or was granted there when revoking it: "
                    f"GRANT CONNECT ON DATABASE {database} TO {me}"
                )
        return warnings

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
