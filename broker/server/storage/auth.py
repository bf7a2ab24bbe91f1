"""Who may call the broker, in storage: tokens (kept only as HMACs), ACL policies, auth
methods and AppRole, and wrapped responses (sealed through the keyring). Token, policy and
AppRole role rows are authenticated: their MAC is written with them and checked before
they are used (storage/integrity.py). The SQL is ``sql/auth.sql``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from broker.exceptions import IntegrityError
from broker.models import AppRole, TokenEntry
from broker.server.storage import integrity
from broker.server.storage.barrier import ciphertext_term
from broker.server.storage.connector import AUTH_CHANNEL, Connector, Store, rows_affected
from broker.server.storage.keyring import KeyringStore


def _wrapping_context(accessor: str, token_hmac: bytes) -> str:
    """Bound to the row's accessor and to the wrapping token's HMAC, the column it is
    found by: a storage writer who copies the HMAC of a token they hold onto another
    row cannot open that row's response with it."""
    return f"broker_wrapped_responses/{accessor}/{token_hmac.hex()}"


def _model_values(row: Any, drop: tuple[str, ...]) -> dict[str, Any]:
    """A checked row's values for its model: arrays as tuples, ``drop`` left out."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in row.items() if k not in drop}


def _token_entry(row: Any) -> TokenEntry:
    return TokenEntry(**_model_values(row, drop=("mac", "token_hmac")))


class AuthStore(Store):
    QUERY_FILE = "auth"

    def __init__(self, connector: Connector, keyring: KeyringStore) -> None:
        super().__init__(connector)
        self._keyring = keyring

    # -- change notifications -------------------------------------------------------------

    async def notify_changed(self, what: str) -> None:
        """Tell the other nodes that ``what`` (tokens, policies) changed: they drop their
        cached copies."""
        await self._db.notify(AUTH_CHANNEL, what)

    async def listen_changes(
        self, on_change: Callable[[], None], on_lost: Callable[[], None]
    ) -> Callable[[], Awaitable[None]]:
        """See ``Connector.listen``: ``on_change`` runs when any node changed tokens,
        policies, audit devices or the keyring."""
        return await self._db.listen(AUTH_CHANNEL, on_change, on_lost)

    # -- tokens ---------------------------------------------------------------------------

    async def insert_token(self, token_hmac: bytes, entry: TokenEntry) -> None:
        mac = await self._keyring.mac_row(
            integrity.TOKENS, {**dataclasses.asdict(entry), "token_hmac": token_hmac}
        )
        await self._execute(
            "insert_token",
            entry.accessor,
            token_hmac,
            entry.parent_accessor,
            list(entry.policies),
            entry.display_name,
            entry.meta,
            entry.num_uses,
            entry.ttl,
            entry.explicit_max_ttl,
            entry.renewable,
            entry.path,
            list(entry.bound_cidrs),
            entry.expires_at,
            entry.max_expires_at,
            mac,
            entry.period,
        )

    async def get_token_by_hmac(self, token_hmac: bytes) -> TokenEntry | None:
        row = await self._fetchrow("get_token_by_hmac", token_hmac)
        return await self._checked_token(row) if row else None

    async def get_token_by_accessor(self, accessor: str) -> TokenEntry | None:
        row = await self._fetchrow("get_token_by_accessor", accessor)
        return await self._checked_token(row) if row else None

    async def _checked_token(self, row: Any) -> TokenEntry:
        """The entry, once its row passed its check (one HMAC; the token manager caches
        entries, so authentication rarely pays it)."""
        await self._keyring.check_row(integrity.TOKENS, row)
        return _token_entry(row)

    async def use_token(self, accessor: str) -> int | None:
        """Spend one use; the uses left after it, or None if none were left."""
        left = await self._fetchval("use_token", accessor)
        return None if left is None else int(left)

    async def renew_token(self, accessor: str, expires_at: dt.datetime, ttl: int) -> bool:
        """The new expiry, with the row re-authenticated over it (the row is checked first;
        a compare-and-set on its MAC, retried over a concurrent change)."""
        for _ in range(5):
            row = await self._fetchrow("get_token_by_accessor", accessor)
            if row is None:
                return False
            await self._keyring.check_row(integrity.TOKENS, row)
            renewed = {**dict(row), "expires_at": expires_at, "ttl": ttl}
            mac = await self._keyring.mac_row(integrity.TOKENS, renewed)
            if await self._fetchval("renew_token", accessor, expires_at, ttl, mac, row["mac"]):
                return True
        return False

    async def revoke_token_trees(self, accessors: Sequence[str]) -> tuple[int, int]:
        """(tokens removed, leases made due) for these tokens and all their descendants."""
        row = await self._fetchrow("revoke_token_trees", list(accessors))
        assert row is not None
        return int(row["tokens"]), int(row["leases"])

    async def login_token_accessors(self, login_path: str) -> list[str]:
        """The tokens issued by logins at ``login_path`` (``auth/<mount>/login``)."""
        return [row["accessor"] for row in await self._fetch("login_token_accessors", login_path)]

    async def orphan_children(self, accessor: str) -> None:
        """The children lose their parent and are re-authenticated without it. A child
        whose row fails its check keeps its parent (and dies with it): it is never
        re-authenticated."""
        rows = await self._fetch("children_of_token", accessor)
        accessors: list[str] = []
        macs: list[bytes | None] = []
        old: list[bytes | None] = []
        for row in rows:
            try:
                await self._keyring.check_row(integrity.TOKENS, row)
            except IntegrityError:
                continue
            accessors.append(row["accessor"])
            macs.append(
                await self._keyring.mac_row(
                    integrity.TOKENS, {**dict(row), "parent_accessor": None}
                )
            )
            old.append(row["mac"])
        if accessors:
            await self._execute("orphan_children", accessor, accessors, macs, old)

    async def revoke_leases_of_missing_tokens(self) -> int:
        return rows_affected(await self._execute("revoke_leases_of_missing_tokens"))

    async def expired_tokens(self, limit: int) -> list[str]:
        return [row["accessor"] for row in await self._fetch("expired_tokens", limit)]

    async def list_token_accessors(self) -> list[str]:
        return [row["accessor"] for row in await self._fetch("list_token_accessors")]

    # -- policies -------------------------------------------------------------------------

    async def upsert_policy(self, name: str, text: str) -> None:
        mac = await self._keyring.mac_row(integrity.POLICIES, {"name": name, "policy": text})
        await self._execute("upsert_policy", name, text, mac)

    async def get_policy(self, name: str) -> str | None:
        row = await self._fetchrow("get_policy", name)
        if row is None:
            return None
        await self._keyring.check_row(integrity.POLICIES, row)
        return str(row["policy"])

    async def list_policies(self) -> list[str]:
        return [row["name"] for row in await self._fetch("list_policies")]

    async def delete_policy(self, name: str) -> None:
        await self._execute("delete_policy", name)

    # -- auth methods and AppRole ---------------------------------------------------------

    async def insert_auth_method(
        self, path: str, type_: str, description: str, accessor: str
    ) -> bool:
        inserted = await self._fetchval("insert_auth_method", path, type_, description, accessor)
        return inserted is not None

    async def list_auth_methods(self) -> list[dict[str, Any]]:
        return [dict(row) for row in await self._fetch("list_auth_methods")]

    async def delete_auth_method(self, path: str) -> bool:
        return await self._fetchval("delete_auth_method", path) is not None

    # -- auth method configuration and roles (Kubernetes, JWT/OIDC) ----------------------

    @staticmethod
    def _entry_context(mount: str, kind: str, name: str) -> str:
        return f"broker_auth_entries/{mount}/{kind}/{name}"

    async def put_auth_entry(self, mount: str, kind: str, name: str, body: dict[str, Any]) -> None:
        """Store a method's ``config`` or one of its roles as sealed JSON (see migration
        0011): the body holds secrets and decides policies, so it is encrypted and bound
        to its key. Writes tell the other nodes, which drop their cached copies."""
        sealed = self.barrier.encrypt_text(
            json.dumps(body, sort_keys=True), self._entry_context(mount, kind, name)
        )
        await self._execute("upsert_auth_entry", mount, kind, name, sealed)
        await self.notify_changed("auth_entries")

    async def get_auth_entry(self, mount: str, kind: str, name: str) -> dict[str, Any] | None:
        stored = await self._fetchval("get_auth_entry", mount, kind, name)
        if stored is None:
            return None
        key = {"mount": mount, "kind": kind, "name": name}
        if ciphertext_term(stored) is None:
            # Never written in plain text: a plain row was planted in storage.
            self._keyring.integrity_failure(integrity.AUTH_ENTRIES, key)
        try:
            text = self.barrier.decrypt_text(stored, self._entry_context(mount, kind, name))
        except IntegrityError:  # edited, or moved from another row: its context differs
            self._keyring.integrity_failure(integrity.AUTH_ENTRIES, key)
        body = json.loads(text)
        if not isinstance(body, dict):
            self._keyring.integrity_failure(integrity.AUTH_ENTRIES, key)
        return body

    async def list_auth_entries(self, mount: str, kind: str) -> list[str]:
        return [row["name"] for row in await self._fetch("list_auth_entries", mount, kind)]

    async def delete_auth_entry(self, mount: str, kind: str, name: str) -> bool:
        deleted = await self._fetchval("delete_auth_entry", mount, kind, name) is not None
        await self.notify_changed("auth_entries")
        return deleted

    async def upsert_approle_role(self, r: AppRole) -> None:
        await self._execute(
            "upsert_approle_role",
            r.mount,
            r.name,
            r.role_id,
            r.bind_secret_id,
            list(r.token_policies),
            r.token_ttl,
            r.token_max_ttl,
            r.token_num_uses,
            list(r.token_bound_cidrs),
            r.secret_id_ttl,
            r.secret_id_num_uses,
            list(r.secret_id_bound_cidrs),
            await self._keyring.mac_row(integrity.APPROLE_ROLES, dataclasses.asdict(r)),
            r.token_period,
        )

    async def get_approle_role(
        self, mount: str, name: str | None, role_id: str | None = None
    ) -> AppRole | None:
        row = await self._fetchrow("get_approle_role", mount, name, role_id)
        if row is None:
            return None
        await self._keyring.check_row(integrity.APPROLE_ROLES, row)
        return AppRole(**_model_values(row, drop=("mac",)))

    async def list_approle_roles(self, mount: str) -> list[str]:
        return [row["name"] for row in await self._fetch("list_approle_roles", mount)]

    async def delete_approle_role(self, mount: str, name: str) -> bool:
        return await self._fetchval("delete_approle_role", mount, name) is not None

    async def insert_secret_id(
        self,
        secret_id_hmac: bytes,
        accessor: str,
        role: AppRole,
        cidr_list: Sequence[str],
        metadata: dict[str, str],
        expires_at: dt.datetime | None,
    ) -> dt.datetime:
        created: dt.datetime = await self._fetchval(
            "insert_secret_id",
            secret_id_hmac,
            accessor,
            role.mount,
            role.name,
            role.secret_id_num_uses,
            list(cidr_list),
            metadata,
            expires_at,
        )
        return created

    async def consume_secret_id(
        self, secret_id_hmac: bytes, mount: str, role_name: str
    ) -> dict[str, Any] | None:
        row = await self._fetchrow("consume_secret_id", secret_id_hmac, mount, role_name)
        if row is None:
            return None
        if row["num_uses"] > 0 and row["uses_left"] <= 0:
            await self._execute("delete_spent_secret_ids")
        return dict(row)

    async def get_secret_id(
        self, mount: str, role_name: str, secret_id_hmac: bytes | None, accessor: str | None
    ) -> dict[str, Any] | None:
        row = await self._fetchrow("get_secret_id", mount, role_name, secret_id_hmac, accessor)
        return dict(row) if row else None

    async def list_secret_id_accessors(self, mount: str, role_name: str) -> list[str]:
        rows = await self._fetch("list_secret_id_accessors", mount, role_name)
        return [row["accessor"] for row in rows]

    async def delete_secret_id(
        self, mount: str, role_name: str, secret_id_hmac: bytes | None, accessor: str | None
    ) -> bool:
        deleted = await self._fetchval(
            "delete_secret_id", mount, role_name, secret_id_hmac, accessor
        )
        return deleted is not None

    # -- response wrapping ----------------------------------------------------------------

    async def insert_wrapped_response(
        self, token_hmac: bytes, accessor: str, response: str, path: str, ttl: int
    ) -> dt.datetime:
        sealed = self._keyring.seal_text(response, _wrapping_context(accessor, token_hmac))
        created: dt.datetime = await self._fetchval(
            "insert_wrapped_response", token_hmac, accessor, sealed, path, ttl
        )
        return created

    async def take_wrapped_response(self, token_hmac: bytes) -> dict[str, Any] | None:
        row = await self._fetchrow("take_wrapped_response", token_hmac)
        if row is None:
            return None
        found = dict(row)
        found["response"] = await self._keyring.open_text(
            found["response"], _wrapping_context(found["accessor"], token_hmac)
        )
        return found

    async def get_wrapped_response(self, token_hmac: bytes) -> dict[str, Any] | None:
        row = await self._fetchrow("get_wrapped_response", token_hmac)
        return dict(row) if row else None

    async def tidy_wrapped_responses(self) -> int:
        return rows_affected(await self._execute("tidy_wrapped_responses"))
