"""sys/policy/:name and sys/policies/acl/:name: ACL policies in HCL or JSON."""

from __future__ import annotations

from aiohttp import web

from broker.exceptions import InvalidRequest
from broker.server.api.context import RequestContext
from broker.server.api.responses import list_response, no_content, vault_response


async def list_policies(ctx: RequestContext) -> web.StreamResponse:
    names = await ctx.services.policies.list()
    return vault_response({"keys": names, "policies": names}, top_level=True)


async def list_acl_policies(ctx: RequestContext) -> web.StreamResponse:
    return list_response(await ctx.services.policies.list())


async def read_policy(ctx: RequestContext) -> web.StreamResponse:
    name = ctx.arg("name")
    text = await ctx.services.policies.read(name)
    return vault_response({"name": name.lower(), "rules": text, "policy": text}, top_level=True)


async def write_policy(ctx: RequestContext) -> web.StreamResponse:
    """Vault takes the document as ``policy`` (sys/policies/acl) or ``rules`` (sys/policy);
    either is accepted on both paths."""
    text = ctx.params.text("policy") or ctx.params.text("rules")
    if not text:
        raise InvalidRequest("'policy' parameter not supplied or empty")
    await ctx.services.policies.write(ctx.arg("name"), text)
    return no_content()


async def delete_policy(ctx: RequestContext) -> web.StreamResponse:
    await ctx.services.policies.delete(ctx.arg("name"))
    return no_content()
