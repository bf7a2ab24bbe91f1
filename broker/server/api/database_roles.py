"""<mount>/roles/:name: dynamic roles."""

from __future__ import annotations

from aiohttp import web

from broker.exceptions import InvalidRequest
from broker.server.api.context import RequestContext
from broker.server.api.responses import list_response, no_content, vault_response
from broker.server.database.catalog import RoleUpdate


def _count(value: object) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidRequest("max_leases: expected an integer")
    try:
        return int(value)
    except ValueError as exc:
        raise InvalidRequest("max_leases: expected an integer") from exc


async def write_role(ctx: RequestContext) -> web.StreamResponse:
    p = ctx.params
    update = RoleUpdate(
        db_name=p.text("db_name"),
        creation_statements=p.statements("creation_statements"),
        revocation_statements=p.statements("revocation_statements"),
        rollback_statements=p.statements("rollback_statements"),
        renew_statements=p.statements("renew_statements"),
        default_ttl=p.ttl("default_ttl"),
        max_ttl=p.ttl("max_ttl"),
        orphan_leases=p.flag("orphan_leases"),
        max_leases=_count(p.raw("max_leases")),
    )
    p.raw("credential_type")
    warnings = await ctx.services.catalog.write_role(ctx.mount, ctx.arg("name"), update)
    warnings += p.unused_warning()
    if warnings:
        return vault_response(None, warnings=warnings)
    return no_content()


async def read_role(ctx: RequestContext) -> web.StreamResponse:
    r = await ctx.services.catalog.read_role(ctx.mount, ctx.arg("name"))
    data = {
        "db_name": r.db_name,
        "creation_statements": list(r.creation_statements),
        "revocation_statements": list(r.revocation_statements),
        "rollback_statements": list(r.rollback_statements),
        "renew_statements": list(r.renew_statements),
        "default_ttl": r.default_ttl,
        "max_ttl": r.max_ttl,
        "orphan_leases": r.orphan_leases,
        "max_leases": r.max_leases,
        "credential_type": "password",
    }
    return vault_response(data)


async def list_roles(ctx: RequestContext) -> web.StreamResponse:
    return list_response(await ctx.services.catalog.list_roles(ctx.mount))


async def delete_role(ctx: RequestContext) -> web.StreamResponse:
    await ctx.services.catalog.delete_role(ctx.mount, ctx.arg("name"))
    return no_content()
