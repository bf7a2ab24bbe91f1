"""sys/capabilities-self and sys/capabilities: what a token may do on given paths."""

from __future__ import annotations

from aiohttp import web

from broker.exceptions import InvalidRequest
from broker.server.api.context import RequestContext
from broker.server.api.paths import capability_forms, judged_form
from broker.server.api.responses import vault_response
from broker.server.api.routing import ROUTE_TABLES, match
from broker.server.auth.acl import ACL


async def _answer(ctx: RequestContext, policies: tuple[str, ...]) -> web.StreamResponse:
    paths = ctx.params.strings("paths") or ((ctx.params.text("path") or ""),)
    if not any(paths):
        raise InvalidRequest("paths must be given")
    acl = await ctx.services.policies.acl(policies)
    data: dict[str, list[str]] = {}
    for path in paths:
        plain, listing = capability_forms(path)
        plain = await _auth_role_form(ctx, plain)
        data[path] = sorted(_enforced_capabilities(acl, plain, listing))
    if len(paths) == 1:
        data["capabilities"] = data[paths[0]]
    return vault_response(data, top_level=True)


async def _auth_role_form(ctx: RequestContext, plain: str) -> str:
    """``plain`` as dispatch judges it when it names a case-insensitive path of an auth
    method (a Kubernetes or JWT role: ``auth/k8s/role/App`` is judged as ``.../app``).
    Which paths those are depends on the method enabled at the mount, so the route is
    resolved as dispatch resolves it; the mount path itself keeps its case."""
    if not plain.startswith("auth/") or plain.startswith("auth/token/"):
        return plain
    resolved = await ctx.services.auth_methods.resolve(plain[len("auth/") :])
    if resolved is None:
        return plain
    mount, type_, rest = resolved
    found = match(ctx.request.app[ROUTE_TABLES].auth.get(type_, ()), rest)
    if found is None:
        return plain
    return judged_form(plain, found[0], found[1], f"auth/{mount}/")[0]


def _enforced_capabilities(acl: ACL, plain: str, listing: str) -> frozenset[str]:
    """What requests to a path will be allowed, judged as dispatch judges them: ``list``
    on the LIST form, everything else on the plain form (``paths.capability_forms``)."""
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
