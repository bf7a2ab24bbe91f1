"""sys/internal/specs/openapi: the API described from the live route table and mounts."""

from __future__ import annotations

from aiohttp import web

from broker.server.api.context import RequestContext
from broker.server.api.openapi import build_document
from broker.server.api.responses import json_response
from broker.server.api.routing import ROUTE_TABLES


async def read_openapi(ctx: RequestContext) -> web.StreamResponse:
    """The OpenAPI 3.1 document of this broker's paths."""
    tables = ctx.request.app[ROUTE_TABLES]
    database_mounts = [m.path for m in await ctx.services.catalog.list_mounts()]
    approle_mounts = [m["path"] for m in await ctx.services.auth_methods.list()]
    document = build_document(
        tables.sys, tables.database, tables.approle, database_mounts, approle_mounts
    )
    return json_response(document)
