"""The ``broker`` command: the server, its operator commands, and a developer client."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shlex
import signal
import sys
from collections.abc import Callable
from typing import Any

from broker import logs
from broker.client import admin as cli_admin
from broker.client import lease_views
from broker.client import operator as cli_security
from broker.client.http import BrokerClient, ClientError
from broker.server.settings import Settings

EPILOG = """examples:
  broker server --dev
  broker creds readonly --format dsn
  broker lease list database/creds/readonly/
  broker lease revoke --prefix database/creds/readonly/
  broker revoke-expired --config broker.toml
  broker operator init --key-shares 5 --key-threshold 3
  broker login --method approle --role-id ROLE_ID
  broker audit verify /var/log/broker/audit.log
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="broker",
        description="Short-lived database logins behind Vault's HTTP API.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

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

    creds = sub.add_parser(
        "creds",
        help="issue a database login for ROLE",
        description="Example: broker creds readonly --format env. Every format needs only "
        "read on MOUNT/creds/ROLE (the answer says where the database is); a login that "
        "cannot be printed is revoked.",
    )
    creds.add_argument("role")
    creds.add_argument("--mount", default="database")
    creds.add_argument(
        "--format", choices=("table", "json", "env", "dsn", "pgpass"), default="table"
    )

    login = sub.add_parser(
        "login",
        help="check a token and keep it in ~/.broker-token (mode 0600)",
        description="Example: broker login (the token is read from the prompt, not argv)",
    )
    login.add_argument("token", nargs="?", help="better omitted: argv shows up in ps")
    login.add_argument(
        "--method",
        choices=("token", "approle"),
        default="token",
        help="approle: role ID from --role-id or BROKER_ROLE_ID, secret ID from "
        "BROKER_SECRET_ID or the prompt",
    )
    login.add_argument("--role-id", default="", help="AppRole role ID")
    login.add_argument("--path", default="approle", help="where AppRole is enabled under auth/")
    sub.add_parser(
        "status",
        help="the server's health, node and peers",
        description="Example: BROKER_ADDR=https://broker:8200 broker status",
    )

    agent = sub.add_parser(
        "agent",
        help="keep credential files fresh for programs that cannot call HTTP",
        description="Example: broker agent --config agent.toml (renews; re-issues only near "
        "max_ttl, then revokes what it replaced and runs the reload command)",
    )
    agent.add_argument("--config", required=True, help="TOML with [[template]] entries")

    completion = sub.add_parser(
        "completion",
        help="print a shell completion script",
        description='Example: eval "$(broker completion bash)"',
    )
    completion.add_argument("shell", choices=("bash",))

    exec_ = sub.add_parser(
        "exec",
        help="run a command with a fresh login in its environment; revoke it when it exits",
        description="Example: broker exec readonly -- psql -c 'select 1'. Sets PG*/MYSQL_* "
        "and DATABASE_URL, renews the lease while the command runs, forwards signals, and "
        "exits with the command's status.",
    )
    exec_.add_argument("role")
    exec_.add_argument("--mount", default="database")
    exec_.add_argument(
        "command_argv", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command to run"
    )
    connect = sub.add_parser(
        "connect",
        help="open psql or mysql with a fresh login, revoked when the session ends",
        description="Example: broker connect readonly (arguments after -- go to the client)",
    )
    connect.add_argument("role")
    connect.add_argument("--mount", default="database")
    connect.add_argument("client_args", nargs=argparse.REMAINDER, help="-- ARGS for psql/mysql")

    lease = sub.add_parser(
        "lease",
        help="look up, renew, revoke or list leases",
        description="Example: broker lease renew LEASE_ID --increment 1h",
    )
    lease_sub = lease.add_subparsers(dest="lease_command", required=True)
    lookup = lease_sub.add_parser(
        "lookup",
        help="show a lease",
        description="Example: broker lease lookup database/creds/readonly/AbC123",
    )
    lookup.add_argument("lease_id")
    renew = lease_sub.add_parser(
        "renew",
        help="extend a lease",
        description="Example: broker lease renew database/creds/readonly/AbC123 --increment 1h",
    )
    renew.add_argument("lease_id")
    renew.add_argument("--increment", default="", help="seconds or duration, e.g. 1h")
    revoke = lease_sub.add_parser(
        "revoke",
        help="revoke a lease (or every lease under a prefix)",
        description="Example: broker lease revoke --prefix database/creds/readonly/",
    )
    revoke.add_argument("lease_id")
    revoke.add_argument("--prefix", action="store_true", help="treat LEASE_ID as a prefix")
    revoke.add_argument(
        "--force",
        action="store_true",
        help="with --prefix: forget the leases even if revocation fails",
    )
    listing = lease_sub.add_parser(
        "list",
        help="list leases under a prefix, with time left",
        description="Example: broker lease list database/creds/readonly/ --format plain",
    )
    listing.add_argument("prefix", nargs="?", default="")
    listing.add_argument(
        "--format",
        choices=("table", "plain"),
        default="table",
        help="plain: one key per line, for scripts",
    )
    cli_security.add_parsers(sub)
    cli_admin.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure("INFO", "text")
    try:
        if args.command == "server":
            with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
                return runner.run(_serve(args))
        if args.command == "migrate":
            return asyncio.run(_migrate(args))
        if args.command == "revoke-expired":
            return asyncio.run(_revoke_expired(args))
        if args.command == "reconcile":
            return asyncio.run(_reconcile(args))
        if args.command == "creds":
            return _creds(args)
        if args.command == "lease":
            return _lease(args)
        if args.command in ("exec", "connect"):
            return _exec(args)
        if args.command == "login":
            if args.method == "approle":
                return cli_security.login_approle(args)
            return _login(args)
        if args.command in ("role", "connection"):
            return cli_admin.run(args)
        if args.command == "operator":
            return cli_security.operator(args)
        if args.command == "audit":
            return cli_security.audit_verify(args)
        if args.command == "completion":
            return _completion(args.shell)
        if args.command == "agent":
            from broker.client.agent import run_agent

            return asyncio.run(run_agent(args.config))
        if args.command == "status":
            return _status()
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1


