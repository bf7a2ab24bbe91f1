"""GET /v1/sys/health."""

from __future__ import annotations

import time

from aiohttp import web

import broker
from broker.exceptions import StorageUnavailable
from broker.server.api.context import RequestContext
from broker.server.api.responses import json_response, vault_response


def _code(ctx: RequestContext, name: str, default: int) -> int:
    value = ctx.request.query.get(name, "")
    # ASCII digits only: ``isdigit`` also takes "²", which ``int`` refuses (a 500).
    number = value.isascii() and value.isdigit()
    return int(value) if number and 200 <= int(value) <= 599 else default


async def read_health(ctx: RequestContext) -> web.StreamResponse:
    """Vault's codes: 200 unsealed, 501 not initialised, 503 sealed or storage down;
    ``sealedcode`` and ``uninitcode`` override them, as in Vault.

    Storage down includes read-only (a standby not yet promoted, or an old primary back as
    a standby): the node could answer reads but would refuse every issuance, so a load
    balancer must take it out, whatever the codes asked for."""
    storage = "ok"
    initialized = True
    try:
        initialized = (await ctx.services.seal.status())["initialized"]
        if not await ctx.services.nodes.storage_writable():
            storage = "read-only"
    except StorageUnavailable:
        storage = "unavailable"
    sealed = ctx.services.seal.sealed
    if storage != "ok":
        status = 503
    elif not initialized:
        status = _code(ctx, "uninitcode", 501)
    elif sealed:
        status = _code(ctx, "sealedcode", 503)
    else:
        status = _code(ctx, "activecode", 200)
    body = {
        "initialized": initialized,
        "sealed": sealed,
        "standby": False,
        "performance_standby": False,
        "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled",
        "server_time_utc": int(time.time()),
        "version": broker.__version__,
        "cluster_name": "broker",
        "node_id": ctx.services.nodes.identity.node_id,
        "storage": storage,
    }
    return json_response(body, status)


async def read_ha_status(ctx: RequestContext) -> web.StreamResponse:
    """Every node with a recent heartbeat. All are active: there are no standbys."""
    me = ctx.services.nodes.identity.node_id
    nodes = [
        {
            "hostname": node["node_id"],
            "node_id": node["node_id"],
            "api_address": node["api_address"],
            "cluster_address": "",
            "active_node": True,
            "this_node": node["node_id"] == me,
            "version": node["version"],
            "started_at": node["started_at"].isoformat(),
            "last_echo": node["last_heartbeat"].isoformat(),
        }
        for node in await ctx.services.nodes.live_nodes()
    ]
    return vault_response({"nodes": nodes}, top_level=True)
