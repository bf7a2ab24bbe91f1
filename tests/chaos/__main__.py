"""``python -m tests.chaos [--full] [--count N] [--seed S] [--seconds T] [--only NAME]``:
run the chaos scenarios (N rounds, seeds S, S+1, ...) and print their figures as JSON
lines. Exits 1 if an invariant broke (or, for ``takeover``, if a killed node's claimed
revocations took longer than 10 s to finish).

``python -m tests.chaos failover [--full]``: only the storage failovers (synchronous and
asynchronous replication). ``python -m tests.chaos dr [--leases N]``: the
disaster-recovery restore, timed (see tests/chaos/restore.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from tests.chaos import failover, harness, restore

SCENARIOS = (
    "kill",
    "target",
    "storage",
    "takeover",
    "failover-sync",
    "failover-async",
    "failover-async-cut",
)
#: The bound on the takeover of a killed node's claims (sweep interval 1 s, heartbeat 1 s).
TAKEOVER_WITHIN = 10.0


async def _run(name: str, seconds: float, outage: float, seed: int) -> dict[str, Any]:
    if name == "kill":
        return await harness.kill_during_load(seconds=seconds, kill_every=3, seed=seed)
    if name == "takeover":
        return await harness.dead_claimer(leases=300, seed=seed)
    if name.startswith("failover-"):
        # A failover manager's decision time before it promotes: 2 s small, 5 s full.
        # failover-async-cut: the standby is cut off 2 s before the crash (a partition,
        # then the primary's death), so asynchronous replication loses what came between.
        return await failover.storage_failover(
            seconds,
            synchronous=name == "failover-sync",
            promote_after=min(5, outage / 2),
            cut_before=2.0 if name == "failover-async-cut" else 0.0,
            seed=seed,
        )
    load_seconds = max(seconds, outage * 2)
    if name == "target":
        return await harness.target_outage(load_seconds, outage, seed=seed)
    return await harness.storage_restart(load_seconds, outage, seed=seed)


def _broken(name: str, figures: dict[str, Any]) -> bool:
    if name.startswith("failover-"):
        return failover.broken(figures, synchronous=name == "failover-sync")
    broken = bool(figures["orphans"] or figures["late_revocations"])
    return broken or figures.get("all_gone_seconds_after_kill", 0) > TAKEOVER_WITHIN


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos")
    parser.add_argument(
        "command",
        nargs="?",
        choices=("failover", "dr"),
        help="failover: the storage failovers only; dr: time a restore (see --leases)",
    )
    parser.add_argument("--full", action="store_true", help="60 s of load, 30 s outages")
    parser.add_argument("--seconds", type=float, help="load duration per scenario")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first round")
    parser.add_argument("--count", type=int, default=1, help="rounds, each with the next seed")
    parser.add_argument("--only", choices=SCENARIOS)
    parser.add_argument("--leases", type=int, default=100_000, help="dr: lease rows in the backup")
    parser.add_argument(
        "--due", type=int, default=1_000, help="dr: of those, expiring during the outage"
    )
    args = parser.parse_args()
    if args.command == "dr":
        figures = asyncio.run(restore.restore_drill(args.leases, args.due))
        print(json.dumps(figures, default=str), flush=True)
        return 0
    seconds = args.seconds or (60 if args.full else 10)
    outage = 30 if args.full else 4
    names = [n for n in SCENARIOS if not args.only or n == args.only]
    if args.command == "failover":
        names = [n for n in names if n.startswith("failover-")]
    broken = False
    for seed in range(args.seed, args.seed + args.count):
        for name in names:
            figures = asyncio.run(_run(name, seconds, outage, seed))
            print(json.dumps(figures, default=str), flush=True)
            broken |= _broken(name, figures)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
