"""``broker role`` and ``broker connection``: list, read, write and delete for admins.

Writes take ``key=value`` pairs as the vault CLI does: a repeated key makes a list,
``key=@FILE`` reads the value from a file and ``key=-`` from standard input, so a password
or a long statement need not sit in argv (which ``ps`` shows to every user).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from broker.client.http import BrokerClient, ClientError

#: Fields that are lists in the API: a single value still goes as a one-item list.
_LIST_FIELDS = {
    "creation_statements",
    "revocation_statements",
    "rollback_statements",
    "renew_statements",
    "allowed_roles",
    "root_rotation_statements",
}
_PATHS = {"role": "roles", "connection": "config"}


def parse_pairs(pairs: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {pair!r}")
        if value == "-":
            value = sys.stdin.read().rstrip("\n")
        elif value.startswith("@"):
            with open(value[1:], encoding="utf-8") as fh:
                value = fh.read().rstrip("\n")
        if key in body:
            previous = body[key]
            body[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        elif key in _LIST_FIELDS:
            body[key] = [value]
        else:
            body[key] = value
    return body


def run(args: argparse.Namespace) -> int:
    client = BrokerClient.from_env()
    base = f"{args.mount}/{_PATHS[args.command]}"
    action = args.admin_command
    if action == "list":
        try:
            keys = client.request("GET", f"{base}?list=true")["data"]["keys"]
        except ClientError as exc:
            if exc.status != 404:
                raise
            keys = []
        print("\n".join(keys))
        return 0
    path = f"{base}/{args.name}"
    if action == "read":
        try:
            data = client.request("GET", path)["data"]
        except ClientError as exc:
            if exc.status == 404:
                print(f"no {args.command} {args.name!r} at {base}", file=sys.stderr)
                return 1
            raise
        if args.format == "json":
            print(json.dumps(data, indent=2))
        else:
            _print_table(data)
        return 0
    if action == "delete":
        if getattr(args, "force", False):
            # The connection's live leases are revoked first (synchronously); the broker
            # refuses the delete, naming them, if any cannot be revoked.
            reply = client.request("DELETE", f"{path}?force=true")
            revoked = ((reply or {}).get("data") or {}).get("revoked_leases", 0)
            print(f"revoked {revoked} lease(s)")
        else:
            client.request("DELETE", path)
        print(f"deleted {path}")
        return 0
    response = client.request("PUT", path, parse_pairs(args.pairs))
    for warning in (response or {}).get("warnings") or []:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {path}")
    return 0


def _print_table(data: dict[str, Any]) -> None:
    table = Table(show_header=True, header_style="bold")
    table.add_column("Key")
    table.add_column("Value", overflow="fold")
    for key, value in sorted(data.items()):
        text = value if isinstance(value, str) else json.dumps(value)
        table.add_row(key, text)
    Console().print(table)


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    examples = {
        "role": "broker role write readonly db_name=demo default_ttl=1h "
        "creation_statements=@create.sql",
        "connection": "broker connection write demo plugin_name=postgresql-database-plugin "
        "connection_url='postgresql://{{username}}:{{password}}@db:5432/app' "
        "username=broker password=- allowed_roles=readonly   (password from stdin)",
    }
    for noun, example in examples.items():
        parser = sub.add_parser(
            noun,
            help=f"list, read, write or delete database {noun}s (admins)",
            description=f"Example: {example}",
        )
        actions = parser.add_subparsers(dest="admin_command", required=True)
        listing = actions.add_parser(
            "list", help=f"the {noun}s of a mount", description=f"Example: broker {noun} list"
        )
        listing.add_argument("--mount", default="database")
        read = actions.add_parser(
            "read",
            help=f"one {noun}",
            description=f"Example: broker {noun} read NAME --format json",
        )
        read.add_argument("name")
        read.add_argument("--mount", default="database")
        read.add_argument("--format", choices=("table", "json"), default="table")
        write = actions.add_parser(
            "write",
            help=f"create or update a {noun}: key=value, key=@file, key=- (stdin)",
            description=f"Example: {example}",
        )
        write.add_argument("name")
        write.add_argument("pairs", nargs="*", metavar="KEY=VALUE")
        write.add_argument("--mount", default="database")
        delete = actions.add_parser(
            "delete", help=f"delete a {noun}", description=f"Example: broker {noun} delete NAME"
        )
        delete.add_argument("name")
        delete.add_argument("--mount", default="database")
        if noun == "connection":
            delete.add_argument(
                "--force",
                action="store_true",
                help="revoke the connection's live leases first (without it, a connection "
                "with live leases is not deleted)",
            )
