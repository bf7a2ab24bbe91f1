"""PostgreSQL plugin on asyncpg: issuing, renewing and rotating through statement
templates, with revocation in ``postgres_revoke`` and the admin check in ``postgres_admin``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence

import asyncpg

from broker.exceptions import BrokerError, StatementError, TargetError, TargetUnavailable
from broker.server.engines.base import (
    ConnectionConfig,
    NewUserRequest,
    RenewUserRequest,
    RevokeUserRequest,
    SetPasswordRequest,
    install_marker,
    template_values,
)
from broker.server.engines.driver_errors import describe
from broker.server.engines.pooled import PooledEngine
from broker.server.engines.postgres_admin import admin_warnings
from broker.server.engines.postgres_admin import granted_roles as granted_roles
from broker.server.engines.postgres_common import (
    CONNECT_ERRORS,
    is_connection_loss,
    run_in_transaction,
)
from broker.server.engines.postgres_common import quote_ident as quote_ident
from broker.server.engines.postgres_common import quote_literal as quote_literal
from broker.server.engines.postgres_revoke import RoleRevocation, drop_roles_together
from broker.server.engines.postgres_url import connect_arguments as connect_arguments
from broker.server.engines.postgres_url import parse_connection_url as parse_connection_url
from broker.server.engines.templates import expand_statements
from broker.server.engines.verifiers import password_authentication, scram_sha256_verifier
from broker.server.redaction import redact

DEFAULT_CREATION = (
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
)
DEFAULT_RENEW = ("ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}'",)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release hook: skip asyncpg's reset query (a round trip per release). Engine
    sessions set no state; asyncpg rolls back an open transaction before calling this."""


