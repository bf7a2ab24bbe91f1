"""The role and connection behind each ``creds`` request, cached per node.

Exact, not time-based: every catalog write clears this node's cache and NOTIFYs the other
nodes, whose listeners clear theirs. A read that raced an invalidation is not stored (the
generation check). While no listener is connected (storage down or failing over, or
before start) the cache is bypassed and every request reads storage, as it would without
a cache; the connector subscribes again by itself, and the cache starts empty then, since
notifications sent meanwhile were missed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from broker.exceptions import StorageUnavailable
from broker.models import Connection, Role
from broker.server.storage.catalog import CatalogStore

log = logging.getLogger(__name__)
_RELISTEN_EVERY = 5.0

IssueContext = tuple[Role, Connection | None]


class IssueContextCache:
    def __init__(self, store: CatalogStore) -> None:
        self._store = store
        self._entries: dict[tuple[str, str], IssueContext] = {}
        self._generation = 0
        #: Stops the subscription, once one was made (it then re-subscribes by itself).
        self._stop: Callable[[], Awaitable[None]] | None = None
        #: Whether the subscription is live now: only then may entries be kept.
        self._listening = False
        self._next_attempt = 0.0
        self._starting: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        return self._listening

    async def start(self) -> None:
        self._next_attempt = time.monotonic() + _RELISTEN_EVERY
        try:
            self._stop = await self._store.listen_changes(
                self.invalidate, self._lost, self._restored
            )
            self._listening = True
        except StorageUnavailable:
            log.warning("catalog cache off until storage can be listened to")
        self.invalidate()  # anything read before the listener existed may be stale

    async def close(self) -> None:
        stop, self._stop = self._stop, None
        self._listening = False
        if stop is not None:
            await stop()

    def invalidate(self) -> None:
        self._generation += 1
        self._entries.clear()

    def _lost(self) -> None:
        self._listening = False
        self.invalidate()

    def _restored(self) -> None:
        self.invalidate()  # changes notified while the subscription was down were missed
        self._listening = True

    async def get(self, mount: str, role: str) -> IssueContext | None:
        key = (mount, role)
        if self._listening:
            cached = self._entries.get(key)
            if cached is not None:
                return cached
        elif (
            self._stop is None and time.monotonic() >= self._next_attempt and self._starting is None
        ):
            # Never subscribed (storage was down at start): try again now and then.
            self._starting = asyncio.get_running_loop().create_task(self._restart())
        generation = self._generation
        context = await self._store.get_issue_context(mount, role)
        if context is not None and self._listening and generation == self._generation:
            self._entries[key] = context
        return context

    async def _restart(self) -> None:
        try:
            await self.start()
        finally:
            self._starting = None

    async def changed(self) -> None:
        """After a catalog write: clear here, tell the other nodes."""
        self.invalidate()
        await self._store.notify_changed()
