"""The auth methods enabled under ``auth/`` (the token method is built in): which mount
path holds which method type, resolved by the longest enabled prefix."""

from __future__ import annotations

import re
import secrets
from typing import Any

from broker.exceptions import InvalidRequest
from broker.server.auth.tokens import TokenManager
from broker.server.storage.auth import AuthStore

#: The method types ``sys/auth/<path>`` can enable. ``oidc`` shares the ``jwt`` code: the
#: broker serves its non-browser part (``login`` with a JWT), as Vault's plugin does for
#: both names.
AUTH_TYPES = ("approle", "kubernetes", "jwt", "oidc")
_MOUNT_PATH = re.compile(r"^[A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.\-]+)*$")


class AuthMethods:
    """Auth methods enabled under ``auth/`` (the token method is built in)."""

    def __init__(self, store: AuthStore, tokens: TokenManager) -> None:
        self._store = store
        self._tokens = tokens
        self._paths: dict[str, str] = {}

    async def refresh(self) -> None:
        self._paths = {m["path"]: m["type"] for m in await self._store.list_auth_methods()}

    async def resolve(self, path: str) -> tuple[str, str, str] | None:
        """``approle/login`` -> (mount, type, rest) by the longest enabled prefix; a miss
        reloads once, so a method enabled on another node is found on first use."""
        for attempt in range(2):
            best = max(
                (p for p in self._paths if path == p or path.startswith(p + "/")),
                key=len,
                default=None,
            )
            if best is not None:
                return best, self._paths[best], path[len(best) + 1 :]
            if attempt == 0:
                await self.refresh()
        return None

    async def enable(self, path: str, type_: str, description: str) -> None:
        path = path.strip("/")
        if not _MOUNT_PATH.match(path):
            raise InvalidRequest(f"invalid auth method path {path!r}")
        if path == "token" or path.startswith("token/"):
            raise InvalidRequest(f"path is already in use at {path}/")
        if type_ not in AUTH_TYPES:
            raise InvalidRequest(f"unknown auth method type {type_!r}")
        # Vault's rule: no method inside another (or around one). A nested method's paths
        # would lie under the outer one's (``auth/a/role/x/config`` under
        # ``auth/a/role/*``), so the outer mount's policies would govern it, and the outer
        # paths it covers would stop resolving.
        await self.refresh()
        for existing in self._paths:
            if f"{path}/".startswith(f"{existing}/") or existing.startswith(f"{path}/"):
                raise InvalidRequest(f"path is already in use at {existing}/")
        accessor = f"auth_{type_}_{secrets.token_hex(4)}"
        if not await self._store.insert_auth_method(path, type_, description, accessor):
            raise InvalidRequest(f"path is already in use at {path}/")
        await self.refresh()

    async def disable(self, path: str) -> None:
        """Vault's unmount: the method goes (its config and roles with it, so no login
        through it can start again), then every token its logins issued is revoked, with
        their children and leases. A second call finishes a revocation that failed."""
        path = path.strip("/")
        await self._store.delete_auth_method(path)
        await self.refresh()
        await self._tokens.revoke_logins(path)

    async def list(self) -> list[dict[str, Any]]:
        return await self._store.list_auth_methods()
