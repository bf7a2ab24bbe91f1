"""``broker exec`` and ``broker connect``: run a program with a fresh login in its
environment, keep the lease renewed while it runs, and revoke it when it exits.

The password travels only in the child's environment (``PGPASSWORD``/``MYSQL_PWD``), never
on a command line where ``ps`` would show it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from broker.client import BrokerClient, ClientError
from broker.session_env import Endpoint, endpoint_of, environment

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def client_command(endpoint: Endpoint, username: str, extra: list[str]) -> list[str]:
    """psql or mysql for ``broker connect``; the password comes from the environment."""
    if endpoint.kind == "postgresql":
        return ["psql", *extra]
    args = ["mysql", "-h", endpoint.host, "-P", endpoint.port, "-u", username]
    if endpoint.database:
        args.append(endpoint.database)
    return [*args, *extra]


async def run_with_credentials(
    client: BrokerClient, mount: str, role: str, argv: list[str] | None, extra: list[str]
) -> int:
    """Run ``argv`` (or the database's own client when None) and return its exit status
    (128 + signal number when a signal ended it)."""
    issued = await asyncio.to_thread(client.request, "GET", f"{mount}/creds/{role}")
    lease_id = issued["lease_id"]
    username, password = issued["data"]["username"], issued["data"]["password"]
    try:
        endpoint = await asyncio.to_thread(endpoint_of, client, mount, role)
        command = argv if argv is not None else client_command(endpoint, username, extra)
        env = {
            **os.environ,
            **environment(endpoint, username, password),
            "BROKER_LEASE_ID": lease_id,
        }
        try:
            proc = await asyncio.create_subprocess_exec(*command, env=env)
        except OSError as exc:
            print(f"error: cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
            return 127
        loop = asyncio.get_running_loop()
        for sig in _FORWARDED:
            loop.add_signal_handler(sig, _forward, proc, sig)
        renewer = asyncio.create_task(_keep_renewed(client, lease_id, issued["lease_duration"]))
        try:
            code = await proc.wait()
        finally:
            renewer.cancel()
            for sig in _FORWARDED:
                loop.remove_signal_handler(sig)
        return code if code >= 0 else 128 - code
    finally:
        await asyncio.to_thread(_revoke, client, lease_id)


def _forward(proc: Any, sig: signal.Signals) -> None:
    if proc.returncode is None:
        proc.send_signal(sig)


def _revoke(client: BrokerClient, lease_id: str) -> None:
    try:
        client.request("PUT", "sys/leases/revoke", {"lease_id": lease_id})
    except ClientError as exc:
        print(f"warning: could not revoke {lease_id}: {exc}", file=sys.stderr)


async def _keep_renewed(client: BrokerClient, lease_id: str, ttl: int) -> None:
    """Renew at two thirds of the remaining time, by the lease's original TTL each time,
    until the role's max_ttl stops it (then say so: the login will end)."""
    remaining = float(ttl)
    while True:
        await asyncio.sleep(max(0.5, remaining * 2 / 3))
        try:
            renewed = await asyncio.to_thread(
                client.request, "PUT", "sys/leases/renew", {"lease_id": lease_id, "increment": ttl}
            )
        except ClientError as exc:
            print(f"warning: renewing {lease_id} failed: {exc}", file=sys.stderr)
            remaining = max(1.0, remaining / 3)
            continue
        remaining = float(renewed["lease_duration"])
        if renewed.get("warnings"):
            print(
                f"warning: lease reaches its max_ttl in {int(remaining)}s; the login ends then",
                file=sys.stderr,
            )
            return
