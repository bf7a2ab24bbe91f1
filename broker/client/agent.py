"""``broker agent``: keeps credential files fresh for programs that cannot call HTTP.

For each template in the config it issues a lease, writes the file (atomically, mode
0600), and runs the reload command. It then renews the lease at two thirds of its
remaining time, and re-issues only when it must: the role's max_ttl is near, or the lease
is gone. After writing the new file and running the reload command, it revokes the lease
it replaced. Vault Agent users report lease explosions from agents that re-issue instead
of renewing; this one renews.

Config (TOML)::

    [[template]]
    role = "readonly"
    destination = "/run/app/db.env"
    format = "env"            # env | json | dsn | pgpass
    command = "systemctl reload app"
    # mount = "database"; reissue_before = 30 (seconds of max_ttl left)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.client.http import BrokerClient, ClientError, issue_in_thread, revoke_in_thread
from broker.client.session_env import database_url, endpoint_of, environment, pgpass_line

FORMATS = ("env", "json", "dsn", "pgpass")


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    agent = sub.add_parser(
        "agent",
        help="keep credential files fresh for programs that cannot call HTTP",
        description="Example: broker agent --config agent.toml (renews; re-issues only near "
        "max_ttl, then revokes what it replaced and runs the reload command)",
    )
    agent.add_argument("--config", required=True, help="TOML with [[template]] entries")


def run(args: argparse.Namespace) -> int:
    return asyncio.run(run_agent(args.config))


@dataclass(frozen=True, slots=True)
class Template:
    role: str
    destination: Path
    format: str = "env"
    command: str = ""
    mount: str = "database"
    reissue_before: float = 30.0


def load_templates(path: str) -> list[Template]:
    with open(path, "rb") as fh:
        raw = tomllib.load(fh)
    templates = []
    for entry in raw.get("template", []):
        template = Template(
            role=str(entry["role"]),
            destination=Path(str(entry["destination"])).expanduser(),
            format=str(entry.get("format", "env")),
            command=str(entry.get("command", "")),
            mount=str(entry.get("mount", "database")),
            reissue_before=float(entry.get("reissue_before", 30)),
        )
        if template.format not in FORMATS:
            raise ValueError(f"template format must be one of {', '.join(FORMATS)}")
        templates.append(template)
    if not templates:
        raise ValueError("the agent config has no [[template]]")
    return templates


def render(template: Template, issued: dict[str, Any]) -> str:
    """The file's content, from the creds answer alone (it says where the database is),
    so the agent's token needs no read access beyond its role's creds."""
    username, password = issued["data"]["username"], issued["data"]["password"]
    endpoint = endpoint_of(issued)
    if template.format == "json":
        return (
            json.dumps(
                {
                    "username": username,
                    "password": password,
                    "lease_id": issued["lease_id"],
                    "host": endpoint.host,
                    "port": endpoint.port,
                    "database": endpoint.database,
                    "url": database_url(endpoint, username, password),
                },
                indent=2,
            )
            + "\n"
        )
    if template.format == "dsn":
        return database_url(endpoint, username, password) + "\n"
    if template.format == "pgpass":
        return pgpass_line(endpoint, username, password) + "\n"
    env = environment(endpoint, username, password)
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items())


def write_atomically(path: Path, content: str) -> None:
    """Readers see the old file or the new one, never half of one; owner-only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(content)
    os.replace(tmp, path)


class TemplateKeeper:
    def __init__(self, client: BrokerClient, template: Template) -> None:
        self._client = client
        self._template = template
        self.lease_id = ""
        self.issues = 0

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return await asyncio.to_thread(self._client.request, method, path, body)

    async def issue(self) -> float:
        """New credentials: write, reload, then revoke the lease they replace. A lease
        whose file could not be written was never handed over: it is revoked at once."""
        t = self._template
        issued = await issue_in_thread(self._client, t.mount, t.role)
        try:
            content = render(t, issued)
            await asyncio.to_thread(write_atomically, t.destination, content)
        except BaseException:
            await revoke_in_thread(self._client, issued["lease_id"])
            raise
        # From here the file holds the new login: it is the lease to keep (and the one
        # revoked when the agent stops), and the replaced one must go whatever happens.
        replaced, self.lease_id = self.lease_id, issued["lease_id"]
        self.issues += 1
        try:
            if t.command:
                proc = await asyncio.create_subprocess_shell(t.command)
                if await proc.wait() != 0:
                    print(f"warning: reload command exited {proc.returncode}", file=sys.stderr)
        finally:
            if replaced:
                await revoke_in_thread(self._client, replaced)
        return float(issued["lease_duration"])

    async def revoke(self, lease_id: str) -> None:
        await revoke_in_thread(self._client, lease_id)

    async def run(self) -> None:
        ttl = await self.issue()
        remaining = ttl
        while True:
            await asyncio.sleep(max(0.5, remaining * 2 / 3))
            try:
                renewed = await self._call(
                    "PUT", "sys/leases/renew", {"lease_id": self.lease_id, "increment": int(ttl)}
                )
                remaining = float(renewed["lease_duration"])
                capped = bool(renewed.get("warnings"))
            except ClientError as exc:
                print(f"renewal failed ({exc}); issuing new credentials", file=sys.stderr)
                remaining, capped = 0.0, True
            # Re-issue only when renewal can no longer keep up: max_ttl is near, or the
            # lease is gone. Otherwise the same login lives on.
            if capped and remaining <= max(self._template.reissue_before, ttl / 3):
                ttl = await self.issue()
                remaining = ttl


async def run_agent(config: str) -> int:
    client = BrokerClient.from_env()
    keepers = [TemplateKeeper(client, t) for t in load_templates(config)]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task[Any]] = [asyncio.create_task(k.run()) for k in keepers]
    waiter: asyncio.Task[Any] = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # The programs are stopping with the agent: their logins need not outlive it.
    for keeper in keepers:
        if keeper.lease_id:
            await keeper.revoke(keeper.lease_id)
    failed = [t for t in done if t is not waiter and t.exception() is not None]
    for task in failed:
        print(f"error: {task.exception()}", file=sys.stderr)
    return 1 if failed else 0
