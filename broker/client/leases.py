"""``broker lease``: look up, renew, revoke or list leases through ``sys/leases``."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

from broker.client import lease_views
from broker.client.http import BrokerClient, ClientError


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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


def run(args: argparse.Namespace) -> int:
    client = BrokerClient.from_env()
    command = args.lease_command
    if command == "lookup":
        data = client.request("PUT", "sys/leases/lookup", {"lease_id": args.lease_id})["data"]
        print(json.dumps(data, indent=2))
    elif command == "renew":
        _renew(client, args.lease_id, args.increment)
    elif command == "revoke":
        if args.prefix and not args.force:
            return lease_views.revoke_prefix(client, args.lease_id)
        if args.prefix:
            client.request("PUT", f"sys/leases/revoke-force/{args.lease_id}")
        else:
            client.request("PUT", "sys/leases/revoke", {"lease_id": args.lease_id})
        print(f"revoked {args.lease_id}{' (prefix)' if args.prefix else ''}")
    elif command == "list":
        return _list(client, args.prefix, args.format)
    return 0


def _renew(client: BrokerClient, lease_id: str, increment: str) -> None:
    body: dict[str, Any] = {"lease_id": lease_id}
    if increment:
        body["increment"] = increment
    response = client.request("PUT", "sys/leases/renew", body)
    print(f"{response['lease_id']} renewed: {response['lease_duration']}s left")
    for warning in response.get("warnings") or []:
        print(f"warning: {warning}", file=sys.stderr)


def _list(client: BrokerClient, prefix: str, form: str) -> int:
    if form == "table":
        return lease_views.print_table(client, prefix)
    with contextlib.suppress(ClientError):
        keys = client.request("GET", f"sys/leases/lookup/{prefix}?list=true")["data"]["keys"]
        print("\n".join(keys))
        return 0
    print("no leases", file=sys.stderr)
    return 0
