"""Issue, look up and renew leases: the request path from a creds read to a login.

The invariant issuance keeps: a lease row exists (committed) before the user it describes
is created, so a crash at any point leaves a row that revocation (revocation.py, the one
claim path every lease ends through) takes over.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from broker.exceptions import (
    InvalidRequest,
    StatementError,
    TargetUnavailable,
    TargetUnreachable,
    TooManyRequests,
)
from broker.models import Connection, Lease, NewLease, Role
from broker.server.batching import GroupCommit
from broker.server.database.issue_contexts import IssueContextCache
from broker.server.database.password_policies import PasswordPolicyStore
from broker.server.database.revocation import Revocations
from broker.server.engines.base import (
    DatabaseEngine,
    NewUserRequest,
    RenewUserRequest,
)
from broker.server.engines.registry import EngineRegistry
from broker.server.engines.templates import compiled_template, default_username
from broker.server.faults import crash_point
from broker.server.metrics import Metrics
from broker.server.secrets_gen import generate_password, lease_suffix
from broker.server.settings import Settings
from broker.server.storage.catalog import CatalogStore
from broker.server.storage.leases import LeaseStore

log = logging.getLogger(__name__)

#: The database-side expiry (PostgreSQL VALID UNTIL) trails the lease by this much, so the
#: broker's own revocation (which also ends sessions) normally comes first.
EXPIRATION_GRACE = dt.timedelta(seconds=5)


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
    #: (``endpoints.public_endpoint``); it holds the admin password, so never shown whole.
    connection: Connection | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class RenewedLease:
    lease_id: str
    lease_duration: int
    warnings: tuple[str, ...]


class LeaseManager:
    def __init__(
        self,
        leases: LeaseStore,
        catalog: CatalogStore,
        engines: EngineRegistry,
        settings: Settings,
        revocations: Revocations,
        contexts: IssueContextCache | None = None,
        metrics: Metrics | None = None,
        passwords: PasswordPolicyStore | None = None,
    ) -> None:
        """``revocations``: where a lease revoked while its user was being created goes
        (the one claim path, revocation.py)."""
        self._revocations = revocations
        self._metrics = metrics
        self._passwords = passwords
        self._leases = leases
        self._catalog = catalog
        self._engines = engines
        self._settings = settings
        self._contexts = contexts
        # Concurrent issuances share their storage round trips (see batching.py).
        self._inserts = GroupCommit(leases.insert_leases)
        self._activations = GroupCommit(leases.activate_leases)
        self._quota_locks: dict[tuple[str, str], asyncio.Lock] = {}

    # -- issuance -------------------------------------------------------------------------

    async def _connection_for(self, mount: str, name: str) -> Connection:
        connection = await self._catalog.get_connection(mount, name)
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
            else self._catalog.get_issue_context(mount, role_name)
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
            live = await self._leases.count_live_leases_of_role(role.mount, role.name)
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
        """Lease row committed, then the user, then activation: the crash-safe sequence.
        ``inserted`` (the quota's) is resolved once the lease row is committed."""
        ttl, max_ttl = self._lease_ttls(role)
        username = self._username(engine, connection, role, display_name)
        lease = self._new_lease(role, connection, username, ttl, max_ttl, token_accessor)
        written = await self._write_lease_row(lease)
        if inserted is not None:
            inserted.set_result(None)
        if not written:
            # The connection was deleted since the context was read (or with its mount):
            # no row, so no user. A delete that began later counts this lease and refuses.
            raise InvalidRequest(f"unknown database connection {connection.name!r}")
        crash_point("after_lease_insert")
        password = await self._password_for(connection)
        await self._create_user(engine, role, lease, password)
        crash_point("after_user_create")
        await self._activate(lease)
        return IssuedCredentials(lease.lease_id, username, password, ttl, connection=connection)

    def _lease_ttls(self, role: Role) -> tuple[int, int]:
        """(ttl, max_ttl) of a new lease: the role's, within the server's limits."""
        max_ttl = min(role.max_ttl or self._settings.max_lease_ttl, self._settings.max_lease_ttl)
        ttl = min(role.default_ttl or self._settings.default_lease_ttl, max_ttl)
        return ttl, max_ttl

    @staticmethod
    def _username(
        engine: DatabaseEngine, connection: Connection, role: Role, display_name: str
    ) -> str:
        """The connection's username template rendered, else the default; never longer
        than the database allows."""
        if not connection.username_template:
            return default_username(display_name, role.name, engine.username_limit)
        username = compiled_template(connection.username_template).render(display_name, role.name)
        if len(username) > engine.username_limit:
            raise InvalidRequest(
                f"username_template rendered {len(username)} characters; "
                f"the database allows {engine.username_limit}"
            )
        return username

    @staticmethod
    def _new_lease(
        role: Role,
        connection: Connection,
        username: str,
        ttl: int,
        max_ttl: int,
        token_accessor: str | None,
    ) -> NewLease:
        """The row that holds everything revocation needs, issued now."""
        now = _now()
        return NewLease(
            lease_id=f"{role.mount}/creds/{role.name}/{lease_suffix()}",
            mount=role.mount,
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

    async def _write_lease_row(self, lease: NewLease) -> bool:
        """Commit the lease row ('creating') before anything exists on the target, with
        the time the sweep takes it over should its creator never finish: the sooner of
        its expiry and the creation timeout. False: its connection no longer exists."""
        takeover_at = min(
            lease.expires_at,
            lease.issued_at + dt.timedelta(seconds=self._settings.creation_timeout),
        )
        return await self._inserts.submit((lease, takeover_at))

    async def _password_for(self, connection: Connection) -> str:
        """From the connection's password policy when it names one, else the default."""
        policy = connection.options.get("password_policy")
        if policy and self._passwords is not None:
            return await self._passwords.generate(policy)
        return generate_password()

    async def _create_user(
        self, engine: DatabaseEngine, role: Role, lease: NewLease, password: str
    ) -> None:
        """Create the user, recording on the lease row what a failure left behind."""
        try:
            # Bounded by the creation timeout: past it the sweep owns the lease, and the
            # recheck that follows a takeover assumes no creator is still at work.
            async with asyncio.timeout(self._settings.creation_timeout * 0.9):
                await engine.create_user(
                    NewUserRequest(
                        username=lease.username,
                        password=password,
                        expiration=lease.expires_at + EXPIRATION_GRACE,
                        creation_statements=role.creation_statements,
                        rollback_statements=role.rollback_statements,
                    )
                )
        except (StatementError, TargetUnreachable) as exc:
            # Rolled back, or never reached: nothing exists on the target.
            await self._leases.mark_lease_failed(lease.lease_id, exc.message)
            raise
        except BaseException as exc:
            # Unknown outcome (connection lost mid-way, timed out, cancelled): hand the lease
            # to the sweep, whatever state a takeover left it in.
            await asyncio.shield(self._leases.reopen_lease(lease.lease_id))
            if isinstance(exc, TimeoutError):
                raise TargetUnavailable("creating the user timed out") from exc
            raise

    async def _activate(self, lease: NewLease) -> None:
        """'creating' becomes 'active', unless a revocation claimed the lease meanwhile:
        then the user just made goes too."""
        if not await self._activations.submit(lease.lease_id):
            await self._leases.reopen_lease(lease.lease_id)
            await self._revocations.revoke(lease.lease_id)
            raise InvalidRequest("the lease was revoked while its credentials were being created")

    # -- lookup and renewal ---------------------------------------------------------------

    async def lookup(self, lease_id: str) -> Lease:
        """A lease Vault would still know (live, its user not yet revoked), as Vault's
        lookup answers it: anything else is 400 "invalid lease". Vault forgets a lease when
        it revokes it, and clients (hvac's ``read_lease`` raising ``InvalidRequest``) take
        that answer to mean the login is gone; ``history`` keeps the rest."""
        lease = await self._leases.get_lease(lease_id)
        if lease is None or not vault_knows(lease):
            raise InvalidRequest("invalid lease")
        return lease

    async def history(self, lease_id: str) -> Lease | None:
        """Every lease row still kept (until tidied), revoked or not: the broker's own view."""
        return await self._leases.get_lease(lease_id)

    async def renew(self, lease_id: str, increment: int) -> RenewedLease:
        # Checked: renewal runs the row's renew statements for its user, as the admin.
        lease = await self._leases.get_lease(lease_id, checked=True)
        refusal = renewal_refusal(lease, _now())
        if refusal or lease is None:
            raise InvalidRequest(refusal or "lease not found")
        if increment <= 0:
            role = await self._catalog.get_role(lease.mount, lease.role_name)
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
        if not await self._leases.renew_lease(lease_id, expires_at):
            raise InvalidRequest("lease not found")  # revoked meanwhile
        return RenewedLease(lease_id, int((expires_at - now).total_seconds()), warnings)

    async def list_keys(self, prefix: str) -> list[str]:
        return await self._leases.list_lease_keys(prefix)

    # -- reports (sys/leases/count, sys/leases/irrevocable, sys/metrics) -------------------

    async def failing_counts(self) -> dict[str, int]:
        """Leases whose revocation keeps failing (Vault's "irrevocable"), by mount prefix."""
        return await self._leases.count_failing_leases()

    async def list_failing(self, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` failing leases with their last error and next attempt."""
        return await self._leases.list_failing_leases(limit)

    async def counts_by_state(self) -> list[tuple[str, str, str, int]]:
        """(state, mount, role, count) of every lease row: the metrics' lease gauges."""
        return await self._leases.lease_counts()

    async def sweep_backlog(self) -> int:
        """Live leases already due for revocation: how far revocation is behind."""
        return await self._leases.sweep_backlog()
