"""auth/token/*: Vault's token method (create, look up, renew, revoke)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from broker.exceptions import InvalidRequest, NotFound
from broker.models import TokenEntry
from broker.server.api.context import RequestContext
from broker.server.api.responses import list_response, no_content, vault_response
from broker.server.auth.tokens import TokenManager, TokenRequest, check_cidrs


def auth_block(token: str, entry: TokenEntry, lease_duration: int | None = None) -> dict[str, Any]:
    """The ``auth`` part of Vault's answer to a token creation, a login or a renewal
    (Vault's ``AuthResponse``). Vault Agent and the CSI provider read a renewal's
    ``lease_duration`` and ``renewable`` from it and count an answer without it as a
    failed renewal; ``client_token`` is empty where Vault leaves it so (renew-accessor)."""
    return {
        "client_token": token,
        "accessor": entry.accessor,
        "policies": list(entry.policies),
        "token_policies": list(entry.policies),
        "metadata": entry.meta or None,
        "lease_duration": entry.ttl if lease_duration is None else lease_duration,
        "renewable": entry.renewable,
        "entity_id": "",
        "token_type": "service",
        "orphan": entry.parent_accessor is None,
        "mfa_requirement": None,
        "num_uses": entry.num_uses,
    }


def _meta(ctx: RequestContext) -> dict[str, str]:
    raw = ctx.params.raw("meta")
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise InvalidRequest("meta: expected a map of strings")
    return {str(k): v for k, v in raw.items()}


async def _create(ctx: RequestContext, orphan: bool) -> web.StreamResponse:
    p = ctx.params
    num_uses = p.raw("num_uses")
    try:
        uses = int(num_uses) if num_uses not in (None, "") else 0
    except (TypeError, ValueError) as exc:
        raise InvalidRequest("num_uses: expected an integer") from exc
    request = TokenRequest(
        policies=p.strings("policies"),
        ttl=p.ttl("ttl") or p.ttl("lease"),
        explicit_max_ttl=p.ttl("explicit_max_ttl") or 0,
        num_uses=uses,
        renewable=bool(p.flag("renewable", True)),
        no_parent=orphan or bool(p.flag("no_parent", False)),
        no_default_policy=bool(p.flag("no_default_policy", False)),
        display_name=(p.text("display_name") or "").strip(),
        meta=_meta(ctx),
        bound_cidrs=check_cidrs(p.strings("bound_cidrs") or (), "bound_cidrs"),
        period=p.ttl("period") or 0,
    )
    caller = ctx.require_caller()
    # Vault: create-orphan needs only update on its own path; no_parent on create, and a
    # period on either, need root or sudo on the path called.
    path = "auth/token/create-orphan" if orphan else "auth/token/create"
    sudo = (await ctx.services.policies.acl(caller.policies)).allows(path, "update", sudo=True)
    token, entry = await ctx.services.tokens.create(
        caller, request, may_orphan=orphan or sudo, may_period=sudo
    )
    return vault_response(None, auth=auth_block(token, entry), warnings=p.unused_warning())


async def create(ctx: RequestContext) -> web.StreamResponse:
    return await _create(ctx, orphan=False)


async def create_orphan(ctx: RequestContext) -> web.StreamResponse:
    return await _create(ctx, orphan=True)


async def lookup_self(ctx: RequestContext) -> web.StreamResponse:
    caller = ctx.require_caller()
    if caller.entry is None:  # the root token of the configuration
        return vault_response(
            {
                "accessor": "",
                "creation_time": 0,
                "creation_ttl": 0,
                "display_name": "root",
                "entity_id": "",
                "expire_time": None,
                "explicit_max_ttl": 0,
                "id": caller.token,
                "meta": None,
                "num_uses": 0,
                "orphan": True,
                "path": "auth/token/root",
                "policies": ["root"],
                "renewable": False,
                "ttl": 0,
                "type": "service",
            }
        )
    # The entry authentication just read (fresh for use-limited tokens, at most two
    # seconds old otherwise): no second query on the path clients poll most.
    return vault_response(TokenManager.describe(caller.entry, caller.token))


async def lookup(ctx: RequestContext) -> web.StreamResponse:
    token = ctx.params.required_str("token")
    entry = await ctx.services.tokens.lookup(token)
    return vault_response(TokenManager.describe(entry, token))


async def lookup_accessor(ctx: RequestContext) -> web.StreamResponse:
    entry = await ctx.services.tokens.lookup_accessor(ctx.params.required_str("accessor"))
    return vault_response(TokenManager.describe(entry))


async def _check_login_role(ctx: RequestContext, entry: TokenEntry) -> None:
    """Vault's ``pathLoginRenew`` of the AppRole, Kubernetes and JWT methods: a token a
    login issued renews only while the role it logged in through still exists. Deleting
    the role is how its logins end at their next renewal, a periodic token's included
    (which otherwise renews for good). A token of a method since disabled was revoked
    with it (``AuthMethods.disable``)."""
    path = entry.path
    if not (path.startswith("auth/") and path.endswith("/login")) or path.startswith("auth/token/"):
        return
    mount = path[len("auth/") : -len("/login")]
    resolved = await ctx.services.auth_methods.resolve(f"{mount}/login")
    if resolved is None or resolved[0] != mount:
        raise InvalidRequest(f"the auth method at {mount}/ that issued this token is gone")
    meta = entry.meta or {}
    type_ = resolved[1]
    name = meta.get("role_name" if type_ == "approle" else "role", "")
    try:
        if type_ == "approle":
            await ctx.services.approle.read_role(mount, name)
        elif type_ == "kubernetes":
            await ctx.services.kubernetes.read_role(mount, name)
        elif type_ in ("jwt", "oidc"):
            await ctx.services.jwt.read_role(mount, name)
    except NotFound:
        raise InvalidRequest(f'role "{name}" does not exist during renewal') from None


async def _renewed(ctx: RequestContext, entry: TokenEntry, token: str) -> web.StreamResponse:
    """Vault's answer to a token renewal: the ``auth`` block with the TTL left now as
    ``lease_duration`` (what the renewal gave, or less where the token's maximum capped
    it). ``token`` is the renewed token, "" where Vault leaves it out (renew-accessor)."""
    await _check_login_role(ctx, entry)
    renewed = await ctx.services.tokens.renew(entry, ctx.params.ttl("increment") or 0)
    left = TokenManager.describe(renewed)["ttl"]
    return vault_response(None, auth=auth_block(token, renewed, lease_duration=left))


async def renew_self(ctx: RequestContext) -> web.StreamResponse:
    caller = ctx.require_caller()
    if caller.entry is None:
        raise InvalidRequest("this root token does not expire and cannot be renewed")
    return await _renewed(ctx, caller.entry, caller.token)


async def renew(ctx: RequestContext) -> web.StreamResponse:
    token = ctx.params.required_str("token")
    return await _renewed(ctx, await ctx.services.tokens.lookup(token), token)


async def renew_accessor(ctx: RequestContext) -> web.StreamResponse:
    accessor = ctx.params.required_str("accessor")
    return await _renewed(ctx, await ctx.services.tokens.lookup_accessor(accessor), "")


async def revoke_self(ctx: RequestContext) -> web.StreamResponse:
    caller = ctx.require_caller()
    if caller.entry is not None:
        await ctx.services.tokens.revoke(caller.entry.accessor)
    return no_content()


async def _revoke_by_token(ctx: RequestContext, orphan: bool) -> web.StreamResponse:
    token = ctx.params.required_str("token")
    try:
        entry = await ctx.services.tokens.lookup(token)
    except InvalidRequest:
        return no_content()  # Vault: revoking an unknown token is not an error
    if orphan:
        await ctx.services.tokens.revoke_orphan(entry.accessor)
    else:
        await ctx.services.tokens.revoke(entry.accessor)
    return no_content()


async def revoke(ctx: RequestContext) -> web.StreamResponse:
    return await _revoke_by_token(ctx, orphan=False)


async def revoke_accessor(ctx: RequestContext) -> web.StreamResponse:
    await ctx.services.tokens.revoke(ctx.params.required_str("accessor"))
    return no_content()


async def revoke_orphan(ctx: RequestContext) -> web.StreamResponse:
    return await _revoke_by_token(ctx, orphan=True)


async def list_accessors(ctx: RequestContext) -> web.StreamResponse:
    return list_response(await ctx.services.tokens.list_accessors())
