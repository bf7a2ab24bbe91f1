"""``python -m tests.chaos [--full] [--count N] [--seed S] [--seconds T] [--only NAME]``:
run the chaos scenarios (N rounds, seeds S, S+1, ...) and print their figures as JSON
lines. Exits 1 if an invariant broke (or, for ``takeover``, if a killed node's claimed
revocations took longer than 10 s to finish)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from tests.chaos import harness

SCENARIOS = ("kill", "target", "storage", "takeover")
#: The bound on the takeover of a killed node's claims (sweep interval 1 s, heartbeat 1 s).
TAKEOVER_WITHIN = 10.0


async def _run(name: str, seconds: float, outage: float, seed: int) -> dict[str, Any]:
    if name == "kill":
        return await harness.kill_during_load(seconds=seconds, kill_every=3, seed=seed)
    if name == "takeover":
        return await harness.dead_claimer(leases=300, seed=seed)
    load_seconds = max(seconds, outage * 2)
    if name == "target":
        return await harness.target_outage(load_seconds, outage, seed=seed)
    return await harness.storage_restart(load_seconds, outage, seed=seed)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos")
    parser.add_argument("--full", action="store_true", help="60 s of load, 30 s outages")
    parser.add_argument("--seconds", type=float, help="load duration per scenario")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first round")
    parser.add_argument("--count", type=int, default=1, help="rounds, each with the next seed")
    parser.add_argument("--only", choices=SCENARIOS)
    args = parser.parse_args()
    seconds = args.seconds or (60 if args.full else 10)
    outage = 30 if args.full else 4
    broken = False
    for seed in range(args.seed, args.seed + args.count):
        for name in SCENARIOS:
            if args.only and name != args.only:
                continue
            figures = asyncio.run(_run(name, seconds, outage, seed))
            print(json.dumps(figures, default=str), flush=True)
            broken |= bool(figures["orphans"] or figures["late_revocations"])
            broken |= figures.get("all_gone_seconds_after_kill", 0) > TAKEOVER_WITHIN
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
