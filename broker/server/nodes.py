"""Broker nodes sharing one storage database: identity and heartbeats.

The nodes are stateless and all active (any node issues, any node sweeps). Heartbeats let
operators see which are alive, and let the nodes free the revocation claims of a dead one:
a node killed mid-sweep would otherwise hide its claimed leases for the whole claim
timeout. Every heartbeat hands those claims back, so a live node's next sweep takes them
over within a few heartbeat intervals of the death.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from typing import Any

import broker
from broker.server.secrets_gen import random_string
from broker.server.settings import Settings
from broker.server.storage.nodes import NodeStore

log = logging.getLogger(__name__)

#: A node silent for this many heartbeat intervals is dead: sys/ha-status stops listing it
#: and its revocation claims are taken over. Nodes sharing a storage should share the
#: interval.
DEAD_AFTER_INTERVALS = 3


def _new_instance_tag() -> str:
    return random_string(10).lower()


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    node_id: str
    api_address: str
    #: This process, as opposed to the node id, which a restarted process may reuse: the
    #: owner of its revocation claims, so a restart under the same id frees the dead
    #: process's claims at once.
    instance_id: str = field(default_factory=_new_instance_tag)

    @classmethod
    def from_settings(cls, settings: Settings) -> NodeIdentity:
        node_id = settings.node_id or f"{socket.gethostname()}-{random_string(6).lower()}"
        scheme = "https" if settings.tls_cert_file else "http"
        return cls(
            node_id,
            settings.api_address or f"{scheme}://{settings.listen_address}",
            f"{node_id}/{_new_instance_tag()}",
        )


class NodeRegistry:
    def __init__(self, store: NodeStore, identity: NodeIdentity, heartbeat_interval: float):
        self._store = store
        self.identity = identity
        self._interval = heartbeat_interval

    async def heartbeat(self) -> None:
        """Say this node is alive, and hand back the claims of nodes that are not (two
        small statements; the second reads an index of claimed rows only)."""
        identity = self.identity
        released = await self._store.release_dead_claims(
            identity.node_id, identity.instance_id, self._interval * DEAD_AFTER_INTERVALS
        )
        if released:
            log.warning("took over %d revocation claim(s) of dead node(s)", released)
        await self._store.heartbeat(
            identity.node_id, identity.api_address, broker.__version__, identity.instance_id
        )

    async def storage_writable(self) -> bool:
        """For sys/health: whether storage takes writes (raises ``StorageUnavailable``
        when it cannot be reached)."""
        return await self._store.storage_writable()

    async def live_nodes(self) -> list[dict[str, Any]]:
        """Nodes whose last heartbeat is within three intervals."""
        return await self._store.live_nodes(self._interval * DEAD_AFTER_INTERVALS)

    async def leave(self) -> None:
        await self._store.remove_node(self.identity.node_id)
