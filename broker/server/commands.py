"""Server-side commands of the ``broker`` CLI (server, migrate, revoke-expired, reconcile,
and the host-side tools ``operator generate-seal-key`` and ``audit verify``): they construct
server parts, so they live here, not in ``broker.client``.

Importing this module is cheap (the standard library only): the root parser needs the
parser definitions for every command, but only these commands pay for importing the
server (storage, engines, aiohttp), inside the functions that use it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from broker import logs

if TYPE_CHECKING:
    from broker.server.settings import Settings

#: Top-level commands run here, and the ``operator`` subcommands that need the server.
COMMANDS = frozenset({"server", "migrate", "revoke-expired", "reconcile", "audit"})
OPERATOR_COMMANDS = frozenset({"generate-seal-key"})


def handles(args: argparse.Namespace) -> bool:
    """Whether ``run`` is the command's runner (``operator`` is shared with the client)."""
    if args.command == "operator":
        return args.operator_command in OPERATOR_COMMANDS
    return args.command in COMMANDS


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``server``, ``migrate``, ``revoke-expired`` and ``reconcile``."""
    server = sub.add_parser(
        "server", help="run the broker", description="Run the broker. Example: broker server --dev"
    )
    server.add_argument("--config", help="TOML settings file (BROKER_* variables override it)")
    server.add_argument(
        "--dev",
        action="store_true",
        help="embedded PostgreSQL, root token printed, demo role 'readonly'",
    )
    server.add_argument("--dev-root-token-id", default="", help="root token to use in dev mode")
    server.add_argument("--dev-listen-address", default="127.0.0.1:8200", help="HOST:PORT")
    server.add_argument(
        "--dev-storage-dsn",
        default="",
        help="keep dev state in this PostgreSQL instead of an embedded one",
    )
    server.add_argument("--log-level", help="DEBUG, INFO (default), WARNING or ERROR")
    server.add_argument(
        "--log-format", choices=("text", "json"), help="one line per event (default: text)"
    )

    for name, text in (
        ("migrate", "apply the SQL migrations in broker/sql/ and exit"),
        ("revoke-expired", "revoke every due lease once and exit (for cron)"),
    ):
        cmd = sub.add_parser(
            name, help=text, description=f"{text}. Example: broker {name} --config broker.toml"
        )
        cmd.add_argument("--config", help="TOML settings file")

    reconcile = sub.add_parser(
        "reconcile",
        help="list users on the targets that look like the broker's but have no live lease",
        description="Example: broker reconcile --config broker.toml --revoke",
    )
    reconcile.add_argument("--config", help="TOML settings file")
    reconcile.add_argument("--revoke", action="store_true", help="drop the orphans found")


def add_host_tool_parsers(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    operator_commands: argparse._SubParsersAction,  # type: ignore[type-arg]
) -> None:
    """``operator generate-seal-key`` (under the client's ``operator``) and ``audit
    verify``: they run on the broker's host, on its files, with the server's code."""
    operator_commands.add_parser(
        "generate-seal-key",
        help="print a key for seal_type file (a key file) or env",
        description="Example: broker operator generate-seal-key > /etc/broker/seal.key",
    )

    audit = sub.add_parser(
        "audit",
        help="check an audit log's hash chain",
        description="Example: broker audit verify /var/log/broker/audit.log",
    )
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify",
        help="report the first edited or missing line",
        description="Example: broker audit verify /var/log/broker/audit.log (exit 1 on a break)",
    )
    verify.add_argument("file")


def run(args: argparse.Namespace) -> int:
    if args.command == "server":
        with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
            return runner.run(_serve(args))
    if args.command == "migrate":
        return asyncio.run(_migrate(args))
    if args.command == "revoke-expired":
        return asyncio.run(_revoke_expired(args))
    if args.command == "reconcile":
        return asyncio.run(_reconcile(args))
    if args.command == "audit":
        return _audit_verify(args)
    return _generate_seal_key()


def _event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (and not disabled with BROKER_UVLOOP=0), else asyncio's."""
    if os.environ.get("BROKER_UVLOOP", "1") == "0":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _settings(config: str | None) -> Settings:
    from broker.server.settings import Settings

    settings = Settings.load(config)
    if not settings.storage_dsn:
        raise ValueError("storage_dsn is not set (config file or BROKER_STORAGE_DSN)")
    return settings


def _stop_on_signal() -> asyncio.Event:
    """Installed before anything starts, so Ctrl-C or SIGTERM during start-up still ends in
    an orderly shutdown (and the embedded PostgreSQL is removed) once start-up finishes."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _serve(args: argparse.Namespace) -> int:
    stop = _stop_on_signal()
    if not args.dev:
        return await _serve_production(args, stop)
    return await _serve_dev(args, stop)


async def _serve_production(args: argparse.Namespace, stop: asyncio.Event) -> int:
    from broker.server.assembly import start_server

    settings = _settings(args.config)
    logs.configure(args.log_level or settings.log_level, args.log_format or settings.log_format)
    runner = await start_server(settings)
    print(f"broker listening on {settings.listen_address}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


async def _serve_dev(args: argparse.Namespace, stop: asyncio.Event) -> int:
    """Embedded PostgreSQL (or ``--dev-storage-dsn``), a known root token, the dev seal and
    the demo role; the embedded cluster is removed on exit, whatever happened."""
    from broker.server import dev
    from broker.server.api.context import Services
    from broker.server.assembly import start_server
    from broker.server.secrets_gen import token
    from broker.server.settings import Settings
    from broker.server.storage.embedded import EmbeddedPostgres

    embedded: EmbeddedPostgres | None = None
    settings = Settings.load(args.config) if args.config else Settings()
    logs.configure(args.log_level or settings.log_level, args.log_format or settings.log_format)
    root_token = args.dev_root_token_id or token()
    try:
        if args.dev_storage_dsn:
            storage_dsn = admin_dsn = args.dev_storage_dsn
        else:
            await asyncio.to_thread(EmbeddedPostgres.reap_orphans)
            embedded = EmbeddedPostgres()
            await asyncio.to_thread(embedded.start)
            storage_dsn, admin_dsn = embedded.dsn("postgres"), embedded.dsn("postgres")
        settings = settings.replace(
            storage_dsn=storage_dsn,
            listen_address=args.dev_listen_address,
            root_token=root_token,
            seal_type="dev",
            audit_file_dirs=dev.dev_audit_file_dirs(settings.audit_file_dirs),
        )

        async def create_demo(services: Services) -> None:
            await dev.ensure_demo(services.catalog, admin_dsn)

        runner = await start_server(settings, before_listen=create_demo)
        try:
            _print_dev_banner(settings, embedded)
            await stop.wait()
        finally:
            await runner.cleanup()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
    return 0


def _print_dev_banner(settings: Settings, embedded: Any) -> None:
    address = f"http://{settings.listen_address}"
    storage = (
        f"embedded PostgreSQL on {embedded.host}:{embedded.port} (removed on exit)"
        if embedded
        else "the PostgreSQL given by --dev-storage-dsn"
    )
    print(
        "==> broker server started in dev mode. Do not run dev mode in production.\n\n"
        f"    Api Address: {address}\n"
        f"    Root Token:  {settings.root_token}\n"
        f"    Storage:     {storage}\n"
        "    Seal:        unsealed (dev: the key derives from the root token)\n"
        "    Demo:        broker creds readonly   (database/creds/readonly)\n\n"
        f"    export BROKER_ADDR='{address}'\n"
        f"    export BROKER_TOKEN='{settings.root_token}'\n",
        flush=True,
    )


async def _migrate(args: argparse.Namespace) -> int:
    from broker.server.storage.connector import create_pool
    from broker.server.storage.stores import Stores

    settings = _settings(args.config)
    pool = await create_pool(settings.storage_dsn, min_size=1, max_size=2)
    try:
        applied = await Stores.open(pool).migrate()
    finally:
        await pool.close()
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
    return 0


async def _revoke_expired(args: argparse.Namespace) -> int:
    from broker.server.database.revocation import Revocations
    from broker.server.engines.registry import EngineRegistry
    from broker.server.storage.connector import create_pool
    from broker.server.storage.stores import Stores

    settings = _settings(args.config)
    pool = await create_pool(settings.storage_dsn, min_size=1, max_size=4)
    engines = EngineRegistry()
    try:
        stores = Stores.open(pool)
        await stores.migrate()
        await _unsealed_storage(settings, stores)
        result = await Revocations(stores.leases, stores.catalog, engines, settings).sweep()
    finally:
        await engines.close()
        await pool.close()
    print(f"revoked {result.revoked} lease(s), {result.failed} failed, in {result.seconds:.2f}s")
    for error in result.errors:
        print(f"  failed: {error}", file=sys.stderr)
    return 1 if result.failed else 0


async def _unsealed_storage(settings: Settings, stores: Any) -> Any:
    """Commands that run beside the server (from cron) read connection passwords, so they
    need the auto-unseal key; with Shamir keys only a running, unsealed server can."""
    from broker.server.security.seal import SealManager

    async def no_root_token() -> str:
        raise RuntimeError("a command never initialises storage")

    if settings.seal_type == "shamir":
        raise SystemExit(
            "error: storage is sealed with Shamir keys; this command needs an auto-unseal "
            '(seal_type = "file" or "env"), or leave revocation to the running server'
        )
    manager = SealManager(stores.keyring, settings.replace(auto_init=False), no_root_token)
    if not await manager.try_auto_unseal():
        raise SystemExit("error: storage is not initialized (PUT /v1/sys/init)")
    return stores


async def _reconcile(args: argparse.Namespace) -> int:
    """Exit 0: no orphans left; 1: orphans found and not (all) dropped."""
    from broker.server.database.reconcile import Reconciler
    from broker.server.engines.registry import EngineRegistry
    from broker.server.storage.connector import create_pool
    from broker.server.storage.stores import Stores

    settings = _settings(args.config)
    pool = await create_pool(settings.storage_dsn, min_size=1, max_size=4)
    engines = EngineRegistry()
    try:
        stores = await _unsealed_storage(settings, Stores.open(pool))
        report = await Reconciler(stores.catalog, stores.leases, engines).run(revoke=args.revoke)
    finally:
        await engines.close()
        await pool.close()
    revoked = set(report.revoked)
    for orphan in report.orphans:
        action = "revoked" if orphan in revoked else "orphan"
        print(f"{action}\t{orphan.mount}/{orphan.connection}\t{orphan.username}")
    for error in report.errors:
        print(f"error: {error}", file=sys.stderr)
    print(f"{len(report.orphans)} orphan(s), {len(revoked)} revoked", file=sys.stderr)
    return 1 if len(report.orphans) > len(revoked) or report.errors else 0


def _generate_seal_key() -> int:
    from broker.server.security.seal import generate_seal_key

    print(generate_seal_key())
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    """Exit 0: the chain holds; 1: the first break, by line number."""
    from broker.server.security.audit_chain import verify_lines

    with open(args.file, encoding="utf-8", errors="replace") as fh:
        count, broken = verify_lines(fh)
    if broken is None:
        print(f"{args.file}: {count} entries, chain intact")
        return 0
    print(f"{args.file}: chain broken at line {broken.line_number}: {broken.reason}")
    print(f"({count} entries before it verified)", file=sys.stderr)
    return 1
