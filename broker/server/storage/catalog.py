"""The secrets engine's configuration in storage: mounts, connections, roles, static roles
(with their rotations) and password policies, with connection and static-role passwords
(and connection URLs, which may carry one inline) sealed through the keyring on their way
in and opened on their way out, and every
connection, role, static role and password policy row authenticated (its MAC written with
it and checked before it is used: storage/integrity.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from broker.exceptions import RowIntegrityError
from broker.models import Connection, Mount, Role, StaticRole
from broker.server.storage import integrity
from broker.server.storage.connector import (
    CATALOG_CHANNEL,
    DRIVER_ERRORS,
    Connector,
    Store,
    record,
    rows_affected,
)
from broker.server.storage.keyring import (
    KeyringStore,
    connection_context,
    connection_url_context,
)


def _without_mac(row: Any) -> dict[str, Any]:
    """A checked row's values for its model: arrays as tuples, the MAC dropped."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in row.items() if k != "mac"}


def _pending_context(mount: str, name: str) -> str:
    return f"broker_connections/{mount}/{name}/pending"


def _static_context(mount: str, name: str) -> str:
    return f"broker_static_roles/{mount}/{name}"


class CatalogStore(Store):
    """Methods are grouped by table; each is one round trip unless its docstring says
    otherwise."""

    QUERY_FILE = "catalog"

    def __init__(self, connector: Connector, keyring: KeyringStore) -> None:
        super().__init__(connector)
        self._keyring = keyring

    @asynccontextmanager
    async def setup_lock(self) -> AsyncIterator[None]:
        """Hold the cluster-wide set-up lock, so nodes sharing storage set up once."""
        async with self._db.transaction() as conn:
            await conn.execute(self._q["setup_lock"])
            yield

    # -- change notifications (issue_contexts.py) ------------------------------------------

    async def notify_changed(self) -> None:
        await self._db.notify(CATALOG_CHANNEL)

    async def listen_changes(
        self,
        on_change: Callable[[], None],
        on_lost: Callable[[], None],
        on_restored: Callable[[], None] | None = None,
    ) -> Callable[[], Awaitable[None]]:
        """See ``Connector.listen``: ``on_change`` runs when any node changed the catalog;
        the subscription survives storage restarts and failovers."""
        return await self._db.listen(CATALOG_CHANNEL, on_change, on_lost, on_restored)

    # -- mounts ---------------------------------------------------------------------------

    async def insert_mount(self, path: str, type_: str, description: str, accessor: str) -> bool:
        return await self._fetchval("insert_mount", path, type_, description, accessor) is not None

    async def get_mount(self, path: str) -> Mount | None:
        row = await self._fetchrow("get_mount", path)
        return record(Mount, row) if row else None

    async def list_mounts(self) -> list[Mount]:
        return [record(Mount, row) for row in await self._fetch("list_mounts")]

    async def delete_mount_unless_leased(self, path: str) -> int | None:
        """The same as ``delete_connection_unless_leased`` for a whole mount (its
        connections and roles go with it)."""
        async with self._db.transaction() as conn:
            if await conn.fetchval(self._q["get_mount"], path) is None:
                return None
            await conn.fetch(self._q["lock_mount_connections"], path)
            live = int(await conn.fetchval(self._q["count_live_leases_of_mount"], path))
            if not live:
                await conn.fetchval(self._q["delete_mount"], path)
            return live

    # -- connections ----------------------------------------------------------------------

    async def upsert_connection(self, c: Connection) -> None:
        sealed = dataclasses.replace(
            c,
            password=self._keyring.seal_text(c.password, connection_context(c.mount, c.name)),
            connection_url=self._keyring.seal_text(
                c.connection_url, connection_url_context(c.mount, c.name)
            ),
        )
        await self._execute(
            "upsert_connection",
            c.mount,
            c.name,
            c.plugin_name,
            sealed.connection_url,
            c.username,
            sealed.password,
            list(c.allowed_roles),
            c.username_template,
            c.verify_connection,
            c.options,
            await self._keyring.mac_row(integrity.CONNECTIONS, dataclasses.asdict(sealed)),
        )

    async def get_connection(self, mount: str, name: str) -> Connection | None:
        row = await self._fetchrow("get_connection", mount, name)
        return await self._checked_connection(row) if row else None

    async def _checked_connection(self, row: Any) -> Connection:
        """The stored connection, once its row passed its check, with its password
        decrypted."""
        await self._keyring.check_row(integrity.CONNECTIONS, row)
        return await self._open_connection(Connection(**_without_mac(row)))

    async def _open_connection(self, stored: Connection) -> Connection:
        """The connection with its password and URL decrypted."""
        context = connection_context(stored.mount, stored.name)
        password = await self._keyring.open_text(stored.password, context)
        url = await self._keyring.open_text(
            stored.connection_url, connection_url_context(stored.mount, stored.name)
        )
        return dataclasses.replace(stored, password=password, connection_url=url)

    async def list_connections(self, mount: str) -> list[str]:
        return [row["name"] for row in await self._fetch("list_connections", mount)]

    async def list_all_connections(self) -> list[Connection]:
        """Every connection whose row checks out; a tampered one is left out (its check
        has already alerted and counted it), so one bad row does not stop a scan of all."""
        connections = []
        for row in await self._fetch("list_all_connections"):
            try:
                connections.append(await self._checked_connection(row))
            except RowIntegrityError:
                continue
        return connections

    async def delete_connection_unless_leased(self, mount: str, name: str) -> int | None:
        """Delete the connection unless live leases still need it for their revocation.
        None: it does not exist; else how many live leases kept it (0: deleted). Counted
        under the row's lock, so an issuance in flight is either counted or finds the
        connection gone before it makes its user (insert_leases)."""
        async with self._db.transaction() as conn:
            if await conn.fetchval(self._q["lock_connection_for_delete"], mount, name) is None:
                return None
            q = self._q["count_live_leases_of_connection"]
            live = int(await conn.fetchval(q, mount, name))
            if not live:
                await conn.fetchval(self._q["delete_connection"], mount, name)
            return live

    async def live_leases_of_connection(self, mount: str, name: str) -> list[str]:
        rows = await self._fetch("live_leases_of_connection", mount, name)
        return [row["lease_id"] for row in rows]

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
            await self._keyring.mac_row(integrity.ROLES, dataclasses.asdict(r)),
        )

    async def get_role(self, mount: str, name: str) -> Role | None:
        row = await self._fetchrow("get_role", mount, name)
        if row is None:
            return None
        await self._keyring.check_row(integrity.ROLES, row)
        return Role(**_without_mac(row))

    async def get_issue_context(
        self, mount: str, role: str
    ) -> tuple[Role, Connection | None] | None:
        """The role and the connection it names (None if that is missing), in one query;
        both rows pass their checks first (the cache of issue contexts keeps the result, so
        the check costs one HMAC per row per cache fill)."""
        row = await self._fetchrow("get_issue_context", mount, role)
        if row is None:
            return None
        values: dict[str, Any] = dict(row.items())
        c_values = {k[2:]: values.pop(k) for k in list(values) if k.startswith("c_")}
        await self._keyring.check_row(integrity.ROLES, values)
        connection = None
        if c_values["name"] is not None:
            connection = await self._checked_connection({"mount": mount, **c_values})
        return Role(**_without_mac(values)), connection

    async def list_roles(self, mount: str) -> list[str]:
        return [row["name"] for row in await self._fetch("list_roles", mount)]

    async def delete_role(self, mount: str, name: str) -> bool:
        return await self._fetchval("delete_role", mount, name) is not None

    # -- rotations (root credentials and static roles) --------------------------------------

    @asynccontextmanager
    async def rotation_lock(self, key: str) -> AsyncIterator[bool]:
        """Whether this node got the rotation of ``key``; held until the block ends."""
        async with self._db.session() as conn:
            got = bool(await conn.fetchval(self._q["try_rotation_lock"], key))
            try:
                yield got
            finally:
                if got:
                    try:
                        await conn.fetchval(self._q["release_rotation_lock"], key)
                    except DRIVER_ERRORS:
                        conn.terminate()  # a dead session releases its locks

    async def set_connection_pending_password(self, mount: str, name: str, password: str) -> None:
        sealed = self._keyring.seal_text(password, _pending_context(mount, name))
        await self._execute("set_connection_pending_password", mount, name, sealed)

    async def connection_pending_password(self, mount: str, name: str) -> str | None:
        stored = await self._fetchval("get_connection_pending_password", mount, name)
        if stored is None:
            return None
        return await self._keyring.open_text(str(stored), _pending_context(mount, name))

    async def commit_connection_password(self, mount: str, name: str) -> bool:
        """The pending password becomes the connection's (re-sealed under its own
        context, the row re-authenticated over it); False if there was none. The row is
        checked first, and the write is a compare-and-set on the password it read, so a
        concurrent change of the connection is never authenticated with stale columns."""
        password = await self.connection_pending_password(mount, name)
        if password is None:
            return False
        sealed = self._keyring.seal_text(password, connection_context(mount, name))
        for _ in range(5):
            row = await self._fetchrow("get_connection", mount, name)
            if row is None:
                return False
            await self._keyring.check_row(integrity.CONNECTIONS, row)
            mac = await self._keyring.mac_row(
                integrity.CONNECTIONS, {**dict(row), "password": sealed}
            )
            status = await self._execute(
                "commit_connection_password", mount, name, sealed, row["password"], mac
            )
            if rows_affected(status) > 0:
                return True
            if await self.connection_pending_password(mount, name) is None:
                return False
        return False

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
            await self._keyring.mac_row(integrity.STATIC_ROLES, dataclasses.asdict(r)),
        )

    async def get_static_role(self, mount: str, name: str) -> StaticRole | None:
        row = await self._fetchrow("get_static_role", mount, name)
        if row is None:
            return None
        await self._keyring.check_row(integrity.STATIC_ROLES, row)
        role = StaticRole(**_without_mac(row))
        context = _static_context(mount, name)
        password = await self._keyring.open_text(role.password, context) if role.password else ""
        pending = role.pending_password
        if pending is not None:
            pending = await self._keyring.open_text(pending, context + "/pending")
        return dataclasses.replace(role, password=password, pending_password=pending)

    async def list_static_roles(self, mount: str) -> list[str]:
        return [row["name"] for row in await self._fetch("list_static_roles", mount)]

    async def delete_static_role(self, mount: str, name: str) -> bool:
        return await self._fetchval("delete_static_role", mount, name) is not None

    async def due_static_roles(self, limit: int) -> list[tuple[str, str]]:
        rows = await self._fetch("due_static_roles", limit)
        return [(row["mount"], row["name"]) for row in rows]

    async def set_static_pending(self, mount: str, name: str, password: str) -> None:
        sealed = self._keyring.seal_text(password, _static_context(mount, name) + "/pending")
        await self._execute("set_static_pending", mount, name, sealed)

    async def commit_static_rotation(
        self, mount: str, name: str, password: str, next_rotation: dt.datetime
    ) -> None:
        """The new password becomes the served one (sealed under the role's context)."""
        sealed = self._keyring.seal_text(password, _static_context(mount, name))
        await self._execute("commit_static_rotation", mount, name, sealed, next_rotation)

    async def fail_static_rotation(
        self, mount: str, name: str, error: str, retry_seconds: float
    ) -> None:
        await self._execute("fail_static_rotation", mount, name, error, float(retry_seconds))

    # -- password policies ----------------------------------------------------------------

    async def upsert_password_policy(self, name: str, text: str) -> None:
        mac = await self._keyring.mac_row(
            integrity.PASSWORD_POLICIES, {"name": name, "policy": text}
        )
        await self._execute("upsert_password_policy", name, text, mac)

    async def get_password_policy(self, name: str) -> str | None:
        row = await self._fetchrow("get_password_policy", name)
        if row is None:
            return None
        await self._keyring.check_row(integrity.PASSWORD_POLICIES, row)
        return str(row["policy"])

    async def list_password_policies(self) -> list[str]:
        return [row["name"] for row in await self._fetch("list_password_policies")]

    async def delete_password_policy(self, name: str) -> None:
        await self._execute("delete_password_policy", name)
