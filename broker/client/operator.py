"""``broker operator`` over HTTP: init, unseal, seal and seal-status. (``operator
generate-seal-key`` and ``audit verify`` run on the broker's host with the server's code,
so broker.server.commands adds them.)"""

from __future__ import annotations

import argparse
import getpass
import json

from broker.client.http import BrokerClient


def add_parsers(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    """Returns the ``operator`` subcommands, for the server side to add its own."""
    op = sub.add_parser(
        "operator",
        help="initialise, unseal and seal the broker",
        description="Example: broker operator init --key-shares 5 --key-threshold 3; "
        "broker operator unseal (the key is read from the prompt)",
    )
    op_sub: argparse._SubParsersAction = op.add_subparsers(  # type: ignore[type-arg]
        dest="operator_command", required=True
    )
    init = op_sub.add_parser(
        "init",
        help="initialise storage: unseal keys and a root token",
        description="Example: broker operator init --key-shares 5 --key-threshold 3",
    )
    init.add_argument("--key-shares", type=int, default=5)
    init.add_argument("--key-threshold", type=int, default=3)
    init.add_argument("--format", choices=("text", "json"), default="text")
    unseal = op_sub.add_parser(
        "unseal",
        help="give one unseal key (read from the prompt)",
        description="Example: broker operator unseal   (once per key holder)",
    )
    unseal.add_argument("--reset", action="store_true", help="forget the keys given so far")
    op_sub.add_parser(
        "seal",
        help="seal this node: it serves nothing until unsealed",
        description="Example: BROKER_ADDR=https://node-2:8200 broker operator seal",
    )
    op_sub.add_parser(
        "seal-status",
        help="sealed or not, and the unseal progress",
        description="Example: broker operator seal-status",
    )
    return op_sub


def run(args: argparse.Namespace) -> int:
    client = BrokerClient.from_env()
    if args.operator_command == "init":
        return _init(client, args.key_shares, args.key_threshold, args.format)
    if args.operator_command == "unseal":
        key = getpass.getpass("Unseal Key (hidden): ") if not args.reset else ""
        status = client.request("PUT", "sys/unseal", {"key": key, "reset": args.reset})
    elif args.operator_command == "seal":
        client.request("PUT", "sys/seal")
        status = client.request("GET", "sys/seal-status")
    else:
        status = client.request("GET", "sys/seal-status")
    print(
        f"Sealed: {str(status['sealed']).lower()}  Initialized: "
        f"{str(status['initialized']).lower()}  Progress: {status['progress']}/{status['t']}  "
        f"Seal type: {status['type']}"
    )
    return 0


def _init(client: BrokerClient, shares: int, threshold: int, form: str) -> int:
    reply = client.request(
        "PUT", "sys/init", {"secret_shares": shares, "secret_threshold": threshold}
    )
    if form == "json":
        print(json.dumps(reply, indent=2))
        return 0
    for number, key in enumerate(reply["keys"], start=1):
        print(f"Unseal Key {number}: {key}")
    print(f"\nInitial Root Token: {reply['root_token']}\n")
    print(
        f"Give each key to a different operator: any {threshold} of them "
        "unseal the broker after every restart. Revoke the root token once policies "
        "and an auth method are in place."
    )
    return 0
