"""auth/<approle mount>/*: roles, role IDs, secret IDs and login."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from broker.exceptions import InvalidRequest
from broker.server.api.auth_token import auth_block
from broker.server.api.context import RequestContext
from broker.server.api.params import Params
from broker.server.api.responses import list_response, no_content, vault_response
from broker.server.auth.approle import AppRoleUpdate


def _period(p: Params) -> int | None:
    """``token_period``, or the deprecated ``period`` that older clients send (Vault's
    tokenutil: the ``token_`` name wins when both are given)."""
    period = p.ttl("token_period")
    deprecated = p.ttl("period")
    return period if period is not None else deprecated


async def write_role(ctx: RequestContext) -> web.StreamResponse:
    p = ctx.params
    update = AppRoleUpdate(
        bind_secret_id=p.flag("bind_secret_id"),
        token_policies=p.strings("token_policies") or p.strings("policies"),
        token_ttl=p.ttl("token_ttl"),
        token_max_ttl=p.ttl("token_max_ttl"),
        token_num_uses=p.integer("token_num_uses"),
        token_bound_cidrs=p.strings("token_bound_cidrs"),
        secret_id_ttl=p.ttl("secret_id_ttl"),
        secret_id_num_uses=p.integer("secret_id_num_uses"),
        secret_id_bound_cidrs=p.strings("secret_id_bound_cidrs") or p.strings("bound_cidr_list"),
        token_period=_period(p),
    )
    await ctx.services.approle.write_role(ctx.mount, ctx.arg("name"), update, ctx.require_caller())
    warnings = p.unused_warning()
    return vault_response(None, warnings=warnings) if warnings else no_content()


async def read_role(ctx: RequestContext) -> web.StreamResponse:
    r = await ctx.services.approle.read_role(ctx.mount, ctx.arg("name"))
    return vault_response(
        {
            "bind_secret_id": r.bind_secret_id,
            "token_policies": list(r.token_policies),
            "policies": list(r.token_policies),
            "token_ttl": r.token_ttl,
            "token_max_ttl": r.token_max_ttl,
            "token_num_uses": r.token_num_uses,
            "token_bound_cidrs": list(r.token_bound_cidrs),
            "secret_id_ttl": r.secret_id_ttl,
            "secret_id_num_uses": r.secret_id_num_uses,
            "secret_id_bound_cidrs": list(r.secret_id_bound_cidrs),
            "token_period": r.token_period,
            "period": r.token_period,
            "token_type": "default",
        }
    )


async def list_roles(ctx: RequestContext) -> web.StreamResponse:
    return list_response(await ctx.services.approle.list_roles(ctx.mount))


async def delete_role(ctx: RequestContext) -> web.StreamResponse:
    await ctx.services.approle.delete_role(ctx.mount, ctx.arg("name"))
    return no_content()


async def read_role_id(ctx: RequestContext) -> web.StreamResponse:
    role = await ctx.services.approle.read_role(ctx.mount, ctx.arg("name"))
    return vault_response({"role_id": role.role_id})


async def write_role_id(ctx: RequestContext) -> web.StreamResponse:
    await ctx.services.approle.read_role(ctx.mount, ctx.arg("name"))  # 404 if absent
    update = AppRoleUpdate(role_id=ctx.params.required_str("role_id"))
    await ctx.services.approle.write_role(ctx.mount, ctx.arg("name"), update, ctx.require_caller())
    return no_content()


async def new_secret_id(ctx: RequestContext) -> web.StreamResponse:
    p = ctx.params
    metadata = p.raw("metadata")
    if isinstance(metadata, str):  # Vault takes metadata as a JSON string
        try:
            metadata = json.loads(metadata) if metadata else {}
        except ValueError as exc:
            raise InvalidRequest("metadata: expected a JSON object") from exc
    if metadata is not None and (
        not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values())
    ):
        raise InvalidRequest("metadata: expected a map of strings")
    made = await ctx.services.approle.new_secret_id(
        ctx.mount, ctx.arg("name"), p.strings("cidr_list") or (), metadata or {}
    )
    return vault_response(
        {
            "secret_id": made.secret_id,
            "secret_id_accessor": made.accessor,
            "secret_id_ttl": made.ttl,
            "secret_id_num_uses": made.num_uses,
        }
    )


async def list_secret_ids(ctx: RequestContext) -> web.StreamResponse:
    keys = await ctx.services.approle.list_secret_id_accessors(ctx.mount, ctx.arg("name"))
    return list_response(keys)


def _secret_id_view(found: dict[str, Any]) -> dict[str, Any]:
    return {
        "secret_id_accessor": found["accessor"],
        "secret_id_num_uses": found["num_uses"],
        "secret_id_ttl": 0,
        "cidr_list": list(found["cidr_list"]),
        "metadata": found["metadata"],
        "creation_time": str(found["created_at"]),
        "expiration_time": str(found["expires_at"] or ""),
        "uses_left": found["uses_left"],
    }


async def lookup_secret_id(ctx: RequestContext) -> web.StreamResponse:
    found = await ctx.services.approle.lookup_secret_id(
        ctx.mount, ctx.arg("name"), ctx.params.required_str("secret_id"), None
    )
    return vault_response(_secret_id_view(found))


async def lookup_secret_id_accessor(ctx: RequestContext) -> web.StreamResponse:
    found = await ctx.services.approle.lookup_secret_id(
        ctx.mount, ctx.arg("name"), None, ctx.params.required_str("secret_id_accessor")
    )
    return vault_response(_secret_id_view(found))


async def destroy_secret_id(ctx: RequestContext) -> web.StreamResponse:
    await ctx.services.approle.destroy_secret_id(
        ctx.mount, ctx.arg("name"), ctx.params.required_str("secret_id"), None
    )
    return no_content()


async def destroy_secret_id_accessor(ctx: RequestContext) -> web.StreamResponse:
    await ctx.services.approle.destroy_secret_id(
        ctx.mount, ctx.arg("name"), None, ctx.params.required_str("secret_id_accessor")
    )
    return no_content()


async def login(ctx: RequestContext) -> web.StreamResponse:
    p = ctx.params
    token, entry = await ctx.services.approle.login(
        ctx.mount, p.text("role_id") or "", p.text("secret_id") or "", ctx.remote
    )
    return vault_response(None, auth=auth_block(token, entry))
