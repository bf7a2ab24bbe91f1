"""The aiohttp application: one dispatcher for every ``/v1/`` path, and its lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager

from aiohttp import web

from broker.api.context import SERVICES, RequestContext, Services

__all__ = ["SERVICES", "create_app", "start_server"]
from broker.api.listmethod import VaultAppRunner
from broker.api.params import Params
from broker.api.responses import error_response
from broker.api.routes import DATABASE_ROUTES, SYS_ROUTES
from broker.api.routing import match, operation_of
from broker.catalog import Catalog
from broker.catalog_cache import IssueContextCache
from broker.engines.registry import EngineRegistry
from broker.exceptions import BrokerError
from broker.leases import LeaseManager
from broker.logs import REQUEST_ID
from broker.metrics import Metrics
from broker.migrations import apply_migrations
from broker.nodes import NodeIdentity, NodeRegistry
from broker.reconcile import Reconciler
from broker.scheduler import SweepScheduler
from broker.settings import Settings
from broker.storage import Storage, create_pool

log = logging.getLogger(__name__)
#: One line per request; paths hold role names and lease ids, never a secret.
access_log = logging.getLogger("broker.access")
ROOT_DISPLAY_NAME = "root"
#: The matched route's template, for the HTTP metrics.
ROUTE_KEY = web.RequestKey("broker.route", str)


def _token_of(request: web.Request) -> str:
    token = request.headers.get("X-Vault-Token", "")
    if not token:
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            token = auth[7:].strip()
    return token


async def dispatch(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    path = request.match_info["tail"]
    operation = operation_of(request)
    mount = ""
    if path.startswith(("sys/", "auth/")):
        found = match(SYS_ROUTES, path)
    else:
        resolved = await services.catalog.resolve_mount(path)
        found = None
        if resolved is not None:
            mount, rest = resolved
            found = match(DATABASE_ROUTES, rest)
    if found is None:
        return error_response(404, [f'no handler for route "{path}". route entry not found.'])
    target, args = found
    request[ROUTE_KEY] = f":mount/{target.template}" if mount else target.template
    token = _token_of(request)
    if target.authenticated and not services.settings.token_is_root(token):
        return error_response(403, ["permission denied"])
    handler = target.handlers.get(operation) if operation else None
    if handler is None:
        return error_response(405, ["unsupported operation"])
    ctx = RequestContext(
        request=request,
        services=services,
        params=await Params.from_request(request),
        path_args=args,
        mount=mount,
        token=token,
        display_name=ROOT_DISPLAY_NAME,
    )
    return await handler(ctx)


@web.middleware
async def request_context(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Give the request an id (logs, ``X-Request-Id``, the body's ``request_id``); count,
    time and log it by route template (never the raw path as a label: unbounded)."""
    request_id = str(uuid.uuid4())
    REQUEST_ID.set(request_id)
    started = time.perf_counter()
    response = await handler(request)
    elapsed = time.perf_counter() - started
    response.headers["X-Request-Id"] = request_id
    route_name = request.get(ROUTE_KEY) or "unmatched"
    metrics = request.app[SERVICES].metrics
    metrics.http_requests.labels(route_name, request.method, str(response.status)).inc()
    metrics.http_seconds.labels(route_name).observe(elapsed)
    access_log.info(
        "%s %s %d",
        request.method,
        request.path,
        response.status,
        extra={
            "method": request.method,
            "path": request.path,
            "route": route_name,
            "status": response.status,
            "duration_ms": round(elapsed * 1000, 2),
        },
    )
    return response


@web.middleware
async def vault_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure leaves as Vault's ``{"errors": [...]}``; nothing leaks a traceback."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except BrokerError as exc:
        return error_response(exc.status, exc.errors)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, [exc.reason])
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, ["internal error"])


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[request_context, vault_errors], client_max_size=settings.max_request_bytes
    )
    app.router.add_route("*", "/v1/{tail:.*}", dispatch)
    app.cleanup_ctx.append(_services_ctx(settings))
    return app


def _services_ctx(
    settings: Settings,
) -> Callable[[web.Application], AbstractAsyncContextManager[None]]:
    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        pool = await create_pool(settings.storage_dsn, max_size=settings.storage_pool_size)
        engines = EngineRegistry()
        scheduler: SweepScheduler | None = None
        services: Services | None = None
        contexts: IssueContextCache | None = None
        try:
            if settings.apply_migrations:
                await apply_migrations(pool)
            storage = Storage(pool)
            contexts = IssueContextCache(storage)
            await contexts.start()
            metrics = Metrics()
            leases = LeaseManager(storage, engines, settings, contexts, metrics)
            catalog = Catalog(storage, engines, leases, settings, contexts)
            await catalog.refresh_mounts()
            scheduler = SweepScheduler(leases, settings.sweep_interval)
            nodes = NodeRegistry(
                storage, NodeIdentity.from_settings(settings), settings.heartbeat_interval
            )
            reconciler = Reconciler(storage, engines)
            services = Services(
                settings, storage, catalog, leases, scheduler, nodes, reconciler, engines, metrics
            )
            app[SERVICES] = services
            await nodes.heartbeat()
            scheduler.add_periodic("heartbeat", nodes.heartbeat, settings.heartbeat_interval)
            if settings.reconcile_interval > 0:
                scheduler.add_periodic(
                    "reconcile", reconciler.report_orphans, settings.reconcile_interval
                )
            scheduler.start()
            yield
        finally:
            # In-flight requests have had their grace (the runner's shutdown_timeout); now
            # the sweep gets its own, then whatever it still holds goes back to the queue.
            if scheduler is not None:
                await scheduler.stop(settings.shutdown_timeout)
            if services is not None:
                with contextlib.suppress(BrokerError):
                    released = await services.leases.release_claims()
                    if released:
                        log.info("released %d unfinished revocation claim(s)", released)
                    await services.nodes.leave()
            if contexts is not None:
                await contexts.close()
            await engines.close()
            await pool.close()

    return contextlib.asynccontextmanager(services_ctx)


def parse_listen_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"listen address must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


async def start_server(
    settings: Settings,
    before_listen: Callable[[Services], Awaitable[None]] | None = None,
) -> VaultAppRunner:
    """Start serving; the caller owns the returned runner and must ``cleanup()`` it.

    ``before_listen`` runs once the services are up but before the port opens, so a client
    that sees the port (or a healthy ``sys/health``) sees what it set up.
    """
    app = create_app(settings)
    runner = VaultAppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=settings.shutdown_timeout
    )
    await runner.setup()
    try:
        if before_listen is not None:
            await before_listen(app[SERVICES])
        host, port = parse_listen_address(settings.listen_address)
        ssl_context = None
        if settings.tls_cert_file:
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
            ssl_context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file or None)
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=1024)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
