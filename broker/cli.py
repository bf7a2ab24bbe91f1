"""The ``broker`` command's root: builds the parser from each command group's
``add_parsers``, dispatches to the group's ``run``, and turns errors into exit codes.

The server-side commands (broker.server.commands) import the server only when they run,
so the client commands never pay for storage, engines or aiohttp.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from broker import logs
from broker.client import (
    admin,
    agent,
    completion,
    creds,
    exec_session,
    leases,
    login,
    operator,
)
from broker.client.http import ClientError
from broker.server import commands as server_commands

EPILOG = """examples:
  broker server --dev
  broker creds readonly --format dsn
  broker lease list database/creds/readonly/
  broker lease revoke --prefix database/creds/readonly/
  broker revoke-expired --config broker.toml
  broker operator init --key-shares 5 --key-threshold 3
  broker login --method approle --role-id ROLE_ID
  broker audit verify --config broker.toml /var/log/broker/audit.log
  broker apply --config broker.toml --dry-run
"""

#: The client command groups, by top-level command (server commands: server_commands.handles).
_CLIENT_RUNS: dict[str, Callable[[argparse.Namespace], int]] = {
    "creds": creds.run,
    "login": login.run,
    "status": login.run,
    "agent": agent.run,
    "completion": completion.run,
    "exec": exec_session.run,
    "connect": exec_session.run,
    "lease": leases.run,
    "operator": operator.run,
    "role": admin.run,
    "connection": admin.run,
}


def build_parser() -> argparse.ArgumentParser:
    """The groups add their commands in the order ``broker --help`` lists them."""
    parser = argparse.ArgumentParser(
        prog="broker",
        description="Short-lived database logins behind Vault's HTTP API.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    server_commands.add_parsers(sub)
    creds.add_parsers(sub)
    login.add_parsers(sub)
    agent.add_parsers(sub)
    completion.add_parsers(sub)
    exec_session.add_parsers(sub)
    leases.add_parsers(sub)
    operator_commands = operator.add_parsers(sub)
    server_commands.add_host_tool_parsers(sub, operator_commands)
    admin.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure("INFO", "text")
    try:
        if server_commands.handles(args):
            return server_commands.run(args)
        return _CLIENT_RUNS[args.command](args)
    except (ClientError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
