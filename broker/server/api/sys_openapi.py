"""sys/internal/specs/openapi: the API described from the live route table and mounts."""

from __future__ import annotations

from aiohttp import web

from broker.server.api.context import RequestContext, presented_token
from broker.server.api.openapi import build_document
from broker.server.api.responses import json_response
from broker.server.api.routing import ROUTE_TABLES

OPENAPI_PATH = "sys/internal/specs/openapi"
#: Where the generic document puts the engine's and the auth method's paths: Vault's
#: default mount paths, which say nothing about this install.
GENERIC_DATABASE_MOUNT = "database"
#: The auth method types described at their default paths (``oidc`` shares ``jwt``'s).
GENERIC_AUTH_TYPES = ("approle", "kubernetes", "jwt")


async def _may_see_mounts(ctx: RequestContext) -> bool:
    """Whether the request carries a token allowed to read this path. The path needs no
    token (Vault's), so the dispatcher has not looked one up; it is done here, once."""
    token = presented_token(ctx.request)
    if not token:
        return False
    caller = await ctx.services.tokens.authenticate(token, ctx.remote)
    if caller is None:
        return False
    try:
        acl = await ctx.services.policies.acl(caller.policies)
        return acl.allows(OPENAPI_PATH, "read")
    finally:
        if caller.spent:
            await ctx.services.tokens.after_request(caller)


async def read_openapi(ctx: RequestContext) -> web.StreamResponse:
    """The OpenAPI 3.1 document of this broker's paths.

    Vault's rule: without a token (or with one not allowed to read this path) it describes
    the generic API only (sys/, auth/token/, and the engine's auth methods' paths under
    their default mount paths), so a stranger cannot list this install's mounts; with a
    token allowed to read it, the paths under each enabled mount."""
    tables = ctx.request.app[ROUTE_TABLES]
    if await _may_see_mounts(ctx):
        database_mounts = [m.path for m in await ctx.services.catalog.list_mounts()]
        auth_mounts = [(m["path"], m["type"]) for m in await ctx.services.auth_methods.list()]
    else:
        database_mounts = [GENERIC_DATABASE_MOUNT]
        auth_mounts = [(type_, type_) for type_ in GENERIC_AUTH_TYPES]
    document = build_document(
        tables.sys,
        tables.database,
        database_mounts,
        [(mount, tables.auth.get(type_, ())) for mount, type_ in auth_mounts],
    )
    return json_response(document)
