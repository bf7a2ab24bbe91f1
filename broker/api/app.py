"""The aiohttp application: one dispatcher for every ``/v1/`` path, and its lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from aiohttp import web

from broker.api.context import SERVICES, RequestContext, Services, presented_token

__all__ = ["SERVICES", "create_app", "start_server"]
from broker.api import console
from broker.api.audit_entries import audit_request_entry, audit_response_part
from broker.api.listmethod import VaultAppRunner
from broker.api.params import Params
from broker.api.paths import canonical_path, judged_form
from broker.api.responses import PAYLOAD, broker_error_response, error_response, vault_response
from broker.api.routes import APPROLE_ROUTES, DATABASE_ROUTES, SYS_ROUTES
from broker.api.routing import Handler, Operation, Route, match, operation_of
from broker.api.sys_wrapping import WRAP_TTL_HEADER
from broker.audit import Auditor
from broker.auth.approle import AppRoleManager, AuthMethods
from broker.auth.policies import PolicyStore
from broker.auth.tokens import Caller, TokenManager
from broker.barrier import Barrier
from broker.catalog import Catalog
from broker.catalog_cache import IssueContextCache
from broker.durations import parse_duration
from broker.engines.registry import EngineRegistry
from broker.exceptions import BrokerError, InvalidRequest, PermissionDenied, Sealed
from broker.leases import LeaseManager
from broker.logs import REQUEST_ID
from broker.metrics import Metrics
from broker.migrations import apply_migrations
from broker.nodes import NodeIdentity, NodeRegistry
from broker.password_policy import PasswordPolicyStore
from broker.ratelimit import RateLimiter
from broker.reconcile import Reconciler
from broker.rotation import Rotations
from broker.scheduler import SweepScheduler
from broker.seal import SealManager
from broker.settings import Settings
from broker.storage import Storage, create_pool
from broker.wrapping import MAX_WRAP_TTL, Wrapper

log = logging.getLogger(__name__)
#: One line per request; paths hold role names and lease ids, never a secret.
access_log = logging.getLogger("broker.access")
#: Paths that answer while sealed (everything else is a 503 before any lookup).
_SEALED_PATHS = ("sys/init", "sys/seal-status", "sys/unseal")
#: The matched route's template, for the HTTP metrics.
ROUTE_KEY = web.RequestKey("broker.route", str)


async def _resolve(services: Services, path: str) -> tuple[Route, dict[str, str], str] | None:
    """The route for ``path`` and the mount it lies under ("" for sys/ and auth/token/)."""
    if path.startswith("sys/") or path.startswith("auth/token/"):
        found = match(SYS_ROUTES, path)
        return (*found, "") if found else None
    if path.startswith("auth/"):
        resolved = await services.auth_methods.resolve(path[len("auth/") :])
        if resolved is None:
            return None
        mount, _type, rest = resolved
        found = match(APPROLE_ROUTES, rest)
        return (*found, mount) if found else None
    mounted = await services.catalog.resolve_mount(path)
    if mounted is None:
        return None
    mount, rest = mounted
    found = match(DATABASE_ROUTES, rest)
    return (*found, mount) if found else None


def _route_label(path: str, target: Route, mount: str) -> str:
    """The metrics label: the route's template under a placeholder for the mount."""
    if not mount:
        return target.template
    prefix = "auth/:mount" if path.startswith("auth/") else ":mount"
    return f"{prefix}/{target.template}"


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Parse, authenticate, authorise, audit, call: in that order, so nothing is done for a
    caller the policies refuse and nothing is served that no audit device recorded."""
    services = request.app[SERVICES]
    operation = operation_of(request)
    remote = request.remote or ""
    services.address_limits.take(remote, "address")
    # The one form of the path that the ACL judges and the handler acts on (paths.py).
    path = canonical_path(request.match_info["tail"], operation is Operation.LIST)
    if services.seal.sealed and not (path == "sys/health" or path.startswith(_SEALED_PATHS)):
        raise Sealed()
    found = await _resolve(services, path)
    if found is None:
        return error_response(404, [f'no handler for route "{path}". route entry not found.'])
    target, args, mount = found
    path, args = judged_form(path, target, args)
    request[ROUTE_KEY] = _route_label(path, target, mount)
    if services.seal.sealed and not target.sealed_ok:
        raise Sealed()
    handler = target.handlers.get(operation) if operation else None
    if handler is None:
        return error_response(405, ["unsupported operation"])
    # Everything about the request is checked before any handler runs: a handler's side
    # effects (a login, a lease) happen only for a request that will get its answer.
    params = await Params.from_request(request)
    wrap_ttl = _wrap_ttl(request.headers.get(WRAP_TTL_HEADER, ""))
    caller: Caller | None = None
    denied = False
    if target.authenticated:
        caller = await services.tokens.authenticate(presented_token(request), remote)
        if caller is not None:
            services.token_limits.take(caller.accessor or "root", "token")
            acl = await services.policies.acl(caller.policies)
            denied = not acl.allows(path, operation or "", sudo=target.sudo)
        else:
            denied = True
    ctx = RequestContext(request, services, params, args, mount, caller, remote)
    if (
        wrap_ttl
        and not denied
        and (path == "sys/wrapping/wrap" or not path.startswith("sys/wrapping/"))
    ):
        handler = _wrapped(handler, wrap_ttl, path)
    auditing = services.auditor.enabled and not services.seal.sealed
    try:
        if not auditing:
            if denied:
                raise PermissionDenied()
            return await handler(ctx)
        return await _audited(ctx, handler, operation or "", denied)
    finally:
        if caller is not None and caller.spent:
            await services.tokens.after_request(caller)


def _wrap_ttl(header: str) -> int:
    """The requested wrap TTL in seconds (0: no wrapping), refused with a 400 before any
    handler runs: a bad TTL found after issuing credentials would leave a login nobody
    received."""
    if not header:
        return 0
    ttl = parse_duration(header, "X-Vault-Wrap-TTL")
    if not 1 <= ttl <= MAX_WRAP_TTL:
        raise InvalidRequest(f"X-Vault-Wrap-TTL must be 1s to {MAX_WRAP_TTL}s")
    return ttl


def _wrapped(handler: Handler, ttl: int, path: str) -> Handler:
    """Vault's response wrapping: a successful answer is stored behind a single-use token
    and the client gets only ``wrap_info``."""

    async def wrapping(ctx: RequestContext) -> web.StreamResponse:
        response = await handler(ctx)
        payload = response.get(PAYLOAD)
        if response.status != 200 or payload is None:
            return response
        try:
            info = await ctx.services.wrapper.wrap(payload, ttl, path)
        except BaseException:
            await _undo_unsent(ctx, payload)
            raise
        return vault_response(None, wrap_info=info)

    return wrapping


async def _undo_unsent(ctx: RequestContext, payload: Mapping[str, Any]) -> None:
    """A lease or a token that will not reach the client (its wrapping or its audit entry
    failed) is revoked now, not left alive for its whole TTL."""
    lease_id = payload.get("lease_id")
    auth = payload.get("auth")
    accessor = auth.get("accessor") if isinstance(auth, Mapping) else None
    try:
        if lease_id and isinstance(lease_id, str):
            await ctx.services.leases.revoke(lease_id)
        if accessor and isinstance(accessor, str):
            await ctx.services.tokens.revoke(accessor)
    except BrokerError:
        log.warning("an answer that was not delivered left a lease or token to expire")


async def _audited(
    ctx: RequestContext, handler: Handler, operation: str, denied: bool
) -> web.StreamResponse:
    services = ctx.services
    hmac = services.auditor.hash_value
    entry = audit_request_entry(ctx, operation, hmac)
    await services.auditor.record({**entry, "type": "request"})
    error = ""
    try:
        if denied:
            raise PermissionDenied()
        response = await handler(ctx)
    except BrokerError as exc:
        response = broker_error_response(exc)
        error = "; ".join(exc.errors)
    try:
        await services.auditor.record(
            {**entry, "type": "response", **audit_response_part(response, error, hmac)}
        )
    except BaseException:
        payload = response.get(PAYLOAD)
        if response.status == 200 and payload is not None:
            await _undo_unsent(ctx, payload)
        raise
    return response


@web.middleware
async def request_context(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Give the request an id (logs, ``X-Request-Id``, the body's ``request_id``); count,
    time and log it by route template (never the raw path as a label: unbounded). The
    logged path stays percent-encoded, so an encoded newline cannot forge a log line."""
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
        request.raw_path,
        response.status,
        extra={
            "method": request.method,
            "path": request.raw_path,
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
        return broker_error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, [exc.reason])
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.raw_path)
        return error_response(500, ["internal error"])


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[request_context, vault_errors], client_max_size=settings.max_request_bytes
    )
    app.router.add_route("*", "/v1/{tail:.*}", dispatch)
    console.add_routes(app)
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
        stop_auth_listener: Callable[[], Awaitable[None]] | None = None
        try:
            if settings.apply_migrations:
                await apply_migrations(pool)
            storage = Storage(pool, Barrier())
            contexts = IssueContextCache(storage)
            await contexts.start()
            metrics = Metrics()
            passwords = PasswordPolicyStore(storage)
            identity = NodeIdentity.from_settings(settings)
            leases = LeaseManager(
                storage,
                engines,
                settings,
                contexts,
                metrics,
                passwords,
                claim_owner=identity.instance_id,
            )
            catalog = Catalog(storage, engines, leases, settings, contexts, passwords)
            await catalog.refresh_mounts()
            scheduler = SweepScheduler(leases, settings.sweep_interval)
            nodes = NodeRegistry(storage, identity, settings.heartbeat_interval)
            reconciler = Reconciler(storage, engines)
            tokens = TokenManager(storage, settings, scheduler.kick)
            seal = SealManager(storage, settings, tokens.create_root)
            auth_methods = AuthMethods(storage)
            auditor = Auditor(
                storage,
                identity.node_id,
                settings.audit_file_dirs,
                settings.allow_api_audit_creation,
            )
            rotations = Rotations(storage, engines, passwords)
            services = Services(
                settings,
                storage,
                catalog,
                leases,
                scheduler,
                nodes,
                reconciler,
                engines,
                metrics,
                seal=seal,
                tokens=tokens,
                policies=PolicyStore(storage),
                auth_methods=auth_methods,
                approle=AppRoleManager(storage, tokens),
                auditor=auditor,
                address_limits=RateLimiter(
                    settings.rate_limit_per_address, settings.rate_limit_burst
                ),
                token_limits=RateLimiter(settings.rate_limit_per_token, settings.rate_limit_burst),
                contexts=contexts,
                rotations=rotations,
                passwords=passwords,
                wrapper=Wrapper(storage),
            )
            app[SERVICES] = services
            stop_auth_listener = await _listen_auth_changes(services)

            async def unsealed() -> None:
                await auth_methods.refresh()
                await auditor.refresh()
                moved = await storage.reencrypt_connections()
                if moved:
                    log.info("re-encrypted %d connection password(s) under the active key", moved)
                await rotations.finish_root_rotations()

            seal.on_unseal(unsealed)
            for drop in (engines.forget_all, tokens.invalidate, contexts.invalidate):
                seal.on_seal(drop)
            await seal.try_auto_unseal()
            await nodes.heartbeat()
            scheduler.add_periodic("heartbeat", nodes.heartbeat, settings.heartbeat_interval)
            scheduler.add_periodic("token-expiry", _when_unsealed(seal, tokens.revoke_expired), 5)
            scheduler.add_periodic("token-orphaned-leases", tokens.revoke_orphaned_leases, 60)
            scheduler.add_periodic(
                "reencrypt", _when_unsealed(seal, storage.reencrypt_connections), 300
            )
            scheduler.add_periodic("audit-devices", _when_unsealed(seal, auditor.refresh), 30)
            scheduler.add_periodic("tidy", leases.tidy, settings.tidy_interval)
            scheduler.add_periodic(
                "static-rotations",
                _when_unsealed(seal, rotations.rotate_due),
                settings.rotation_check_interval,
            )
            scheduler.add_periodic(
                "root-rotations", _when_unsealed(seal, rotations.finish_root_rotations), 60
            )
            if settings.reconcile_interval > 0:
                scheduler.add_periodic(
                    "reconcile",
                    _when_unsealed(seal, reconciler.report_orphans),
                    settings.reconcile_interval,
                )
            scheduler.start()
            yield
        finally:
            # In-flight requests have had their grace (the runner's shutdown_timeout); now
            # the sweep gets its own, then whatever it still holds goes back to the queue.
            if scheduler is not None:
                await scheduler.stop(settings.shutdown_timeout)
            if stop_auth_listener is not None:
                await stop_auth_listener()
            if services is not None:
                with contextlib.suppress(BrokerError):
                    released = await services.leases.release_claims()
                    if released:
                        log.info("released %d unfinished revocation claim(s)", released)
                    await services.nodes.leave()
                services.seal.seal()
            if contexts is not None:
                await contexts.close()
            await engines.close()
            await pool.close()

    return contextlib.asynccontextmanager(services_ctx)


