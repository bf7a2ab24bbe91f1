"""Client-side views of leases for the CLI: a table with time left, and revocation of a
whole prefix with a progress bar (rich renders both; plain text when not on a terminal)."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from broker.client.http import BrokerClient, ClientError

_MAX_ROWS = 500


def _keys(client: BrokerClient, prefix: str) -> list[str]:
    try:
        keys: list[str] = client.request("GET", f"sys/leases/lookup/{prefix}?list=true")["data"][
            "keys"
        ]
    except ClientError as exc:
        if exc.status == 404:
            return []
        raise
    return keys


def _segments(prefix: str) -> str:
    """``prefix`` as the server takes it: whole path segments (``creds/app`` is
    ``creds/app/``, never ``creds/app-admin/``), so the keys listed join onto it."""
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def _lookup(client: BrokerClient, lease_id: str) -> dict[str, Any] | None:
    """The lease as ``sys/leases/lookup`` answers it; None once it is gone (Vault's 400
    "invalid lease": revoked, expired, or never there)."""
    try:
        data: dict[str, Any] = client.request("PUT", "sys/leases/lookup", {"lease_id": lease_id})[
            "data"
        ]
    except ClientError as exc:
        if exc.status == 400:
            return None
        raise
    return data


def _is_lease(client: BrokerClient, prefix: str) -> bool:
    """Whether revoke-prefix takes ``prefix`` as one lease id (Vault: no trailing slash
    and a lease by that id exists) rather than as a segment prefix."""
    return bool(prefix) and not prefix.endswith("/") and _lookup(client, prefix) is not None


def count_leases(client: BrokerClient, prefix: str, cap: int = 100_000) -> int:
    """Live leases under ``prefix`` (whole segments), walking Vault's hierarchical listing."""
    total, pending = 0, [_segments(prefix)]
    while pending and total < cap:
        current = pending.pop()
        for key in _keys(client, current):
            if key.endswith("/"):
                pending.append(current + key)
            else:
                total += 1
    return total


def print_table(client: BrokerClient, prefix: str) -> int:
    prefix = _segments(prefix)
    keys = _keys(client, prefix)
    if not keys:
        print("no leases", file=sys.stderr)
        return 0
    table = Table(title=f"leases under {prefix or '/'}")
    table.add_column("key", no_wrap=True)
    table.add_column("state")
    table.add_column("expires (UTC)")
    table.add_column("time left", justify="right")
    for key in keys[:_MAX_ROWS]:
        if key.endswith("/"):
            table.add_row(key, "", "", f"{count_leases(client, prefix + key)} lease(s)")
            continue
        data = _lookup(client, prefix + key)
        if data is None:  # revoked between the listing and the lookup
            table.add_row(key, "gone", "", "")
            continue
        ttl = int(data["ttl"])
        left = f"{ttl // 3600}h{ttl % 3600 // 60:02d}m{ttl % 60:02d}s"
        table.add_row(key, data["state"], (data["expire_time"] or "")[:19], left)
    Console(width=max(100, Console().width)).print(table)
    if len(keys) > _MAX_ROWS:
        print(f"... and {len(keys) - _MAX_ROWS} more", file=sys.stderr)
    return 0


def revoke_prefix(client: BrokerClient, prefix: str, patience: float = 120.0) -> int:
    """Queue the revocation of everything under ``prefix`` (the servers' sweeps do the
    work, in batches) and follow it. Exit 1 if leases remain (failing, still queued).

    The count takes the prefix as the server does (one lease id, or whole segments), so
    the bar never promises leases the revocation will not touch."""
    exact = _is_lease(client, prefix)

    def count() -> int:
        if exact:
            return int(_lookup(client, prefix) is not None)
        return count_leases(client, prefix)

    total = count()
    client.request("PUT", f"sys/leases/revoke-prefix/{prefix}", {"sync": False})
    remaining, last_change = total, time.monotonic()
    columns = (TextColumn("revoking"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("revoke", total=total)
        while remaining and time.monotonic() - last_change < patience:
            time.sleep(0.25)
            now = count()
            if now < remaining:
                last_change = time.monotonic()
            remaining = now
            progress.update(task, completed=total - remaining)
    print(f"revoked {total - remaining} of {total} lease(s) under {prefix}")
    if remaining:
        print(
            f"{remaining} still queued (failing revocations are retried; see "
            "GET /v1/sys/leases?type=irrevocable)",
            file=sys.stderr,
        )
        return 1
    return 0
