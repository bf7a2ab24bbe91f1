from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from broker.server.batching import GroupCommit


async def test_one_caller_is_one_batch_and_concurrent_callers_share() -> None:
    batches: list[list[int]] = []

    async def flush(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        await asyncio.sleep(0.01)
        return [i * 10 for i in items]

    group: GroupCommit[int, int] = GroupCommit(flush)
    assert await group.submit(1) == 10
    assert batches == [[1]]
    results = await asyncio.gather(*(group.submit(i) for i in range(2, 12)))
    assert results == [i * 10 for i in range(2, 12)]
    assert len(batches) < 11  # later arrivals rode along with an in-flight flush
    assert sorted(x for b in batches for x in b) == list(range(1, 12))


async def test_a_failed_flush_fails_every_caller_in_it_and_the_next_batch_still_runs() -> None:
    calls = 0

    async def flush(items: Sequence[str]) -> list[str]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        if calls == 1:
            raise RuntimeError("storage down")
        return list(items)

    group: GroupCommit[str, str] = GroupCommit(flush, max_batch=2)
    first = asyncio.ensure_future(group.submit("a"))
    second = asyncio.ensure_future(group.submit("b"))
    third = asyncio.ensure_future(group.submit("c"))
    with pytest.raises(RuntimeError):
        await first
    with pytest.raises(RuntimeError):
        await second
    assert await third == "c"