def _when_unsealed(
    seal: SealManager, job: Callable[[], Awaitable[object]]
) -> Callable[[], Awaitable[object]]:
    async def run() -> object:
        return None if seal.sealed else await job()

    return run


async def _listen_auth_changes(services: Services) -> Callable[[], Awaitable[None]] | None:
    """Tokens, policies, audit devices or the keyring changed on another node: drop what
    this node cached (the caches also expire within seconds, should a notification be
    lost; the re-encrypt job reloads the keyring every five minutes)."""
    refreshing: set[asyncio.Task[None]] = set()

    async def refresh() -> None:
        with contextlib.suppress(BrokerError):
            await services.storage.reload_keyring()  # a rotation on another node
            await services.auditor.refresh()

    def changed() -> None:
        services.tokens.invalidate()
        services.policies.invalidate()
        if not services.seal.sealed:
            task = asyncio.get_running_loop().create_task(refresh())
            refreshing.add(task)
            task.add_done_callback(refreshing.discard)

    try:
        return await services.storage.listen("broker_auth", changed, services.tokens.invalidate)
    except BrokerError:
        log.warning("not listening for auth changes; caches expire on their own")
        return None


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
            if settings.tls_client_ca_file:
                ssl_context.load_verify_locations(settings.tls_client_ca_file)
                ssl_context.verify_mode = (
                    ssl.CERT_REQUIRED if settings.tls_require_client_cert else ssl.CERT_OPTIONAL
                )
            elif settings.tls_require_client_cert:
                raise ValueError("tls_require_client_cert needs tls_client_ca_file")
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=1024)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
