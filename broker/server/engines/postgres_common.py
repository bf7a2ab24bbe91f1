"""What every PostgreSQL plugin module needs: quoting names and values in code, the driver
errors that mean the target is out of reach, and running statements as one transaction,
retried when only concurrent catalog updates made them fail."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable, Callable, Mapping

import asyncpg

from broker.exceptions import InvalidRequest
from broker.server.engines.templates import render_sql

# Statements that rewrite an object's ACL or ownership. PostgreSQL updates the object's
# catalog row in place, so two sessions doing it at once fail with "tuple concurrently
# updated" or deadlock; the plugin serialises them per database with this advisory lock.
_ACL_STATEMENT = re.compile(
    r"\b(?:GRANT|REVOKE)\b[\s\S]*\bON\b|\bALTER\s+DEFAULT\s+PRIVILEGES\b|\bREASSIGN\s+OWNED\b"
    r"|\bDROP\s+OWNED\b",
    re.IGNORECASE,
)
_ACL_LOCK = "SELECT pg_advisory_xact_lock(hashtext('broker.acl'))"
#: Attempts at a statement that fails only because of concurrent catalog updates.
RETRIES = 8

#: Driver errors that mean the server could not be reached or refused the connection.
CONNECT_ERRORS: tuple[type[BaseException], ...] = (
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


def is_connection_loss(exc: asyncpg.PostgresError) -> bool:
    """Connection exceptions (08) and operator intervention (57P: shutdown, crash)."""
    state = getattr(exc, "sqlstate", "") or ""
    return state.startswith(("08", "57P"))


def is_retryable(exc: BaseException) -> bool:
    """Deadlock, serialization failure, or "tuple concurrently updated": concurrency alone
    made it fail, so the same statement can simply run again."""
    if isinstance(exc, asyncpg.DeadlockDetectedError | asyncpg.SerializationError):
        return True
    return isinstance(exc, asyncpg.PostgresError) and "concurrently" in str(exc)


async def pause_before_retry(attempt: int) -> None:
    """A short random pause, longer with each attempt, so racing sessions drift apart."""
    await asyncio.sleep(random.uniform(0.005, 0.05) * (attempt + 1))


async def with_retries(action: Callable[[], Awaitable[object]]) -> None:
    """Run ``action``, again after a short random pause when it failed only because of
    concurrent catalog updates (deadlock, serialization, "tuple concurrently updated")."""
    for attempt in range(RETRIES):
        try:
            await action()
            return
        except asyncpg.PostgresError as exc:
            if not is_retryable(exc) or attempt == RETRIES - 1:
                raise
            await pause_before_retry(attempt)


async def run_in_transaction(
    conn: asyncpg.Connection, statements: list[str], values: Mapping[str, str]
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
    await with_retries(lambda: conn.execute(script))
