"""Broker nodes sharing one storage database: identity and heartbeats.

The nodes are stateless and all active (any node issues, any node sweeps); heartbeats only
let operators see which are alive.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

import broker
from broker.secrets_gen import random_string
from broker.settings import Settings
from broker.storage import Storage


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    node_id: str
    api_address: str

    @classmethod
    def from_settings(cls, settings: Settings) -> NodeIdentity:
        node_id = settings.node_id or f"{socket.gethostname()}-{random_string(6).lower()}"
        scheme = "https" if settings.tls_cert_file else "http"
        return cls(node_id, settings.api_address or f"{scheme}://{settings.listen_address}")


class NodeRegistry:
    def __init__(self, storage: Storage, identity: NodeIdentity, heartbeat_interval: float):
        self._storage = storage
        self.identity = identity
        self._interval = heartbeat_interval

    async def heartbeat(self) -> None:
        await self._storage.heartbeat(
            self.identity.node_id, self.identity.api_address, broker.__version__
        )

    async def live_nodes(self) -> list[dict[str, Any]]:
        """Nodes whose last heartbeat is within three intervals."""
        return await self._storage.live_nodes(self._interval * 3)

    async def leave(self) -> None:
        await self._storage.remove_node(self.identity.node_id)
