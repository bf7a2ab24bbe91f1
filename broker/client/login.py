"""``broker login`` (a token, or AppRole) and ``broker status``: who the client is and
which broker it talks to."""

from __future__ import annotations

import argparse
import getpass
import os

from broker.client.http import BrokerClient, ClientError, save_token


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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


def run(args: argparse.Namespace) -> int:
    if args.command == "status":
        return _status()
    if args.method == "approle":
        return _login_approle(args)
    return _login_token(args)


def _login_token(args: argparse.Namespace) -> int:
    token = args.token or getpass.getpass("Token (will be hidden): ").strip()
    client = BrokerClient(BrokerClient.from_env().address, token)
    data = client.request("GET", "auth/token/lookup-self")["data"]
    path = save_token(token)
    print(
        f"logged in as {data['display_name']} (policies: {', '.join(data['policies'])}); "
        f"token kept in {path}"
    )
    return 0


def _login_approle(args: argparse.Namespace) -> int:
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
