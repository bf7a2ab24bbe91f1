"""GET /v1/sys/metrics: Prometheus text with ``?format=prometheus``, Vault's JSON without."""

from __future__ import annotations

from aiohttp import web

from broker.exceptions import InvalidRequest
from broker.server.api.context import RequestContext
from broker.server.api.responses import json_response


async def read_metrics(ctx: RequestContext) -> web.StreamResponse:
    fmt = ctx.params.text("format", "") or ""
    if fmt not in ("", "prometheus"):
        raise InvalidRequest("format must be 'prometheus' or absent (JSON)")
    leases = ctx.services.leases
    metrics = ctx.services.metrics
    # Gauges read at scrape time: what the lease rows and this node's pools say now.
    metrics.set_scrape_gauges(
        lease_counts=await leases.counts_by_state(),
        failing=sum((await leases.failing_counts()).values()),
        backlog=await leases.sweep_backlog(),
        pools=ctx.services.catalog.pool_stats(),
    )
    if fmt == "prometheus":
        return web.Response(
            body=metrics.prometheus_text(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )
    return json_response(metrics.vault_json())
