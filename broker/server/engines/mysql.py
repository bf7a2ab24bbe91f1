"""MySQL and MariaDB plugin on aiomysql.

Account statements in MySQL commit implicitly, so creation cannot be one transaction:
on failure the rollback statements (or a drop at every host) undo what ran.
Template statements are sent without parameters (aiomysql would otherwise %-format them):
``render_sql`` refuses any value holding a quote, a backslash or a control character, and
the broker's own statements pass user and host names as parameters (pymysql escapes them
for the server's SQL mode) or, for identifiers, through ``quote_ident``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiomysql
import pymysql

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
    template_values,
)
from broker.server.engines.driver_errors import describe, mark_statement
from broker.server.engines.mysql_connect import connect_arguments as connect_arguments
from broker.server.engines.mysql_connect import is_connect_error
from broker.server.engines.mysql_connect import parse_connection_url as parse_connection_url
from broker.server.engines.mysql_sessions import (
    ServerFacts,
    admin_warnings,
    kill_sessions,
    remaining_sessions,
)
from broker.server.engines.pooled import PooledEngine
from broker.server.engines.templates import expand_statements, render_sql
from broker.server.engines.verifiers import PASSWORD_AUTHENTICATION_OPTION, mysql_native_hash
from broker.server.redaction import redact

#: MySQL's default: its default plugin (caching_sha2_password on 8.0) hashes the password.
DEFAULT_CREATION = ("CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}'",)
#: MariaDB's: the same account (MariaDB's ``IDENTIFIED BY`` always means
#: mysql_native_password), but the statement, and so the general log and the binary log,
#: carries the hash instead of the password.
MARIADB_DEFAULT_CREATION = (
    "CREATE USER '{{name}}'@'%' IDENTIFIED BY PASSWORD '{{password_hash}}'",
)
_DRIVER_ERRORS = (pymysql.err.MySQLError, OSError, TimeoutError)


def quote_ident(name: str) -> str:
    """``name`` as a MySQL identifier: backquoted, a backquote in it doubled; NUL refused (MySQL
    does not allow it in identifiers). Account names are not identifiers: they go as
    parameters (``%s@%s``)."""
    if "\x00" in name:
        raise InvalidRequest("a name may not contain a NUL character")
    return "`" + name.replace("`", "``") + "`"


async def _run(cur: Any, statements: list[str], values: Mapping[str, str]) -> None:
    """Template statements one by one, without parameters (see the module's docstring).
    A failing statement's error is marked with its position (``driver_errors``)."""
    for index, statement in enumerate(statements, start=1):
        try:
            await cur.execute(render_sql(statement, values))
        except pymysql.err.MySQLError as exc:
            mark_statement(exc, index, len(statements))
            raise


async def _hosts(cur: Any, username: str) -> list[str]:
    """Every host an account of that name exists for."""
    await cur.execute("SELECT Host FROM mysql.user WHERE User = %s", (username,))
    return [row[0] for row in await cur.fetchall()]


class MySQLEngine(PooledEngine[Any, Any]):
    database_label = "MySQL"
    pool_errors = (Exception,)
    acquire_errors = _DRIVER_ERRORS
    use_errors = _DRIVER_ERRORS

    def __init__(self, config: ConnectionConfig, *, username_limit: int = 32) -> None:
        if PASSWORD_AUTHENTICATION_OPTION in config.options:
            raise InvalidRequest(
                f"{PASSWORD_AUTHENTICATION_OPTION} applies to postgresql-database-plugin "
                "only; MySQL statements can use {{password_hash}} instead"
            )
        self._args = connect_arguments(config)
        super().__init__(config)
        # Opt-in database-side expiry: MySQL has no VALID UNTIL, so a one-shot event per user
        # drops it at expiry (plus grace) even when every broker node is down.
        self._expiry_event = bool(config.options.get("expiry_event"))
        self._install_role_ready = False
        self._event_schema = str(
            config.options.get("expiry_event_schema") or self._args.get("db", "")
        )
        if self._expiry_event and not self._event_schema:
            raise InvalidRequest(
                "expiry_event needs a database for the events: expiry_event_schema, or a "
                "database in connection_url"
            )
        self._server = ServerFacts()
        self.username_limit = username_limit
        #: One user per call: the sweep's concurrency then applies per user.
        self.revoke_batch_size = 1

    def target_hosts(self) -> tuple[str, ...]:
        return (str(self._args.get("unix_socket") or self._args["host"]),)

    # -- the pool (PooledEngine) ------------------------------------------------------------

    async def _open_pool(self) -> Any:
        return await aiomysql.create_pool(
            minsize=0, maxsize=self._max_size, pool_recycle=300, **self._args
        )

    async def _acquire(self, pool: Any) -> Any:
        async with asyncio.timeout(self._acquire_timeout):
            return await pool.acquire()

    async def _release(self, pool: Any, conn: Any) -> None:
        pool.release(conn)  # not a coroutine

    async def _close_pool(self, pool: Any) -> None:
        pool.close()
        await pool.wait_closed()

    def _pool_sizes(self, pool: Any) -> tuple[int, int, int]:
        return int(pool.size), int(pool.freesize), int(pool.maxsize)

    def connection_lost(self, exc: BaseException) -> bool:
        return is_connect_error(exc)

    @asynccontextmanager
    async def _cursor(self) -> AsyncIterator[Any]:
        """A cursor on a pooled connection (errors as ``PooledEngine._connection``)."""
        async with self._connection() as conn, conn.cursor() as cur:
            yield cur

    async def verify_connection(self) -> None:
        async with self._cursor() as cur:
            await cur.execute("SELECT 1")
            if self._expiry_event:
                await cur.execute("SELECT @@event_scheduler")
                row = await cur.fetchone()
                if not row or str(row[0]).upper() != "ON":
                    raise TargetError(
                        "expiry_event needs the server's event scheduler: SET GLOBAL "
                        "event_scheduler = ON (and event_scheduler=ON in its config)"
                    )

    # -- the expiry event -----------------------------------------------------------------

    def _event_name(self, username: str) -> str:
        return f"{quote_ident(self._event_schema)}.{quote_ident('brk_exp_' + username)}"

    @staticmethod
    def _event_time(moment: dt.datetime) -> str:
        return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")

    async def _create_expiry_event(self, cur: Any, username: str, at: dt.datetime) -> None:
        mariadb = await self._server.is_mariadb(cur)
        accounts = [(username, host) for host in await _hosts(cur, username)]
        body = ["DECLARE CONTINUE HANDLER FOR SQLEXCEPTION BEGIN END;"]
        body += ["ALTER USER %s@%s ACCOUNT LOCK;"] * len(accounts)
        if mariadb:
            body.append("KILL USER %s;")
        body += ["DROP USER IF EXISTS %s@%s;"] * len(accounts)
        args: list[str] = [self._event_time(at)]
        args += [v for account in accounts for v in account]
        if mariadb:
            args.append(username)
        args += [v for account in accounts for v in account]
        await cur.execute(
            f"CREATE EVENT {self._event_name(username)} ON SCHEDULE AT %s "
            f"ON COMPLETION NOT PRESERVE DO BEGIN {' '.join(body)} END",
            args,
        )

    # -- DatabaseEngine ---------------------------------------------------------------------

    async def create_user(self, request: NewUserRequest) -> None:
        password_hash = mysql_native_hash(request.password)
        values = template_values(
            request.username,
            password=request.password,
            password_hash=password_hash,
            expiration=request.expiration,
        )
        secrets = self._secrets((request.password, password_hash))
        try:
            async with self._cursor() as cur:
                default = (
                    MARIADB_DEFAULT_CREATION
                    if await self._server.is_mariadb(cur)
                    else DEFAULT_CREATION
                )
                statements = expand_statements(request.creation_statements or default)
                await _run(cur, statements, values)
                if self._expiry_event:
                    await self._create_expiry_event(cur, request.username, request.expiration)
                await self._mark(cur, request.username)
        except TargetUnreachable:
            raise  # nothing was sent
        except TargetUnavailable as exc:
            # Lost mid-way: roll back if we can; either way the outcome stays unknown and
            # the lease is left to the sweep.
            with contextlib.suppress(BrokerError):
                await self._rollback(request, values)
            raise TargetUnavailable(exc.message) from exc
        except pymysql.err.MySQLError as exc:
            await self._undo_failed_creation(
                redact(str(exc), secrets), exc, lambda: self._rollback(request, values)
            )

    async def _rollback(self, request: NewUserRequest, values: Mapping[str, str]) -> None:
        """Run the rollback statements, then make sure the user is gone at every host.

        A failure of that last step propagates as ``TargetError``, so the lease manager
        leaves the lease to the sweep instead of marking it failed."""
        if request.rollback_statements:
            with contextlib.suppress(pymysql.err.MySQLError, TargetError):
                async with self._cursor() as cur:
                    await _run(cur, expand_statements(request.rollback_statements), values)
        await self.revoke_user(RevokeUserRequest(request.username, ()))

    async def renew_user(self, request: RenewUserRequest) -> None:
        if self._expiry_event:
            async with self._cursor() as cur:
                await cur.execute(
                    f"ALTER EVENT {self._event_name(request.username)} ON SCHEDULE AT %s",
                    (self._event_time(request.expiration),),
                )
        if not request.renew_statements:
            return
        values = template_values(request.username, expiration=request.expiration)
        try:
            async with self._cursor() as cur:
                await _run(cur, expand_statements(request.renew_statements), values)
        except pymysql.err.MySQLError as exc:
            raise StatementError(f"renew statements failed: {describe(exc)}") from exc

    async def user_exists(self, username: str) -> bool:
        """A parameterised look-up of the name at any host."""
        try:
            async with self._cursor() as cur:
                await cur.execute("SELECT 1 FROM mysql.user WHERE User = %s LIMIT 1", (username,))
                return await cur.fetchone() is not None
        except pymysql.err.MySQLError as exc:
            raise TargetError(
                "looking up the user failed: " + redact(str(exc), self._secrets())
            ) from exc

    async def set_password(self, request: SetPasswordRequest) -> None:
        """Without statements: the account at every host it exists for (Vault's default
        names only '%', which misses 'root'@'localhost' and the like). On MariaDB the
        statement carries the mysql_native_password hash, which is what ``IDENTIFIED BY``
        stores there anyway; on MySQL the password, for the account's plugin to hash
        (caching_sha2_password's stored form is salted by the server: see the README)."""
        password_hash = mysql_native_hash(request.password)
        values = template_values(
            request.username, password=request.password, password_hash=password_hash
        )
        try:
            async with self._cursor() as cur:
                if request.statements:
                    await _run(cur, expand_statements(request.statements), values)
                    return
                hosts = await _hosts(cur, request.username)
                if not hosts:
                    raise StatementError(f"no account {request.username!r} on the server")
                if await self._server.is_mariadb(cur):
                    statement, secret = "ALTER USER %s@%s IDENTIFIED BY PASSWORD %s", password_hash
                else:
                    statement, secret = "ALTER USER %s@%s IDENTIFIED BY %s", request.password
                for host in hosts:
                    await cur.execute(statement, (request.username, host, secret))
        except pymysql.err.MySQLError as exc:
            raise StatementError(f"rotation statements failed: {describe(exc)}") from exc

    async def revoke_user(self, request: RevokeUserRequest) -> None:
        """Lock every account of that name, end its sessions, run the statements, drop.

        Successful only when no account of that name is left and none of its sessions
        remain. A ``KILL`` refused is reported, not swallowed; a dropped user's sessions
        still carry its name in the process list, so the retry finds them. Seeing other
        users' sessions needs ``PROCESS``: without it nothing can be verified, and the
        revocation says so instead of claiming success.
        """
        name = request.username
        try:
            errors = await self._revoke(request)
        except pymysql.err.MySQLError as exc:
            # A look-up the admin may not make (SELECT on mysql.user, the process list).
            raise TargetError(
                f"revoking {name} failed: " + redact(str(exc), self._secrets())
            ) from exc
        if errors is not None:
            raise TargetError(
                f"revoking {name} failed: " + redact("; ".join(errors[-3:]), self._secrets())
            )

    async def _revoke(self, request: RevokeUserRequest) -> list[str] | None:
        """The steps of ``revoke_user``; None when revoked, else what went wrong. Each
        step runs whatever the one before it managed (best effort)."""
        name = request.username
        errors: list[str] = []
        async with self._cursor() as cur:
            if self._expiry_event:
                await cur.execute(f"DROP EVENT IF EXISTS {self._event_name(name)}")
            hosts = await _hosts(cur, name)
            await self._each_account(cur, "ALTER USER %s@%s ACCOUNT LOCK", name, hosts, errors)
            kill_error = await kill_sessions(cur, name)
            if hosts and request.revocation_statements:
                try:
                    statements = expand_statements(request.revocation_statements)
                    await _run(cur, statements, template_values(name))
                except pymysql.err.MySQLError as exc:
                    errors.append(f"revocation statements failed: {describe(exc)}")
            await self._each_account(cur, "DROP USER IF EXISTS %s@%s", name, hosts, errors)
            await cur.execute("SELECT COUNT(*) FROM mysql.user WHERE User = %s", (name,))
            row = await cur.fetchone()
            if row and row[0] == 0:  # the user is gone: are its sessions?
                problem = await self._sessions_problem(cur, name, kill_error)
                if problem is None:
                    return None
                errors.append(problem)
        return errors

    @staticmethod
    async def _each_account(
        cur: Any, statement: str, name: str, hosts: list[str], errors: list[str]
    ) -> None:
        """``statement`` (``%s@%s``) for the account at each host; failures into ``errors``."""
        for host in hosts:
            try:
                await cur.execute(statement, (name, host))
            except pymysql.err.MySQLError as exc:
                errors.append(str(exc))

    async def _sessions_problem(self, cur: Any, name: str, kill_error: str) -> str | None:
        """Why sessions of the dropped user ``name`` may live on, naming the fix; None when
        none remain and the admin can see that."""
        remaining = await remaining_sessions(cur, name, wait=not kill_error)
        if remaining == 0 and await self._server.sees_all_sessions(cur):
            return None
        me = await self._server.account(cur)
        if not remaining:
            return (
                f"cannot tell whether sessions of {name} remain: the admin lacks "
                f"PROCESS, without which other users' sessions are invisible "
                f"(GRANT PROCESS ON *.* TO {me})"
            )
        if kill_error:
            hint = await self._server.kill_grant_hint(cur, me)
            why = f"KILL was refused ({kill_error}): {hint}"
        else:
            why = "they were killed but did not end"
        return f"{remaining} session(s) of {name} remain: {why}"

    async def check_admin(self, creation_statements: Sequence[str] = ()) -> list[str]:
        """See ``mysql_sessions.admin_warnings``. Privileges the creation statements grant
        need the admin to hold them WITH GRANT OPTION; the server checks that when they
        run."""
        async with self._cursor() as cur:
            privileges = await self._server.global_privileges(cur)
            me = await self._server.account(cur)
            mariadb = await self._server.is_mariadb(cur)
        try:
            async with self._cursor() as cur:
                await cur.execute("SELECT 1 FROM mysql.user LIMIT 1")
            reads_user_table = True
        except pymysql.err.MySQLError:
            reads_user_table = False
        return admin_warnings(privileges, me, mariadb=mariadb, reads_user_table=reads_user_table)

    async def revoke_users(self, requests: Sequence[RevokeUserRequest]) -> list[str | None]:
        """One by one: MySQL account statements are serialised inside the server anyway,
        and each user needs its own hosts looked up and sessions killed."""
        return await self._revoke_each(requests)

    async def list_users(self, prefix: str) -> list[str]:
        async with self._cursor() as cur:
            await cur.execute(
                "SELECT DISTINCT User FROM mysql.user WHERE LEFT(User, %s) = %s ORDER BY 1",
                (len(prefix), prefix),
            )
            return [row[0] for row in await cur.fetchall()]

    @property
    def _install_role(self) -> str:
        """``broker_<install id>_<admin tag>``: one role per install and admin account (32
        characters, MySQL's limit), since only a role's creator may grant it: two
        connections with different admins on one server each mark with their own."""
        admin = hashlib.sha256(self._config.username.encode()).hexdigest()[:8]
        return f"broker_{self._config.install_id[:16]}_{admin}"

    async def _mark(self, cur: Any, username: str) -> None:
        """Mark a new user as this install's: it is granted the role ``_install_role``
        (created once, holding no privilege, never a default role, so the user gains
        nothing). MariaDB has no user comments or attributes; roles
        it has had since 10.0.5, and whoever creates users may create roles, and holds
        the ADMIN OPTION on those it created. MySQL 8 works the same way if the admin may
        grant roles (ROLE_ADMIN); its own ``ALTER USER ... ATTRIBUTE`` would be the
        alternative there. A failure fails the creation, which is then rolled back."""
        if not self._config.install_id:
            return
        role = quote_ident(self._install_role)
        for attempt in range(2):
            if not self._install_role_ready:
                await cur.execute(f"CREATE ROLE IF NOT EXISTS {role}")
                self._install_role_ready = True
            try:
                for host in await _hosts(cur, username):
                    await cur.execute(f"GRANT {role} TO %s@%s", (username, host))
                return
            except pymysql.err.MySQLError:
                self._install_role_ready = False  # dropped by someone? made again
                if attempt:
                    raise

    async def marked_users(self, prefix: str) -> set[str]:
        if not self._config.install_id:
            return set()
        # Any admin's role of this install: the user may have been made through another
        # connection to the same server.
        queries = (
            "SELECT User FROM mysql.roles_mapping WHERE Role LIKE %s",  # MariaDB
            "SELECT TO_USER FROM mysql.role_edges WHERE FROM_USER LIKE %s",  # MySQL 8
        )
        pattern = f"broker\\_{self._config.install_id[:16]}\\_%"
        async with self._cursor() as cur:
            for query in queries:
                try:
                    await cur.execute(query, (pattern,))
                except pymysql.err.ProgrammingError:
                    continue  # the other server's table
                return {row[0] for row in await cur.fetchall() if row[0].startswith(prefix)}
        return set()
