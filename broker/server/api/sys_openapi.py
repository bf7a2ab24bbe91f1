"""sys/internal/specs/openapi: the API described from the live route table and mounts."""

from __future__ import annotations

from aiohttp import web

from broker.server.api.context import RequestContext
from broker.server.api.openapi import build_document
from broker.server.api.responses import json_response


async def read_openapi(ctx: RequestContext) -> web.StreamResponse:
    """The OpenAPI 3.1 document of this broker's paths."""
    from broker.server.api import routes  # the table imports this module

    database_mounts = [m.path for m in await ctx.services.catalog.list_mounts()]
    approle_mounts = [m["path"] for m in await ctx.services.auth_methods.list()]
    document = build_document(
        routes.SYS_ROUTES,
        routes.DATABASE_ROUTES,
        routes.APPROLE_ROUTES,
        database_mounts,
        approle_mounts,
    )
    return json_response(document)
