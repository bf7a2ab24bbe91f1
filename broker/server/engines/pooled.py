"""What the PostgreSQL and MySQL plugins share: a lazily opened connection pool, borrowing
a connection with the broker's error classes, the undo of a failed creation, revocation
one user at a time, pool statistics and closing.

A plugin subclasses ``PooledEngine`` and supplies only its driver's calls (open, acquire,
release, close, sizes) and which driver errors mean the target could not be reached.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import ClassVar, Generic, NoReturn, TypeVar

from broker.exceptions import (
    BrokerError,
    StatementError,
    TargetError,
    TargetUnavailable,
    TargetUnreachable,
)
from broker.server.engines.base import ConnectionConfig, RevokeUserRequest
from broker.server.engines.driver_errors import describe
from broker.server.redaction import redact

PoolT = TypeVar("PoolT")
ConnT = TypeVar("ConnT")


class PooledEngine(abc.ABC, Generic[PoolT, ConnT]):
    """A ``DatabaseEngine`` over one driver pool, opened on first use: building an engine
    (on every connection write) never touches the target."""

    #: The database as error messages name it ("cannot connect to PostgreSQL: ...").
    database_label: ClassVar[str]
    #: Driver errors that mean the pool could not be opened.
    pool_errors: ClassVar[tuple[type[BaseException], ...]]
    #: Driver errors that mean no connection could be had: nothing was sent.
    acquire_errors: ClassVar[tuple[type[BaseException], ...]]
    #: Driver errors that, raised while a connection is in use, may mean it was lost
    #: (``connection_lost`` decides): the outcome of what was sent is then unknown.
    use_errors: ClassVar[tuple[type[BaseException], ...]]
    #: Errors of a rollback that leave it unconfirmed.
    rollback_errors: ClassVar[tuple[type[BaseException], ...]] = (BrokerError,)

    def __init__(self, config: ConnectionConfig) -> None:
        self._config = config
        self._max_size = int(config.options.get("max_open_connections", 8))
        # Waiting for a connection (saturated pool or slow target) is bounded too, so a
        # request fails with a 503 in bounded time instead of hanging.
        self._acquire_timeout = float(config.options.get("statement_timeout", 30))
        self._pool: PoolT | None = None
        self._pool_lock = asyncio.Lock()

    # -- what each driver supplies ------------------------------------------------------------

    @abc.abstractmethod
    async def _open_pool(self) -> PoolT:
        """A new pool of at most ``self._max_size`` connections, none opened yet."""

    @abc.abstractmethod
    async def _acquire(self, pool: PoolT) -> ConnT:
        """A connection from ``pool``, waiting at most ``self._acquire_timeout``."""

    @abc.abstractmethod
    async def _release(self, pool: PoolT, conn: ConnT) -> None:
        """Give ``conn`` back to ``pool``."""

    @abc.abstractmethod
    async def _close_pool(self, pool: PoolT) -> None:
        """Close ``pool``, waiting for operations in flight."""

    @abc.abstractmethod
    def _pool_sizes(self, pool: PoolT) -> tuple[int, int, int]:
        """(connections open, of which idle, most allowed)."""

    @abc.abstractmethod
    async def revoke_user(self, request: RevokeUserRequest) -> None:
        """See ``DatabaseEngine.revoke_user``."""

    def connection_lost(self, exc: BaseException) -> bool:
        """Whether ``exc`` (one of ``use_errors``) means the connection went away, rather
        than a statement failing on a live one."""
        return True

    # -- shared plumbing ----------------------------------------------------------------------

    def _secrets(self, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
        """What redaction scrubs from a message: the admin's password, plus ``extra``."""
        return (*self._config.secrets, *extra)

    async def _get_pool(self) -> PoolT:
        if self._pool is not None:
            return self._pool
        async with self._pool_lock:
            if self._pool is None:
                try:
                    self._pool = await self._open_pool()
                except self.pool_errors as exc:
                    raise TargetUnreachable(
                        f"cannot connect to {self.database_label}: "
                        + redact(str(exc), self._secrets())
                    ) from exc
            return self._pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[ConnT]:
        """A pooled connection. Failing to get one is ``TargetUnreachable`` (nothing was
        sent); losing it mid-way is ``TargetUnavailable`` (the outcome is unknown)."""
        pool = await self._get_pool()
        try:
            conn = await self._acquire(pool)
        except self.acquire_errors as exc:
            raise TargetUnreachable(
                f"cannot connect to {self.database_label}: "
                + redact(str(exc) or type(exc).__name__, self._secrets())
            ) from exc
        try:
            yield conn
        except self.use_errors as exc:
            if not self.connection_lost(exc):
                raise
            raise TargetUnavailable(
                f"{self.database_label} connection failed: " + redact(str(exc), self._secrets())
            ) from exc
        finally:
            await self._release(pool, conn)

    async def _undo_failed_creation(
        self, message: str, cause: BaseException, rollback: Callable[[], Awaitable[None]]
    ) -> NoReturn:
        """After creation statements failed with the driver error ``cause``: run
        ``rollback``, then raise. Only a confirmed rollback makes this a plain
        ``StatementError``; otherwise the outcome is unknown and the lease stays for the
        sweep (``TargetUnavailable``). The error says what ``driver_errors.describe`` says
        of ``cause``, never its text (which quotes the statement, password included), so
        ``message`` (what the plugin made of it) is not used."""
        message = describe(cause)
        try:
            await rollback()
        except self.rollback_errors as rollback_exc:
            raise TargetUnavailable(
                f"creation statements failed ({message}) and the rollback could not "
                "confirm the user is gone"
            ) from rollback_exc
        raise StatementError(f"creation statements failed: {message}") from cause

    async def _revoke_each(self, requests: Sequence[RevokeUserRequest]) -> list[str | None]:
        """``revoke_user`` for each request in turn: one error message (None: revoked)
        per request, in order; one user's failure does not stop the others."""
        results: list[str | None] = []
        for request in requests:
            try:
                await self.revoke_user(request)
                results.append(None)
            except TargetError as exc:
                results.append(exc.message)
        return results

    async def revoke_users(self, requests: Sequence[RevokeUserRequest]) -> list[str | None]:
        """One by one unless the database can do better (see ``DatabaseEngine``)."""
        return await self._revoke_each(requests)

    def pool_stats(self) -> dict[str, int]:
        pool = self._pool
        if pool is None:
            return {"in_use": 0, "idle": 0, "max": self._max_size}
        size, idle, most = self._pool_sizes(pool)
        return {"in_use": size - idle, "idle": idle, "max": most}

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await self._close_pool(pool)
