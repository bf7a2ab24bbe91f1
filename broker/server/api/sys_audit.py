"""sys/audit/:path, sys/audit-hash/:path: audit devices, and hashing a value to find it."""

from __future__ import annotations

from aiohttp import web

from broker.exceptions import InvalidRequest, NotFound
from broker.server.api.context import RequestContext
from broker.server.api.responses import no_content, vault_response


async def list_devices(ctx: RequestContext) -> web.StreamResponse:
    devices = {
        d.path + "/": {
            "type": d.type,
            "description": d.description,
            "options": d.options,
            "path": d.path + "/",
            "local": False,
        }
        for d in await ctx.services.auditor.list()
    }
    return vault_response(devices, top_level=True)


async def enable_device(ctx: RequestContext) -> web.StreamResponse:
    p = ctx.params
    options = p.raw("options") or {}
    if not isinstance(options, dict) or not all(isinstance(v, str) for v in options.values()):
        raise InvalidRequest("options: expected a map of strings")
    await ctx.services.auditor.enable(
        ctx.arg("path"), p.required_str("type"), p.text("description") or "", dict(options)
    )
    return no_content()


async def disable_device(ctx: RequestContext) -> web.StreamResponse:
    await ctx.services.auditor.disable(ctx.arg("path"))
    return no_content()


async def hash_value(ctx: RequestContext) -> web.StreamResponse:
    path = ctx.arg("path")  # canonical already: what the ACL judged
    if path not in {d.path for d in await ctx.services.auditor.list()}:
        raise NotFound(f"unknown audit backend {path}")
    value = ctx.params.text("input")
    if value is None:
        raise InvalidRequest('the "input" parameter is required')
    return vault_response({"hash": ctx.services.auditor.hash_value(value)}, top_level=True)


async def verify_device(ctx: RequestContext) -> web.StreamResponse:
    """A device's log checked by the server with the audit chain key and the checkpoints
    in storage: a ``table`` device's chain per node (``nodes``), a ``file`` device's file
    as this node's host has it (``file``). The key never leaves the server."""
    return vault_response(await ctx.services.auditor.verify(ctx.arg("path")))
