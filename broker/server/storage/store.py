"""The broker's own storage on PostgreSQL, through asyncpg.

The only module that runs the queries in ``broker/sql/queries.sql``. Driver errors become
``StorageUnavailable`` here, so callers see the broker's errors, never asyncpg's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg

from broker.exceptions import InvalidRequest, KeyringChanged, StorageUnavailable
from broker.models import (
    AppRole,
    AuditDevice,
    ClaimedLease,
    Connection,
    Lease,
    Mount,
    NewLease,
    Role,
    SealRecord,
    StaticRole,
    TokenEntry,
)
from broker.server.storage import sql
from broker.server.storage.barrier import Barrier

_T = TypeVar("_T")
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


def _record(cls: type[_T], row: asyncpg.Record) -> _T:
    """A model from a row; array columns (lists) become the models' tuples."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in row.items()}
    return cls(**values)


def _connection_context(mount: str, name: str) -> str:
    """Associated data binding a connection's ciphertext to that connection."""
    return f"broker_connections/{mount}/{name}"


def _pending_context(mount: str, name: str) -> str:
    return f"broker_connections/{mount}/{name}/pending"


def _static_context(mount: str, name: str) -> str:
    return f"broker_static_roles/{mount}/{name}"


def _wrapping_context(accessor: str) -> str:
    return f"broker_wrapped_responses/{accessor}"


