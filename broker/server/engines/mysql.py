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
import re
import time
import urllib.parse
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
    format_expiration,
)
from broker.server.engines.templates import expand_statements, render, render_sql
from broker.server.redaction import redact

DEFAULT_CREATION = ("CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}'",)

_GO_DSN = re.compile(
    r"^(?:(?P<user>[^:@]*)(?::(?P<password>.*))?@)?"
    r"(?:(?P<net>tcp|unix)\((?P<addr>[^)]*)\))?"
    r"/(?P<db>[^?]*)(?:\?(?P<params>.*))?$"
)
# Errors that mean the server is unreachable or refused us, as opposed to a bad statement.
_CONNECT_ERROR_CODES = {1040, 1045, 1049, 1129, 1130, 2002, 2003, 2005, 2006, 2013}
#: KILL of a thread that no longer exists (ended by itself meanwhile).
_UNKNOWN_THREAD = 1094
#: How long revocation waits for killed sessions to leave the process list.
_SESSION_EXIT_WAIT = 5.0


def parse_connection_url(template: str) -> dict[str, str]:
    """Connection fields from Vault's Go driver DSN
    (``{{username}}:{{password}}@tcp(host:port)/db?params``) or a ``mysql://`` URL.

    Parsed with the placeholders still in, so credentials cannot change the address.
    """
    text = template.strip()
    fields: dict[str, str] = {}
    if text.startswith(("mysql://", "mariadb://")):
        url = urllib.parse.urlsplit(text)
        fields["user"] = urllib.parse.unquote(url.username or "")
        fields["password"] = urllib.parse.unquote(url.password or "")
        fields["host"] = url.hostname or "127.0.0.1"
        fields["port"] = str(url.port or 3306)
        fields["db"] = url.path.strip("/")
        return fields
    match = _GO_DSN.match(text)
    if not match:
        raise InvalidRequest(
            "connection_url: expected {{username}}:{{password}}@tcp(host:port)/dbname"
        )
    fields["user"] = match.group("user") or ""
    fields["password"] = match.group("password") or ""
    fields["db"] = match.group("db") or ""
    addr = match.group("addr") or "127.0.0.1:3306"
    if match.group("net") == "unix":
        fields["unix_socket"] = addr
    else:
        host, _, port = addr.rpartition(":") if ":" in addr else (addr, "", "3306")
        fields["host"] = host.strip("[]") or "127.0.0.1"
        if not port.isdigit():
            raise InvalidRequest("connection_url: invalid port")
        fields["port"] = port
    return fields


def connect_arguments(config: ConnectionConfig) -> dict[str, Any]:
    fields = parse_connection_url(config.connection_url)
    fill = {"username": config.username, "password": config.password}
    fields = {key: render(value, fill) for key, value in fields.items()}
    args: dict[str, Any] = {
        "user": fields.get("user") or config.username,
        "password": fields.get("password") or config.password,
        "autocommit": True,
        "connect_timeout": int(config.options.get("connect_timeout", 5)),
        # Expiry events are scheduled in UTC whatever the server's zone.
        "init_command": "SET time_zone = '+00:00'",
    }
    if fields.get("db"):
        args["db"] = fields["db"]
    if "unix_socket" in fields:
        args["unix_socket"] = fields["unix_socket"]
    else:
        args["host"] = fields["host"]
        args["port"] = int(fields["port"])
    return args


def quote_ident(name: str) -> str:
    """``name`` as a MySQL identifier: backquoted, a backquote in it doubled; NUL refused (MySQL
    does not allow it in identifiers). Account names are not identifiers: they go as
    parameters (``%s@%s``)."""
    if "\x00" in name:
        raise InvalidRequest("a name may not contain a NUL character")
    return "`" + name.replace("`", "``") + "`"


def _is_connect_error(exc: BaseException) -> bool:
    if isinstance(exc, OSError | TimeoutError):
        return True
    if isinstance(exc, pymysql.err.MySQLError) and exc.args:
        return exc.args[0] in _CONNECT_ERROR_CODES
    return False


