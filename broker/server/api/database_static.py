"""<mount>/static-roles/:name, static-creds/:name, rotate-role/:name: static roles."""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from broker.server.api.context import RequestContext
from broker.server.api.responses import list_response, no_content, vault_response
from broker.server.database.rotation import StaticRoleUpdate


async def write_static_role(ctx: RequestContext) -> web.StreamResponse:
    """Create (rotating the password at once, as Vault does) or update a static role."""
    p = ctx.params
    update = StaticRoleUpdate(
        db_name=p.text("db_name"),
        username=p.text("username"),
        rotation_period=p.ttl("rotation_period"),
        rotation_schedule=p.text("rotation_schedule"),
        rotation_window=p.ttl("rotation_window"),
        rotation_statements=p.statements("rotation_statements"),
    )
    p.raw("credential_type")
    await ctx.services.rotations.write_static_role(ctx.mount, ctx.arg("name"), update)
    warnings = p.unused_warning()
    return vault_response(None, warnings=warnings) if warnings else no_content()


def _ttl(next_rotation: dt.datetime) -> int:
    return max(0, int((next_rotation - dt.datetime.now(dt.UTC)).total_seconds()))


async def read_static_role(ctx: RequestContext) -> web.StreamResponse:
    r = await ctx.services.rotations.read_static_role(ctx.mount, ctx.arg("name"))
    return vault_response(
        {
            "db_name": r.db_name,
            "username": r.username,
            "rotation_period": r.rotation_period,
            "rotation_schedule": r.rotation_schedule,
            "rotation_window": r.rotation_window,
            "rotation_statements": list(r.rotation_statements),
            "last_vault_rotation": r.last_rotation.isoformat() if r.last_rotation else None,
            "ttl": _ttl(r.next_rotation),
            "credential_type": "password",
            # Beyond Vault: a rotation that keeps failing is visible.
            "rotation_attempts": r.attempts,
            "last_error": r.last_error,
        }
    )


async def list_static_roles(ctx: RequestContext) -> web.StreamResponse:
    return list_response(await ctx.services.rotations.list_static_roles(ctx.mount))


async def delete_static_role(ctx: RequestContext) -> web.StreamResponse:
    await ctx.services.rotations.delete_static_role(ctx.mount, ctx.arg("name"))
    return no_content()


async def read_static_creds(ctx: RequestContext) -> web.StreamResponse:
    """The current password: the old one until a rotation in flight is confirmed."""
    r = await ctx.services.rotations.read_static_role(ctx.mount, ctx.arg("name"))
    return vault_response(
        {
            "username": r.username,
            "password": r.password,
            "last_vault_rotation": r.last_rotation.isoformat() if r.last_rotation else None,
            "ttl": _ttl(r.next_rotation),
            "rotation_period": r.rotation_period,
            "rotation_schedule": r.rotation_schedule,
            "rotation_window": r.rotation_window,
        }
    )


async def rotate_role(ctx: RequestContext) -> web.StreamResponse:
    await ctx.services.rotations.rotate_static(ctx.mount, ctx.arg("name"))
    return no_content()


async def rotate_root(ctx: RequestContext) -> web.StreamResponse:
    """Change the broker's own admin password on the target; only the broker knows it."""
    await ctx.services.rotations.rotate_root(ctx.mount, ctx.arg("name"))
    await ctx.services.catalog.connection_changed()
    return no_content()


async def reset_connection(ctx: RequestContext) -> web.StreamResponse:
    """Close this node's pool to the target and read the connection again."""
    await ctx.services.catalog.reset_connection(ctx.mount, ctx.arg("name"))
    return no_content()
