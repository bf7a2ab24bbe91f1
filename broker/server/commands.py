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
COMMANDS = frozenset({"server", "migrate", "revoke-expired", "reconcile", "audit", "apply"})
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

    apply = sub.add_parser(
        "apply",
        help="make storage match the [declarative] section of the configuration",
        description=(
            "Creates and updates what the [declarative] section declares, deletes what it "
            "no longer declares where its kind is in prune, and reports drift (objects "
            "changed outside the file since it was last applied). Talks to storage, like "
            "reconcile, opening it with the auto-unseal key; the nodes apply the same "
            "section at every unseal. Exit 0: done (or, with --dry-run, planned); 1: some "
            "objects failed; with --detailed-exitcode, 2 when the dry run found changes. "
            "Example: broker apply --config /etc/broker/broker.toml --dry-run"
        ),
    )
    apply.add_argument("--config", help="TOML settings file with a [declarative] section")
    apply.add_argument(
        "--dry-run", action="store_true", help="print the plan and drift; change nothing"
    )
    apply.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="with --dry-run: exit 2 when storage differs from the file (for drift checks)",
    )


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
        help="check an audit log's keyed chain",
        description="Example: broker audit verify --config /etc/broker/broker.toml "
        "/var/log/broker/audit.log",
    )
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify",
        help="report the first edited, forged or missing line, and a truncated end",
        description=(
            "Checks every entry's MAC under the audit chain key and the checkpoints in "
            "storage, which it opens with the settings' auto-unseal key (seal_type file or "
            "env). With Shamir keys, ask the running server: GET /v1/sys/audit-verify/PATH. "
            "Exit 0: intact; 1: a break or truncation; 2: could not verify. Example: broker "
            "audit verify --config broker.toml audit.log.1 audit.log (rotated files, oldest "
            "first, are checked as one chain)"
        ),
    )
    verify.add_argument("files", nargs="+", metavar="FILE")
    verify.add_argument("--config", help="TOML settings file (storage_dsn and the seal)")
    verify.add_argument(
        "--target",
        help="the path the device writes to, when FILE is a copy or a rotated file: its "
        "newest checkpoint must be in the files (default: the last FILE's real path)",
    )
    verify.add_argument(
        "--node-id",
        help="the node that writes the file (default: the node_id setting); with it, a "
        "file emptied or replaced since the node's last checkpoint is reported",
    )
    verify.add_argument(
        "--structure-only",
        action="store_true",
        help="without the key: check the JSON and the sequence only. This proves nothing "
        "against someone who can write the file",
    )


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
    if args.command == "apply":
        return asyncio.run(_apply(args))
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


