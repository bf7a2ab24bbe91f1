"""Secrets engine mounts, database connections and roles: validation and persistence.

Writes are checked here, when they happen (plugin known, URL parseable, templates valid,
connection reachable), so a bad configuration is a 400 on write, not a failure at issuance.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from broker.exceptions import BrokerError, InvalidRequest, NotFound, TargetError
from broker.models import Connection, Mount, Role
from broker.server.database.endpoints import host_allowed
from broker.server.database.issue_contexts import IssueContextCache
from broker.server.database.password_policies import PasswordPolicyStore
from broker.server.database.revocation import Revocations
from broker.server.engines.base import DatabaseEngine
from broker.server.engines.registry import EngineRegistry, build_engine, check_plugin_name
from broker.server.engines.templates import (
    ROLE_STATEMENT_KINDS,
    UsernameTemplate,
    check_statements,
)
from broker.server.secrets_gen import random_string
from broker.server.settings import Settings
from broker.server.storage.catalog import CatalogStore

MOUNT_TYPES = ("database",)
#: Disabling a mount: rounds of revoke-then-delete before leases issued meanwhile make it
#: give up (each round revokes what the last one missed).
_DELETE_ROUNDS = 3
_MOUNT_PATH = re.compile(r"^[A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.\-]+)*$")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_RESERVED_MOUNTS = ("sys", "auth", "cubbyhole", "identity")
# Vault's per-table grants: serialised by the broker, but PostgreSQL caps them near 2,400
# live roles per table (the ACL must fit in one 8 kB row).
_PER_TABLE_GRANT = re.compile(r"\bGRANT\b[\s\S]*\bON\b\s+(?:ALL\s+TABLES|TABLE)\b", re.IGNORECASE)
PER_TABLE_GRANT_WARNING = (
    "creation statements grant privileges on tables to each user: PostgreSQL serialises "
    "such grants and refuses them past about 2,400 live users per table; granting "
    'membership in a prepared group role (GRANT readers TO "{{name}}") scales instead'
)


#: Integer options of a connection and the ranges they may take (a pool of 0 or a timeout
#: of ages would only fail later, at issuance, instead of when the connection is written).
OPTION_RANGES = {
    "max_open_connections": (1, 1000),
    "max_idle_connections": (0, 1000),
    "connect_timeout": (1, 600),
    "statement_timeout": (1, 3600),
}


def check_options(options: dict[str, Any]) -> None:
    """Refuse an integer option out of its range, whoever writes it (the API, or the
    declarative configuration)."""
    for key, (low, high) in OPTION_RANGES.items():
        value = options.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidRequest(f"{key}: expected a whole number from {low} to {high}")


def check_name(kind: str, name: str) -> str:
    if not _NAME.match(name):
        raise InvalidRequest(f"invalid {kind} name {name!r}: use letters, digits, '_', '.', '-'")
    return name


def normalise_mount_path(path: str) -> str:
    path = path.strip("/")
    if not _MOUNT_PATH.match(path):
        raise InvalidRequest(f"invalid mount path {path!r}")
    if path.split("/", 1)[0] in _RESERVED_MOUNTS:
        raise InvalidRequest(f"cannot mount at reserved path {path!r}")
    return path


@dataclass(frozen=True, slots=True)
class ConnectionUpdate:
    """Fields present in a connection write; None means 'keep the stored value'."""

    plugin_name: str | None = None
    connection_url: str | None = None
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    allowed_roles: tuple[str, ...] | None = None
    username_template: str | None = None
    verify_connection: bool | None = None
    options: dict[str, Any] | None = None
    #: The options given replace the stored ones instead of merging into them key by key
    #: (the declarative configuration states them all; an option it drops must go).
    replace_options: bool = False


@dataclass(frozen=True, slots=True)
class RoleUpdate:
    db_name: str | None = None
    creation_statements: tuple[str, ...] | None = None
    revocation_statements: tuple[str, ...] | None = None
    rollback_statements: tuple[str, ...] | None = None
    renew_statements: tuple[str, ...] | None = None
    default_ttl: int | None = None
    max_ttl: int | None = None
    orphan_leases: bool | None = None
    max_leases: int | None = None


class Catalog:
    def __init__(
        self,
        store: CatalogStore,
        engines: EngineRegistry,
        revocations: Revocations,
        settings: Settings,
        contexts: IssueContextCache | None = None,
        passwords: PasswordPolicyStore | None = None,
    ) -> None:
        self._contexts = contexts
        self._passwords = passwords
        self._store = store
        self._engines = engines
        self._revocations = revocations
        self._settings = settings
        self._mount_paths: frozenset[str] = frozenset()

    def setup_lock(self) -> AbstractAsyncContextManager[None]:
        """The cluster-wide set-up lock: held while creating entries only if missing (the
        dev server's demo), so nodes sharing storage create them once."""
        return self._store.setup_lock()

    # -- mounts ---------------------------------------------------------------------------

    async def refresh_mounts(self) -> None:
        self._mount_paths = frozenset(m.path for m in await self._store.list_mounts())

    async def resolve_mount(self, path: str) -> tuple[str, str] | None:
        """Split a request path into (mount, rest) by the longest enabled mount prefix.

        Mounts are cached per node; a miss reloads them once, so a mount enabled on another
        node is found on first use.
        """
        for attempt in range(2):
            best = max(
                (m for m in self._mount_paths if path == m or path.startswith(m + "/")),
                key=len,
                default=None,
            )
            if best is not None:
                return best, path[len(best) + 1 :]
            if attempt == 0:
                await self.refresh_mounts()
        return None

    async def enable_mount(self, path: str, type_: str, description: str = "") -> None:
        path = normalise_mount_path(path)
        if type_ not in MOUNT_TYPES:
            raise InvalidRequest(f"plugin not found in the catalog: {type_}")
        if any(path.startswith(m + "/") or m.startswith(path + "/") for m in self._mount_paths):
            raise InvalidRequest(f"path is already in use at {path}/")
        accessor = f"{type_}_{random_string(8).lower()}"
        if not await self._store.insert_mount(path, type_, description, accessor):
            raise InvalidRequest(f"path is already in use at {path}/")
        await self.refresh_mounts()
        await self._changed()

    async def get_mount(self, path: str) -> Mount:
        mount = await self._store.get_mount(path.strip("/"))
        if mount is None:
            raise NotFound()
        return mount

    async def list_mounts(self) -> list[Mount]:
        return await self._store.list_mounts()

    async def disable_mount(self, path: str) -> None:
        """Like Vault: revoke every lease of the mount first; keep the mount if that fails
        (400 naming how many failed and the first error), since its connections are what
        the retries need. The mount goes only once no live lease of it is left, checked
        under the lock an issuance in flight waits for (see delete_mount_unless_leased)."""
        path = path.strip("/")
        if await self._store.get_mount(path) is None:
            return
        live: int | None = 0
        for _ in range(_DELETE_ROUNDS):
            try:
                await self._revocations.revoke_prefix(path + "/")
            except TargetError as exc:
                raise InvalidRequest(
                    f"failed to revoke the leases of mount {path}/, which was kept: {exc.message}"
                ) from exc
            live = await self._store.delete_mount_unless_leased(path)
            if not live:
                break
        if live:
            raise InvalidRequest(
                f"mount {path}/ was kept: {live} lease(s) of it are still live (issued while "
                "it was being disabled, or awaiting a re-check of their revocation); retry"
            )
        self._engines.forget(path)
        await self.refresh_mounts()
        await self._changed()

    # -- connections ----------------------------------------------------------------------

    async def write_connection(self, mount: str, name: str, update: ConnectionUpdate) -> list[str]:
        """Validate and store; returns warnings for the response: when the connection is
        verified, each privilege its admin lacks for issuing and revoking (Vault answers a
        write with ``warnings`` the same way), so a missing grant shows on day one instead
        of as leases that cannot be revoked."""
        check_name("connection", name)
        existing = await self._store.get_connection(mount, name)
        if existing is None:
            if not update.plugin_name:
                raise InvalidRequest("plugin_name must be provided")
            if not update.connection_url:
                raise InvalidRequest("connection_url must be provided")
            base = Connection(
                mount, name, update.plugin_name, update.connection_url, "", "", (), "", True, {}
            )
        else:
            base = existing
        changes = {k: v for k, v in dataclasses.asdict(update).items() if v is not None}
        del changes["replace_options"]
        if update.options is not None and not update.replace_options:
            # Options merge key by key, like the other fields.
            changes["options"] = {**base.options, **update.options}
        connection = dataclasses.replace(base, **changes)
        check_plugin_name(connection.plugin_name)
        check_options(connection.options)
        if connection.username_template:
            UsernameTemplate(connection.username_template)
        check_statements(
            "root_rotation_statements", connection.options.get("root_rotation_statements") or ()
        )
        policy = connection.options.get("password_policy")
        if policy and self._passwords is not None:
            await self._passwords.policy(policy)  # a 400 if it does not exist
        engine = build_engine(connection)  # parses the URL: a 400 here if it is malformed
        self._check_target_hosts(engine.target_hosts())
        warnings: list[str] = []
        try:
            if connection.verify_connection:
                try:
                    await engine.verify_connection()
                except BrokerError as exc:
                    raise InvalidRequest(
                        f"error creating database object: error verifying connection: {exc.message}"
                    ) from exc
                warnings = await self._admin_warnings(engine, mount, name)
        finally:
            await engine.close()
        await self._store.upsert_connection(connection)
        await self._changed()
        return warnings

    async def _admin_warnings(self, engine: DatabaseEngine, mount: str, name: str) -> list[str]:
        """What the admin cannot do, for the roles already written on this connection.
        A check that itself fails is one more warning, never a refused write."""
        statements: list[str] = []
        for role_name in await self._store.list_roles(mount):
            role = await self._store.get_role(mount, role_name)
            if role is not None and role.db_name == name:
                statements.extend(role.creation_statements)
        try:
            return await engine.check_admin(statements)
        except BrokerError as exc:
            return [f"could not check the admin's privileges: {exc.message}"]

    def _check_target_hosts(self, hosts: tuple[str, ...]) -> None:
        allowed = [a.strip() for a in self._settings.allowed_target_hosts.split(",") if a.strip()]
        if not allowed:
            return
        for host in hosts:
            if not host_allowed(host, allowed):
                raise InvalidRequest(
                    f"connection_url: host {host!r} is not in allowed_target_hosts"
                )

    async def reset_connection(self, mount: str, name: str) -> None:
        """Vault's reset: drop this node's pool; the next use reconnects with what is
        stored (another node's rotate-root, a password changed outside the broker)."""
        await self.read_connection(mount, name)
        self._engines.forget(mount, name)
        await self._changed()

    def pool_stats(self) -> list[tuple[str, str, dict[str, int]]]:
        """(mount, connection, stats) of every connection pool this node holds: gauges."""
        return self._engines.pool_stats()

    async def connection_changed(self) -> None:
        await self._changed()

    async def read_connection(self, mount: str, name: str) -> Connection:
        connection = await self._store.get_connection(mount, name)
        if connection is None:
            raise NotFound()
        return connection

    async def list_connections(self, mount: str) -> list[str]:
        return await self._store.list_connections(mount)

    async def delete_connection(self, mount: str, name: str, *, force: bool = False) -> int:
        """Refused (400 naming the count) while live leases need the connection for their
        revocation (Vault deletes it and orphans their users, hashicorp/vault#9420). With
        ``force``, those leases are revoked first, here, and the delete is refused if any
        of them failed. Returns how many leases were revoked."""
        revoked = 0
        if force:
            revoked = await self._revoke_leases_of_connection(mount, name)
        live = await self._store.delete_connection_unless_leased(mount, name)
        if live:
            hint = (
                "they appeared while it was being deleted, or await a re-check of their "
                "revocation; retry"
                if force
                else "revoke them first, or delete with force=true to revoke them now"
            )
            raise InvalidRequest(
                f"connection {name!r} has {live} live lease(s) whose revocation needs it: {hint}"
            )
        self._engines.forget(mount, name)
        await self._changed()
        return revoked

    async def _revoke_leases_of_connection(self, mount: str, name: str) -> int:
        """Revoke, by id, every live lease of one connection; refuse (400) naming the
        leases that failed, which stay queued for retry."""
        lease_ids = await self._store.live_leases_of_connection(mount, name)
        semaphore = asyncio.Semaphore(max(1, self._settings.revoke_concurrency))
        failures: list[str] = []

        async def revoke(lease_id: str) -> None:
            async with semaphore:
                try:
                    await self._revocations.revoke(lease_id)
                except TargetError as exc:
                    failures.append(f"{lease_id} ({exc.message})")

        await asyncio.gather(*(revoke(lease_id) for lease_id in lease_ids))
        if failures:
            failures.sort()
            shown = "; ".join(failures[:5]) + ("; ..." if len(failures) > 5 else "")
            raise InvalidRequest(
                f"connection {name!r} was kept: {len(failures)} of {len(lease_ids)} lease(s) "
                f"could not be revoked and stay queued for retry: {shown}"
            )
        return len(lease_ids)

    # -- roles ----------------------------------------------------------------------------

    async def write_role(self, mount: str, name: str, update: RoleUpdate) -> list[str]:
        """Returns warnings for the response."""
        check_name("role", name)
        existing = await self._store.get_role(mount, name)
        if existing is None:
            if not update.db_name:
                raise InvalidRequest("db_name is required")
            base = Role(mount, name, update.db_name, (), (), (), (), 0, 0)
        else:
            base = existing
        changes = {k: v for k, v in dataclasses.asdict(update).items() if v is not None}
        role = dataclasses.replace(base, **changes)
        for kind in ROLE_STATEMENT_KINDS:
            check_statements(kind, getattr(role, kind))
        if role.max_leases < 0:
            raise InvalidRequest("max_leases cannot be negative")
        if role.max_ttl and role.default_ttl > role.max_ttl:
            raise InvalidRequest("default_ttl cannot be greater than max_ttl")
        warnings = []
        if role.max_ttl > self._settings.max_lease_ttl:
            warnings.append(
                f"max_ttl is greater than the system max lease TTL; "
                f"{self._settings.max_lease_ttl}s will be used"
            )
        if any(_PER_TABLE_GRANT.search(s) for s in role.creation_statements):
            warnings.append(PER_TABLE_GRANT_WARNING)
        await self._store.upsert_role(role)
        await self._changed()
        return warnings

    async def read_role(self, mount: str, name: str) -> Role:
        role = await self._store.get_role(mount, name)
        if role is None:
            raise NotFound()
        return role

    async def list_roles(self, mount: str) -> list[str]:
        return await self._store.list_roles(mount)

    async def delete_role(self, mount: str, name: str) -> None:
        """Leases never need their role: each row keeps the revocation and renew statements
        and the connection name it was issued with (hashicorp/vault#3464, #4782: Vault could
        not revoke them once the role was gone). So a role with live leases may go, and a
        role re-created under the same name does not change how old leases are revoked."""
        await self._store.delete_role(mount, name)
        await self._changed()

    async def _changed(self) -> None:
        if self._contexts is not None:
            await self._contexts.changed()
