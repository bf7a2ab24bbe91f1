"""``python -m bench [--quick] [--only NAME ...]``: run the benchmarks, print the results,
and (full runs) write bench/results/<date>-<commit>.json, charts, and the table in
bench/README.md. ``--quick`` is the CI smoke run: small, nothing asserted, nothing written.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
from typing import Any

from bench import report, suite
from bench.env import ROOT, BenchWorld

STEPS = (
    "issuance",
    "storm",
    "two_nodes",
    "storm_two_nodes",
    "scale",
    "http_parser",
    "auth_overhead",
    "verifier_cpu",
)


async def run(quick: bool, only: list[str]) -> dict[str, Any]:
    world = BenchWorld()
    await world.open()
    results: dict[str, Any] = {}
    try:
        for step in STEPS:
            if only and step not in only:
                continue
            print(f"== {step}", file=sys.stderr, flush=True)
            if step == "issuance":
                results[step] = await suite.issuance(world, quick)
            elif step == "storm":
                results[step] = await suite.storm(world, quick, nodes=1)
            elif step == "storm_two_nodes":
                results[step] = await suite.storm(world, quick, nodes=2)
            elif step == "two_nodes":
                results[step] = await suite.two_nodes(world, quick)
            elif step == "scale":
                results[step] = await suite.scale(world, quick)
            elif step == "http_parser":
                results[step] = await suite.http_parser(world, quick)
            elif step == "auth_overhead":
                results[step] = await suite.auth_overhead(world, quick)
            elif step == "verifier_cpu":
                results[step] = await suite.verifier_cpu(world, quick)
    finally:
        await world.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: small, nothing saved")
    parser.add_argument("--only", nargs="*", choices=STEPS, default=[])
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    meta = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": commit or "nogit",
        "quick": args.quick,
        "cpus": os.cpu_count(),
    }
    results = {**meta, **asyncio.run(run(args.quick, args.only))}
    print(json.dumps(results, indent=2, default=str))
    if not args.quick:
        name = f"{meta['date'][:10]}-{meta['commit']}"
        if args.only:  # a partial run must not overwrite the full run of the same commit
            name += "-" + "-".join(args.only)
        path = report.write_json(results, name)
        charts = report.charts(results, name)
        for chart in charts:
            print(f"wrote {chart.relative_to(ROOT)}", file=sys.stderr)
        if not args.only:
            report.update_readme(results, path.name, charts)
        print(f"wrote {path.relative_to(ROOT)} and bench/README.md", file=sys.stderr)
    else:
        print(report.markdown(results, "quick run"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
