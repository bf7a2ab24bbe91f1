"""The one layer over asyncpg: the pool, one-statement round trips, transactions,
LISTEN/NOTIFY, and the translation of driver errors into the broker's own.

Every store (leases.py, catalog.py...) runs its named queries through a ``Connector``, so
nothing above this module sees asyncpg's exceptions, and the ``Store`` base gives each
store the same short helpers over its own SQL file.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, ClassVar, TypeVar

import asyncpg

from broker.exceptions import InvalidRequest, StorageUnavailable
from broker.server.storage import sql
from broker.server.storage.barrier import Barrier

#: NOTIFY channels, named here only. Tokens, policies, audit devices or the keyring changed
#: (other nodes drop their caches; the payload says which):
AUTH_CHANNEL = "broker_auth"
#: Mounts, connections or roles changed (other nodes drop their issue contexts):
CATALOG_CHANNEL = "broker_catalog"

DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
_T = TypeVar("_T")


def record(cls: type[_T], row: asyncpg.Record) -> _T:
    """A model from a row; array columns (lists) become the models' tuples."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in row.items()}
    return cls(**values)


def rows_affected(status: str) -> int:
    """The row count of a command status such as ``UPDATE 3``."""
    return int(status.rsplit(" ", 1)[-1])


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release hook. asyncpg's default runs a reset query (RESET ALL, UNLISTEN *, ...)
    on every release: a hidden round trip per query. The broker sets no session state and
    takes only transaction-scoped advisory locks, and asyncpg itself still rolls back an
    open transaction before calling this, so nothing needs resetting."""


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            reset=_keep_session,
            command_timeout=30,
            server_settings={"application_name": "broker"},
        )
    except DRIVER_ERRORS as exc:
        raise StorageUnavailable(f"cannot connect to storage: {type(exc).__name__}") from exc
    assert pool is not None
    return pool


def _described(exc: BaseException) -> str:
    """The error's kind, SQLSTATE and constraint name: enough to diagnose, no data."""
    parts = [type(exc).__name__]
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        parts.append(f"SQLSTATE {sqlstate}")
    constraint = getattr(exc, "constraint_name", None)
    if constraint:
        parts.append(f"constraint {constraint}")
    return ", ".join(parts)


class Connector:
    """The pool and the barrier every store shares (one of each per process).

    Each method is one round trip on a pooled connection; ``transaction`` and ``session``
    hold one connection for several statements.
    """

    def __init__(self, pool: asyncpg.Pool, barrier: Barrier | None = None) -> None:
        self._pool = pool
        self._q = sql.queries("connector")
        self.barrier = barrier if barrier is not None else Barrier()

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    @asynccontextmanager
    async def translate(self) -> AsyncIterator[None]:
        """Driver errors inside become the broker's: bad input is the caller's, the rest
        is storage being unavailable. Never with the driver's message: PostgreSQL quotes
        the offending values there (``Key (mount, role_id)=(approle, <another role's
        id>)``), and an answer, a log line or an audit entry must not carry them."""
        try:
            yield
        except asyncpg.DataError as exc:
            # Class 22 (invalid text, out of range, bad encoding): the input, not storage.
            raise InvalidRequest(f"invalid input ({_described(exc)})") from exc
        except asyncpg.IntegrityConstraintViolationError as exc:
            # Class 23: the write collides with what is stored (a unique key in use).
            raise InvalidRequest(
                f"the value conflicts with an existing entry ({_described(exc)})"
            ) from exc
        except DRIVER_ERRORS as exc:
            raise StorageUnavailable(f"storage error: {_described(exc)}") from exc

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.translate():
            rows: list[asyncpg.Record] = await self._pool.fetch(query, *args)
            return rows

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        async with self.translate():
            return await self._pool.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self.translate():
            return await self._pool.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        async with self.translate():
            status: str = await self._pool.execute(query, *args)
            return status

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """One connection inside one transaction, committed when the block ends."""
        async with self.translate(), self._pool.acquire() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def session(self) -> AsyncIterator[asyncpg.Connection]:
        """One connection without a transaction (session locks, COPY)."""
        async with self.translate(), self._pool.acquire() as conn:
            yield conn

    async def ping(self) -> None:
        await self.fetchval(self._q["ping"])

    async def notify(self, channel: str, payload: str = "") -> None:
        await self.fetchval(self._q["notify"], channel, payload)

    async def listen(
        self, channel: str, on_message: Callable[[], None], on_lost: Callable[[], None]
    ) -> Callable[[], Awaitable[None]]:
        """LISTEN on ``channel`` on a pooled connection held for the purpose; ``on_lost``
        runs if that connection dies. Returns the coroutine function that stops listening
        (call it before the pool closes)."""

        def callback(*_: object) -> None:
            on_message()

        async with self.translate():
            conn = await self._pool.acquire()
            try:
                await conn.add_listener(channel, callback)
            except BaseException:
                await self._pool.release(conn)
                raise
            conn.add_termination_listener(lambda _: on_lost())

        async def stop() -> None:
            with contextlib.suppress(*DRIVER_ERRORS):
                if not conn.is_closed():
                    await conn.remove_listener(channel, callback)  # UNLISTENs
            with contextlib.suppress(*DRIVER_ERRORS):
                await self._pool.release(conn)

        return stop


class Store:
    """Base of the stores: the named queries of one SQL file (``QUERY_FILE``), run through
    the shared connector."""

    QUERY_FILE: ClassVar[str]

    def __init__(self, connector: Connector) -> None:
        self._db = connector
        self._q = sql.queries(self.QUERY_FILE)

    @property
    def barrier(self) -> Barrier:
        """The process's barrier: sealed or not, and the HMAC keys of tokens and audit."""
        return self._db.barrier

    async def _fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        return await self._db.fetch(self._q[name], *args)

    async def _fetchrow(self, name: str, *args: Any) -> asyncpg.Record | None:
        return await self._db.fetchrow(self._q[name], *args)

    async def _fetchval(self, name: str, *args: Any) -> Any:
        return await self._db.fetchval(self._q[name], *args)

    async def _execute(self, name: str, *args: Any) -> str:
        return await self._db.execute(self._q[name], *args)
