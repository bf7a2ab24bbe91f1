"""Revocation: every way a lease ends goes through one claim path here.

The scheduler's sweep, explicit revocation by id or prefix, revoke-force and cron's
``revoke-expired`` all claim due rows (``FOR UPDATE SKIP LOCKED``, owner recorded so a dead
node's claims are handed back by the next heartbeat), hand them to the engines in batches
per target, and record the outcome: successes in one round trip, failures rescheduled with
backoff, forever. A revocation is done only when the engine says the user and its sessions
are gone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from dataclasses import dataclass, field

from broker.exceptions import BrokerError, RowIntegrityError, TargetError
from broker.models import ClaimedLease
from broker.server.engines.base import DatabaseEngine, RevokeUserRequest
from broker.server.engines.registry import EngineRegistry
from broker.server.faults import crash_point
from broker.server.metrics import Metrics
from broker.server.settings import Settings
from broker.server.storage import integrity
from broker.server.storage.catalog import CatalogStore
from broker.server.storage.leases import LeaseStore

log = logging.getLogger(__name__)
_BACKOFF_BASE = 1.0
_TIDY_BATCH = 1000


def backoff_seconds(attempts: int, cap: float = 60.0) -> float:
    """Exponential backoff with jitter, capped; never gives up."""
    ceiling = min(cap, _BACKOFF_BASE * 2 ** max(0, attempts - 1))
    return float(ceiling / 2 + random.uniform(0, ceiling / 2))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(slots=True)
class SweepResult:
    revoked: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Revocations:
    def __init__(
        self,
        leases: LeaseStore,
        catalog: CatalogStore,
        engines: EngineRegistry,
        settings: Settings,
        metrics: Metrics | None = None,
        *,
        claim_owner: str | None = None,
    ) -> None:
        """``claim_owner``: this process's instance id (see nodes.py), recorded on every
        claim so that the heartbeats of the other nodes hand the claims back at once if
        this process dies; without one (a one-off CLI sweep) only the claim timeout does."""
        self._leases = leases
        self._catalog = catalog
        self._engines = engines
        self._settings = settings
        self._metrics = metrics
        self._claim_owner = claim_owner
        self._sweep_lock = asyncio.Lock()
        #: Leases this node has claimed and not yet recorded: released on shutdown.
        self._in_flight: set[str] = set()

    async def revoke(self, lease_id: str, *, sync: bool = True) -> None:
        """Revoke one lease, that id exactly; a lease that does not exist (or is already
        revoked) is a success with nothing to do, as in Vault."""
        if await self._leases.get_lease(lease_id) is None:
            return
        await self._revoke_matching(lease_id, exact=True, sync=sync)

    async def _prefix_scope(self, prefix: str) -> tuple[str, bool]:
        """Vault's revokePrefixCommon: without a trailing slash, a prefix that is itself a
        lease id means that one lease; otherwise it is whole path segments. A policy that
        allows ``revoke-prefix/database/creds/app`` must never reach
        ``database/creds/app-admin/...``."""
        if prefix.endswith("/"):
            return prefix, False
        if await self._leases.get_lease(prefix) is not None:
            return prefix, True
        return prefix + "/", False

    async def revoke_prefix(self, prefix: str, *, sync: bool = True) -> int:
        """Revoke every live lease under ``prefix`` (whole segments, or the one lease it
        names); returns how many were due."""
        scope, exact = await self._prefix_scope(prefix)
        return await self._revoke_matching(scope, exact=exact, sync=sync)

    async def _revoke_matching(self, prefix: str, *, exact: bool, sync: bool) -> int:
        """Revoke the leases of one scope: the id ``prefix`` when ``exact``, else every lease
        under the segment prefix ``prefix``.

        The rows are made due, then (when ``sync``) claimed and revoked here in batches,
        through the same claim the scheduler uses, so the two never revoke one lease twice
        at once and never lose one. Failures stay queued with backoff; the caller is told.
        """
        due = await self._leases.make_leases_due(prefix, exact=exact)
        if not sync or due == 0:
            return due
        failures: list[str] = []
        while True:
            claimed = await self._leases.claim_due_leases(
                self._settings.sweep_batch_size,
                self._settings.claim_timeout,
                prefix,
                exact=exact,
                owner=self._claim_owner,
            )
            if not claimed:
                break
            failures.extend(e for e in await self._revoke_claimed(claimed) if e)
        # Leases another node claimed first: wait a little for it to finish them.
        deadline = time.monotonic() + 10
        pending = await self._leases.count_pending_leases(prefix, exact=exact)
        while pending and not failures and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            pending = await self._leases.count_pending_leases(prefix, exact=exact)
        if failures or pending:
            detail = f": {failures[0]}" if failures else ""
            raise TargetError(
                f"{max(len(failures), pending)} revocation(s) under {prefix!r} did not complete "
                f"and stay queued for retry{detail}"
            )
        return due

    async def revoke_force(self, prefix: str) -> int:
        """Vault's revoke-force: try to revoke, and forget the leases whatever happens.
        The same scope as revoke-prefix (whole segments): forgetting a lease outside it
        would leave its user alive with nothing left to revoke it."""
        scope, exact = await self._prefix_scope(prefix)
        try:
            await self._revoke_matching(scope, exact=exact, sync=True)
        except BrokerError as exc:
            log.warning("revoke-force %s: %s", prefix, exc.message)
        return await self._leases.force_revoked(scope, exact=exact)

    async def sweep(self) -> SweepResult:
        """Revoke every lease that is due: expired, retrying, or left by a crashed node.

        Claims bounded batches, so memory stays flat however long the backlog.
        """
        result = SweepResult()
        if self._leases.barrier.sealed:
            return result  # the connection passwords cannot be read: nothing is revoked
        started = time.monotonic()
        async with self._sweep_lock:
            while True:
                claimed = await self._leases.claim_due_leases(
                    self._settings.sweep_batch_size,
                    self._settings.claim_timeout,
                    owner=self._claim_owner,
                )
                if not claimed:
                    break
                errors = await self._revoke_claimed(claimed)
                failed = [e for e in errors if e]
                result.failed += len(failed)
                result.revoked += len(errors) - len(failed)
                result.errors.extend(failed[:10])
                if len(claimed) < self._settings.sweep_batch_size:
                    break
        result.seconds = time.monotonic() - started
        if self._metrics is not None:
            self._metrics.sweep_seconds.observe(result.seconds)
        return result

    async def tidy(self) -> int:
        """Remove revoked and failed lease rows older than the retention, in batches, so
        the table stays small; live leases are never candidates."""
        removed = 0
        while True:
            batch = await self._leases.tidy_leases(self._settings.lease_retention, _TIDY_BATCH)
            removed += batch
            if batch < _TIDY_BATCH:
                break
        if removed:
            log.info("tidied %d lease row(s)", removed)
        return removed

    async def wait_for_sweep(self, grace_seconds: float) -> None:
        """Return once no sweep is running (or after ``grace_seconds``)."""
        try:
            async with asyncio.timeout(grace_seconds), self._sweep_lock:
                pass
        except TimeoutError:
            log.warning("a sweep was still running after %.0fs at shutdown", grace_seconds)

    async def release_claims(self) -> int:
        """Hand unfinished claims back (due now), so another node need not wait out the
        claim timeout. For shutdown, after in-flight work had its grace period."""
        pending = list(self._in_flight)
        await self._leases.release_claims(pending)
        return len(pending)

    async def _revoke_claimed(self, claimed: list[ClaimedLease]) -> list[str | None]:
        """Revoke a batch; one error (or None) per lease, in order.

        Leases are grouped by target and handed to its engine in chunks of the engine's
        ``revoke_batch_size`` (PostgreSQL drops many roles per statement), with at most
        ``revoke_concurrency`` chunks in flight. Successes are recorded together in one
        storage round trip at the end: a crash before that leaves them claimed, and the
        next claim revokes them again (a no-op).
        """
        semaphore = asyncio.Semaphore(self._settings.revoke_concurrency)
        errors: dict[str, str | None] = {}
        finished: list[str] = []
        groups: dict[tuple[str, str], list[ClaimedLease]] = {}
        tampered: list[ClaimedLease] = []
        for lease in claimed:
            if lease.tampered:
                tampered.append(lease)
                continue
            groups.setdefault((lease.mount, lease.connection_name), []).append(lease)

        async def chunk(engine: DatabaseEngine, leases: list[ClaimedLease]) -> None:
            async with semaphore:
                try:
                    outcomes = await engine.revoke_users(
                        [RevokeUserRequest(x.username, x.revocation_statements) for x in leases]
                    )
                except BrokerError as exc:
                    outcomes = [exc.message] * len(leases)
            for lease, error in zip(leases, outcomes, strict=True):
                errors[lease.lease_id] = await self._record_outcome(lease, error, finished)

        tasks = []
        for (mount, name), leases in groups.items():
            try:
                connection = await self._catalog.get_connection(mount, name)
            except RowIntegrityError as exc:
                # A tampered connection row fails its own leases (retried, counted), not
                # the whole batch: every other target's revocations go ahead.
                for lease in leases:
                    errors[lease.lease_id] = await self._record_outcome(
                        lease, exc.message, finished
                    )
                continue
            if connection is None:
                for lease in leases:
                    missing = f"connection {name!r} no longer exists"
                    errors[lease.lease_id] = await self._record_outcome(lease, missing, finished)
                continue
            engine = self._engines.get(connection)
            size = max(1, engine.revoke_batch_size)
            tasks += [chunk(engine, leases[i : i + size]) for i in range(0, len(leases), size)]

        # Claimed and not yet recorded; if this is cancelled (shutdown), what is left here is
        # handed back by release_claims. If recording fails, the claim timeout hands it back.
        self._in_flight.update(lease.lease_id for lease in claimed)
        # A row that failed its integrity check (already alerted on and counted) is never
        # handed to an engine: its statements or user may be an attacker's. It stays
        # failing, retried with backoff, until the lease is dealt with by hand.
        refused = RowIntegrityError(integrity.LEASES.table).message
        for lease in tampered:
            errors[lease.lease_id] = await self._record_outcome(lease, refused, finished)
        await asyncio.gather(*tasks)
        try:
            await self._leases.finish_revocations(finished)
        finally:
            self._in_flight.difference_update(finished)
        return [errors[lease.lease_id] for lease in claimed]

    async def _record_outcome(
        self, lease: ClaimedLease, error: str | None, finished: list[str]
    ) -> str | None:
        """A failure is rescheduled with backoff now; a success joins ``finished`` (or is
        rechecked later, for a lease claimed while still being created)."""
        if self._metrics is not None:
            outcome = "failed" if error is not None else "revoked"
            self._metrics.revocations.labels(lease.plugin_name, outcome).inc()
            lag = (_now() - lease.expires_at).total_seconds()
            if error is None and lag >= 0:  # expiry-driven, not an early explicit revoke
                self._metrics.revocation_lag.labels(lease.plugin_name).observe(lag)
        if error is not None:
            delay = backoff_seconds(lease.attempts, self._settings.revoke_backoff_max)
            log.warning(
                "revoking %s failed (attempt %d, retry in %.0fs): %s",
                lease.lease_id,
                lease.attempts,
                delay,
                error,
            )
            await self._leases.schedule_revocation_retry(lease.lease_id, delay, error)
            self._in_flight.discard(lease.lease_id)
            return error
        crash_point("after_user_revoke")
        if await self._needs_recheck(lease):
            self._in_flight.discard(lease.lease_id)
        else:
            finished.append(lease.lease_id)
        return None

    async def _needs_recheck(self, lease: ClaimedLease) -> bool:
        """A lease still 'creating' when claimed may have a creator that is slow rather
        than dead; once no creation can still be running, revoke once more. A claim taken
        over unfinished (from a dead or departed node) counts as 'creating' too: its first
        holder may have claimed it so and died before scheduling this (see the SQL)."""
        if lease.prior_state != "creating":
            return False
        recheck_at = lease.issued_at + dt.timedelta(seconds=self._settings.creation_timeout)
        remaining = (recheck_at - _now()).total_seconds()
        if remaining <= 0:
            return False
        await self._leases.schedule_revocation_recheck(lease.lease_id, remaining)
        return True
