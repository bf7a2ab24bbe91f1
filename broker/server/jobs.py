"""The node's background jobs on APScheduler: the lease expiry sweep, and the periodic
housekeeping (heartbeat, token expiry, tidy, rotations...) that assembly registers."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from broker.server.database.revocation import Revocations, SweepResult

log = logging.getLogger(__name__)
_JOB_ID = "sweep-expired-leases"


class BackgroundJobs:
    """Every periodic job of this node: the expiry sweep it owns (which a request can
    hurry with ``sweep_soon``), plus the jobs registered with ``add_periodic``."""

    def __init__(self, revocations: Revocations, interval: float) -> None:
        self._revocations = revocations
        self._interval = interval
        self._scheduler = AsyncIOScheduler(timezone=dt.UTC)

    def add_periodic(self, name: str, job: Callable[[], Awaitable[object]], seconds: float) -> None:
        """Run ``job`` every ``seconds`` (first run now); a failing run is logged and the
        next one runs as scheduled."""

        async def run() -> None:
            try:
                await job()
            except Exception:
                log.exception("%s failed", name)

        self._scheduler.add_job(
            run,
            "interval",
            seconds=seconds,
            id=name,
            max_instances=1,
            coalesce=True,
            next_run_time=dt.datetime.now(dt.UTC),
        )

    def start(self) -> None:
        self._scheduler.add_job(
            self._run,
            "interval",
            seconds=self._interval,
            id=_JOB_ID,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=dt.datetime.now(dt.UTC),
        )
        self._scheduler.start()

    def sweep_soon(self) -> None:
        """Run the sweep as soon as possible (after an asynchronous revocation request)."""
        job = self._scheduler.get_job(_JOB_ID)
        if job is not None:
            job.modify(next_run_time=dt.datetime.now(dt.UTC))

    async def _run(self) -> SweepResult | None:
        try:
            result = await self._revocations.sweep()
        except Exception:  # the job must survive a storage outage and run again
            log.exception("expiry sweep failed")
            return None
        if result.revoked or result.failed:
            log.info(
                "sweep revoked %d lease(s), %d failed, in %.3fs",
                result.revoked,
                result.failed,
                result.seconds,
            )
        return result

    async def stop(self, grace_seconds: float = 30.0) -> None:
        """Start no new sweep, let the running one finish (its claims would otherwise wait
        out the claim timeout), then stop."""
        if not self._scheduler.running:
            return
        self._scheduler.pause()
        await self._revocations.wait_for_sweep(grace_seconds)
        self._scheduler.shutdown(wait=False)
