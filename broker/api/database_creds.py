"""<mount>/creds/:role: issue a login."""

from __future__ import annotations

from aiohttp import web

from broker.api.context import RequestContext
from broker.api.responses import vault_response


async def read_creds(ctx: RequestContext) -> web.StreamResponse:
    caller = ctx.require_caller()
    issued = await ctx.services.leases.issue(
        ctx.mount, ctx.arg("name"), caller.display_name, caller.accessor
    )
    return vault_response(
        {"username": issued.username, "password": issued.password},
        lease_id=issued.lease_id,
        renewable=issued.renewable,
        lease_duration=issued.lease_duration,
    )