def _like_literal(text: str) -> str:
    """``text`` as a LIKE pattern that matches only itself: ``%``, ``_`` and the escape
    character (PostgreSQL's default, backslash) lose their meaning, since a role name may
    well contain ``_``."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def segment_prefix(prefix: str) -> str:
    """``prefix`` as whole path segments: ``database/creds/app`` becomes
    ``database/creds/app/``, so it never reaches ``database/creds/app-admin/...`` (Vault's
    lease prefixes are storage paths, matched by segment). ``""`` stays every lease."""
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def lease_pattern(prefix: str, *, exact: bool = False) -> str:
    """The LIKE pattern for the leases a prefix operation touches: the one id when
    ``exact``, else every id under ``prefix`` taken as whole segments."""
    if exact:
        return _like_literal(prefix)
    return _like_literal(segment_prefix(prefix)) + "%"


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
    Secret columns pass through the barrier here, on their way in and out, so nothing above
    this module sees ciphertext and nothing below it sees a secret.
    """

    def __init__(self, pool: asyncpg.Pool, barrier: Barrier | None = None) -> None:
        self._pool = pool
        self._q = sql.queries()
        self.barrier = barrier if barrier is not None else Barrier()

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
            self.barrier.encrypt_text(c.password, _connection_context(c.mount, c.name)),
            list(c.allowed_roles),
            c.username_template,
            c.verify_connection,
            c.options,
        )

    async def get_connection(self, mount: str, name: str) -> Connection | None:
        row = await self._fetchrow("get_connection", mount, name)
        return await self._open_connection(_record(Connection, row)) if row else None

    async def _open_connection(self, stored: Connection) -> Connection:
        """The connection with its password decrypted; a key term another node added since
        this one unsealed is loaded on first sight."""
        context = _connection_context(stored.mount, stored.name)
        password = await self._decrypt(stored.password, context)
        return dataclasses.replace(stored, password=password)

    async def reload_keyring(self) -> None:
        record = await self.get_seal()
        if record is not None:
            self.barrier.reload(record.keyring)

    async def reencrypt_connections(self) -> int:
        """Move every connection password sealed under an old key term (or written before
        encryption existed) to the active term. Returns how many moved."""
        await self.reload_keyring()  # the active term may have moved on another node
        moved = 0
        for row in await self._fetch("list_all_connections"):
            stored = _record(Connection, row)
            if not self.barrier.needs_reencryption(stored.password):
                continue
            opened = await self._open_connection(stored)
            context = _connection_context(stored.mount, stored.name)
            fresh = self.barrier.encrypt_text(opened.password, context)
            status = await self._execute(
                "update_connection_password", stored.mount, stored.name, stored.password, fresh
            )
            moved += self._rows_affected(status)
        return moved

    async def list_connections(self, mount: str) -> list[str]:
        return [row["name"] for row in await self._fetch("list_connections", mount)]

    async def delete_connection(self, mount: str, name: str) -> bool:
        return await self._fetchval("delete_connection", mount, name) is not None

    async def count_live_leases_of_connection(self, mount: str, name: str) -> int:
        return int(await self._fetchval("count_live_leases_of_connection", mount, name))

    async def delete_connection_unless_leased(self, mount: str, name: str) -> int | None:
        """Delete the connection unless live leases still need it for their revocation.
        None: it does not exist; else how many live leases kept it (0: deleted). Counted
        under the row's lock, so an issuance in flight is either counted or finds the
        connection gone before it makes its user (connections_still_exist)."""
        async with self._translate(), self._pool.acquire() as conn, conn.transaction():
            if await conn.fetchval(self._q["lock_connection_for_delete"], mount, name) is None:
                return None
            q = self._q["count_live_leases_of_connection"]
            live = int(await conn.fetchval(q, mount, name))
            if not live:
                await conn.fetchval(self._q["delete_connection"], mount, name)
            return live

    async def delete_mount_unless_leased(self, path: str) -> int | None:
        """The same for a whole mount (its connections and roles go with it)."""
        async with self._translate(), self._pool.acquire() as conn, conn.transaction():
            if await conn.fetchval(self._q["get_mount"], path) is None:
                return None
            await conn.fetch(self._q["lock_mount_connections"], path)
            live = int(await conn.fetchval(self._q["count_live_leases_of_mount"], path))
            if not live:
                await conn.fetchval(self._q["delete_mount"], path)
            return live

    async def live_leases_of_connection(self, mount: str, name: str) -> list[str]:
        rows = await self._fetch("live_leases_of_connection", mount, name)
        return [row["lease_id"] for row in rows]

    async def connections_still_exist(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """For each (mount, name), whether the connection exists, waiting out a delete that
        holds it (see the query)."""
        rows = await self._fetch(
            "connections_still_exist", [m for m, _ in pairs], [n for _, n in pairs]
        )
        present = {row["i"] for row in rows}
        return [i in present for i in range(1, len(pairs) + 1)]

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
            r.orphan_leases,
            r.max_leases,
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
            connection = await self._open_connection(
                Connection(
                    mount=mount,
                    **{k[2:]: values.pop(k) for k in list(values) if k.startswith("c_")},
                )
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
        columns: list[list[Any]] = [[] for _ in range(13)]
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
                lease.token_accessor,
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
        self,
        limit: int,
        claim_seconds: float,
        prefix: str = "",
        *,
        exact: bool = False,
        owner: str | None = None,
    ) -> list[ClaimedLease]:
        """Due leases (all of them, those under ``prefix``, or the one id when ``exact``),
        claimed by the process ``owner`` (its instance id): when that process is seen dead,
        ``release_dead_claims`` hands them back at once. No owner (a one-off CLI sweep, with
        no heartbeat): only the claim timeout does."""
        rows = await self._fetch(
            "claim_due_leases",
            limit,
            float(claim_seconds),
            lease_pattern(prefix, exact=exact),
            owner,
        )
        return [_record(ClaimedLease, row) for row in rows]

    async def make_leases_due(self, prefix: str, *, exact: bool = False) -> int:
        pattern = lease_pattern(prefix, exact=exact)
        return self._rows_affected(await self._execute("make_leases_due", pattern))

    async def count_pending_leases(self, prefix: str, *, exact: bool = False) -> int:
        pattern = lease_pattern(prefix, exact=exact)
        return int(await self._fetchval("count_pending_leases", pattern))

    async def finish_revocations(self, lease_ids: Sequence[str]) -> None:
        if lease_ids:
            await self._execute("finish_revocations", list(lease_ids))

    async def schedule_revocation_retry(
        self, lease_id: str, delay_seconds: float, error: str | None
    ) -> None:
        await self._execute("schedule_revocation_retry", lease_id, float(delay_seconds), error)

    async def schedule_revocation_recheck(self, lease_id: str, delay_seconds: float) -> None:
        await self._execute("schedule_revocation_recheck", lease_id, float(delay_seconds))

    async def force_revoked(self, prefix: str, *, exact: bool = False) -> int:
        pattern = lease_pattern(prefix, exact=exact)
        return self._rows_affected(await self._execute("force_revoked", pattern))

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
        rows = await self._fetch("list_all_connections")
        return [await self._open_connection(_record(Connection, row)) for row in rows]

    async def lease_counts(self) -> list[tuple[str, str, str, int]]:
        rows = await self._fetch("lease_counts")
        return [(r["state"], r["mount"], r["role_name"], r["n"]) for r in rows]

    async def sweep_backlog(self) -> int:
        return int(await self._fetchval("sweep_backlog"))

    # -- nodes ----------------------------------------------------------------------------

    async def heartbeat(
        self, node_id: str, api_address: str, version: str, instance_id: str
    ) -> None:
        await self._execute("heartbeat", node_id, api_address, version, instance_id)

    async def release_dead_claims(
        self, node_id: str, instance_id: str, dead_after_seconds: float
    ) -> int:
        """Hand back (due now) the claims of dead processes: nodes silent for
        ``dead_after_seconds``, and earlier instances of ``node_id``. Returns how many."""
        status = await self._execute(
            "release_dead_claims", node_id, instance_id, float(dead_after_seconds)
        )
        return self._rows_affected(status)

    async def remove_node(self, node_id: str) -> None:
        await self._execute("remove_node", node_id)

    async def live_nodes(self, within_seconds: float) -> list[dict[str, Any]]:
        return [dict(row) for row in await self._fetch("live_nodes", float(within_seconds))]

    async def list_lease_keys(self, prefix: str) -> list[str]:
        """The next segment of every live lease under ``prefix`` (whole segments)."""
        prefix = segment_prefix(prefix)
        rows = await self._fetch("list_lease_keys", lease_pattern(prefix), len(prefix) + 1)
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

    async def count_live_leases_of_role(self, mount: str, role: str) -> int:
        return int(await self._fetchval("count_live_leases_of_role", mount, role))

    async def revoke_leases_of_missing_tokens(self) -> int:
        return self._rows_affected(await self._execute("revoke_leases_of_missing_tokens"))

    # -- seal -----------------------------------------------------------------------------

    async def get_seal(self) -> SealRecord | None:
        row = await self._fetchrow("get_seal")
        return _record(SealRecord, row) if row else None

    async def insert_seal(
        self, shares: int, threshold: int, keyring: bytes, wrapped_root_key: bytes | None
    ) -> bool:
        inserted = await self._fetchval("insert_seal", shares, threshold, keyring, wrapped_root_key)
        return inserted is not None

    async def update_keyring(self, read_version: int, keyring: bytes) -> bool:
        return await self._fetchval("update_keyring", read_version, keyring) is not None

    # -- tokens ---------------------------------------------------------------------------

    async def insert_token(self, token_hmac: bytes, entry: TokenEntry) -> None:
        await self._execute(
            "insert_token",
            entry.accessor,
            token_hmac,
            entry.parent_accessor,
            list(entry.policies),
            entry.display_name,
            entry.meta,
            entry.num_uses,
            entry.ttl,
            entry.explicit_max_ttl,
            entry.renewable,
            entry.path,
            list(entry.bound_cidrs),
            entry.expires_at,
            entry.max_expires_at,
        )

    async def get_token_by_hmac(self, token_hmac: bytes) -> TokenEntry | None:
        row = await self._fetchrow("get_token_by_hmac", token_hmac)
        return _record(TokenEntry, row) if row else None

    async def get_token_by_accessor(self, accessor: str) -> TokenEntry | None:
        row = await self._fetchrow("get_token_by_accessor", accessor)
        return _record(TokenEntry, row) if row else None

    async def use_token(self, accessor: str) -> int | None:
        """Spend one use; the uses left after it, or None if none were left."""
        left = await self._fetchval("use_token", accessor)
        return None if left is None else int(left)

    async def renew_token(self, accessor: str, expires_at: dt.datetime, ttl: int) -> bool:
        return await self._fetchval("renew_token", accessor, expires_at, ttl) is not None

    async def revoke_token_trees(self, accessors: Sequence[str]) -> tuple[int, int]:
        """(tokens removed, leases made due) for these tokens and all their descendants."""
        row = await self._fetchrow("revoke_token_trees", list(accessors))
        assert row is not None
        return int(row["tokens"]), int(row["leases"])

    async def orphan_children(self, accessor: str) -> None:
        await self._execute("orphan_children", accessor)

    async def expired_tokens(self, limit: int) -> list[str]:
        return [row["accessor"] for row in await self._fetch("expired_tokens", limit)]

    async def list_token_accessors(self) -> list[str]:
        return [row["accessor"] for row in await self._fetch("list_token_accessors")]

    async def notify_auth_changed(self, what: str) -> None:
        await self._fetchval("notify_auth_changed", what)

    # -- policies -------------------------------------------------------------------------

    async def upsert_policy(self, name: str, text: str) -> None:
        await self._execute("upsert_policy", name, text)

    async def get_policy(self, name: str) -> str | None:
        value = await self._fetchval("get_policy", name)
        return None if value is None else str(value)

    async def list_policies(self) -> list[str]:
        return [row["name"] for row in await self._fetch("list_policies")]

    async def delete_policy(self, name: str) -> None:
        await self._execute("delete_policy", name)

    # -- auth methods and AppRole ---------------------------------------------------------

    async def insert_auth_method(
        self, path: str, type_: str, description: str, accessor: str
    ) -> bool:
        inserted = await self._fetchval("insert_auth_method", path, type_, description, accessor)
        return inserted is not None

    async def list_auth_methods(self) -> list[dict[str, Any]]:
        return [dict(row) for row in await self._fetch("list_auth_methods")]

    async def delete_auth_method(self, path: str) -> bool:
        return await self._fetchval("delete_auth_method", path) is not None

    async def upsert_approle_role(self, r: AppRole) -> None:
        await self._execute(
            "upsert_approle_role",
            r.mount,
            r.name,
            r.role_id,
            r.bind_secret_id,
            list(r.token_policies),
            r.token_ttl,
            r.token_max_ttl,
            r.token_num_uses,
            list(r.token_bound_cidrs),
            r.secret_id_ttl,
            r.secret_id_num_uses,
            list(r.secret_id_bound_cidrs),
        )

    async def get_approle_role(
        self, mount: str, name: str | None, role_id: str | None = None
    ) -> AppRole | None:
        row = await self._fetchrow("get_approle_role", mount, name, role_id)
        return _record(AppRole, row) if row else None

    async def list_approle_roles(self, mount: str) -> list[str]:
        return [row["name"] for row in await self._fetch("list_approle_roles", mount)]

    async def delete_approle_role(self, mount: str, name: str) -> bool:
        return await self._fetchval("delete_approle_role", mount, name) is not None

    async def insert_secret_id(
        self,
        secret_id_hmac: bytes,
        accessor: str,
        role: AppRole,
        cidr_list: Sequence[str],
        metadata: dict[str, str],
        expires_at: dt.datetime | None,
    ) -> dt.datetime:
        created: dt.datetime = await self._fetchval(
            "insert_secret_id",
            secret_id_hmac,
            accessor,
            role.mount,
            role.name,
            role.secret_id_num_uses,
            list(cidr_list),
            metadata,
            expires_at,
        )
        return created

    async def consume_secret_id(
        self, secret_id_hmac: bytes, mount: str, role_name: str
    ) -> dict[str, Any] | None:
        row = await self._fetchrow("consume_secret_id", secret_id_hmac, mount, role_name)
        if row is None:
            return None
        if row["num_uses"] > 0 and row["uses_left"] <= 0:
            await self._execute("delete_spent_secret_ids")
        return dict(row)

    async def get_secret_id(
        self, mount: str, role_name: str, secret_id_hmac: bytes | None, accessor: str | None
    ) -> dict[str, Any] | None:
        row = await self._fetchrow("get_secret_id", mount, role_name, secret_id_hmac, accessor)
        return dict(row) if row else None

    async def list_secret_id_accessors(self, mount: str, role_name: str) -> list[str]:
        rows = await self._fetch("list_secret_id_accessors", mount, role_name)
        return [row["accessor"] for row in rows]

    async def delete_secret_id(
        self, mount: str, role_name: str, secret_id_hmac: bytes | None, accessor: str | None
    ) -> bool:
        deleted = await self._fetchval(
            "delete_secret_id", mount, role_name, secret_id_hmac, accessor
        )
        return deleted is not None

    # -- audit ----------------------------------------------------------------------------

    async def insert_audit_device(self, device: AuditDevice) -> bool:
        inserted = await self._fetchval(
            "upsert_audit_device", device.path, device.type, device.description, device.options
        )
        return inserted is not None

    async def list_audit_devices(self) -> list[AuditDevice]:
        return [_record(AuditDevice, row) for row in await self._fetch("list_audit_devices")]

    async def delete_audit_device(self, path: str) -> bool:
        return await self._fetchval("delete_audit_device", path) is not None

    async def insert_audit_entries(self, device: str, node_id: str, lines: Sequence[str]) -> None:
        await self._execute("insert_audit_entries", device, node_id, list(lines))

    async def last_audit_entry(self, device: str, node_id: str) -> str | None:
        value = await self._fetchval("last_audit_entry", device, node_id)
        return None if value is None else str(value)

    async def audit_entries(self, device: str) -> list[tuple[str, str]]:
        return [
            (row["node_id"], row["entry"]) for row in await self._fetch("audit_entries", device)
        ]

    # -- password policies ----------------------------------------------------------------

    async def upsert_password_policy(self, name: str, text: str) -> None:
        await self._execute("upsert_password_policy", name, text)

    async def get_password_policy(self, name: str) -> str | None:
        value = await self._fetchval("get_password_policy", name)
        return None if value is None else str(value)

    async def list_password_policies(self) -> list[str]:
        return [row["name"] for row in await self._fetch("list_password_policies")]

    async def delete_password_policy(self, name: str) -> None:
        await self._execute("delete_password_policy", name)

    # -- tidy -----------------------------------------------------------------------------

    async def tidy_leases(self, retention_seconds: float, batch: int) -> int:
        status = await self._execute("tidy_leases", float(retention_seconds), batch)
        return self._rows_affected(status)

    async def tidy_wrapped_responses(self) -> int:
        return self._rows_affected(await self._execute("tidy_wrapped_responses"))

    # -- response wrapping ----------------------------------------------------------------

    async def insert_wrapped_response(
        self, token_hmac: bytes, accessor: str, response: str, path: str, ttl: int
    ) -> dt.datetime:
        sealed = self.barrier.encrypt_text(response, _wrapping_context(accessor))
        created: dt.datetime = await self._fetchval(
            "insert_wrapped_response", token_hmac, accessor, sealed, path, ttl
        )
        return created

    async def take_wrapped_response(self, token_hmac: bytes) -> dict[str, Any] | None:
        row = await self._fetchrow("take_wrapped_response", token_hmac)
        if row is None:
            return None
        found = dict(row)
        found["response"] = await self._decrypt(
            found["response"], _wrapping_context(found["accessor"])
        )
        return found

    async def get_wrapped_response(self, token_hmac: bytes) -> dict[str, Any] | None:
        row = await self._fetchrow("get_wrapped_response", token_hmac)
        return dict(row) if row else None

    async def _decrypt(self, stored: str, context: str) -> str:
        """A key term another node added since this one unsealed is loaded on first sight."""
        try:
            return self.barrier.decrypt_text(stored, context)
        except KeyringChanged:
            await self.reload_keyring()
            return self.barrier.decrypt_text(stored, context)

    # -- rotations (root credentials and static roles) --------------------------------------

    @asynccontextmanager
    async def rotation_lock(self, key: str) -> AsyncIterator[bool]:
        """Whether this node got the rotation of ``key``; held until the block ends."""
        async with self._translate(), self._pool.acquire() as conn:
            got = bool(await conn.fetchval(self._q["try_rotation_lock"], key))
            try:
                yield got
            finally:
                if got:
                    try:
                        await conn.fetchval(self._q["release_rotation_lock"], key)
                    except _DRIVER_ERRORS:
                        conn.terminate()  # a dead session releases its locks

    async def set_connection_pending_password(self, mount: str, name: str, password: str) -> None:
        sealed = self.barrier.encrypt_text(password, _pending_context(mount, name))
        await self._execute("set_connection_pending_password", mount, name, sealed)

    async def connection_pending_password(self, mount: str, name: str) -> str | None:
        stored = await self._fetchval("get_connection_pending_password", mount, name)
        if stored is None:
            return None
        return await self._decrypt(str(stored), _pending_context(mount, name))

    async def commit_connection_password(self, mount: str, name: str) -> bool:
        """The pending password becomes the connection's (re-sealed under its own
        context); False if there was none."""
        password = await self.connection_pending_password(mount, name)
        if password is None:
            return False
        sealed = self.barrier.encrypt_text(password, _connection_context(mount, name))
        status = await self._execute("commit_connection_password", mount, name, sealed)
        return self._rows_affected(status) > 0

    async def connections_with_pending_password(self) -> list[tuple[str, str]]:
        rows = await self._fetch("connections_with_pending_password")
        return [(row["mount"], row["name"]) for row in rows]

    async def upsert_static_role(self, r: StaticRole) -> None:
        await self._execute(
            "upsert_static_role",
            r.mount,
            r.name,
            r.db_name,
            r.username,
            r.rotation_period,
            r.rotation_schedule,
            r.rotation_window,
            list(r.rotation_statements),
            r.next_rotation,
        )

    async def get_static_role(self, mount: str, name: str) -> StaticRole | None:
        row = await self._fetchrow("get_static_role", mount, name)
        if row is None:
            return None
        role = _record(StaticRole, row)
        context = _static_context(mount, name)
        password = await self._decrypt(role.password, context) if role.password else ""
        pending = role.pending_password
        if pending is not None:
            pending = await self._decrypt(pending, context + "/pending")
        return dataclasses.replace(role, password=password, pending_password=pending)

    async def list_static_roles(self, mount: str) -> list[str]:
        return [row["name"] for row in await self._fetch("list_static_roles", mount)]

    async def delete_static_role(self, mount: str, name: str) -> bool:
        return await self._fetchval("delete_static_role", mount, name) is not None

    async def due_static_roles(self, limit: int) -> list[tuple[str, str]]:
        rows = await self._fetch("due_static_roles", limit)
        return [(row["mount"], row["name"]) for row in rows]

    async def set_static_pending(self, mount: str, name: str, password: str) -> None:
        sealed = self.barrier.encrypt_text(password, _static_context(mount, name) + "/pending")
        await self._execute("set_static_pending", mount, name, sealed)

    async def commit_static_rotation(
        self, mount: str, name: str, password: str, next_rotation: dt.datetime
    ) -> None:
        """The new password becomes the served one (sealed under the role's context)."""
        sealed = self.barrier.encrypt_text(password, _static_context(mount, name))
        await self._execute("commit_static_rotation", mount, name, sealed, next_rotation)

    async def fail_static_rotation(
        self, mount: str, name: str, error: str, retry_seconds: float
    ) -> None:
        await self._execute("fail_static_rotation", mount, name, error, float(retry_seconds))