class MySQLEngine:
    def __init__(self, config: ConnectionConfig, *, username_limit: int = 32) -> None:
        self._config = config
        self._args = connect_arguments(config)
        self._max_size = int(config.options.get("max_open_connections", 8))
        self._acquire_timeout = float(config.options.get("statement_timeout", 30))
        # Opt-in database-side expiry: MySQL has no VALID UNTIL, so a one-shot event per user
        # drops it at expiry (plus grace) even when every broker node is down.
        self._expiry_event = bool(config.options.get("expiry_event"))
        self._event_schema = str(
            config.options.get("expiry_event_schema") or self._args.get("db", "")
        )
        if self._expiry_event and not self._event_schema:
            raise InvalidRequest(
                "expiry_event needs a database for the events: expiry_event_schema, or a "
                "database in connection_url"
            )
        self._is_mariadb: bool | None = None
        self._sees_sessions = False
        self._pool: aiomysql.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self.username_limit = username_limit
        #: One user per call: the sweep's concurrency then applies per user.
        self.revoke_batch_size = 1

    def target_hosts(self) -> tuple[str, ...]:
        return (str(self._args.get("unix_socket") or self._args["host"]),)

    async def _get_pool(self) -> aiomysql.Pool:
        if self._pool is not None:
            return self._pool
        async with self._pool_lock:
            if self._pool is None:
                try:
                    self._pool = await aiomysql.create_pool(
                        minsize=0, maxsize=self._max_size, pool_recycle=300, **self._args
                    )
                except Exception as exc:
                    raise TargetUnreachable(
                        "cannot connect to MySQL: " + redact(str(exc), self._config.secrets)
                    ) from exc
            return self._pool

    @asynccontextmanager
    async def _cursor(self) -> AsyncIterator[Any]:
        """A cursor on a pooled connection. Failing to get one is ``TargetUnreachable``
        (nothing was sent); losing it mid-way is ``TargetUnavailable`` (outcome unknown)."""
        pool = await self._get_pool()
        try:
            async with asyncio.timeout(self._acquire_timeout):
                conn = await pool.acquire()
        except (pymysql.err.MySQLError, OSError, TimeoutError) as exc:
            raise TargetUnreachable(
                "cannot connect to MySQL: "
                + redact(str(exc) or type(exc).__name__, self._config.secrets)
            ) from exc
        try:
            async with conn.cursor() as cur:
                yield cur
        except (pymysql.err.MySQLError, OSError, TimeoutError) as exc:
            if _is_connect_error(exc):
                raise TargetUnavailable(
                    "MySQL connection failed: " + redact(str(exc), self._config.secrets)
                ) from exc
            raise
        finally:
            pool.release(conn)

    async def _run(self, cur: Any, statements: list[str], values: Mapping[str, str]) -> None:
        for statement in statements:
            await cur.execute(render_sql(statement, values))

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
        if self._is_mariadb is None:
            await cur.execute("SELECT VERSION()")
            row = await cur.fetchone()
            self._is_mariadb = bool(row and "mariadb" in str(row[0]).lower())
        await cur.execute("SELECT Host FROM mysql.user WHERE User = %s", (username,))
        hosts = [row[0] for row in await cur.fetchall()]
        accounts = [(username, host) for host in hosts]
        body = ["DECLARE CONTINUE HANDLER FOR SQLEXCEPTION BEGIN END;"]
        body += ["ALTER USER %s@%s ACCOUNT LOCK;"] * len(accounts)
        if self._is_mariadb:
            body.append("KILL USER %s;")
        body += ["DROP USER IF EXISTS %s@%s;"] * len(accounts)
        args: list[str] = [self._event_time(at)]
        args += [v for account in accounts for v in account]
        if self._is_mariadb:
            args.append(username)
        args += [v for account in accounts for v in account]
        await cur.execute(
            f"CREATE EVENT {self._event_name(username)} ON SCHEDULE AT %s "
            f"ON COMPLETION NOT PRESERVE DO BEGIN {' '.join(body)} END",
            args,
        )

    async def create_user(self, request: NewUserRequest) -> None:
        values = {
            "name": request.username,
            "username": request.username,
            "password": request.password,
            "expiration": format_expiration(request.expiration),
        }
        statements = expand_statements(request.creation_statements or DEFAULT_CREATION)
        secrets = (*self._config.secrets, request.password)
        try:
            async with self._cursor() as cur:
                await self._run(cur, statements, values)
                if self._expiry_event:
                    await self._create_expiry_event(cur, request.username, request.expiration)
        except TargetUnreachable:
            raise  # nothing was sent
        except TargetUnavailable as exc:
            # Lost mid-way: roll back if we can; either way the outcome stays unknown and
            # the lease is left to the sweep.
            with contextlib.suppress(BrokerError):
                await self._rollback(request, values)
            raise TargetUnavailable(exc.message) from exc
        except pymysql.err.MySQLError as exc:
            message = redact(str(exc), secrets)
            try:
                await self._rollback(request, values)
            except BrokerError as rollback_exc:
                raise TargetUnavailable(
                    f"creation statements failed ({message}) and the rollback could not "
                    "confirm the user is gone"
                ) from rollback_exc
            raise StatementError(f"creation statements failed: {message}") from exc

    async def _rollback(self, request: NewUserRequest, values: Mapping[str, str]) -> None:
        """Run the rollback statements, then make sure the user is gone at every host.

        A failure of that last step propagates as ``TargetError``, so the lease manager
        leaves the lease to the sweep instead of marking it failed."""
        if request.rollback_statements:
            with contextlib.suppress(pymysql.err.MySQLError, TargetError):
                async with self._cursor() as cur:
                    await self._run(cur, expand_statements(request.rollback_statements), values)
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
        values = {
            "name": request.username,
            "username": request.username,
            "expiration": format_expiration(request.expiration),
        }
        try:
            async with self._cursor() as cur:
                await self._run(cur, expand_statements(request.renew_statements), values)
        except pymysql.err.MySQLError as exc:
            raise StatementError(
                "renew statements failed: " + redact(str(exc), self._config.secrets)
            ) from exc

    async def user_exists(self, username: str) -> bool:
        """A parameterised look-up of the name at any host."""
        try:
            async with self._cursor() as cur:
                await cur.execute("SELECT 1 FROM mysql.user WHERE User = %s LIMIT 1", (username,))
                return await cur.fetchone() is not None
        except pymysql.err.MySQLError as exc:
            raise TargetError(
                "looking up the user failed: " + redact(str(exc), self._config.secrets)
            ) from exc

    async def set_password(self, request: SetPasswordRequest) -> None:
        """Without statements: the account at every host it exists for (Vault's default
        names only '%', which misses 'root'@'localhost' and the like)."""
        values = {
            "name": request.username,
            "username": request.username,
            "password": request.password,
        }
        try:
            async with self._cursor() as cur:
                if request.statements:
                    await self._run(cur, expand_statements(request.statements), values)
                    return
                await cur.execute(
                    "SELECT Host FROM mysql.user WHERE User = %s", (request.username,)
                )
                hosts = [row[0] for row in await cur.fetchall()]
                if not hosts:
                    raise StatementError(f"no account {request.username!r} on the server")
                for host in hosts:
                    await cur.execute(
                        "ALTER USER %s@%s IDENTIFIED BY %s",
                        (request.username, host, request.password),
                    )
        except pymysql.err.MySQLError as exc:
            raise StatementError(
                "rotation statements failed: "
                + redact(str(exc), (*self._config.secrets, request.password))
            ) from exc

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
            await self._revoke(request)
        except pymysql.err.MySQLError as exc:
            # A look-up the admin may not make (SELECT on mysql.user, the process list).
            raise TargetError(
                f"revoking {name} failed: " + redact(str(exc), self._config.secrets)
            ) from exc

    async def _revoke(self, request: RevokeUserRequest) -> None:
        name = request.username
        errors: list[str] = []
        async with self._cursor() as cur:
            if self._expiry_event:
                await cur.execute(f"DROP EVENT IF EXISTS {self._event_name(name)}")
            await cur.execute("SELECT Host FROM mysql.user WHERE User = %s", (name,))
            hosts = [row[0] for row in await cur.fetchall()]
            for host in hosts:
                try:
                    await cur.execute("ALTER USER %s@%s ACCOUNT LOCK", (name, host))
                except pymysql.err.MySQLError as exc:
                    errors.append(str(exc))
            kill_error = await self._kill_sessions(cur, name)
            if hosts and request.revocation_statements:
                try:
                    await self._run(
                        cur,
                        expand_statements(request.revocation_statements),
                        {"name": name, "username": name},
                    )
                except pymysql.err.MySQLError as exc:
                    errors.append(str(exc))
            for host in hosts:
                try:
                    await cur.execute("DROP USER IF EXISTS %s@%s", (name, host))
                except pymysql.err.MySQLError as exc:
                    errors.append(str(exc))
            await cur.execute("SELECT COUNT(*) FROM mysql.user WHERE User = %s", (name,))
            row = await cur.fetchone()
            user_gone = bool(row and row[0] == 0)
            if user_gone:
                remaining = await self._remaining_sessions(cur, name, wait=not kill_error)
                if remaining == 0 and await self._sees_all_sessions(cur):
                    return
                me = await self._account(cur)
                if remaining:
                    errors.append(
                        f"{remaining} session(s) of {name} remain: "
                        + (
                            f"KILL was refused ({kill_error}): "
                            + await self._kill_grant_hint(cur, me)
                            if kill_error
                            else "they were killed but did not end"
                        )
                    )
                else:
                    errors.append(
                        f"cannot tell whether sessions of {name} remain: the admin lacks "
                        f"PROCESS, without which other users' sessions are invisible "
                        f"(GRANT PROCESS ON *.* TO {me})"
                    )
        raise TargetError(
            f"revoking {name} failed: " + redact("; ".join(errors[-3:]), self._config.secrets)
        )

    async def _kill_sessions(self, cur: Any, name: str) -> str:
        """KILL every session of ``name``; the first refusal's message ('' if none). A
        session that ended by itself meanwhile (unknown thread id) is no refusal."""
        await cur.execute(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s "
            "AND ID <> CONNECTION_ID()",
            (name,),
        )
        refused = ""
        for (thread_id,) in await cur.fetchall():
            try:
                await cur.execute("KILL CONNECTION %s", (int(thread_id),))
            except pymysql.err.MySQLError as exc:
                if _is_connect_error(exc):
                    raise
                if exc.args and exc.args[0] == _UNKNOWN_THREAD:
                    continue
                refused = refused or str(exc)
        return refused

    async def _remaining_sessions(self, cur: Any, name: str, *, wait: bool) -> int:
        """Sessions of ``name`` still listed; killed ones take a moment to go, so with
        ``wait`` this polls for a few seconds."""
        deadline = time.monotonic() + (_SESSION_EXIT_WAIT if wait else 0)
        while True:
            await cur.execute(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s "
                "AND ID <> CONNECTION_ID()",
                (name,),
            )
            row = await cur.fetchone()
            remaining = int(row[0]) if row else 0
            if not remaining or time.monotonic() >= deadline:
                return remaining
            await asyncio.sleep(0.05)

    async def _global_privileges(self, cur: Any) -> set[str]:
        """The admin account's own global privileges (a user sees only its own rows)."""
        await cur.execute(
            "SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = "
            "CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', "
            "SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''')"
        )
        return {str(row[0]).upper() for row in await cur.fetchall()}

    async def _sees_all_sessions(self, cur: Any) -> bool:
        """Whether the admin sees every user's sessions (PROCESS); remembered once true."""
        if not self._sees_sessions:
            self._sees_sessions = "PROCESS" in await self._global_privileges(cur)
        return self._sees_sessions

    async def _account(self, cur: Any) -> str:
        """The admin's account as a GRANT names it: 'user'@'host'."""
        await cur.execute("SELECT CURRENT_USER()")
        row = await cur.fetchone()
        user, _, host = str(row[0] if row else "").rpartition("@")
        return f"'{user}'@'{host}'"

    async def _mariadb(self, cur: Any) -> bool:
        if self._is_mariadb is None:
            await cur.execute("SELECT VERSION()")
            row = await cur.fetchone()
            self._is_mariadb = bool(row and "mariadb" in str(row[0]).lower())
        return self._is_mariadb

    async def _kill_grant_hint(self, cur: Any, me: str) -> str:
        if await self._mariadb(cur):
            return (
                "ending other users' sessions needs CONNECTION ADMIN on MariaDB 10.5+ "
                f"(SUPER before): GRANT CONNECTION ADMIN ON *.* TO {me}"
            )
        return (
            "ending other users' sessions needs CONNECTION_ADMIN (or SUPER): "
            f"GRANT CONNECTION_ADMIN ON *.* TO {me}"
        )

    async def check_admin(self, creation_statements: Sequence[str] = ()) -> list[str]:
        """CREATE USER to issue; PROCESS to see other users' sessions and CONNECTION ADMIN
        (MariaDB 10.5+) / CONNECTION_ADMIN (MySQL 8) or SUPER to end them, which revoking
        needs. Privileges the creation statements grant need the admin to hold them WITH
        GRANT OPTION; the server checks that when they run."""
        async with self._cursor() as cur:
            privileges = await self._global_privileges(cur)
            me = await self._account(cur)
            mariadb = await self._mariadb(cur)
        warnings: list[str] = []
        try:
            async with self._cursor() as cur:
                await cur.execute("SELECT 1 FROM mysql.user LIMIT 1")
        except pymysql.err.MySQLError:
            warnings.append(
                f"the admin {me} cannot read mysql.user, where revocation finds every host "
                f"of a user: GRANT SELECT ON mysql.user TO {me}"
            )
        if "CREATE USER" not in privileges:
            warnings.append(
                f"the admin {me} cannot create users, so no credential can be issued: "
                f"GRANT CREATE USER ON *.* TO {me}"
            )
        if "PROCESS" not in privileges:
            warnings.append(
                f"the admin {me} cannot see other users' sessions, so no revocation can be "
                f"confirmed (they stay failing): GRANT PROCESS ON *.* TO {me}"
            )
        kill = "CONNECTION ADMIN" if mariadb else "CONNECTION_ADMIN"
        if kill not in privileges and "SUPER" not in privileges:
            warnings.append(
                f"the admin {me} cannot end other users' sessions: a lease whose user still "
                f"has a session open cannot be revoked (it stays failing): "
                f"GRANT {kill} ON *.* TO {me}"
            )
        return warnings

    async def revoke_users(self, requests: Sequence[RevokeUserRequest]) -> list[str | None]:
        """One by one: MySQL account statements are serialised inside the server anyway,
        and each user needs its own hosts looked up and sessions killed."""
        results: list[str | None] = []
        for request in requests:
            try:
                await self.revoke_user(request)
                results.append(None)
            except TargetError as exc:
                results.append(exc.message)
        return results

    def pool_stats(self) -> dict[str, int]:
        pool = self._pool
        if pool is None:
            return {"in_use": 0, "idle": 0, "max": self._max_size}
        size, idle = int(pool.size), int(pool.freesize)
        return {"in_use": size - idle, "idle": idle, "max": int(pool.maxsize)}

    async def list_users(self, prefix: str) -> list[str]:
        async with self._cursor() as cur:
            await cur.execute(
                "SELECT DISTINCT User FROM mysql.user WHERE LEFT(User, %s) = %s ORDER BY 1",
                (len(prefix), prefix),
            )
            return [row[0] for row in await cur.fetchall()]

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.close()
            await pool.wait_closed()
