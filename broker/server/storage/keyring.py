"""The seal record and the keyring in storage, and the sealing of secret columns under it.

The stores that hold secrets (catalog, auth) seal and open them through a ``KeyringStore``,
which loads on first sight a key term another node added since this one unsealed; it also
moves old ciphertext to the active term (re-encryption). The same stores authenticate
their security-relevant rows through it (``mac_row``/``check_row``, storage/integrity.py):
a row that fails its check raises ``RowIntegrityError``, is logged as an alert and counted,
and is never used.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from broker.exceptions import IntegrityError, KeyringChanged, RowIntegrityError
from broker.models import SealRecord
from broker.server.storage.connector import AUTH_CHANNEL, Connector, Store, record, rows_affected
from broker.server.storage.integrity import ALL_SPECS, CONNECTIONS, RowSpec, row_key, row_message

log = logging.getLogger(__name__)

#: The upgrade's queries for each authenticated table: its rows without a MAC, and the
#: write of their MACs.
_UPGRADE_QUERIES = {
    "broker_connections": (
        "unauthenticated_broker_connections",
        "authenticate_broker_connections",
    ),
    "broker_roles": ("unauthenticated_broker_roles", "authenticate_broker_roles"),
    "broker_static_roles": (
        "unauthenticated_broker_static_roles",
        "authenticate_broker_static_roles",
    ),
    "broker_password_policies": (
        "unauthenticated_broker_password_policies",
        "authenticate_broker_password_policies",
    ),
    "broker_policies": ("unauthenticated_broker_policies", "authenticate_broker_policies"),
    "broker_tokens": ("unauthenticated_broker_tokens", "authenticate_broker_tokens"),
    "broker_approle_roles": (
        "unauthenticated_broker_approle_roles",
        "authenticate_broker_approle_roles",
    ),
    "broker_audit_devices": (
        "unauthenticated_broker_audit_devices",
        "authenticate_broker_audit_devices",
    ),
    "broker_leases": ("unauthenticated_broker_leases", "authenticate_broker_leases"),
}


def connection_context(mount: str, name: str) -> str:
    """Associated data binding a connection's ciphertext to that connection."""
    return f"broker_connections/{mount}/{name}"


def connection_url_context(mount: str, name: str) -> str:
    """The same for its ``connection_url``, sealed too: it may carry an inline password
    (Vault accepts ``postgresql://admin:secret@host/db``)."""
    return f"broker_connections/{mount}/{name}/url"


