"""The nodes sharing one storage database: heartbeats, and handing back the revocation
claims of the ones that died. The SQL is ``sql/nodes.sql``."""

from __future__ import annotations

from typing import Any

from broker.server.storage.connector import Store, rows_affected


class NodeStore(Store):
    QUERY_FILE = "nodes"

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
        return rows_affected(status)

    async def remove_node(self, node_id: str) -> None:
        await self._execute("remove_node", node_id)

    async def live_nodes(self, within_seconds: float) -> list[dict[str, Any]]:
        return [dict(row) for row in await self._fetch("live_nodes", float(within_seconds))]

    async def storage_writable(self) -> bool:
        """Whether the storage server this node reaches takes writes (a promoted standby
        does, the old primary restarted as a standby does not); unreachable raises
        ``StorageUnavailable``. See ``Connector.writable``."""
        return await self._db.writable()

    async def install_id(self) -> str:
        """This install's id, made with the storage (migration 0008) and shared by all its
        nodes: the mark on the users the engines create (see ``reconcile.py``)."""
        value = await self._fetchval("install_id")
        return str(value or "")
