"""The chaos suite at its small size (CI). Full size: ``python -m tests.chaos --full``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.chaos import failover, harness


def _check(figures: dict[str, Any]) -> None:
    print(json.dumps(figures, indent=2, default=str))
    assert figures["orphans"] == 0, figures
    assert figures["late_revocations"] == 0, figures
    assert not figures["unexpected"], figures
    assert figures["issued"] > 0, figures
    assert all(code == 0 for code in figures["exit_codes"].values()), figures


async def test_kill_nine_during_load() -> None:
    figures = await harness.kill_during_load(seconds=8, kill_every=2, concurrency=16)
    _check(figures)
    assert figures["kills"] >= 2


async def test_target_outage() -> None:
    figures = await harness.target_outage(seconds=9, outage=3)
    _check(figures)
    assert figures["refused_503"] > 0
    assert figures["drained_seconds_after_return"] is not None


async def test_storage_restart() -> None:
    figures = await harness.storage_restart(seconds=9, outage=3)
    _check(figures)
    assert figures["refused_503"] > 0


async def test_dead_claimer_taken_over() -> None:
    """A node SIGKILLed while revoking its claimed batch: the survivor finishes the batch
    within seconds, not after the 60 s claim timeout."""
    figures = await harness.dead_claimer(leases=100)
    _check_takeover(figures)


def _check_takeover(figures: dict[str, Any]) -> None:
    print(json.dumps(figures, indent=2, default=str))
    assert figures["victim_claims_at_kill"] > 0, figures
    assert figures["users_left_at_kill"] > 0, figures
    assert figures["users_left_at_end"] == 0, figures
    assert figures["all_gone_seconds_after_kill"] < 10, figures
    assert figures["orphans"] == 0, figures
    assert figures["late_revocations"] == 0, figures
    assert all(code == 0 for code in figures["exit_codes"].values()), figures


@pytest.mark.parametrize("synchronous", [True, False], ids=["sync", "async"])
async def test_storage_failover_under_load(synchronous: bool) -> None:
    """The primary of a replicated storage stops abruptly under load on two nodes and its
    standby is promoted: issuance resumes by itself; with synchronous replication nothing
    acknowledged is lost; either way no user is left once TTL and grace are over (full
    size and figures: ``python -m tests.chaos failover --full``)."""
    figures = await failover.storage_failover(8, synchronous=synchronous, promote_after=2)
    _check(figures)
    assert not failover.broken(figures, synchronous), figures
    assert figures["refused_503"] > 0  # the outage was seen, and answered with 503s
    assert figures["users_left_after_ttl_and_grace"] == 0, figures
    if synchronous:
        assert figures["acknowledged_missing"] == 0, figures
