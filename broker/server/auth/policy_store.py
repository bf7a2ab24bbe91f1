"""Stored ACL policies and the merged ACL of a set of policy names, cached per node.

The cache is short-lived (``_CACHE_SECONDS``) and also cleared by a NOTIFY from the node
that changed a policy, so a change reaches every node at once, and within seconds even if
a notification is lost.
"""

from __future__ import annotations

import asyncio
import time

from broker.exceptions import InvalidRequest, NotFound
from broker.server.auth.acl import ACL, DEFAULT_POLICY, PathRule, check_policy_name, parse_policy
from broker.server.storage.auth import AuthStore

_CACHE_SECONDS = 2.0
ROOT = "root"
DEFAULT = "default"


class PolicyStore:
    def __init__(self, store: AuthStore) -> None:
        self._store = store
        self._acls: dict[tuple[str, ...], tuple[float, ACL]] = {}
        #: One load per key at a time: concurrent requests wait for it instead of each
        #: reading and building the same ACL when the cache entry expires.
        self._loading: dict[tuple[str, ...], asyncio.Future[ACL]] = {}
        #: An ACL built across an invalidation is used once but not kept.
        self._generation = 0

    def invalidate(self) -> None:
        self._generation += 1
        self._acls.clear()

    async def acl(self, names: tuple[str, ...]) -> ACL:
        key = tuple(sorted(set(names)))
        cached = self._acls.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[ACL] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            acl = await self._build(key)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # marked retrieved: the waiters, if any, get it too
            raise
        else:
            future.set_result(acl)
        finally:
            del self._loading[key]
        return acl

    async def _build(self, key: tuple[str, ...]) -> ACL:
        now = time.monotonic()
        generation = self._generation
        if ROOT in key:
            acl = ACL((), root=True)
        else:
            rules: list[PathRule] = []
            for name in key:
                text = await self._text(name)
                if text is not None:
                    rules.extend(parse_policy(text))
            acl = ACL(rules)
        if generation == self._generation:
            self._acls[key] = (now + _CACHE_SECONDS, acl)
        return acl

    async def _text(self, name: str) -> str | None:
        stored = await self._store.get_policy(name)
        if stored is None and name == DEFAULT:
            return DEFAULT_POLICY
        return stored

    async def read(self, name: str) -> str:
        name = check_policy_name(name)
        if name == ROOT:
            return ""
        text = await self._text(name)
        if text is None:
            raise NotFound()
        return text

    async def list(self) -> list[str]:
        return sorted({DEFAULT, ROOT, *await self._store.list_policies()})

    async def write(self, name: str, text: str) -> None:
        name = check_policy_name(name)
        if name == ROOT:
            raise InvalidRequest('cannot update "root" policy')
        parse_policy(text)
        await self._store.upsert_policy(name, text)
        await self._changed()

    async def delete(self, name: str) -> None:
        name = check_policy_name(name)
        if name in (ROOT, DEFAULT):
            raise InvalidRequest(f'cannot delete "{name}" policy')
        await self._store.delete_policy(name)
        await self._changed()

    async def _changed(self) -> None:
        self.invalidate()
        await self._store.notify_changed("policies")
