"""sys/wrapping/unwrap, lookup, rewrap, wrap: single-use wrapped responses.

The wrapping token is the credential here: it may come in ``X-Vault-Token`` (how the vault
CLI and hvac unwrap) or as ``token`` in the body.
"""

from __future__ import annotations

from aiohttp import web

from broker.exceptions import InvalidRequest
from broker.server.api.context import RequestContext, presented_token
from broker.server.api.responses import json_response, vault_response

WRAP_TTL_HEADER = "X-Vault-Wrap-TTL"


def _wrapping_token(ctx: RequestContext) -> str:
    return ctx.params.text("token") or presented_token(ctx.request)


async def unwrap(ctx: RequestContext) -> web.StreamResponse:
    return json_response(await ctx.services.wrapper.unwrap(_wrapping_token(ctx)))


async def lookup(ctx: RequestContext) -> web.StreamResponse:
    return vault_response(await ctx.services.wrapper.lookup(_wrapping_token(ctx)))


async def rewrap(ctx: RequestContext) -> web.StreamResponse:
    info = await ctx.services.wrapper.rewrap(_wrapping_token(ctx))
    return vault_response(None, wrap_info=info)


async def wrap(ctx: RequestContext) -> web.StreamResponse:
    """Wrap the request's own data (Vault's sys/wrapping/wrap); needs X-Vault-Wrap-TTL."""
    if not ctx.request.headers.get(WRAP_TTL_HEADER):
        raise InvalidRequest("sys/wrapping/wrap needs the X-Vault-Wrap-TTL header")
    return vault_response(ctx.params.audit_view())
