"""CLI commands of the security work: AppRole login, ``operator`` (init, unseal, seal) and
``audit verify``. Kept apart from cli.py, which only parses and dispatches to them."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys

from broker.client.http import BrokerClient, save_token
from broker.server.security.audit import verify_lines
from broker.server.security.seal import generate_seal_key


def login_approle(args: argparse.Namespace) -> int:
    """The role ID may come from argv or ``BROKER_ROLE_ID``; the secret ID only from
    ``BROKER_SECRET_ID`` or the prompt, never argv (``ps`` shows argv to every user)."""
    role_id = args.role_id or os.environ.get("BROKER_ROLE_ID", "")
    if not role_id:
        role_id = input("Role ID: ").strip()
    secret_id = os.environ.get("BROKER_SECRET_ID") or getpass.getpass("Secret ID (hidden): ")
    client = BrokerClient(BrokerClient.from_env().address, "")
    reply = client.request(
        "POST", f"auth/{args.path.strip('/')}/login", {"role_id": role_id, "secret_id": secret_id}
    )
    auth = reply["auth"]
    path = save_token(auth["client_token"])
    print(
        f"logged in with AppRole (policies: {', '.join(auth['policies'])}; "
        f"ttl {auth['lease_duration']}s); token kept in {path}"
    )
    return 0


def operator(args: argparse.Namespace) -> int:
    client = BrokerClient.from_env()
    if args.operator_command == "generate-seal-key":
        print(generate_seal_key())
        return 0
    if args.operator_command == "init":
        reply = client.request(
            "PUT",
            "sys/init",
            {"secret_shares": args.key_shares, "secret_threshold": args.key_threshold},
        )
        if args.format == "json":
            print(json.dumps(reply, indent=2))
            return 0
        for number, key in enumerate(reply["keys"], start=1):
            print(f"Unseal Key {number}: {key}")
        print(f"\nInitial Root Token: {reply['root_token']}\n")
        print(
            f"Give each key to a different operator: any {args.key_threshold} of them "
            "unseal the broker after every restart. Revoke the root token once policies "
            "and an auth method are in place."
        )
        return 0
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


def audit_verify(args: argparse.Namespace) -> int:
    """Exit 0: the chain holds; 1: the first break, by line number."""
    with open(args.file, encoding="utf-8", errors="replace") as fh:
        count, broken = verify_lines(fh)
    if broken is None:
        print(f"{args.file}: {count} entries, chain intact")
        return 0
    print(f"{args.file}: chain broken at line {broken.line_number}: {broken.reason}")
    print(f"({count} entries before it verified)", file=sys.stderr)
    return 1


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    op = sub.add_parser(
        "operator",
        help="initialise, unseal and seal the broker",
        description="Example: broker operator init --key-shares 5 --key-threshold 3; "
        "broker operator unseal (the key is read from the prompt)",
    )
    op_sub = op.add_subparsers(dest="operator_command", required=True)
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
    op_sub.add_parser(
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
