"""The seal record and the keyring in storage, and the sealing of secret columns under it.

The stores that hold secrets (catalog, auth) seal and open them through a ``KeyringStore``,
which loads on first sight a key term another node added since this one unsealed; it also
moves old ciphertext to the active term (re-encryption).
"""

from __future__ import annotations

from broker.exceptions import KeyringChanged
from broker.models import SealRecord
from broker.server.storage.connector import AUTH_CHANNEL, Store, record, rows_affected


def connection_context(mount: str, name: str) -> str:
    """Associated data binding a connection's ciphertext to that connection."""
    return f"broker_connections/{mount}/{name}"


class KeyringStore(Store):
    QUERY_FILE = "keyring"

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
            self.barrier.reload(stored.keyring)

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
        """Move every connection password sealed under an old key term (or written before
        encryption existed) to the active term. Returns how many moved."""
        await self.reload_keyring()  # the active term may have moved on another node
        moved = 0
        for row in await self._fetch("list_connection_ciphertexts"):
            stored: str = row["password"]
            if not self.barrier.needs_reencryption(stored):
                continue
            context = connection_context(row["mount"], row["name"])
            fresh = self.seal_text(await self.open_text(stored, context), context)
            status = await self._execute(
                "update_connection_password", row["mount"], row["name"], stored, fresh
            )
            moved += rows_affected(status)
        return moved
