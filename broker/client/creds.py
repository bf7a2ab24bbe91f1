"""``broker creds``: issue a database login and print it as a table, JSON, shell
variables, a DSN or a pgpass line, revoking it if it cannot be printed."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
from typing import Any

from broker.client import session_env
from broker.client.http import BrokerClient


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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


def run(args: argparse.Namespace) -> int:
    """Issue a login and print it. Once issued, the lease is handed over only by being
    printed: any failure before that (an answer that cannot be formatted, a closed
    stdout, Ctrl-C) revokes it, so no login outlives the error for its whole TTL."""
    client = BrokerClient.from_env()
    issued = client.creds(args.mount, args.role)
    try:
        text = format_creds(args.format, issued)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BaseException:
        client.revoke_unused(issued["lease_id"])
        raise
    return 0


def format_creds(form: str, issued: dict[str, Any]) -> str:
    """Built from the creds answer alone (``data.connection`` says where the database
    is): a token that may only read its role's creds can use every format."""
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