class KeyringStore(Store):
    QUERY_FILE = "keyring"

    def __init__(self, connector: Connector) -> None:
        super().__init__(connector)
        self._integrity_listeners: list[Callable[[str], None]] = []

    def on_integrity_failure(self, callback: Callable[[str], None]) -> None:
        """``callback(table)`` runs for every row that fails its check (the metric)."""
        self._integrity_listeners.append(callback)

    async def get_seal(self) -> SealRecord | None:
        row = await self._fetchrow("get_seal")
        return record(SealRecord, row) if row else None

    async def insert_seal(
        self, shares: int, threshold: int, keyring: bytes, wrapped_root_key: bytes | None
    ) -> bool:
        inserted = await self._fetchval("insert_seal", shares, threshold, keyring, wrapped_root_key)
        return inserted is not None

    async def update_keyring(self, read_version: int, keyring: bytes) -> bool:
        return await self._fetchval("update_keyring", read_version, keyring) is not None

    async def notify_rotated(self) -> None:
        """Tell the other nodes to reload the keyring."""
        await self._db.notify(AUTH_CHANNEL, "keyring")

    async def reload_keyring(self) -> None:
        stored = await self.get_seal()
        if stored is not None:
            try:
                self.barrier.reload(stored.keyring)
            except IntegrityError:
                log.error("ALERT: %s", "the stored keyring was rolled back; kept this node's")
                raise

    def seal_text(self, text: str, context: str) -> str:
        """``text`` as ciphertext under the active key term, bound to ``context``."""
        return self.barrier.encrypt_text(text, context)

    async def open_text(self, stored: str, context: str) -> str:
        """The plaintext of a sealed column; a key term another node added since this one
        unsealed is loaded on first sight."""
        try:
            return self.barrier.decrypt_text(stored, context)
        except KeyringChanged:
            await self.reload_keyring()
            return self.barrier.decrypt_text(stored, context)

    async def reencrypt_connections(self) -> int:
        """Move every connection password and URL sealed under an old key term (or written
        before encryption existed) to the active term. Returns how many moved. A row that fails
        its check is skipped (and alerted on), never re-authenticated."""
        await self.reload_keyring()  # the active term may have moved on another node
        moved = 0
        for row in await self._fetch("list_connection_ciphertexts"):
            stored: str = row["password"]
            stored_url: str = row["connection_url"]
            if not (
                self.barrier.needs_reencryption(stored)
                or self.barrier.needs_reencryption(stored_url)
            ):
                continue
            try:
                await self.check_row(CONNECTIONS, row)
            except RowIntegrityError:
                continue
            context = connection_context(row["mount"], row["name"])
            url_context = connection_url_context(row["mount"], row["name"])
            fresh = self.seal_text(await self.open_text(stored, context), context)
            url = self.seal_text(await self.open_text(stored_url, url_context), url_context)
            sealed_row = {**dict(row), "password": fresh, "connection_url": url}
            mac = await self.mac_row(CONNECTIONS, sealed_row)
            status = await self._execute(
                "update_connection_password", row["mount"], row["name"], stored, fresh, mac, url
            )
            moved += rows_affected(status)
        return moved

    # -- authenticated rows ---------------------------------------------------------------

    async def mac_row(self, spec: RowSpec, row: Mapping[str, Any]) -> bytes | None:
        """The MAC to store with ``row``; None only while the keyring predates row
        authentication (the upgrade at unseal authenticates such rows). A keyring another
        node upgraded since this one unsealed is loaded on first sight."""
        message = row_message(spec, row)
        mac = self.barrier.row_mac(message)
        if mac is None:
            await self.reload_keyring()
            mac = self.barrier.row_mac(message)
        return mac

    async def check_row(self, spec: RowSpec, row: Mapping[str, Any]) -> None:
        """Raise ``RowIntegrityError`` unless ``row["mac"]`` authenticates ``row`` under
        this install's row key, as stored under its own table and key. A row without a MAC
        passes only while the keyring has no row key (before the upgrade)."""
        stored: bytes | None = row["mac"]
        expected = await self.mac_row(spec, row)
        if expected is None and stored is None:
            return
        if expected is not None and stored is not None and hmac.compare_digest(expected, stored):
            return
        self.integrity_failure(spec, row)

    def integrity_failure(self, spec: RowSpec, row: Mapping[str, Any]) -> NoReturn:
        """Alert, count and refuse: the row is never used."""
        log.error(
            "ALERT: storage integrity check failed for %s row %s: it was changed, moved or "
            "copied outside the broker and will not be used",
            spec.table,
            row_key(spec, row),
        )
        for callback in self._integrity_listeners:
            callback(spec.table)
        raise RowIntegrityError(spec.table)

    async def authenticate_rows(self) -> int:
        """The upgrade to authenticated rows, at unseal: a keyring without a row key gets
        one, and every row written before (no MAC yet) is authenticated under it, in one
        transaction with the keyring's update, so they are trusted once and only once.
        Returns how many rows were authenticated. Nothing to do once the keyring has the
        key; refused (an alert) if rows already carry MACs, which means the keyring was
        rolled back to an older version."""
        if self.barrier.keyring.row_mac_key is not None:
            return 0
        async with self._db.transaction() as conn:
            version = await conn.fetchval(self._q["lock_seal"])
            stored = await conn.fetchrow(self._q["get_seal"])
            if version is None or stored is None:
                return 0
            self.barrier.reload(stored["keyring"])
            if self.barrier.keyring.row_mac_key is not None:
                return 0  # another node upgraded meanwhile
            if await conn.fetchval(self._q["any_row_mac"]):
                log.error(
                    "ALERT: the stored keyring has no row key but rows carry MACs: the keyring "
                    "was rolled back; rows are not re-authenticated"
                )
                raise RowIntegrityError("broker_seal")
            upgraded = self.barrier.keyring.with_row_mac_key()
            count = 0
            for spec in ALL_SPECS:
                select, update = _UPGRADE_QUERIES[spec.table]
                rows = await conn.fetch(self._q[select])
                if not rows:
                    continue
                columns: list[list[Any]] = [[row[k] for row in rows] for k in spec.key]
                macs = [self._mac_with(upgraded.row_mac_key, spec, row) for row in rows]
                await conn.execute(self._q[update], *columns, macs)
                count += len(rows)
            sealed = self.barrier.sealed_keyring(upgraded)
            if await conn.fetchval(self._q["update_keyring"], version, sealed) is None:
                raise KeyringChanged(upgraded.active.term)  # cannot happen under the lock
        self.barrier.install(self.barrier.root_key, upgraded)
        await self.notify_rotated()
        log.info("rows are authenticated from now on; %d existing row(s) trusted once", count)
        return count

    @staticmethod
    def _mac_with(key: bytes | None, spec: RowSpec, row: Mapping[str, Any]) -> bytes:
        assert key is not None
        return hmac.new(key, row_message(spec, row), "sha256").digest()
