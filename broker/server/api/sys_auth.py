"""sys/auth: enable, list and disable auth methods (AppRole; the token method is built in)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from broker.server.api.context import RequestContext
from broker.server.api.responses import no_content, vault_response


def _describe(type_: str, accessor: str, description: str) -> dict[str, Any]:
    return {
        "type": type_,
        "accessor": accessor,
        "description": description,
        "config": {"default_lease_ttl": 0, "max_lease_ttl": 0, "token_type": "default-service"},
        "local": False,
        "seal_wrap": False,
        "options": None,
    }


async def list_auth(ctx: RequestContext) -> web.StreamResponse:
    methods = {"token/": _describe("token", "auth_token_builtin", "token based credentials")}
    for m in await ctx.services.auth_methods.list():
        methods[m["path"] + "/"] = _describe(m["type"], m["accessor"], m["description"])
    return vault_response(methods, top_level=True)


async def enable_auth(ctx: RequestContext) -> web.StreamResponse:
    p = ctx.params
    await ctx.services.auth_methods.enable(
        ctx.arg("path"), p.required_str("type"), p.text("description") or ""
    )
    return no_content()


async def disable_auth(ctx: RequestContext) -> web.StreamResponse:
    await ctx.services.auth_methods.disable(ctx.arg("path"))
    return no_content()
