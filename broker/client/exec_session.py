"""``broker exec`` and ``broker connect``: run a program with a fresh login in its
environment, keep the lease renewed while it runs, and revoke it when it exits.

The password travels only in the child's environment (``PGPASSWORD``/``MYSQL_PWD``), never
on a command line where ``ps`` would show it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from broker.client.http import BrokerClient, ClientError, issue_in_thread, revoke_in_thread
from broker.client.session_env import Endpoint, endpoint_of, environment

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_STOPPING = (signal.SIGTERM, signal.SIGHUP)


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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


def run(args: argparse.Namespace) -> int:
    """``exec`` runs the command after ``--``; ``connect`` the database's own client, with
    the arguments after ``--``."""

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


def client_command(endpoint: Endpoint, username: str, extra: list[str]) -> list[str]:
    """psql or mysql for ``broker connect``; the password comes from the environment."""
    if endpoint.kind == "postgresql":
        return ["psql", *extra]
    if endpoint.is_socket:
        args = ["mysql", "-S", endpoint.host, "-u", username]
    else:
        args = ["mysql", "-h", endpoint.host, "-P", endpoint.port, "-u", username]
    if endpoint.database:
        args.append(endpoint.database)
    return [*args, *extra]


async def run_with_credentials(
    client: BrokerClient, mount: str, role: str, argv: list[str] | None, extra: list[str]
) -> int:
    """Run ``argv`` (or the database's own client when None) and return its exit status
    (128 + signal number when a signal ended it).

    The lease is revoked on every way out once it exists: the command ended, it could not
    be started (127), the answer could not be used, or a signal arrived before the command
    ran (SIGTERM/SIGHUP: 128 + signal; Ctrl-C: KeyboardInterrupt).
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stopped: list[int] = []

    def stop(sig: signal.Signals) -> None:
        stopped.append(sig)
        task.cancel()

    # Until the command runs, SIGTERM/SIGHUP stop this process through the revocation
    # below rather than killing it with a live lease (Ctrl-C already does, via asyncio).
    for sig in _STOPPING:
        loop.add_signal_handler(sig, stop, sig)
    try:
        return await _run(client, mount, role, argv, extra, stop)
    except asyncio.CancelledError:
        if stopped:
            return 128 + stopped[0]
        raise
    finally:
        for sig in _STOPPING:
            loop.remove_signal_handler(sig)


async def _run(
    client: BrokerClient,
    mount: str,
    role: str,
    argv: list[str] | None,
    extra: list[str],
    stop: Callable[[signal.Signals], None],
) -> int:
    issued = await issue_in_thread(client, mount, role)
    lease_id = issued["lease_id"]
    try:
        username, password = issued["data"]["username"], issued["data"]["password"]
        endpoint = endpoint_of(issued)
        command = argv if argv is not None else client_command(endpoint, username, extra)
        env = {
            **os.environ,
            **environment(endpoint, username, password),
            "BROKER_LEASE_ID": lease_id,
        }
        try:
            proc = await asyncio.create_subprocess_exec(*command, env=env)
        except OSError as exc:
            print(f"error: cannot run {command[0]}: {exc.strerror or exc}", file=sys.stderr)
            return 127
        loop = asyncio.get_running_loop()
        for sig in _FORWARDED:
            loop.add_signal_handler(sig, _forward, proc, sig)
        renewer = asyncio.create_task(_keep_renewed(client, lease_id, issued["lease_duration"]))
        try:
            code = await proc.wait()
        finally:
            renewer.cancel()
            loop.remove_signal_handler(signal.SIGINT)
            for sig in _STOPPING:  # back to stopping through the revocation
                loop.add_signal_handler(sig, stop, sig)
        return code if code >= 0 else 128 - code
    finally:
        await revoke_in_thread(client, lease_id)


def _forward(proc: Any, sig: signal.Signals) -> None:
    if proc.returncode is None:
        proc.send_signal(sig)


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
