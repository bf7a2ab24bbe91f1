"""Every store over one pool: what the composition roots (assembly.py, the server
commands, tests and the benchmark) build once and hand out store by store."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from broker.server.storage.audit import AuditStore
from broker.server.storage.auth import AuthStore
from broker.server.storage.barrier import Barrier
from broker.server.storage.catalog import CatalogStore
from broker.server.storage.connector import Connector
from broker.server.storage.declared import DeclaredStore
from broker.server.storage.keyring import KeyringStore
from broker.server.storage.leases import LeaseStore
from broker.server.storage.migrations import apply_migrations
from broker.server.storage.nodes import NodeStore


@dataclass(frozen=True, slots=True)
class Stores:
    """One store per aggregate, sharing one connector (pool and barrier)."""

    connector: Connector
    keyring: KeyringStore
    catalog: CatalogStore
    leases: LeaseStore
    auth: AuthStore
    audit: AuditStore
    nodes: NodeStore
    declared: DeclaredStore

    @classmethod
    def open(cls, pool: asyncpg.Pool, barrier: Barrier | None = None) -> Stores:
        """The stores over ``pool`` (the caller closes it); a fresh, sealed barrier unless
        one is given."""
        connector = Connector(pool, barrier)
        keyring = KeyringStore(connector)
        return cls(
            connector=connector,
            keyring=keyring,
            catalog=CatalogStore(connector, keyring),
            leases=LeaseStore(connector, keyring),
            auth=AuthStore(connector, keyring),
            audit=AuditStore(connector, keyring),
            nodes=NodeStore(connector),
            declared=DeclaredStore(connector, keyring),
        )

    async def migrate(self) -> list[str]:
        """Apply pending migrations; the versions this call applied."""
        return await apply_migrations(self.connector)