async def _unsealed_storage(
    settings: Settings, stores: Any, alternative: str = "or leave revocation to the running server"
) -> Any:
    """Commands that run beside the server (from cron) read connection passwords, so they
    need the auto-unseal key; with Shamir keys only a running, unsealed server can."""
    from broker.server.security.seal import SealManager

    async def no_root_token() -> str:
        raise RuntimeError("a command never initialises storage")

    if settings.seal_type == "shamir":
        raise SystemExit(
            "error: storage is sealed with Shamir keys; this command needs an auto-unseal "
            f'(seal_type = "file" or "env"), {alternative}'
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
        engines.install_id = await stores.nodes.install_id()
        report = await Reconciler(stores.catalog, stores.leases, engines).run(revoke=args.revoke)
    finally:
        await engines.close()
        await pool.close()
    revoked = set(report.revoked)
    for orphan in report.orphans:
        action = "revoked" if orphan in revoked else "orphan"
        print(f"{action}\t{orphan.mount}/{orphan.connection}\t{orphan.username}")
    for other in report.unmarked:  # not this install's: reported, never dropped
        print(f"unmarked\t{other.mount}/{other.connection}\t{other.username}")
    for error in report.errors:
        print(f"error: {error}", file=sys.stderr)
    print(
        f"{len(report.orphans)} orphan(s), {len(revoked)} revoked, "
        f"{len(report.unmarked)} unmarked look-alike(s) left alone",
        file=sys.stderr,
    )
    return 1 if len(report.orphans) > len(revoked) or report.errors else 0


async def _apply(args: argparse.Namespace) -> int:
    """One line per object (action, kind, API path, fields that differ, drift), then a
    summary on stderr. Exit 0: applied, or planned; 1: failures; 2: with
    ``--detailed-exitcode``, a dry run found changes to make."""
    from broker.exceptions import BrokerError
    from broker.server.assembly import declarative_targets
    from broker.server.bootstrap import apply, load_declarative, pending, summary

    try:
        settings = _settings(args.config)
        if not settings.declarative_file:
            raise ValueError(
                f"{args.config or 'the configuration'} has no [declarative] section "
                "(or set declarative_file)"
            )
        config = load_declarative(settings.declarative_file)
        if args.dry_run:
            # A plan changes nothing, the schema included: a drift check run with a newer
            # broker must not migrate the storage older nodes are running on.
            settings = settings.replace(apply_migrations=False)
        async with declarative_targets(settings) as targets:
            changes = await apply(targets, config, dry_run=args.dry_run)
    except BrokerError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:  # the settings, the section, a sealed storage
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for change in changes:
        print(change.line())
    what = "plan (dry run, nothing changed)" if args.dry_run else "applied"
    print(f"{what}: {summary(changes)}", file=sys.stderr)
    if any(change.error for change in changes):
        return 1
    if args.dry_run and args.detailed_exitcode and pending(changes):
        return 2
    return 0


def _generate_seal_key() -> int:
    from broker.server.security.seal import generate_seal_key

    print(generate_seal_key())
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    """Exit 0: the chain holds; 1: the first break, or a truncation; 2: not verified.

    MACs need the audit chain key, which lives in the sealed keyring: so this opens storage
    with the auto-unseal key, as ``revoke-expired`` does, and reads the checkpoints there.
    Without settings it refuses unless ``--structure-only`` says a keyless check is meant,
    so that no script takes a structural pass for a verified log."""
    from broker.server.security.audit_chain import verify_lines

    if args.structure_only:
        lines = _read_audit_files(args.files)
        report = verify_lines(lines)
        print(
            "structure only: the MACs were not checked (no key), so an edited, forged or "
            "truncated log can pass; verify with --config or GET sys/audit-verify/PATH"
        )
        return _print_audit_report(args.files, report)
    try:
        return asyncio.run(_audit_verify_keyed(args))
    except SystemExit as exc:  # sealed with Shamir keys, or not initialised
        print(exc.code, file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(
            "the keyed check needs storage_dsn and an auto-unseal seal (--config or "
            "BROKER_* variables); with Shamir keys use GET /v1/sys/audit-verify/PATH on the "
            "running server, or --structure-only for a keyless check of the structure",
            file=sys.stderr,
        )
        return 2


def _read_audit_files(files: list[str]) -> list[str]:
    lines: list[str] = []
    for name in files:
        with open(name, encoding="utf-8", errors="replace") as fh:
            lines.extend(fh.read().splitlines())
    return lines


async def _audit_verify_keyed(args: argparse.Namespace) -> int:
    from broker.exceptions import BrokerError
    from broker.server.security.audit_chain import ChainKeys, Checkpoint, verify_lines
    from broker.server.storage.connector import create_pool
    from broker.server.storage.stores import Stores

    settings = _settings(args.config)
    lines = _read_audit_files(args.files)
    target = _real_path(args.target or args.files[-1])
    node_id = args.node_id or settings.node_id
    pool = await create_pool(settings.storage_dsn, min_size=1, max_size=2)
    try:
        stores = await _unsealed_storage(
            settings, Stores.open(pool), "or ask the running server: GET sys/audit-verify/PATH"
        )
        store = stores.audit
        checkpoints = [Checkpoint(*row) for row in await store.audit_checkpoints_of_target(target)]
        found = {c for c in map(_chain_of, lines) if c is not None}
        chains = found - {c.chain for c in checkpoints}
        # Checkpoints of chains the files hold, recorded under another path (a renamed file).
        checkpoints += [
            Checkpoint(*row) for row in await store.audit_checkpoints_of_chains(sorted(chains))
        ]
        latest_row = await store.latest_audit_checkpoint(target, node_id) if node_id else None
        keys = ChainKeys(stores.connector.barrier)
        latest = None if latest_row is None else Checkpoint(*latest_row)
        report = verify_lines(lines, keys, checkpoints, latest)
    except BrokerError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    finally:
        await pool.close()
    if not node_id:
        print(
            "note: no node id (--node-id or the node_id setting): a file emptied or replaced "
            "since its last checkpoint is not detected",
            file=sys.stderr,
        )
    return _print_audit_report(args.files, report)


def _real_path(path: str) -> str:
    """Where checkpoints name a file: the real path the server wrote to."""
    return os.path.realpath(path)


def _chain_of(line: str) -> str | None:
    import json

    try:
        entry = json.loads(line)
    except ValueError:
        return None
    chain = entry.get("chain") if isinstance(entry, dict) else None
    return chain if isinstance(chain, str) else None


def _print_audit_report(files: list[str], report: Any) -> int:
    name = " + ".join(files)
    if report.broken is not None:
        print(f"{name}: chain broken at line {report.broken.line_number}: {report.broken.reason}")
        print(f"({report.entries} entries before it verified)", file=sys.stderr)
        return 1
    if report.truncated is not None:
        print(f"{name}: truncated: {report.truncated}")
        return 1
    what = "MACs and checkpoints verified" if report.keyed else "structure intact"
    print(
        f"{name}: {report.entries} entries, chain intact ({what}; "
        f"{report.checkpoints_checked} checkpoint(s) matched)"
    )
    if report.legacy_entries:
        print(
            f"note: {report.legacy_entries} entries predate the keyed chain (plain SHA-256): "
            "whoever can write the file could have rewritten them"
        )
    return 0
