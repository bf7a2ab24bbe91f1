"""sys/capabilities-self and sys/capabilities: what a token may do on given paths."""

from __future__ import annotations

from aiohttp import web

from broker.exceptions import InvalidRequest
from broker.server.api.context import RequestContext
from broker.server.api.paths import capability_forms
from broker.server.api.responses import vault_response
from broker.server.auth.acl import ACL


async def _answer(ctx: RequestContext, policies: tuple[str, ...]) -> web.StreamResponse:
    paths = ctx.params.strings("paths") or ((ctx.params.text("path") or ""),)
    if not any(paths):
        raise InvalidRequest("paths must be given")
    acl = await ctx.services.policies.acl(policies)
    data: dict[str, list[str]] = {}
    for path in paths:
        data[path] = sorted(_enforced_capabilities(acl, path))
    if len(paths) == 1:
        data["capabilities"] = data[paths[0]]
    return vault_response(data, top_level=True)


def _enforced_capabilities(acl: ACL, path: str) -> frozenset[str]:
    """What requests to ``path`` will be allowed, judged as dispatch judges them: ``list``
    on the LIST form, everything else on the plain form (``paths.capability_forms``)."""
    plain, listing = capability_forms(path)
    plain_caps = acl.capabilities(plain)
    if "root" in plain_caps:
        return plain_caps
    may_list = "list" in acl.capabilities(listing) and "deny" not in acl.capabilities(listing)
    granted = (plain_caps - {"list", "deny"}) | ({"list"} if may_list else set())
    return frozenset(granted) or frozenset({"deny"})


async def capabilities_self(ctx: RequestContext) -> web.StreamResponse:
    return await _answer(ctx, ctx.require_caller().policies)


async def capabilities(ctx: RequestContext) -> web.StreamResponse:
    entry = await ctx.services.tokens.lookup(ctx.params.required_str("token"))
    return await _answer(ctx, entry.policies)
