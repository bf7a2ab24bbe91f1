"""GET /v1/sys/health."""

from __future__ import annotations

import time

from aiohttp import web

import broker
from broker.api.context import RequestContext
from broker.api.responses import json_response
from broker.exceptions import StorageUnavailable


async def read_health(ctx: RequestContext) -> web.StreamResponse:
    storage_ok = True
    try:
        await ctx.services.storage.ping()
    except StorageUnavailable:
        storage_ok = False
    body = {
        "initialized": True,
        "sealed": False,
        "standby": False,
        "performance_standby": False,
        "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled",
        "server_time_utc": int(time.time()),
        "version": broker.__version__,
        "cluster_name": "broker",
        "storage": "ok" if storage_ok else "unavailable",
    }
    return json_response(body, 200 if storage_ok else 503)
