"""The broker's own storage on PostgreSQL, through asyncpg.

The only module that runs the queries in ``sql/queries.sql``. Driver errors become
``StorageUnavailable`` here, so callers see the broker's errors, never asyncpg's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg

from broker import sql
from broker.exceptions import InvalidRequest, StorageUnavailable
from broker.models import ClaimedLease, Connection, Lease, Mount, NewLease, Role

_T = TypeVar("_T")
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


def _record(cls: type[_T], row: asyncpg.Record) -> _T:
    """A model from a row; array columns (lists) become the models' tuples."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in row.items()}
    return cls(**values)


def like_prefix(prefix: str) -> str:
    """A LIKE pattern matching strings that start with ``prefix`` taken literally."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


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
    except _DRIVER_ERRORS as exc:
        raise StorageUnavailable(f"cannot connect to storage: {type(exc).__name__}") from exc
    assert pool is not None
    return pool


class Storage:
    """Named-query access to the broker's tables.

    Methods are grouped by table; each is one round trip unless its docstring says otherwise.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._q = sql.queries()

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    @asynccontextmanager
    async def _translate(self) -> AsyncIterator[None]:
        try:
            yield
        except asyncpg.DataError as exc:
            # Class 22 (invalid text, out of range, bad encoding): the input, not storage.
            raise InvalidRequest(f"invalid input: {exc}") from exc
        except _DRIVER_ERRORS as exc:
            raise StorageUnavailable(f"storage error: {type(exc).__name__}: {exc}") from exc

    async def _fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        async with self._translate():
            rows: list[asyncpg.Record] = await self._pool.fetch(self._q[name], *args)
            return rows

    async def _fetchrow(self, name: str, *args: Any) -> asyncpg.Record | None:
        async with self._translate():
            return await self._pool.fetchrow(self._q[name], *args)

    async def _fetchval(self, name: str, *args: Any) -> Any:
        async with self._translate():
            return await self._pool.fetchval(self._q[name], *args)

    async def _execute(self, name: str, *args: Any) -> str:
        async with self._translate():
            status: str = await self._pool.execute(self._q[name], *args)
            return status

    @staticmethod
    def _rows_affected(status: str) -> int:
        return int(status.rsplit(" ", 1)[-1])

    async def ping(self) -> None:
        await self._fetchval("ping")

    @asynccontextmanager
    async def setup_lock(self) -> AsyncIterator[None]:
        """Hold the cluster-wide set-up lock, so nodes sharing storage set up once."""
        async with self._translate(), self._pool.acquire() as conn, conn.transaction():
            await conn.execute(self._q["setup_lock"])
            yield

    # -- mounts ---------------------------------------------------------------------------

    async def insert_mount(self, path: str, type_: str, description: str, accessor: str) -> bool:
        return await self._fetchval("insert_mount", path, type_, description, accessor) is not None

    async def get_mount(self, path: str) -> Mount | None:
        row = await self._fetchrow("get_mount", path)
        return _record(Mount, row) if row else None

    async def list_mounts(self) -> list[Mount]:
        return [_record(Mount, row) for row in await self._fetch("list_mounts")]

    async def delete_mount(self, path: str) -> bool:
        return await self._fetchval("delete_mount", path) is not None

    # -- connections ----------------------------------------------------------------------

    async def upsert_connection(self, c: Connection) -> None:
        await self._execute(
            "upsert_connection",
            c.mount,
            c.name,
            c.plugin_name,
            c.connection_url,
            c.username,
            c.password,
            list(c.allowed_roles),
            c.username_template,
            c.verify_connection,
            c.options,
        )

    async def get_connection(self, mount: str, name: str) -> Connection | None:
        row = await self._fetchrow("get_connection", mount, name)
        return _record(Connection, row) if row else None

    async def list_connections(self, mount: str) -> list[str]:
        return [row["name"] for row in await self._fetch("list_connections", mount)]

    async def delete_connection(self, mount: str, name: str) -> bool:
        return await self._fetchval("delete_connection", mount, name) is not None

    async def count_live_leases_of_connection(self, mount: str, name: str) -> int:
        return int(await self._fetchval("count_live_leases_of_connection", mount, name))

    # -- roles ----------------------------------------------------------------------------

    async def upsert_role(self, r: Role) -> None:
        await self._execute(
            "upsert_role",
            r.mount,
            r.name,
            r.db_name,
            list(r.creation_statements),
            list(r.revocation_statements),
            list(r.rollback_statements),
            list(r.renew_statements),
            r.default_ttl,
            r.max_ttl,
        )

    async def get_role(self, mount: str, name: str) -> Role | None:
        row = await self._fetchrow("get_role", mount, name)
        return _record(Role, row) if row else None

    async def get_issue_context(
        self, mount: str, role: str
    ) -> tuple[Role, Connection | None] | None:
        """The role and the connection it names (None if that is missing), in one query."""
        row = await self._fetchrow("get_issue_context", mount, role)
        if row is None:
            return None
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in row.items()}
        connection = None
        if values["c_name"] is not None:
            connection = Connection(
                mount=mount,
                **{k[2:]: values.pop(k) for k in list(values) if k.startswith("c_")},
            )
        return Role(**{k: v for k, v in values.items() if not k.startswith("c_")}), connection

    async def list_roles(self, mount: str) -> list[str]:
        return [row["name"] for row in await self._fetch("list_roles", mount)]

    async def delete_role(self, mount: str, name: str) -> bool:
        return await self._fetchval("delete_role", mount, name) is not None

    # -- leases ---------------------------------------------------------------------------

    async def insert_leases(self, leases: Sequence[tuple[NewLease, dt.datetime]]) -> list[None]:
        """Lease rows with the time the sweep takes each over if it is still 'creating'
        (the sooner of expiry and the creation timeout); one statement, all or none."""
        columns: list[list[Any]] = [[] for _ in range(12)]
        for lease, takeover_at in leases:
            row = (
                lease.lease_id,
                lease.mount,
                lease.role_name,
                lease.connection_name,
                lease.plugin_name,
                lease.username,
                json.dumps(list(lease.revocation_statements)),
                json.dumps(list(lease.renew_statements)),
                lease.issued_at,
                lease.expires_at,
                lease.max_expires_at,
                takeover_at,
            )
            for column, value in zip(columns, row, strict=True):
                column.append(value)
        await self._execute("insert_leases", *columns)
        return [None] * len(leases)

    async def activate_leases(self, lease_ids: Sequence[str]) -> list[bool]:
        """For each id, whether it went from 'creating' to 'active'."""
        rows = await self._fetch("activate_leases", list(lease_ids))
        activated = {row["lease_id"] for row in rows}
        return [lease_id in activated for lease_id in lease_ids]

    async def notify_catalog_changed(self) -> None:
        await self._fetchval("notify_catalog_changed")

    async def listen(
        self, channel: str, on_message: Callable[[], None], on_lost: Callable[[], None]
    ) -> Callable[[], Awaitable[None]]:
        """LISTEN on ``channel`` on a pooled connection held for the purpose; ``on_lost``
        runs if that connection dies. Returns the coroutine function that stops listening
        (call it before the pool closes)."""

        def callback(*_: object) -> None:
            on_message()

        async with self._translate():
            conn = await self._pool.acquire()
            try:
                await conn.add_listener(channel, callback)
            except BaseException:
                await self._pool.release(conn)
                raise
            conn.add_termination_listener(lambda _: on_lost())

        async def stop() -> None:
            with contextlib.suppress(*_DRIVER_ERRORS):
                if not conn.is_closed():
                    await conn.remove_listener(channel, callback)  # UNLISTENs
            with contextlib.suppress(*_DRIVER_ERRORS):
                await self._pool.release(conn)

        return stop

    async def mark_lease_failed(self, lease_id: str, error: str) -> None:
        await self._execute("mark_lease_failed", lease_id, error)

    async def reopen_lease(self, lease_id: str) -> None:
        await self._execute("reopen_lease", lease_id)

    async def get_lease(self, lease_id: str) -> Lease | None:
        row = await self._fetchrow("get_lease", lease_id)
        return _record(Lease, row) if row else None

    async def renew_lease(self, lease_id: str, expires_at: dt.datetime) -> bool:
        return await self._fetchval("renew_lease", lease_id, expires_at) is not None

    async def claim_due_leases(
        self, limit: int, claim_seconds: float, prefix: str = ""
    ) -> list[ClaimedLease]:
        rows = await self._fetch(
            "claim_due_leases", limit, float(claim_seconds), like_prefix(prefix)
        )
        return [_record(ClaimedLease, row) for row in rows]

    async def make_leases_due(self, prefix: str) -> int:
        return self._rows_affected(await self._execute("make_leases_due", like_prefix(prefix)))

    async def count_pending_leases(self, prefix: str) -> int:
        return int(await self._fetchval("count_pending_leases", like_prefix(prefix)))

    async def finish_revocations(self, lease_ids: Sequence[str]) -> None:
        if lease_ids:
            await self._execute("finish_revocations", list(lease_ids))

    async def schedule_revocation_retry(
        self, lease_id: str, delay_seconds: float, error: str | None
    ) -> None:
        await self._execute("schedule_revocation_retry", lease_id, float(delay_seconds), error)

    async def schedule_revocation_recheck(self, lease_id: str, delay_seconds: float) -> None:
        await self._execute("schedule_revocation_recheck", lease_id, float(delay_seconds))

    async def force_revoked(self, prefix: str) -> int:
        return self._rows_affected(await self._execute("force_revoked", like_prefix(prefix)))

    async def release_claims(self, lease_ids: Sequence[str]) -> None:
        if lease_ids:
            await self._execute("release_claims", list(lease_ids))

    async def count_failing_leases(self) -> dict[str, int]:
        return {row["prefix"]: row["n"] for row in await self._fetch("count_failing_leases")}

    async def list_failing_leases(self, limit: int) -> list[dict[str, Any]]:
        return [dict(row) for row in await self._fetch("list_failing_leases", limit)]

    async def live_usernames(self, names: Sequence[str]) -> set[str]:
        rows = await self._fetch("live_usernames", list(names))
        return {row["username"] for row in rows}

    async def list_all_connections(self) -> list[Connection]:
        return [_record(Connection, row) for row in await self._fetch("list_all_connections")]

    async def lease_counts(self) -> list[tuple[str, str, str, int]]:
        rows = await self._fetch("lease_counts")
        return [(r["state"], r["mount"], r["role_name"], r["n"]) for r in rows]

    async def sweep_backlog(self) -> int:
        return int(await self._fetchval("sweep_backlog"))

    # -- nodes ----------------------------------------------------------------------------

    async def heartbeat(self, node_id: str, api_address: str, version: str) -> None:
        await self._execute("heartbeat", node_id, api_address, version)

    async def remove_node(self, node_id: str) -> None:
        await self._execute("remove_node", node_id)

    async def live_nodes(self, within_seconds: float) -> list[dict[str, Any]]:
        return [dict(row) for row in await self._fetch("live_nodes", float(within_seconds))]

    async def list_lease_keys(self, prefix: str) -> list[str]:
        rows = await self._fetch("list_lease_keys", like_prefix(prefix), len(prefix) + 1)
        return [row["key"] for row in rows]

    async def bulk_insert_leases(self, leases: Sequence[NewLease], state: str) -> None:
        """Seeds many rows at once; for benchmarks and tests of the sweep, not the API."""
        async with self._translate(), self._pool.acquire() as conn:
            await conn.copy_records_to_table(
                "broker_leases",
                columns=[
                    "lease_id",
                    "mount",
                    "role_name",
                    "connection_name",
                    "plugin_name",
                    "username",
                    "issued_at",
                    "expires_at",
                    "max_expires_at",
                    "due_at",
                    "state",
                ],
                records=[
                    (
                        x.lease_id,
                        x.mount,
                        x.role_name,
                        x.connection_name,
                        x.plugin_name,
                        x.username,
                        x.issued_at,
                        x.expires_at,
                        x.max_expires_at,
                        x.expires_at,
                        state,
                    )
                    for x in leases
                ],
            )
