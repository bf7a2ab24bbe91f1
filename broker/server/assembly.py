"""Assembly: builds the server's parts from its settings and wires them together.

The composition root of the server: the one module that constructs storage, engines,
the domain managers and the background jobs, hands the HTTP API only the ``Services``
it may call, and starts the listener. Nothing else constructs these parts, so the arrows
between the layers stay as the import-linter contracts in pyproject.toml draw them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from aiohttp import web

from broker.exceptions import BrokerError, IntegrityError
from broker.server.api.app import build_app
from broker.server.api.context import SERVICES, Services
from broker.server.api.listmethod import VaultAppRunner
from broker.server.auth.approle import AppRoleManager
from broker.server.auth.jwt_auth import JwtAuth
from broker.server.auth.kubernetes import KubernetesAuth
from broker.server.auth.methods import AuthMethods
from broker.server.auth.policy_store import PolicyStore
from broker.server.auth.tokens import TokenManager
from broker.server.auth.wrapping import Wrapper
from broker.server.bootstrap import DeclarativeConfig, DeclarativeRunner, Targets, load_declarative
from broker.server.database.catalog import Catalog
from broker.server.database.issue_contexts import IssueContextCache
from broker.server.database.leases import LeaseManager
from broker.server.database.password_policies import PasswordPolicyStore
from broker.server.database.reconcile import Reconciler
from broker.server.database.revocation import Revocations
from broker.server.database.rotation import Rotations
from broker.server.engines.registry import EngineRegistry
from broker.server.jobs import BackgroundJobs
from broker.server.metrics import Metrics
from broker.server.nodes import NodeIdentity, NodeRegistry
from broker.server.security.audit import CHECKPOINT_SECONDS, Auditor
from broker.server.security.ratelimit import RateLimiter
from broker.server.security.seal import SealManager
from broker.server.settings import Settings
from broker.server.storage.barrier import Barrier
from broker.server.storage.connector import create_pool
from broker.server.storage.stores import Stores

__all__ = ["create_app", "declarative_targets", "parse_listen_address", "start_server"]
log = logging.getLogger(__name__)


def create_app(settings: Settings) -> web.Application:
    return build_app(settings, _services_ctx(settings))


@dataclass(frozen=True, slots=True)
class _Server:
    """What assembly built: the API's ``Services``, and the parts only assembly touches
    (storage, the engines, the issuance cache, the reconciler, the background jobs)."""

    services: Services
    stores: Stores
    engines: EngineRegistry
    contexts: IssueContextCache
    reconciler: Reconciler
    jobs: BackgroundJobs


def _services_ctx(
    settings: Settings,
) -> Callable[[web.Application], AbstractAsyncContextManager[None]]:
    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        # A malformed declarative section stops the start here, before storage is touched.
        declared = (
            load_declarative(settings.declarative_file) if settings.declarative_file else None
        )
        # Each part registers its teardown once built; they run in reverse on shutdown (or
        # on a failed start): jobs stop first, the storage pool closes last.
        async with contextlib.AsyncExitStack() as teardown:
            pool = await create_pool(settings.storage_dsn, max_size=settings.storage_pool_size)
            teardown.push_async_callback(pool.close)
            engines = EngineRegistry()
            teardown.push_async_callback(engines.close)
            stores = Stores.open(pool, Barrier())
            if settings.apply_migrations:
                await stores.migrate()
            engines.install_id = await stores.nodes.install_id()  # marks created users
            server = await _build_server(settings, stores, engines, teardown)
            teardown.push_async_callback(_leave, server.services)
            app[SERVICES] = server.services
            stop_auth_listener = await _listen_auth_changes(server)
            if stop_auth_listener is not None:
                teardown.push_async_callback(stop_auth_listener)
            declarative = _declarative_runner(server, declared)
            _hook_seal(server, declarative)
            await server.services.seal.try_auto_unseal()
            await server.services.nodes.heartbeat()
            _register_jobs(server, settings, declarative)
            # In-flight requests have had their grace (the runner's shutdown_timeout); now
            # the sweep gets its own, then whatever it still holds goes back to the queue.
            teardown.push_async_callback(server.jobs.stop, settings.shutdown_timeout)
            server.jobs.start()
            yield

    return contextlib.asynccontextmanager(services_ctx)


async def _build_server(
    settings: Settings,
    stores: Stores,
    engines: EngineRegistry,
    teardown: contextlib.AsyncExitStack,
) -> _Server:
    """Construct the domain objects, each given only the store(s) it calls."""
    contexts = IssueContextCache(stores.catalog)
    await contexts.start()
    teardown.push_async_callback(contexts.close)
    metrics = Metrics()
    stores.keyring.on_integrity_failure(
        lambda table: metrics.integrity_failures.labels(table).inc()
    )
    passwords = PasswordPolicyStore(stores.catalog)
    identity = NodeIdentity.from_settings(settings)
    revocations = Revocations(
        stores.leases, stores.catalog, engines, settings, metrics, claim_owner=identity.instance_id
    )
    leases = LeaseManager(
        stores.leases, stores.catalog, engines, settings, revocations, contexts, metrics, passwords
    )
    catalog = Catalog(stores.catalog, engines, revocations, settings, contexts, passwords)
    await catalog.refresh_mounts()
    jobs = BackgroundJobs(revocations, settings.sweep_interval)
    tokens = TokenManager(stores.auth, settings, jobs.sweep_soon)
    kubernetes = KubernetesAuth(stores.auth, tokens)
    teardown.push_async_callback(kubernetes.close)  # its TokenReview HTTP session
    jwt = JwtAuth(stores.auth, tokens)
    teardown.push_async_callback(jwt.close)  # its key fetches in flight
    services = Services(
        catalog=catalog,
        leases=leases,
        revocations=revocations,
        rotations=Rotations(stores.catalog, engines, passwords),
        passwords=passwords,
        sweep_soon=jobs.sweep_soon,
        tokens=tokens,
        policies=PolicyStore(stores.auth),
        auth_methods=AuthMethods(stores.auth, tokens),
        approle=AppRoleManager(stores.auth, tokens),
        kubernetes=kubernetes,
        jwt=jwt,
        wrapper=Wrapper(stores.auth),
        seal=SealManager(stores.keyring, settings, tokens.create_root),
        auditor=Auditor(
            stores.audit,
            identity.node_id,
            settings.audit_file_dirs,
            settings.allow_api_audit_creation,
        ),
        address_limits=RateLimiter(settings.rate_limit_per_address, settings.rate_limit_burst),
        token_limits=RateLimiter(settings.rate_limit_per_token, settings.rate_limit_burst),
        nodes=NodeRegistry(stores.nodes, identity, settings.heartbeat_interval),
        metrics=metrics,
    )
    reconciler = Reconciler(stores.catalog, stores.leases, engines)
    return _Server(services, stores, engines, contexts, reconciler, jobs)


def _declarative_targets(server: _Server) -> Targets:
    services = server.services
    return Targets(
        catalog=services.catalog,
        rotations=services.rotations,
        passwords=services.passwords,
        policies=services.policies,
        auth_methods=services.auth_methods,
        approle=services.approle,
        kubernetes=services.kubernetes,
        jwt=services.jwt,
        auditor=services.auditor,
        ledger=server.stores.declared,
    )


def _declarative_runner(
    server: _Server, declared: DeclarativeConfig | None
) -> DeclarativeRunner | None:
    if declared is None:
        return None
    failures = server.services.metrics.declarative_failures
    return DeclarativeRunner(_declarative_targets(server), declared, failures.set)


@contextlib.asynccontextmanager
async def declarative_targets(settings: Settings) -> AsyncIterator[Targets]:
    """For ``broker apply``: the domain objects built as the server builds them, over a
    pool of their own, with storage opened by the auto-unseal key; no listener, no jobs,
    no unseal work. Raises ``ValueError`` when storage cannot be opened that way."""
    async with contextlib.AsyncExitStack() as teardown:
        pool = await create_pool(settings.storage_dsn, min_size=1, max_size=4)
        teardown.push_async_callback(pool.close)
        engines = EngineRegistry()
        teardown.push_async_callback(engines.close)
        stores = Stores.open(pool, Barrier())
        if settings.apply_migrations:
            await stores.migrate()
        engines.install_id = await stores.nodes.install_id()
        server = await _build_server(settings.replace(auto_init=False), stores, engines, teardown)
        seal = server.services.seal
        if not seal.auto_unseal:
            raise ValueError(
                "storage is sealed with Shamir keys: broker apply needs an auto-unseal "
                '(seal_type = "file" or "env"); with Shamir keys the nodes apply the '
                "declarative section at every unseal"
            )
        if not await seal.try_auto_unseal():
            raise ValueError("storage is not initialized (PUT /v1/sys/init)")
        teardown.callback(seal.seal)
        yield _declarative_targets(server)


def _hook_seal(server: _Server, declarative: DeclarativeRunner | None = None) -> None:
    """On unseal, load what the keyring guards, finish interrupted work and apply the
    declarative configuration (last, with everything loaded; the node still answers as
    sealed, so it serves only once its declared objects exist); on seal, drop every cached
    secret (target pools, tokens, issuance contexts)."""
    services = server.services

    async def unsealed() -> None:
        # First: rows written before rows were authenticated are trusted this once.
        authenticated = await server.stores.keyring.authenticate_rows()
        if authenticated:
            log.info("authenticated %d row(s) written before the upgrade", authenticated)
        await services.auth_methods.refresh()
        try:
            await services.auditor.refresh()
        except IntegrityError:
            # A tampered audit device: never serve without the log it was meant to keep.
            services.seal.seal()
            raise
        moved = await server.stores.keyring.reencrypt_connections()
        if moved:
            log.info("re-encrypted %d connection password(s) under the active key", moved)
        await services.rotations.finish_root_rotations()
        if declarative is not None:
            await declarative.apply()

    services.seal.on_unseal(unsealed)
    for drop in (server.engines.forget_all, services.tokens.invalidate, server.contexts.invalidate):
        services.seal.on_seal(drop)


def _register_jobs(
    server: _Server, settings: Settings, declarative: DeclarativeRunner | None = None
) -> None:
    """The periodic jobs besides the sweep; those that need the keyring skip while sealed."""
    services, jobs, seal = server.services, server.jobs, server.services.seal
    if declarative is not None:
        retry = _when_unsealed(seal, declarative.retry)
        jobs.add_periodic("declarative-retry", retry, declarative.RETRY_SECONDS)
    jobs.add_periodic("heartbeat", services.nodes.heartbeat, settings.heartbeat_interval)
    jobs.add_periodic("token-expiry", _when_unsealed(seal, services.tokens.revoke_expired), 5)
    jobs.add_periodic("token-orphaned-leases", services.tokens.revoke_orphaned_leases, 60)
    reencrypt = server.stores.keyring.reencrypt_connections
    jobs.add_periodic("reencrypt", _when_unsealed(seal, reencrypt), 300)
    jobs.add_periodic("audit-devices", _when_unsealed(seal, services.auditor.refresh), 30)
    jobs.add_periodic("audit-checkpoints", services.auditor.checkpoint_due, CHECKPOINT_SECONDS)
    jobs.add_periodic("tidy", services.revocations.tidy, settings.tidy_interval)
    jobs.add_periodic("tidy-wrapped-responses", services.wrapper.tidy, settings.tidy_interval)
    jobs.add_periodic(
        "static-rotations",
        _when_unsealed(seal, services.rotations.rotate_due),
        settings.rotation_check_interval,
    )
    jobs.add_periodic(
        "root-rotations", _when_unsealed(seal, services.rotations.finish_root_rotations), 60
    )
    if settings.reconcile_interval > 0:
        reconcile = functools.partial(
            server.reconciler.report_orphans, revoke=settings.reconcile_revoke
        )
        jobs.add_periodic("reconcile", _when_unsealed(seal, reconcile), settings.reconcile_interval)


async def _leave(services: Services) -> None:
    """Shutting down: hand back unfinished revocation claims, leave the cluster, seal."""
    with contextlib.suppress(BrokerError):
        released = await services.revocations.release_claims()
        if released:
            log.info("released %d unfinished revocation claim(s)", released)
        await services.nodes.leave()
    with contextlib.suppress(BrokerError):
        await services.auditor.checkpoint()  # how far each audit chain got, for verify
    services.seal.seal()


def _when_unsealed(
    seal: SealManager, job: Callable[[], Awaitable[object]]
) -> Callable[[], Awaitable[object]]:
    async def run() -> object:
        return None if seal.sealed else await job()

    return run


async def _listen_auth_changes(server: _Server) -> Callable[[], Awaitable[None]] | None:
    """Tokens, policies, audit devices or the keyring changed on another node: drop what
    this node cached (the caches also expire within seconds, should a notification be
    lost; the re-encrypt job reloads the keyring every five minutes)."""
    services, stores = server.services, server.stores
    refreshing: set[asyncio.Task[None]] = set()

    async def refresh() -> None:
        with contextlib.suppress(BrokerError):
            await stores.keyring.reload_keyring()  # a rotation on another node
            await services.auditor.refresh()

    def changed() -> None:
        services.tokens.invalidate()
        services.policies.invalidate()
        if not services.seal.sealed:
            task = asyncio.get_running_loop().create_task(refresh())
            refreshing.add(task)
            task.add_done_callback(refreshing.discard)

    try:
        return await stores.auth.listen_changes(changed, services.tokens.invalidate)
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
