"""sys/capabilities-self and sys/capabilities: what a token may do on given paths."""

from __future__ import annotations

from aiohttp import web

from broker.exceptions import InvalidRequest
from broker.server.api.context import RequestContext
from broker.server.api.paths import canonical_path
from broker.server.api.responses import vault_response


async def _answer(ctx: RequestContext, policies: tuple[str, ...]) -> web.StreamResponse:
    paths = ctx.params.strings("paths") or ((ctx.params.text("path") or ""),)
    if not any(paths):
        raise InvalidRequest("paths must be given")
    acl = await ctx.services.policies.acl(policies)
    data: dict[str, list[str]] = {}
    for path in paths:
        # The form a request to ``path`` would be judged in (a trailing slash, as on LIST,
        # is kept: list capabilities are asked for that way).
        judged = canonical_path(path, listing=path.endswith("/"))
        data[path] = sorted(acl.capabilities(judged))
    if len(paths) == 1:
        data["capabilities"] = data[paths[0]]
    return vault_response(data, top_level=True)


async def capabilities_self(ctx: RequestContext) -> web.StreamResponse:
    return await _answer(ctx, ctx.require_caller().policies)


async def capabilities(ctx: RequestContext) -> web.StreamResponse:
    entry = await ctx.services.tokens.lookup(ctx.params.required_str("token"))
    return await _answer(ctx, entry.policies)
