"""The declarative configuration's record of what it applied (``broker_declared``,
migration 0012) and the lock that serialises applies across nodes. The SQL is
``sql/declared.sql``; the domain that reads and writes it is ``server/bootstrap``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from broker.exceptions import IntegrityError
from broker.server.storage.barrier import ciphertext_term
from broker.server.storage.connector import DRIVER_ERRORS, Connector, Store
from broker.server.storage.keyring import KeyringStore


def _context(kind: str, path: str) -> str:
    return f"broker_declared/{kind}/{path}"


@dataclass(frozen=True, slots=True)
class DeclaredEntry:
    """One object the configuration created or adopted: the values it wrote last (never a
    secret) and the keyed hash of the secret it wrote, if any."""

    kind: str
    path: str
    applied: dict[str, Any]
    secret_hmac: str


class DeclaredStore(Store):
    QUERY_FILE = "declared"

    def __init__(self, connector: Connector, keyring: KeyringStore) -> None:
        super().__init__(connector)
        self._keyring = keyring

    @asynccontextmanager
    async def lock(self) -> AsyncIterator[None]:
        """Hold the cluster-wide apply lock until the block ends (waiting for it). A
        session that dies releases it, so a killed node never keeps the others waiting."""
        async with self._db.session() as conn:
            # The pool resets no session on release (connector._keep_session): a lock
            # this session may hold when the lock or unlock statement did not finish
            # (timed out, cancelled, storage gone) would stay with the pooled connection
            # and stall every later apply, on every node. Closing the session frees it.
            try:
                await conn.fetchval(self._q["declared_lock"])
            except BaseException:
                conn.terminate()  # granted just as the wait was given up, perhaps
                raise
            try:
                yield
            finally:
                try:
                    await conn.fetchval(self._q["declared_unlock"])
                except DRIVER_ERRORS:
                    conn.terminate()  # a dead session releases its locks
                except BaseException:
                    conn.terminate()  # cancelled before the unlock ran
                    raise

    async def entries(self) -> dict[tuple[str, str], DeclaredEntry]:
        """Every recorded object by (kind, path), its values decrypted (and so checked:
        the ciphertext is bound to its kind and path, so a row copied to another object
        does not open)."""
        found: dict[tuple[str, str], DeclaredEntry] = {}
        for row in await self._fetch("list_declared"):
            kind, path, stored = str(row["kind"]), str(row["path"]), str(row["applied"])
            if ciphertext_term(stored) is None:
                # Never written in plain text: a row planted in storage (to have an apply
                # delete an object the file never made) is refused, not believed.
                raise IntegrityError()
            text = await self._keyring.open_text(stored, _context(kind, path))
            applied = json.loads(text)
            if not isinstance(applied, dict):
                raise IntegrityError()
            found[(kind, path)] = DeclaredEntry(kind, path, applied, str(row["secret_hmac"]))
        return found

    async def record(self, kind: str, path: str, applied: dict[str, Any], secret_hmac: str) -> None:
        sealed = self._keyring.seal_text(json.dumps(applied, sort_keys=True), _context(kind, path))
        await self._execute("record_declared", kind, path, sealed, secret_hmac)

    async def forget(self, kind: str, path: str) -> None:
        await self._execute("forget_declared", kind, path)

    def secret_hmac(self, kind: str, path: str, secret: str) -> str:
        """The keyed hash a written secret is remembered by: under the install's token key
        and labelled, so it matches no token's hash and says nothing without the keys."""
        return self.barrier.token_hmac(f"declared-secret\0{kind}\0{path}\0{secret}").hex()
