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
    services = ctx.services
    metrics = services.metrics
    # Gauges read at scrape time: what storage and this node's pools say now.
    metrics.leases.clear()
    for state, mount, role, count in await services.storage.lease_counts():
        metrics.leases.labels(state, mount, role).set(count)
    failing = await services.storage.count_failing_leases()
    metrics.failing.set(sum(failing.values()))
    metrics.backlog.set(await services.storage.sweep_backlog())
    metrics.pool.clear()
    for mount, connection, stats in services.engines.pool_stats():
        for state, value in stats.items():
            metrics.pool.labels(mount, connection, state).set(value)
    if fmt == "prometheus":
        return web.Response(
            body=metrics.prometheus_text(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )
    return json_response(metrics.vault_json())
