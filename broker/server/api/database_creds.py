"""<mount>/creds/:role: issue a login.

Broker extension: with ``?connection=true`` the answer's ``data`` also carries
``connection`` (plugin, host, port, database: see ``endpoints.public_endpoint``), so a
client holding only ``read`` on the creds path can build a DSN or an environment without
reading the connection's configuration. Opt-in, so Vault clients see Vault's shape.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from broker.server.api.context import RequestContext
from broker.server.api.responses import vault_response
from broker.server.database.endpoints import public_endpoint


async def read_creds(ctx: RequestContext) -> web.StreamResponse:
    caller = ctx.require_caller()
    # Read before issuing: a malformed flag is a 400 with no login made.
    describe = ctx.params.flag("connection", False)
    issued = await ctx.services.leases.issue(
        ctx.mount, ctx.arg("name"), caller.display_name, caller.accessor
    )
    data: dict[str, Any] = {"username": issued.username, "password": issued.password}
    if describe and issued.connection is not None:
        data["connection"] = public_endpoint(issued.connection)
    return vault_response(
        data,
        lease_id=issued.lease_id,
        renewable=issued.renewable,
        lease_duration=issued.lease_duration,
    )
