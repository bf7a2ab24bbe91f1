"""sys/policies/password/:name and .../generate: Vault's password policies."""

from __future__ import annotations

from aiohttp import web

from broker.exceptions import InvalidRequest
from broker.server.api.context import RequestContext
from broker.server.api.responses import list_response, no_content, vault_response
from broker.server.auth.acl import check_policy_name


async def write_policy(ctx: RequestContext) -> web.StreamResponse:
    text = ctx.params.text("policy")
    if not text:
        raise InvalidRequest("missing policy")
    await ctx.services.passwords.write(check_policy_name(ctx.arg("name")), text)
    return no_content()


async def read_policy(ctx: RequestContext) -> web.StreamResponse:
    text = await ctx.services.passwords.read(check_policy_name(ctx.arg("name")))
    return vault_response({"policy": text})


async def list_policies(ctx: RequestContext) -> web.StreamResponse:
    return list_response(await ctx.services.passwords.list())


async def delete_policy(ctx: RequestContext) -> web.StreamResponse:
    await ctx.services.passwords.delete(check_policy_name(ctx.arg("name")))
    return no_content()


async def generate(ctx: RequestContext) -> web.StreamResponse:
    name = check_policy_name(ctx.arg("name"))
    await ctx.services.passwords.read(name)  # a 404 for a policy that does not exist
    return vault_response({"password": await ctx.services.passwords.generate(name)})
