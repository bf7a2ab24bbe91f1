"""Storage failover under load: two broker processes issue at concurrency 8 with short
TTLs on a replicated storage (a primary and a streaming standby, both hosts in the nodes'
DSN); the primary is stopped abruptly (``pg_ctl stop -m immediate``), the standby promoted
a few seconds later, and the load goes on.

Figures: seconds without issuance, requests refused, leases acknowledged to a client but
missing from the new primary (0 is the promise of synchronous replication; asynchronous
replication loses what the standby had not received), users left on the targets once
every lease has expired plus the database-side grace (0 in both: the scheduled reconcile,
``reconcile_revoke``, drops the users of lost rows), and the revocation lag.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg

from tests.chaos.harness import CREATION_TIMEOUT, TOKEN, TTL, World
from tests.pgcluster import ReplicatedStorage

#: PostgreSQL's VALID UNTIL trails each lease by this much (database/leases.py).
EXPIRATION_GRACE = 5.0
#: The scheduled reconcile of the nodes in this scenario: the safety net for rows lost in
#: an asynchronous failover (production would run it every few minutes).
RECONCILE_INTERVAL = 3.0


class _CurrentPrimary:
    """What ``World`` calls its storage, for its figures: the primary of the moment."""

    def __init__(self, cluster: ReplicatedStorage) -> None:
        self.cluster = cluster

    def dsn(self) -> str:
        primary = self.cluster.primary
        if primary is None:
            raise RuntimeError("no primary")
        return primary.dsn()


class FailoverWorld(World):
    """``World`` with a replicated storage instead of a single server."""

    def __init__(self, nodes: int, *, synchronous: bool) -> None:
        super().__init__(
            nodes,
            env={
                "BROKER_RECONCILE_INTERVAL": str(RECONCILE_INTERVAL),
                "BROKER_RECONCILE_REVOKE": "true",
                "BROKER_HEARTBEAT_INTERVAL": "1",
            },
        )
        self.storage.stop()  # never started: removes its directory
        self.cluster = ReplicatedStorage()
        self.storage = _CurrentPrimary(self.cluster)  # type: ignore[assignment]
        self.synchronous = synchronous

    async def open(self) -> None:
        async def storage() -> None:
            await self.cluster.start_primary()
            await self.cluster.add_standby()
            await self.cluster.wait_streaming()
            if self.synchronous:
                await self.cluster.set_synchronous(True)

        await asyncio.gather(storage(), asyncio.to_thread(self.target.start))
        await self.start_nodes(self.cluster.dsn())

    async def close(self) -> dict[str, int | None]:
        codes = {f"node-{i}": node.stop() for i, node in enumerate(self.nodes)}
        await self._drop_mysql_users()
        await asyncio.to_thread(self.target.stop)
        await self.cluster.close()
        return codes


@dataclass
class FailoverLoad:
    acked: dict[str, float] = field(default_factory=dict)  # lease id -> when answered
    refused: int = 0
    unreachable: int = 0
    other: list[str] = field(default_factory=list)
    successes: list[float] = field(default_factory=list)


async def _drive(
    world: World, seconds: float, concurrency: int, rng: random.Random
) -> FailoverLoad:
    """Issue on random nodes and roles; remember every lease a client was given."""
    load = FailoverLoad()
    deadline = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=40)
    async with aiohttp.ClientSession(headers={"X-Vault-Token": TOKEN}, timeout=timeout) as s:

        async def worker() -> None:
            while time.monotonic() < deadline:
                node = rng.choice(world.nodes)
                role = rng.choice(("pg", "my"))
                try:
                    async with s.get(f"{node.address}/v1/database/creds/{role}") as resp:
                        body = await resp.json(content_type=None)
                        if resp.status == 200:
                            now = time.monotonic()
                            load.acked[body["lease_id"]] = now
                            load.successes.append(now)
                        elif resp.status == 503:  # a 500 is a bug, not a refusal
                            load.refused += 1
                            await asyncio.sleep(0.02)  # a client's retry delay, not a spin
                        else:
                            load.other.append(f"{resp.status} {str(body)[:200]}")
                except (aiohttp.ClientError, TimeoutError):
                    load.unreachable += 1
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return load


async def storage_failover(
    seconds: float = 12,
    *,
    synchronous: bool,
    promote_after: float = 2.0,
    cut_before: float = 0.0,
    concurrency: int = 8,
    seed: int = 5,
) -> dict[str, Any]:
    """Load on two nodes; a third of the way in, the primary stops abruptly, and the
    standby is promoted ``promote_after`` seconds later (what a failover manager takes to
    decide). ``cut_before``: the standby stops receiving WAL that many seconds before the
    primary dies (a partition first, then the crash: with asynchronous replication,
    whatever was committed meanwhile is lost)."""
    rng = random.Random(seed)
    world = FailoverWorld(nodes=2, synchronous=synchronous)
    try:
        await world.open()
        cluster = world.cluster

        async def failover() -> dict[str, float]:
            if cut_before:
                await asyncio.sleep(seconds / 3 - cut_before)
                await cluster.detach(cluster.standbys[0])
                await asyncio.sleep(cut_before)
            else:
                await asyncio.sleep(seconds / 3)
            lag = 0 if cut_before else await cluster.replay_lag_bytes()
            crashed_at = time.monotonic()
            await cluster.crash_primary()
            await asyncio.sleep(promote_after)
            await cluster.promote()
            return {"crashed_at": crashed_at, "promoted_at": time.monotonic(), "lag": lag}

        load, times = await asyncio.gather(_drive(world, seconds, concurrency, rng), failover())
        # Every lease has expired, the grace of VALID UNTIL is over, stuck creations were
        # taken over, and the reconcile and the sweep have run again.
        await asyncio.sleep(TTL + EXPIRATION_GRACE + CREATION_TIMEOUT + RECONCILE_INTERVAL + 2)
        missing, early = await _acknowledged(world, load)
        users_left = await world.target_users()
        figures = await world.figures()
    finally:
        codes = await world.close()
    promoted = times["promoted_at"]
    successes = sorted(load.successes)
    # The longest stretch with no lease handed out: the failover (requests in flight at
    # the crash may still be answered just after it, from commits made before it).
    gap = max((b - a for a, b in itertools.pairwise(successes)), default=None)
    after = [t for t in successes if t > promoted]
    return {
        "scenario": f"storage failover ({'synchronous' if synchronous else 'asynchronous'}"
        + (f", standby cut off {cut_before:g} s before the crash)" if cut_before else ")"),
        "seconds": seconds,
        "seed": seed,
        "promote_after_seconds": promote_after,
        "standby_cut_off_seconds_before_crash": cut_before,
        # Of a standby still streaming (a cut-off one no longer reports it).
        "standby_replay_lag_bytes_at_crash": None if cut_before else int(times["lag"]),
        "issued": len(load.acked),
        "refused_503": load.refused,
        "unreachable": load.unreachable,
        "unexpected": load.other[:5],
        "seconds_without_issuance": round(gap, 2) if gap is not None else None,
        "first_issuance_after_promotion_s": round(after[0] - promoted, 2) if after else None,
        "acknowledged_missing": len(missing),
        "acknowledged_revoked_early": early,
        "users_left_after_ttl_and_grace": len(users_left),
        **figures,
        "exit_codes": codes,
    }


async def _acknowledged(world: FailoverWorld, load: FailoverLoad) -> tuple[set[str], int]:
    """Leases a client was given that the new primary does not have, and how many of the
    others were revoked more than a second before their expiry (their activation was lost
    with the old primary, so the sweep took them for interrupted creations)."""
    conn = await asyncpg.connect(world.storage.dsn())
    try:
        rows = await conn.fetch(
            "SELECT lease_id, expires_at, revoked_at FROM broker_leases WHERE lease_id = ANY($1)",
            list(load.acked),
        )
    finally:
        await conn.close()
    present = {row["lease_id"] for row in rows}
    early = sum(
        1
        for row in rows
        if row["revoked_at"] is not None
        and row["revoked_at"] < row["expires_at"] - dt.timedelta(seconds=1)
    )
    return set(load.acked) - present, early


def broken(figures: dict[str, Any], synchronous: bool) -> bool:
    """The promises: nothing acknowledged lost with synchronous replication; no user left
    after TTL and grace, no orphan and no late revocation either way."""
    if synchronous and figures["acknowledged_missing"]:
        return True
    return bool(
        figures["users_left_after_ttl_and_grace"]
        or figures["orphans"]
        or figures["late_revocations"]
        or figures["unexpected"]
        or not figures["issued"]
    )
