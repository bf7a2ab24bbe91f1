"""Audit devices in storage, and the table device's log (hash-chained per node by
security/audit.py). The SQL is ``sql/audit.sql``."""

from __future__ import annotations

from collections.abc import Sequence

from broker.models import AuditDevice
from broker.server.storage.connector import AUTH_CHANNEL, Store, record


class AuditStore(Store):
    QUERY_FILE = "audit"

    async def insert_audit_device(self, device: AuditDevice) -> bool:
        inserted = await self._fetchval(
            "upsert_audit_device", device.path, device.type, device.description, device.options
        )
        return inserted is not None

    async def list_audit_devices(self) -> list[AuditDevice]:
        return [record(AuditDevice, row) for row in await self._fetch("list_audit_devices")]

    async def delete_audit_device(self, path: str) -> bool:
        return await self._fetchval("delete_audit_device", path) is not None

    async def notify_devices_changed(self) -> None:
        """Tell the other nodes to reload their audit devices."""
        await self._db.notify(AUTH_CHANNEL, "audit")

    async def insert_audit_entries(self, device: str, node_id: str, lines: Sequence[str]) -> None:
        await self._execute("insert_audit_entries", device, node_id, list(lines))

    async def last_audit_entry(self, device: str, node_id: str) -> str | None:
        value = await self._fetchval("last_audit_entry", device, node_id)
        return None if value is None else str(value)

    async def audit_entries(self, device: str) -> list[tuple[str, str]]:
        return [
            (row["node_id"], row["entry"]) for row in await self._fetch("audit_entries", device)
        ]