class PostgresEngine(PooledEngine[asyncpg.Pool, asyncpg.Connection]):
    username_limit = 63
    #: Revocations the sweep hands over at once (see ``revoke_users``).
    revoke_batch_size = 50

    database_label = "PostgreSQL"
    pool_errors = CONNECT_ERRORS
    acquire_errors = CONNECT_ERRORS
    use_errors = CONNECT_ERRORS
    rollback_errors = (BrokerError, *CONNECT_ERRORS)

    def __init__(self, config: ConnectionConfig) -> None:
        #: Whether ``{{password}}`` renders as the SCRAM verifier (a 400 on write if the
        #: option holds anything else).
        self._send_verifier = password_authentication(config.options) == "scram-sha-256"
        self._connect_args = connect_arguments(config)
        self._connect_args.setdefault("timeout", float(config.options.get("connect_timeout", 5)))
        super().__init__(config)

    async def _password_forms(
        self, password: str, statements: Sequence[str]
    ) -> tuple[str, str | None]:
        """(what ``{{password}}`` renders as, the verifier for ``{{password_hash}}``, None
        when no statement needs one).

        With ``password_authentication = scram-sha-256`` (the default) the statement
        carries the verifier, so the password itself never reaches the server's log,
        ``pg_stat_activity`` or ``pg_stat_statements``. It saves the server no CPU:
        PostgreSQL checks a verifier it is given against the empty password, which costs
        the same 4,096 PBKDF2 rounds as hashing a password (``bench`` step
        ``verifier_cpu``). The broker computes it before taking a connection, in a thread
        (about 3 ms of CPU; hashlib releases the GIL), so the event loop keeps serving.
        """
        if not self._send_verifier and not any("password_hash" in s for s in statements):
            return password, None
        verifier = await asyncio.to_thread(scram_sha256_verifier, password)
        return (verifier if self._send_verifier else password), verifier

    def _check_server(self, conn: asyncpg.Connection) -> None:
        """PostgreSQL before 10 would store a verifier as if it were the password (which
        nobody has), so it is refused there instead; asyncpg knows the version from the
        connection's start-up, no query needed."""
        if self._send_verifier and conn.get_server_version().major < 10:
            raise StatementError(
                "password_authentication=scram-sha-256 needs PostgreSQL 10 or later; "
                "set password_authentication=password on this connection"
            )

    def target_hosts(self) -> tuple[str, ...]:
        host = str(self._connect_args.get("host") or "localhost")  # libpq's default
        return tuple(h.strip() for h in host.split(",") if h.strip())

    # -- the pool (PooledEngine) ------------------------------------------------------------

    async def _open_pool(self) -> asyncpg.Pool:
        return await asyncpg.create_pool(
            min_size=0,
            max_size=self._max_size,
            reset=_keep_session,
            command_timeout=float(self._config.options.get("statement_timeout", 30)),
            **self._connect_args,
        )

    async def _acquire(self, pool: asyncpg.Pool) -> asyncpg.Connection:
        return await pool.acquire(timeout=self._acquire_timeout)

    async def _release(self, pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
        await pool.release(conn)

    async def _close_pool(self, pool: asyncpg.Pool) -> None:
        await pool.close()

    def _pool_sizes(self, pool: asyncpg.Pool) -> tuple[int, int, int]:
        return pool.get_size(), pool.get_idle_size(), pool.get_max_size()

    # -- DatabaseEngine ---------------------------------------------------------------------

    async def verify_connection(self) -> None:
        async with self._connection() as conn:
            await conn.fetchval("SELECT 1")

    async def create_user(self, request: NewUserRequest) -> None:
        statements = expand_statements(request.creation_statements or DEFAULT_CREATION)
        rendered, verifier = await self._password_forms(
            request.password, (*statements, *request.rollback_statements)
        )
        values = template_values(
            request.username,
            password=rendered,
            password_hash=verifier,
            expiration=request.expiration,
        )
        secrets = self._secrets((request.password, rendered))
        async with self._connection() as conn:
            self._check_server(conn)
            marked = [*statements, *self._mark(request.username)]
            try:
                await run_in_transaction(conn, marked, values)
            except asyncpg.PostgresError as exc:
                message = redact(str(exc), secrets)
                if is_connection_loss(exc):
                    # The server went away mid-way: the commit may or may not have happened.
                    raise TargetUnavailable(f"connection lost while creating: {message}") from exc
                await self._undo_failed_creation(
                    message, exc, lambda: self._rollback(conn, request, values)
                )

    async def _rollback(
        self, conn: asyncpg.Connection, request: NewUserRequest, values: Mapping[str, str]
    ) -> None:
        # The creation transaction already rolled back; statements that cannot run in a
        # transaction are what explicit rollback statements are for.
        if request.rollback_statements:
            with contextlib.suppress(asyncpg.PostgresError):
                await run_in_transaction(
                    conn, expand_statements(request.rollback_statements), values
                )
        await self.revoke_user(RevokeUserRequest(request.username, ()))

    async def renew_user(self, request: RenewUserRequest) -> None:
        statements = expand_statements(request.renew_statements or DEFAULT_RENEW)
        values = template_values(request.username, expiration=request.expiration)
        async with self._connection() as conn:
            try:
                await run_in_transaction(conn, statements, values)
            except asyncpg.PostgresError as exc:
                raise StatementError(f"renew statements failed: {describe(exc)}") from exc

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
        one ALTER ROLE with the name and password (the verifier, by default) quoted in
        code (no template). For rotate-root too: the broker keeps the password to log in
        with, the server gets the verifier."""
        rendered, verifier = await self._password_forms(request.password, request.statements)
        values = template_values(request.username, password=rendered, password_hash=verifier)
        if request.statements:
            statements = expand_statements(request.statements)
        else:
            statements = [
                f"ALTER ROLE {quote_ident(request.username)} "
                f"WITH PASSWORD {quote_literal(rendered)}"
            ]
            values = {}
        async with self._connection() as conn:
            self._check_server(conn)
            try:
                await run_in_transaction(conn, statements, values)
            except asyncpg.PostgresError as exc:
                message = describe(exc)  # the text may quote the statement
                if is_connection_loss(exc):
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
        revocation = RoleRevocation(request.username, self._connect_args, self._secrets())
        async with self._connection() as conn:
            if await revocation.run(conn, request.revocation_statements):
                return
        raise TargetError(
            f"revoking {request.username} failed: "
            + redact("; ".join(revocation.errors[-3:]), self._secrets())
        )

    async def revoke_users(self, requests: Sequence[RevokeUserRequest]) -> list[str | None]:
        """Revoke many users; one error message (or None) per request.

        Users with their own revocation statements go one by one. The rest, the common
        case, are dropped together in one implicit transaction when none of them has a
        session open (``drop_roles_together``). If one has a session, or owns something,
        or the admin may not end a session, each goes through ``revoke_user``, which deals
        with it (or says why it cannot).
        """
        results: dict[int, str | None] = {}
        simple = [i for i, r in enumerate(requests) if not r.revocation_statements]
        if simple:
            names = [requests[i].username for i in simple]
            async with self._connection() as conn:
                together = await drop_roles_together(conn, names, self._secrets())
            if together is not None:
                results.update(zip(simple, together, strict=True))
        rest = [i for i in range(len(requests)) if i not in results]
        one_by_one = await self._revoke_each([requests[i] for i in rest])
        results.update(zip(rest, one_by_one, strict=True))
        return [results[i] for i in range(len(requests))]

    async def check_admin(self, creation_statements: Sequence[str] = ()) -> list[str]:
        """See ``postgres_admin.admin_warnings``; a superuser lacks nothing."""
        async with self._connection() as conn:
            return await admin_warnings(conn, creation_statements)

    async def list_users(self, prefix: str) -> list[str]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1) ORDER BY 1", prefix
            )
        return [row["rolname"] for row in rows]

    def _mark(self, username: str) -> list[str]:
        """The statement that marks a new user as this install's: a comment on the role,
        sent by the broker after the role's creation statements, in their transaction (a
        user exists marked or not at all). A comment, not a membership, so the user gains
        nothing by it; the admin may set it as it may create roles (CREATEROLE; from
        PostgreSQL 16, the ADMIN OPTION its creator holds)."""
        if not self._config.install_id:
            return []
        marker = quote_literal(install_marker(self._config.install_id))
        return [f"COMMENT ON ROLE {quote_ident(username)} IS {marker}"]

    async def marked_users(self, prefix: str) -> set[str]:
        if not self._config.install_id:
            return set()
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)"
                " AND shobj_description(oid, 'pg_authid') = $2",
                prefix,
                install_marker(self._config.install_id),
            )
        return {row["rolname"] for row in rows}
