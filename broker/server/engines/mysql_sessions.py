"""What a MySQL admin can see and end of other users' sessions, and what it lacks for
issuing and revoking (``check_admin``), each lack with the GRANT that fixes it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pymysql

from broker.server.engines.mysql_connect import is_connect_error

#: KILL of a thread that no longer exists (ended by itself meanwhile).
_UNKNOWN_THREAD = 1094
#: How long revocation waits for killed sessions to leave the process list.
_SESSION_EXIT_WAIT = 5.0


async def kill_sessions(cur: Any, name: str) -> str:
    """KILL every session of ``name``; the first refusal's message ('' if none). A
    session that ended by itself meanwhile (unknown thread id) is no refusal."""
    await cur.execute(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s AND ID <> CONNECTION_ID()",
        (name,),
    )
    refused = ""
    for (thread_id,) in await cur.fetchall():
        try:
            await cur.execute("KILL CONNECTION %s", (int(thread_id),))
        except pymysql.err.MySQLError as exc:
            if is_connect_error(exc):
                raise
            if exc.args and exc.args[0] == _UNKNOWN_THREAD:
                continue
            refused = refused or str(exc)
    return refused


async def remaining_sessions(cur: Any, name: str, *, wait: bool) -> int:
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


class ServerFacts:
    """What the engine learns about its server and admin account, asked once and
    remembered (per engine, so per connection configuration)."""

    def __init__(self) -> None:
        self._is_mariadb: bool | None = None
        self._sees_sessions = False

    async def is_mariadb(self, cur: Any) -> bool:
        if self._is_mariadb is None:
            await cur.execute("SELECT VERSION()")
            row = await cur.fetchone()
            self._is_mariadb = bool(row and "mariadb" in str(row[0]).lower())
        return self._is_mariadb

    @staticmethod
    async def global_privileges(cur: Any) -> set[str]:
        """The admin account's own global privileges (a user sees only its own rows)."""
        await cur.execute(
            "SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = "
            "CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', "
            "SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''')"
        )
        return {str(row[0]).upper() for row in await cur.fetchall()}

    async def sees_all_sessions(self, cur: Any) -> bool:
        """Whether the admin sees every user's sessions (PROCESS); remembered once true."""
        if not self._sees_sessions:
            self._sees_sessions = "PROCESS" in await self.global_privileges(cur)
        return self._sees_sessions

    @staticmethod
    async def account(cur: Any) -> str:
        """The admin's account as a GRANT names it: 'user'@'host'."""
        await cur.execute("SELECT CURRENT_USER()")
        row = await cur.fetchone()
        user, _, host = str(row[0] if row else "").rpartition("@")
        return f"'{user}'@'{host}'"

    async def kill_grant_hint(self, cur: Any, me: str) -> str:
        """The privilege ending other users' sessions needs, as the GRANT that gives it."""
        if await self.is_mariadb(cur):
            return (
                "ending other users' sessions needs CONNECTION ADMIN on MariaDB 10.5+ "
                f"(SUPER before): GRANT CONNECTION ADMIN ON *.* TO {me}"
            )
        return (
            "ending other users' sessions needs CONNECTION_ADMIN (or SUPER): "
            f"GRANT CONNECTION_ADMIN ON *.* TO {me}"
        )


def admin_warnings(
    privileges: set[str], me: str, *, mariadb: bool, reads_user_table: bool
) -> list[str]:
    """CREATE USER to issue; PROCESS to see other users' sessions and CONNECTION ADMIN
    (MariaDB 10.5+) / CONNECTION_ADMIN (MySQL 8) or SUPER to end them, which revoking
    needs; SELECT on mysql.user (``reads_user_table``) to find every host of a user."""
    warnings: list[str] = []
    if not reads_user_table:
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