# -- server-side commands ------------------------------------------------------------------


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
    from broker.server import dev
    from broker.server.api.context import Services
    from broker.server.assembly import start_server
    from broker.server.secrets_gen import token
    from broker.server.storage.embedded import EmbeddedPostgres

    stop = _stop_on_signal()
    if not args.dev:
        settings = _settings(args.config)
        logs.configure(args.log_level or settings.log_level, args.log_format or settings.log_format)
        runner = await start_server(settings)
        print(f"broker listening on {settings.listen_address}", flush=True)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
        return 0

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
            await dev.ensure_demo(services.storage, services.catalog, admin_dsn)

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
    from broker.server.storage.migrations import apply_migrations
    from broker.server.storage.store import create_pool

    settings = _settings(args.config)
    pool = await create_pool(settings.storage_dsn, min_size=1, max_size=2)
    try:
        applied = await apply_migrations(pool)
    finally:
        await pool.close()
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
    return 0


async def _revoke_expired(args: argparse.Namespace) -> int:
    from broker.server.database.leases import LeaseManager
    from broker.server.engines.registry import EngineRegistry
    from broker.server.storage.migrations import apply_migrations
    from broker.server.storage.store import Storage, create_pool

    settings = _settings(args.config)
    pool = await create_pool(settings.storage_dsn, min_size=1, max_size=4)
    engines = EngineRegistry()
    try:
        await apply_migrations(pool)
        storage = await _unsealed_storage(settings, Storage(pool))
        result = await LeaseManager(storage, engines, settings).sweep()
    finally:
        await engines.close()
        await pool.close()
    print(f"revoked {result.revoked} lease(s), {result.failed} failed, in {result.seconds:.2f}s")
    for error in result.errors:
        print(f"  failed: {error}", file=sys.stderr)
    return 1 if result.failed else 0


async def _unsealed_storage(settings: Settings, storage: Any) -> Any:
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
    manager = SealManager(storage, settings.replace(auto_init=False), no_root_token)
    if not await manager.try_auto_unseal():
        raise SystemExit("error: storage is not initialized (PUT /v1/sys/init)")
    return storage


async def _reconcile(args: argparse.Namespace) -> int:
    """Exit 0: no orphans left; 1: orphans found and not (all) dropped."""
    from broker.server.database.reconcile import Reconciler
    from broker.server.engines.registry import EngineRegistry
    from broker.server.storage.store import Storage, create_pool

    settings = _settings(args.config)
    pool = await create_pool(settings.storage_dsn, min_size=1, max_size=4)
    engines = EngineRegistry()
    try:
        storage = await _unsealed_storage(settings, Storage(pool))
        report = await Reconciler(storage, engines).run(revoke=args.revoke)
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


# -- client commands -----------------------------------------------------------------------


def _creds(args: argparse.Namespace) -> int:
    """Issue a login and print it. Once issued, the lease is handed over only by being
    printed: any failure before that (an answer that cannot be formatted, a closed
    stdout, Ctrl-C) revokes it, so no login outlives the error for its whole TTL."""
    client = BrokerClient.from_env()
    issued = client.creds(args.mount, args.role)
    try:
        text = _format_creds(args.format, issued)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BaseException:
        client.revoke_unused(issued["lease_id"])
        raise
    return 0


