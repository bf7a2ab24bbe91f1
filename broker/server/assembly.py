"""Assembly: builds the server's parts from its settings and wires them together.

The composition root of the server: the one module that constructs storage, engines,
the domain managers and the background jobs, hands the HTTP API only the ``Services``
it may call, and starts the listener. Nothing else constructs these parts, so the arrows
between the layers stay as the import-linter contracts in pyproject.toml draw them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager

from aiohttp import web

from broker.exceptions import BrokerError
from broker.server.api.app import build_app
from broker.server.api.context import SERVICES, Services
from broker.server.api.listmethod import VaultAppRunner
from broker.server.auth.approle import AppRoleManager, AuthMethods
from broker.server.auth.policy_store import PolicyStore
from broker.server.auth.tokens import TokenManager
from broker.server.auth.wrapping import Wrapper
from broker.server.database.catalog import Catalog
from broker.server.database.issue_contexts import IssueContextCache
from broker.server.database.leases import LeaseManager
from broker.server.database.password_policies import PasswordPolicyStore
from broker.server.database.reconcile import Reconciler
from broker.server.database.rotation import Rotations
from broker.server.engines.registry import EngineRegistry
from broker.server.jobs import SweepScheduler
from broker.server.metrics import Metrics
from broker.server.nodes import NodeIdentity, NodeRegistry
from broker.server.security.audit import Auditor
from broker.server.security.ratelimit import RateLimiter
from broker.server.security.seal import SealManager
from broker.server.settings import Settings
from broker.server.storage.barrier import Barrier
from broker.server.storage.migrations import apply_migrations
from broker.server.storage.store import Storage, create_pool

__all__ = ["create_app", "parse_listen_address", "start_server"]
log = logging.getLogger(__name__)


def create_app(settings: Settings) -> web.Application:
    return build_app(settings, _services_ctx(settings))


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
