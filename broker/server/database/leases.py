"""Issue, renew and revoke leases: the orchestration between storage and engines.

The invariant everything here keeps: a lease row exists (committed) before the user it
describes is created, and every live row is eventually revoked by one claim path, the
same for the scheduler, explicit revocation by id or prefix, and ``revoke-expired``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from dataclasses import dataclass, field

from broker.exceptions import (
    BrokerError,
    InvalidRequest,
    StatementError,
    TargetError,
    TargetUnavailable,
    TargetUnreachable,
    TooManyRequests,
)
from broker.models import ClaimedLease, Connection, Lease, NewLease, Role
from broker.server.batching import GroupCommit
from broker.server.database.issue_contexts import IssueContextCache
from broker.server.database.password_policies import PasswordPolicyStore
from broker.server.engines.base import (
    DatabaseEngine,
    NewUserRequest,
    RenewUserRequest,
    RevokeUserRequest,
)
from broker.server.engines.registry import EngineRegistry
from broker.server.engines.templates import compiled_template, default_username
from broker.server.faults import crash_point
from broker.server.metrics import Metrics
from broker.server.secrets_gen import generate_password, lease_suffix
from broker.server.settings import Settings
from broker.server.storage.store import Storage

log = logging.getLogger(__name__)

#: The database-side expiry (PostgreSQL VALID UNTIL) trails the lease by this much, so the
#: broker's own revocation (which also ends sessions) normally comes first.
EXPIRATION_GRACE = dt.timedelta(seconds=5)
_BACKOFF_BASE = 1.0


_TIDY_BATCH = 1000


def backoff_seconds(attempts: int, cap: float = 60.0) -> float:
    """Exponential backoff with jitter, capped; never gives up."""
    ceiling = min(cap, _BACKOFF_BASE * 2 ** max(0, attempts - 1))
    return float(ceiling / 2 + random.uniform(0, ceiling / 2))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def vault_knows(lease: Lease) -> bool:
    """Whether Vault would still hold this lease: live, and its user not yet revoked (a
    row whose user is gone but awaits a re-check has ``revoked_at`` set). Vault deletes a
    lease when it revokes it; the broker keeps the row as history."""
    return lease.is_live and lease.revoked_at is None


def renewal_refusal(lease: Lease | None, now: dt.datetime) -> str | None:
    """Vault's answer (leaseEntry.renewable) when ``lease`` cannot be renewed, else None.
    A lease whose revocation has started counts as expired, as after Vault's lazy revoke;
    one whose revocation keeps failing gets Vault's words for an irrevocable lease."""
    if lease is None or not vault_knows(lease) or lease.state == "creating":
        return "lease not found"
    if lease.state == "revoking" and lease.last_error:
        return "lease is expired and has failed previous revocation attempts"
    if lease.state == "revoking" or lease.expires_at <= now:
        return "lease expired"
    return None


@dataclass(frozen=True, slots=True)
class IssuedCredentials:
    lease_id: str
    username: str
    password: str = field(repr=False)
    lease_duration: int
    renewable: bool = True
    #: The connection the login was made on, for an answer that says where to log in
    #: (``catalog.public_endpoint``); it holds the admin password, so never shown whole.
    connection: Connection | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class RenewedLease:
    lease_id: str
    lease_duration: int
    warnings: tuple[str, ...]


@dataclass(slots=True)
class SweepResult:
    revoked: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


