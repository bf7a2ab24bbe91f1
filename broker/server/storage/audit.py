"""Audit devices in storage, the table device's log (a keyed chain per node, written by
security/audit.py) and the chains' checkpoints. The SQL is ``sql/audit.sql``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import asyncpg

from broker.models import AuditDevice
from broker.server.storage import integrity
from broker.server.storage.connector import AUTH_CHANNEL, Connector, Store
from broker.server.storage.keyring import KeyringStore


class AuditStore(Store):
    QUERY_FILE = "audit"

    def __init__(self, connector: Connector, keyring: KeyringStore) -> None:
        super().__init__(connector)
        self._keyring = keyring

    async def insert_audit_device(self, device: AuditDevice) -> bool:
        """Device rows are authenticated (storage/integrity.py): where the log goes is
        security-relevant."""
        mac = await self._keyring.mac_row(integrity.AUDIT_DEVICES, dataclasses.asdict(device))
        inserted = await self._fetchval(
            "upsert_audit_device",
            device.path,
            device.type,
            device.description,
            device.options,
            mac,
        )
        return inserted is not None

    async def list_audit_devices(self) -> list[AuditDevice]:
        """Every device, each row checked first: one that fails raises (the node keeps the
        devices it had loaded, and a node unsealing refuses to serve without its log)."""
        devices = []
        for row in await self._fetch("list_audit_devices"):
            await self._keyring.check_row(integrity.AUDIT_DEVICES, row)
            devices.append(
                AuditDevice(row["path"], row["type"], row["description"], row["options"])
            )
        return devices

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

    # -- checkpoints of the keyed chains (security/audit_chain.py) -------------------------

    async def insert_audit_checkpoint(
        self, chain: str, seq: int, device: str, node_id: str, target: str, mac: str
    ) -> None:
        await self._execute("insert_audit_checkpoint", chain, seq, device, node_id, target, mac)

    async def audit_checkpoints_of_chains(
        self, chains: Sequence[str]
    ) -> list[tuple[str, int, str, str]]:
        """(chain, seq, mac, created_at) of every checkpoint of these chains."""
        rows = await self._fetch("audit_checkpoints_of_chains", list(chains))
        return [_checkpoint(row) for row in rows]

    async def audit_checkpoints_of_target(self, target: str) -> list[tuple[str, int, str, str]]:
        """Every checkpoint recorded for a file (its real path) by any node."""
        return [
            _checkpoint(row) for row in await self._fetch("audit_checkpoints_of_target", target)
        ]

    async def latest_audit_checkpoint(
        self, target: str, node_id: str
    ) -> tuple[str, int, str, str] | None:
        row = await self._fetchrow("latest_audit_checkpoint", target, node_id)
        return None if row is None else _checkpoint(row)


def _checkpoint(row: asyncpg.Record) -> tuple[str, int, str, str]:
    return (str(row["chain"]), int(row["seq"]), str(row["mac"]), str(row["created_at"]))
