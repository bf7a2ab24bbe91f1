"""The node's background jobs on APScheduler: the lease expiry sweep, and the periodic
housekeeping (heartbeat, token expiry, tidy, rotations...) that assembly registers."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from broker.exceptions import StorageUnavailable
from broker.server.database.revocation import Revocations, SweepResult

log = logging.getLogger(__name__)
_JOB_ID = "sweep-expired-leases"


class _OutageLog:
    """A storage outage (or failover) in the log: one warning per job when it starts
    failing, one line when it works again; not a line per job per second in between."""

    def __init__(self) -> None:
        self._down_since: dict[str, float] = {}

    def failed(self, name: str, exc: StorageUnavailable) -> None:
        if name not in self._down_since:
            self._down_since[name] = time.monotonic()
            log.warning("%s paused: %s (retrying as scheduled)", name, exc.message)

    def succeeded(self, name: str) -> None:
        since = self._down_since.pop(name, None)
        if since is not None:
            log.info("%s resumed after %.1fs", name, time.monotonic() - since)


class BackgroundJobs:
    """Every periodic job of this node: the expiry sweep it owns (which a request can
    hurry with ``sweep_soon``), plus the jobs registered with ``add_periodic``."""

    def __init__(self, revocations: Revocations, interval: float) -> None:
        self._revocations = revocations
        self._interval = interval
        self._scheduler = AsyncIOScheduler(timezone=dt.UTC)
        self._outages = _OutageLog()

    def add_periodic(self, name: str, job: Callable[[], Awaitable[object]], seconds: float) -> None:
        """Run ``job`` every ``seconds`` (first run now); a failing run is logged and the
        next one runs as scheduled (storage down or failing over: one line, no trace)."""

        async def run() -> None:
            try:
                await job()
            except StorageUnavailable as exc:
                self._outages.failed(name, exc)
            except Exception:
                log.exception("%s failed", name)
            else:
                self._outages.succeeded(name)

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
        except StorageUnavailable as exc:  # an outage or a failover: the next run retries
            self._outages.failed("expiry sweep", exc)
            return None
        except Exception:  # the job must survive anything and run again
            log.exception("expiry sweep failed")
            return None
        self._outages.succeeded("expiry sweep")
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
