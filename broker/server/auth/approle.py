"""The AppRole auth method: machines log in with a role ID and a secret ID.

Secret IDs are stored only as an HMAC (like tokens); a login spends one use atomically,
so two logins never share the last use, and checks the CIDR bindings of the secret ID and
of the role before any token is made.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import uuid
from dataclasses import dataclass
from typing import Any

from broker.exceptions import InvalidRequest, NotFound
from broker.models import AppRole, TokenEntry
from broker.server.auth.policy_store import ROOT
from broker.server.auth.tokens import (
    Caller,
    TokenManager,
    TokenRequest,
    check_cidrs,
    grantable_policies,
    in_cidrs,
    normalise_policies,
)
from broker.server.storage.auth import AuthStore

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True, slots=True)
class AppRoleUpdate:
    """Fields present in a role write; None keeps the stored value."""

    role_id: str | None = None
    bind_secret_id: bool | None = None
    token_policies: tuple[str, ...] | None = None
    token_ttl: int | None = None
    token_max_ttl: int | None = None
    token_num_uses: int | None = None
    token_bound_cidrs: tuple[str, ...] | None = None
    secret_id_ttl: int | None = None
    secret_id_num_uses: int | None = None
    secret_id_bound_cidrs: tuple[str, ...] | None = None
    token_period: int | None = None


@dataclass(frozen=True, slots=True)
class NewSecretId:
    secret_id: str = dataclasses.field(repr=False)
    accessor: str
    ttl: int
    num_uses: int


class AppRoleManager:
    def __init__(self, store: AuthStore, tokens: TokenManager) -> None:
        self._store = store
        self._tokens = tokens

    async def write_role(
        self, mount: str, name: str, update: AppRoleUpdate, writer: Caller
    ) -> None:
        """Create or change a role. Its ``token_policies`` are what every login will be
        given, so they are held to the writer's own (``grantable_policies``) and can
        never include ``root``: a role writer must not be able to mint a root token."""
        if not _NAME.match(name):
            raise InvalidRequest(f"invalid role name {name!r}: use letters, digits, '_', '.', '-'")
        if update.token_policies is not None:
            if ROOT in normalise_policies(update.token_policies):
                raise InvalidRequest("auth methods cannot create root tokens")
            policies = grantable_policies(writer, update.token_policies)
            update = dataclasses.replace(update, token_policies=policies)
        existing = await self._store.get_approle_role(mount, name)
        base = existing or AppRole(mount, name, str(uuid.uuid4()), True, (), 0, 0, 0, (), 0, 0, ())
        changes = {k: v for k, v in dataclasses.asdict(update).items() if v is not None}
        role = dataclasses.replace(base, **changes)
        check_cidrs(role.token_bound_cidrs, "token_bound_cidrs")
        check_cidrs(role.secret_id_bound_cidrs, "secret_id_bound_cidrs")
        if min(role.token_ttl, role.token_max_ttl, role.token_num_uses, role.token_period) < 0:
            raise InvalidRequest(
                "token_ttl, token_max_ttl, token_period and token_num_uses cannot be negative"
            )
        if min(role.secret_id_ttl, role.secret_id_num_uses) < 0:
            raise InvalidRequest("secret_id_ttl and secret_id_num_uses cannot be negative")
        if role.token_max_ttl and role.token_ttl > role.token_max_ttl:
            raise InvalidRequest("token_ttl cannot be greater than token_max_ttl")
        if (
            not role.bind_secret_id
            and not role.secret_id_bound_cidrs
            and not (role.token_bound_cidrs)
        ):
            raise InvalidRequest("at least one constraint should be enabled on the role")
        await self._store.upsert_approle_role(role)

    async def read_role(self, mount: str, name: str) -> AppRole:
        role = await self._store.get_approle_role(mount, name)
        if role is None:
            raise NotFound()
        return role

    async def list_roles(self, mount: str) -> list[str]:
        return await self._store.list_approle_roles(mount)

    async def delete_role(self, mount: str, name: str) -> None:
        await self._store.delete_approle_role(mount, name)

    async def new_secret_id(
        self,
        mount: str,
        name: str,
        cidr_list: tuple[str, ...] = (),
        metadata: dict[str, str] | None = None,
    ) -> NewSecretId:
        role = await self.read_role(mount, name)
        check_cidrs(cidr_list, "cidr_list")
        if role.secret_id_bound_cidrs and cidr_list:
            # Vault: a secret ID's own blocks must lie within the role's.
            for cidr in cidr_list:
                network = cidr.split("/")[0]
                if not in_cidrs(network, role.secret_id_bound_cidrs):
                    raise InvalidRequest(f"cidr_list {cidr!r} is not within the role's blocks")
        secret_id = str(uuid.uuid4())
        accessor = str(uuid.uuid4())
        expires_at = None
        if role.secret_id_ttl:
            expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=role.secret_id_ttl)
        await self._store.insert_secret_id(
            self._secret_id_digest(mount, name, secret_id),
            accessor,
            role,
            cidr_list or role.secret_id_bound_cidrs,
            metadata or {},
            expires_at,
        )
        return NewSecretId(secret_id, accessor, role.secret_id_ttl, role.secret_id_num_uses)

    def _secret_id_digest(self, mount: str, role: str, secret_id: str) -> bytes:
        """The keyed hash a secret ID is stored and found under, bound to its mount and
        role and labelled apart from token hashes: a storage writer can neither move a
        secret ID to another role nor plant a row whose hash is that of a token they hold
        (tokens and wrapping tokens are hashed under the same key, without the label)."""
        return self._store.barrier.token_hmac(f"approle-secret-id\0{mount}\0{role}\0{secret_id}")

    async def lookup_secret_id(
        self, mount: str, name: str, secret_id: str | None, accessor: str | None
    ) -> dict[str, Any]:
        digest = self._secret_id_digest(mount, name, secret_id) if secret_id else None
        found = await self._store.get_secret_id(mount, name, digest, accessor)
        if found is None:
            raise NotFound()
        return found

    async def list_secret_id_accessors(self, mount: str, name: str) -> list[str]:
        return await self._store.list_secret_id_accessors(mount, name)

    async def destroy_secret_id(
        self, mount: str, name: str, secret_id: str | None, accessor: str | None
    ) -> None:
        digest = self._secret_id_digest(mount, name, secret_id) if secret_id else None
        await self._store.delete_secret_id(mount, name, digest, accessor)

    async def login(
        self, mount: str, role_id: str, secret_id: str, remote: str
    ) -> tuple[str, TokenEntry]:
        """Vault answers every refusal with the same vague 400, so a caller learns nothing
        about which part was wrong; the audit log keeps the request."""
        if not role_id:
            raise InvalidRequest("missing role_id")
        role = await self._store.get_approle_role(mount, None, role_id)
        if role is None:
            raise InvalidRequest("invalid role or secret ID")
        # Addresses first: a secret ID tried from outside its blocks is not spent by it.
        if not in_cidrs(remote, role.secret_id_bound_cidrs):
            raise InvalidRequest("invalid role or secret ID")
        if ROOT in normalise_policies(role.token_policies):
            # A role written before writes were checked (or edited in storage): refused
            # before a secret ID is spent; create_for_login refuses it again regardless.
            raise InvalidRequest("auth methods cannot create root tokens")
        if role.bind_secret_id:
            if not secret_id:
                raise InvalidRequest("missing secret_id")
            digest = self._secret_id_digest(mount, role.name, secret_id)
            found = await self._store.get_secret_id(mount, role.name, digest, None)
            if found is None or not in_cidrs(remote, found["cidr_list"]):
                raise InvalidRequest("invalid role or secret ID")
            if await self._store.consume_secret_id(digest, mount, role.name) is None:
                raise InvalidRequest("invalid role or secret ID")  # spent or expired
        return await self._tokens.create_for_login(
            TokenRequest(
                policies=role.token_policies,
                ttl=role.token_ttl or None,
                # Vault: a periodic token has no maximum but an explicit one, and
                # token_max_ttl is not one (AppRole has no token_explicit_max_ttl here).
                explicit_max_ttl=0 if role.token_period else role.token_max_ttl,
                num_uses=role.token_num_uses,
                no_parent=True,
                display_name=role.name,  # the login names show which app it is
                meta={"role_name": role.name},
                bound_cidrs=role.token_bound_cidrs,
                path=f"auth/{mount}/login",
                period=role.token_period,
            ),
        )
