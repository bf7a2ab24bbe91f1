"""Response wrapping: a response stored (barrier ciphertext) behind a single-use token.

A client that sends ``X-Vault-Wrap-TTL`` gets ``wrap_info`` instead of the response; whoever
holds the wrapping token can read the response once (``sys/wrapping/unwrap``), so
credentials can pass through a third party that never sees them.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from broker.exceptions import InvalidRequest
from broker.server.auth.tokens import new_accessor, new_token
from broker.server.storage.auth import AuthStore

log = logging.getLogger(__name__)
MAX_WRAP_TTL = 768 * 3600
_INVALID = "wrapping token is not valid or does not exist"


class Wrapper:
    def __init__(self, store: AuthStore) -> None:
        self._store = store

    async def wrap(self, response: dict[str, Any], ttl: int, path: str) -> dict[str, Any]:
        if not 1 <= ttl <= MAX_WRAP_TTL:
            raise InvalidRequest(f"wrap TTL must be 1s to {MAX_WRAP_TTL}s")
        token, accessor = new_token(), new_accessor()
        created = await self._store.insert_wrapped_response(
            self._store.barrier.token_hmac(token), accessor, json.dumps(response), path, ttl
        )
        return {
            "token": token,
            "accessor": accessor,
            "ttl": ttl,
            "creation_time": created.isoformat(),
            "creation_path": path,
            "wrapped_accessor": "",
        }

    async def unwrap(self, token: str) -> dict[str, Any]:
        """Once: the stored response goes in the statement that returns it."""
        found = await self._store.take_wrapped_response(self._digest(token))
        if found is None:
            raise InvalidRequest(_INVALID)
        response: dict[str, Any] = json.loads(found["response"])
        return response

    async def lookup(self, token: str) -> dict[str, Any]:
        found = await self._store.get_wrapped_response(self._digest(token))
        if found is None:
            raise InvalidRequest(_INVALID)
        return {
            "creation_path": found["creation_path"],
            "creation_time": found["created_at"].isoformat(),
            "creation_ttl": found["ttl"],
        }

    async def rewrap(self, token: str) -> dict[str, Any]:
        """A new token for the same response (same TTL); the old one stops working."""
        found = await self._store.take_wrapped_response(self._digest(token))
        if found is None:
            raise InvalidRequest(_INVALID)
        return await self.wrap(json.loads(found["response"]), found["ttl"], found["creation_path"])

    async def tidy(self) -> int:
        """Remove the expired responses (already unreadable: every read checks expiry)."""
        removed = await self._store.tidy_wrapped_responses()
        if removed:
            log.info("tidied %d expired wrapped response(s)", removed)
        return removed

    def _digest(self, token: str) -> bytes:
        if not token:
            raise InvalidRequest(_INVALID)
        return self._store.barrier.token_hmac(token)
