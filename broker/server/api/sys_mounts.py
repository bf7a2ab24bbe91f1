"""sys/mounts: enable, read, list and disable secrets engines."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from broker.models import Mount
from broker.server.api.context import RequestContext
from broker.server.api.responses import no_content, vault_response


def _describe(mount: Mount) -> dict[str, Any]:
    return {
        "type": mount.type,
        "description": mount.description,
        "accessor": mount.accessor,
        "config": {"default_lease_ttl": 0, "max_lease_ttl": 0, "force_no_cache": False},
        "options": None,
        "local": False,
        "seal_wrap": False,
        "external_entropy_access": False,
        "plugin_version": "",
        "running_plugin_version": "",
        "uuid": mount.accessor,
    }


async def list_mounts(ctx: RequestContext) -> web.StreamResponse:
    mounts = {m.path + "/": _describe(m) for m in await ctx.services.catalog.list_mounts()}
    return vault_response(mounts, top_level=True)


async def read_mount(ctx: RequestContext) -> web.StreamResponse:
    mount = await ctx.services.catalog.get_mount(ctx.arg("path"))
    return vault_response(_describe(mount), top_level=True)


async def enable_mount(ctx: RequestContext) -> web.StreamResponse:
    type_ = ctx.params.required_str("type")
    description = ctx.params.text("description", "") or ""
    ctx.params.raw("config")
    ctx.params.raw("options")
    await ctx.services.catalog.enable_mount(ctx.arg("path"), type_, description)
    return no_content()


async def disable_mount(ctx: RequestContext) -> web.StreamResponse:
    await ctx.services.catalog.disable_mount(ctx.arg("path"))
    return no_content()