class LeaseManager:
    def __init__(
        self,
        storage: Storage,
        engines: EngineRegistry,
        settings: Settings,
        contexts: IssueContextCache | None = None,
        metrics: Metrics | None = None,
        passwords: PasswordPolicyStore | None = None,
        *,
        claim_owner: str | None = None,
    ) -> None:
        """``claim_owner``: this process's instance id (see nodes.py), recorded on every
        claim so that the heartbeats of the other nodes hand the claims back at once if
        this process dies; without one (a one-off CLI sweep) only the claim timeout does."""
        self._claim_owner = claim_owner
        self._metrics = metrics
        self._passwords = passwords
        self._storage = storage
        self._engines = engines
        self._settings = settings
        self._contexts = contexts
        # Concurrent issuances share their storage round trips (see batching.py).
        self._inserts = GroupCommit(storage.insert_leases)
        self._activations = GroupCommit(storage.activate_leases)
        self._connection_checks = GroupCommit(storage.connections_still_exist)
        self._sweep_lock = asyncio.Lock()
        self._quota_locks: dict[tuple[str, str], asyncio.Lock] = {}
        #: Leases this node has claimed and not yet recorded: released on shutdown.
        self._in_flight: set[str] = set()

    # -- issuance -------------------------------------------------------------------------

    async def _connection_for(self, mount: str, name: str) -> Connection:
        connection = await self._storage.get_connection(mount, name)
        if connection is None:
            raise InvalidRequest(f"unknown database connection {name!r}")
        return connection

    async def issue(
        self, mount: str, role_name: str, display_name: str, token_accessor: str | None = None
    ) -> IssuedCredentials:
        """``token_accessor``: the token asking, whose revocation revokes this lease (unless
        the role's leases are orphans)."""
        started = time.perf_counter()
        context = await (
            self._contexts.get(mount, role_name)
            if self._contexts is not None
            else self._storage.get_issue_context(mount, role_name)
        )
        if context is None:
            raise InvalidRequest(f"unknown role: {role_name}")
        role, connection = context
        if connection is None:
            raise InvalidRequest(f"unknown database connection {role.db_name!r}")
        if not connection.allows_role(role.name):
            raise InvalidRequest(
                f"{role.name!r} is not an allowed role of connection {connection.name!r}"
            )
        engine = self._engines.get(connection)
        try:
            accessor = None if role.orphan_leases else token_accessor
            if role.max_leases > 0:
                issued = await self._issue_within_quota(
                    engine, role, connection, display_name, accessor
                )
            else:
                issued = await self._issue(engine, role, connection, display_name, accessor)
        except BaseException as exc:
            if self._metrics is not None:  # labels only once the role is known: bounded
                self._metrics.issue_failed.labels(
                    mount, role.name, connection.plugin_name, type(exc).__name__
                ).inc()
            raise
        if self._metrics is not None:
            self._metrics.issued.labels(mount, role.name, connection.plugin_name).inc()
            self._metrics.issue_seconds.labels(mount, connection.plugin_name).observe(
                time.perf_counter() - started
            )
        return issued

    async def _issue_within_quota(
        self,
        engine: DatabaseEngine,
        role: Role,
        connection: Connection,
        display_name: str,
        token_accessor: str | None,
    ) -> IssuedCredentials:
        """A role's ``max_leases``: counted in storage, with this node's own issuances for
        the role serialised up to the lease row, so concurrent requests cannot all pass one
        count. Nodes check independently: under a race across nodes the quota can be
        exceeded by at most one lease per node."""
        lock = self._quota_locks.setdefault((role.mount, role.name), asyncio.Lock())
        async with lock:
            live = await self._storage.count_live_leases_of_role(role.mount, role.name)
            if live >= role.max_leases:
                raise TooManyRequests(
                    f"lease quota of role {role.name!r} reached: {live} live leases of "
                    f"{role.max_leases}; revoke some or wait for them to expire",
                    retry_after=self._settings.sweep_interval or 1.0,
                )
            inserted = asyncio.get_running_loop().create_future()
            task = asyncio.ensure_future(
                self._issue(engine, role, connection, display_name, token_accessor, inserted)
            )
            try:
                await asyncio.wait([inserted, task], return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                task.cancel()  # the caller went away: so does its issuance (crash-safe)
                raise
        return await task  # a cancellation here reaches the task too

    async def _issue(
        self,
        engine: DatabaseEngine,
        role: Role,
        connection: Connection,
        display_name: str,
        token_accessor: str | None,
        inserted: asyncio.Future[None] | None = None,
    ) -> IssuedCredentials:
        """Lease row committed, then the user, then activation: the crash-safe sequence."""
        mount = role.mount
        max_ttl = min(role.max_ttl or self._settings.max_lease_ttl, self._settings.max_lease_ttl)
        ttl = min(role.default_ttl or self._settings.default_lease_ttl, max_ttl)
        if connection.username_template:
            username = compiled_template(connection.username_template).render(
                display_name, role.name
            )
            if len(username) > engine.username_limit:
                raise InvalidRequest(
                    f"username_template rendered {len(username)} characters; "
                    f"the database allows {engine.username_limit}"
                )
        else:
            username = default_username(display_name, role.name, engine.username_limit)
        now = _now()
        lease = NewLease(
            lease_id=f"{mount}/creds/{role.name}/{lease_suffix()}",
            mount=mount,
            role_name=role.name,
            connection_name=connection.name,
            plugin_name=connection.plugin_name,
            username=username,
            revocation_statements=role.revocation_statements,
            renew_statements=role.renew_statements,
            issued_at=now,
            expires_at=now + dt.timedelta(seconds=ttl),
            max_expires_at=now + dt.timedelta(seconds=max_ttl),
            token_accessor=token_accessor,
        )
        takeover_at = min(
            lease.expires_at, now + dt.timedelta(seconds=self._settings.creation_timeout)
        )
        await self._inserts.submit((lease, takeover_at))
        if inserted is not None:
            inserted.set_result(None)
        crash_point("after_lease_insert")
        if not await self._connection_checks.submit((mount, connection.name)):
            # Deleted since the context was read (or with its mount): revocation would have
            # nothing to reach the user through, so none is made. A delete that began
            # earlier counted this lease row and refused instead.
            await self._storage.mark_lease_failed(lease.lease_id, "connection deleted")
            raise InvalidRequest(f"unknown database connection {connection.name!r}")

        policy = connection.options.get("password_policy")
        if policy and self._passwords is not None:
            password = await self._passwords.generate(policy)
        else:
            password = generate_password()
        try:
            # Bounded by the creation timeout: past it the sweep owns the lease, and the
            # recheck that follows a takeover assumes no creator is still at work.
            async with asyncio.timeout(self._settings.creation_timeout * 0.9):
                await engine.create_user(
                    NewUserRequest(
                        username=username,
                        password=password,
                        expiration=lease.expires_at + EXPIRATION_GRACE,
                        creation_statements=role.creation_statements,
                        rollback_statements=role.rollback_statements,
                    )
                )
        except (StatementError, TargetUnreachable) as exc:
            # Rolled back, or never reached: nothing exists on the target.
            await self._storage.mark_lease_failed(lease.lease_id, exc.message)
            raise
        except BaseException as exc:
            # Unknown outcome (connection lost mid-way, timed out, cancelled): hand the lease
            # to the sweep, whatever state a takeover left it in.
            await asyncio.shield(self._storage.reopen_lease(lease.lease_id))
            if isinstance(exc, TimeoutError):
                raise TargetUnavailable("creating the user timed out") from exc
            raise
        crash_point("after_user_create")

        if not await self._activations.submit(lease.lease_id):
            # Revoked while we were creating the user; the user we just made must go too.
            await self._storage.reopen_lease(lease.lease_id)
            await self.revoke(lease.lease_id)
            raise InvalidRequest("the lease was revoked while its credentials were being created")
        return IssuedCredentials(lease.lease_id, username, password, ttl, connection=connection)

    # -- lookup and renewal ---------------------------------------------------------------

    async def lookup(self, lease_id: str) -> Lease:
        """A lease Vault would still know (live, its user not yet revoked), as Vault's
        lookup answers it: anything else is 400 "invalid lease". Vault forgets a lease when
        it revokes it, and clients (hvac's ``read_lease`` raising ``InvalidRequest``) take
        that answer to mean the login is gone; ``history`` keeps the rest."""
        lease = await self._storage.get_lease(lease_id)
        if lease is None or not vault_knows(lease):
            raise InvalidRequest("invalid lease")
        return lease

    async def history(self, lease_id: str) -> Lease | None:
        """Every lease row still kept (until tidied), revoked or not: the broker's own view."""
        return await self._storage.get_lease(lease_id)

    async def renew(self, lease_id: str, increment: int) -> RenewedLease:
        lease = await self._storage.get_lease(lease_id)
        refusal = renewal_refusal(lease, _now())
        if refusal or lease is None:
            raise InvalidRequest(refusal or "lease not found")
        if increment <= 0:
            role = await self._storage.get_role(lease.mount, lease.role_name)
            increment = (role.default_ttl if role else 0) or self._settings.default_lease_ttl
        now = _now()
        expires_at = now + dt.timedelta(seconds=increment)
        warnings: tuple[str, ...] = ()
        if expires_at > lease.max_expires_at:
            expires_at = lease.max_expires_at
            capped = max(0, int((expires_at - now).total_seconds()))
            warnings = (
                f"TTL of {increment}s exceeded the effective max_ttl; "
                f"TTL value is capped accordingly to {capped}s",
            )
        if expires_at <= now:
            raise InvalidRequest("lease has reached its max_ttl and cannot be renewed")
        connection = await self._connection_for(lease.mount, lease.connection_name)
        # Database first, then the lease: if the second step fails the database-side expiry
        # is later than the lease's, and the sweep still revokes at the lease's.
        await self._engines.get(connection).renew_user(
            RenewUserRequest(lease.username, expires_at + EXPIRATION_GRACE, lease.renew_statements)
        )
        if not await self._storage.renew_lease(lease_id, expires_at):
            raise InvalidRequest("lease not found")  # revoked meanwhile
        return RenewedLease(lease_id, int((expires_at - now).total_seconds()), warnings)

    async def list_keys(self, prefix: str) -> list[str]:
        return await self._storage.list_lease_keys(prefix)

    # -- revocation -----------------------------------------------------------------------

    async def revoke(self, lease_id: str, *, sync: bool = True) -> None:
        """Revoke one lease, that id exactly; a lease that does not exist (or is already
        revoked) is a success with nothing to do, as in Vault."""
        if await self._storage.get_lease(lease_id) is None:
            return
        await self._revoke_matching(lease_id, exact=True, sync=sync)

    async def _prefix_scope(self, prefix: str) -> tuple[str, bool]:
        """Vault's revokePrefixCommon: without a trailing slash, a prefix that is itself a
        lease id means that one lease; otherwise it is whole path segments. A policy that
        allows ``revoke-prefix/database/creds/app`` must never reach
        ``database/creds/app-admin/...``."""
        if prefix.endswith("/"):
            return prefix, False
        if await self._storage.get_lease(prefix) is not None:
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
        due = await self._storage.make_leases_due(prefix, exact=exact)
        if not sync or due == 0:
            return due
        failures: list[str] = []
        while True:
            claimed = await self._storage.claim_due_leases(
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
        pending = await self._storage.count_pending_leases(prefix, exact=exact)
        while pending and not failures and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            pending = await self._storage.count_pending_leases(prefix, exact=exact)
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
        return await self._storage.force_revoked(scope, exact=exact)

    async def sweep(self) -> SweepResult:
        """Revoke every lease that is due: expired, retrying, or left by a crashed node.

        Claims bounded batches, so memory stays flat however long the backlog.
        """
        result = SweepResult()
        if self._storage.barrier.sealed:
            return result  # the connection passwords cannot be read: nothing is revoked
        started = time.monotonic()
        async with self._sweep_lock:
            while True:
                claimed = await self._storage.claim_due_leases(
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
            batch = await self._storage.tidy_leases(self._settings.lease_retention, _TIDY_BATCH)
            removed += batch
            if batch < _TIDY_BATCH:
                break
        removed_wraps = await self._storage.tidy_wrapped_responses()
        if removed or removed_wraps:
            log.info(
                "tidied %d lease row(s), %d expired wrapped response(s)", removed, removed_wraps
            )
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
        await self._storage.release_claims(pending)
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
        for lease in claimed:
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
            connection = await self._storage.get_connection(mount, name)
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
        await asyncio.gather(*tasks)
        try:
            await self._storage.finish_revocations(finished)
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
            await self._storage.schedule_revocation_retry(lease.lease_id, delay, error)
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
        await self._storage.schedule_revocation_recheck(lease.lease_id, remaining)
        return True
