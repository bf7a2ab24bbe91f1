"""Group commit: concurrent callers share one storage round trip.

Each caller awaits the outcome of the batch its item went into, so a caller still knows
its own row is committed before it goes on (the lease-before-user invariant holds per
request). With one caller at a time a batch is one item and nothing waits longer than
before; under load, items that arrive while a flush is in flight go together in the next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(
        self, flush: Callable[[Sequence[T]], Awaitable[Sequence[R]]], max_batch: int = 200
    ) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._draining = False
        # The event loop keeps only weak references to tasks: hold the drain task.
        self._drain_task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if not self._draining:
            self._draining = True
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    results = await self._flush([item for item, _ in batch])
                except BaseException as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._draining = False
            for _, future in self._pending:  # only when cancelled mid-way
                if not future.done():
                    future.set_exception(asyncio.CancelledError())
            self._pending.clear()