def _format_creds(form: str, issued: dict[str, Any]) -> str:
    """Built from the creds answer alone (``data.connection`` says where the database
    is): a token that may only read its role's creds can use every format."""
    from broker.client import session_env

    username, password = issued["data"]["username"], issued["data"]["password"]
    duration = int(issued["lease_duration"])
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=duration)
    if form == "json":
        shown: dict[str, Any] = {
            "lease_id": issued["lease_id"],
            "lease_duration": duration,
            "expires_at": expires.isoformat(),
            "username": username,
            "password": password,
        }
        if isinstance(issued["data"].get("connection"), dict):
            shown["connection"] = issued["data"]["connection"]
        return json.dumps(shown, indent=2)
    if form == "table":
        rows = [
            ("lease_id", issued["lease_id"]),
            ("lease_duration", f"{duration}s"),
            ("expires_at", expires.strftime("%Y-%m-%d %H:%M:%S UTC")),
            ("username", username),
            ("password", password),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
    endpoint = session_env.endpoint_of(issued)
    if form == "dsn":
        return session_env.database_url(endpoint, username, password)
    if form == "pgpass":
        return session_env.pgpass_line(endpoint, username, password)
    env = session_env.environment(endpoint, username, password)
    env["BROKER_LEASE_ID"] = issued["lease_id"]
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())


def _login(args: argparse.Namespace) -> int:
    import getpass

    from broker.client.http import save_token

    token = args.token or getpass.getpass("Token (will be hidden): ").strip()
    client = BrokerClient(BrokerClient.from_env().address, token)
    data = client.request("GET", "auth/token/lookup-self")["data"]
    path = save_token(token)
    print(
        f"logged in as {data['display_name']} (policies: {', '.join(data['policies'])}); "
        f"token kept in {path}"
    )
    return 0


def _status() -> int:
    client = BrokerClient.from_env()
    health = client.request("GET", "sys/health")
    rows = [
        ("address", client.address),
        ("version", health["version"]),
        ("sealed", str(health["sealed"]).lower()),
        ("node", health["node_id"]),
        ("storage", health["storage"]),
    ]
    try:
        nodes = client.request("GET", "sys/ha-status")["data"]["nodes"]
        rows.append(("nodes", ", ".join(n["node_id"] for n in nodes)))
    except ClientError:
        pass  # needs a token; health does not
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))
    return 0


def _exec(args: argparse.Namespace) -> int:
    from broker.client.exec_session import run_with_credentials

    def strip(argv: list[str]) -> list[str]:
        return argv[1:] if argv[:1] == ["--"] else argv

    if args.command == "exec":
        argv = strip(args.command_argv)
        if not argv:
            print("error: give the command after --", file=sys.stderr)
            return 2
        return asyncio.run(
            run_with_credentials(BrokerClient.from_env(), args.mount, args.role, argv, [])
        )
    return asyncio.run(
        run_with_credentials(
            BrokerClient.from_env(), args.mount, args.role, None, strip(args.client_args)
        )
    )


def _lease(args: argparse.Namespace) -> int:
    client = BrokerClient.from_env()
    command = args.lease_command
    if command == "lookup":
        data = client.request("PUT", "sys/leases/lookup", {"lease_id": args.lease_id})["data"]
        print(json.dumps(data, indent=2))
    elif command == "renew":
        body: dict[str, Any] = {"lease_id": args.lease_id}
        if args.increment:
            body["increment"] = args.increment
        response = client.request("PUT", "sys/leases/renew", body)
        print(f"{response['lease_id']} renewed: {response['lease_duration']}s left")
        for warning in response.get("warnings") or []:
            print(f"warning: {warning}", file=sys.stderr)
    elif command == "revoke":
        if args.prefix and not args.force:
            return lease_views.revoke_prefix(client, args.lease_id)
        if args.prefix:
            client.request("PUT", f"sys/leases/revoke-force/{args.lease_id}")
        else:
            client.request("PUT", "sys/leases/revoke", {"lease_id": args.lease_id})
        print(f"revoked {args.lease_id}{' (prefix)' if args.prefix else ''}")
    elif command == "list":
        if args.format == "table":
            return lease_views.print_table(client, args.prefix)
        with contextlib.suppress(ClientError):
            keys = client.request("GET", f"sys/leases/lookup/{args.prefix}?list=true")["data"][
                "keys"
            ]
            print("\n".join(keys))
            return 0
        print("no leases", file=sys.stderr)
    return 0


def _completion(shell: str) -> int:
    """A bash completion script made from the parser itself, so it cannot drift."""
    parser = build_parser()
    commands: dict[str, list[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words = [o for a in sub._actions for o in a.option_strings]
                for inner in sub._actions:
                    if isinstance(inner, argparse._SubParsersAction):
                        words += list(inner.choices)
                commands[name] = words
    cases = "\n".join(
        f'        {name}) opts="{" ".join(words)}" ;;' for name, words in commands.items()
    )
    print(f"""# bash completion for broker: eval "$(broker completion bash)"
_broker() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}"
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "{" ".join(commands)}" -- "$cur"))
        return
    fi
    local opts=""
    case "${{COMP_WORDS[1]}}" in
{cases}
    esac
    COMPREPLY=($(compgen -W "$opts" -- "$cur"))
}}
complete -F _broker broker""")
    return 0
