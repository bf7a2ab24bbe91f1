"""Lease rows in storage: written before the user exists, claimed by exactly one revoker,
kept as history until tidied. The SQL is ``sql/leases.sql``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import asyncpg

from broker.exceptions import RowIntegrityError
from broker.models import ClaimedLease, Lease, NewLease
from broker.server.storage import integrity
from broker.server.storage.connector import Connector, Store, rows_affected
from broker.server.storage.keyring import KeyringStore

#: The columns a seeded lease row gets from its ``NewLease`` (bulk_insert_leases), in the
#: order of the COPY; ``due_at``, ``state`` and ``mac`` follow.
_SEEDED_FIELDS = (
    "lease_id",
    "mount",
    "role_name",
    "connection_name",
    "plugin_name",
    "username",
    "issued_at",
    "expires_at",
    "max_expires_at",
)


def _like_literal(text: str) -> str:
    """``text`` as a LIKE pattern that matches only itself: ``%``, ``_`` and the escape
    character (PostgreSQL's default, backslash) lose their meaning, since a role name may
    well contain ``_``."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def segment_prefix(prefix: str) -> str:
    """``prefix`` as whole path segments: ``database/creds/app`` becomes
    ``database/creds/app/``, so it never reaches ``database/creds/app-admin/...`` (Vault's
    lease prefixes are storage paths, matched by segment). ``""`` stays every lease."""
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def lease_pattern(prefix: str, *, exact: bool = False) -> str:
    """The LIKE pattern for the leases a prefix operation touches: the one id when
    ``exact``, else every id under ``prefix`` taken as whole segments."""
    if exact:
        return _like_literal(prefix)
    return _like_literal(segment_prefix(prefix)) + "%"


_CLAIMED_FIELDS = tuple(f.name for f in dataclasses.fields(ClaimedLease))
_LEASE_FIELDS = tuple(f.name for f in dataclasses.fields(Lease))


def _insert_row(lease: NewLease, takeover_at: dt.datetime, mac: bytes | None) -> tuple[Any, ...]:
    """One lease as the parameters of ``insert_leases``, in its order ($1..$14)."""
    return (
        lease.lease_id,
        lease.mount,
        lease.role_name,
        lease.connection_name,
        lease.plugin_name,
        lease.username,
        json.dumps(list(lease.revocation_statements)),
        json.dumps(list(lease.renew_statements)),
        lease.issued_at,
        lease.expires_at,
        lease.max_expires_at,
        takeover_at,
        lease.token_accessor,
        mac,
    )


def _model_value(value: Any) -> Any:
    """A column as the models hold it (``record``): arrays become tuples."""
    return tuple(value) if isinstance(value, list) else value


class LeaseStore(Store):
    """Lease rows are authenticated (storage/integrity.py ``LEASES``): the statements,
    user, connection and engine a lease was issued with are MACed at insert and checked
    before a revocation or renewal acts on them, so a storage writer cannot make the
    broker run their SQL as a target's admin."""

    QUERY_FILE = "leases"

    def __init__(self, connector: Connector, keyring: KeyringStore) -> None:
        super().__init__(connector)
        self._keyring = keyring

    async def _mac(self, lease: NewLease) -> bytes | None:
        return await self._keyring.mac_row(integrity.LEASES, dataclasses.asdict(lease))

    async def _checked(self, row: asyncpg.Record) -> bool:
        """Whether the row's MAC authenticates it; a failure is alerted on and counted
        (the keyring store's listeners) and the row must not be acted on."""
        try:
            await self._keyring.check_row(integrity.LEASES, row)
        except RowIntegrityError:
            return False
        return True

    # -- issuance -------------------------------------------------------------------------

    async def insert_leases(self, leases: Sequence[tuple[NewLease, dt.datetime]]) -> list[bool]:
        """Lease rows with the time the sweep takes each over if it is still 'creating'
        (the sooner of expiry and the creation timeout); one statement. For each, whether
        it was written: not when its connection was deleted meanwhile (see the query)."""
        if not leases:
            return []
        rows = [
            _insert_row(lease, takeover_at, await self._mac(lease)) for lease, takeover_at in leases
        ]
        columns = [list(column) for column in zip(*rows, strict=True)]
        written = {row["lease_id"] for row in await self._fetch("insert_leases", *columns)}
        return [lease.lease_id in written for lease, _ in leases]

    async def activate_leases(self, lease_ids: Sequence[str]) -> list[bool]:
        """For each id, whether it went from 'creating' to 'active'."""
        rows = await self._fetch("activate_leases", list(lease_ids))
        activated = {row["lease_id"] for row in rows}
        return [lease_id in activated for lease_id in lease_ids]

    async def mark_lease_failed(self, lease_id: str, error: str) -> None:
        await self._execute("mark_lease_failed", lease_id, error)

    async def reopen_lease(self, lease_id: str) -> None:
        await self._execute("reopen_lease", lease_id)

    async def count_live_leases_of_role(self, mount: str, role: str) -> int:
        return int(await self._fetchval("count_live_leases_of_role", mount, role))

    async def bulk_insert_leases(self, leases: Sequence[NewLease], state: str) -> None:
        """Seeds many rows at once; for benchmarks and tests of the sweep, not the API.
        Authenticated like any lease when this store's barrier is unsealed; seeded through
        a sealed one, the rows carry no MAC and every revocation of them fails its check."""
        macs = [None if self.barrier.sealed else await self._mac(x) for x in leases]
        async with self._db.session() as conn:
            await conn.copy_records_to_table(
                "broker_leases",
                columns=[
                    *_SEEDED_FIELDS,
                    "revocation_statements",
                    "renew_statements",
                    "token_accessor",
                    "due_at",
                    "state",
                    "mac",
                ],
                records=[
                    (
                        *(getattr(x, name) for name in _SEEDED_FIELDS),
                        list(x.revocation_statements),
                        list(x.renew_statements),
                        x.token_accessor,
                        x.expires_at,
                        state,
                        mac,
                    )
                    for x, mac in zip(leases, macs, strict=True)
                ],
            )

    # -- lookup and renewal ---------------------------------------------------------------

    async def get_lease(self, lease_id: str, *, checked: bool = False) -> Lease | None:
        """The lease row; ``checked`` (before acting on it: renewal) raises
        ``RowIntegrityError`` unless its MAC authenticates it. Lookups only show it."""
        row = await self._fetchrow("get_lease", lease_id)
        if row is None:
            return None
        if checked:
            await self._keyring.check_row(integrity.LEASES, row)
        return Lease(**{name: _model_value(row[name]) for name in _LEASE_FIELDS})

    async def renew_lease(self, lease_id: str, expires_at: dt.datetime) -> bool:
        return await self._fetchval("renew_lease", lease_id, expires_at) is not None

    async def list_lease_keys(self, prefix: str) -> list[str]:
        """The next segment of every live lease under ``prefix`` (whole segments)."""
        prefix = segment_prefix(prefix)
        rows = await self._fetch("list_lease_keys", lease_pattern(prefix), len(prefix) + 1)
        return [row["key"] for row in rows]

    # -- revocation -----------------------------------------------------------------------

    async def claim_due_leases(
        self,
        limit: int,
        claim_seconds: float,
        prefix: str = "",
        *,
        exact: bool = False,
        owner: str | None = None,
    ) -> list[ClaimedLease]:
        """Due leases (all of them, those under ``prefix``, or the one id when ``exact``),
        claimed by the process ``owner`` (its instance id): when that process is seen dead,
        ``release_dead_claims`` hands them back at once. No owner (a one-off CLI sweep, with
        no heartbeat): only the claim timeout does."""
        rows = await self._fetch(
            "claim_due_leases",
            limit,
            float(claim_seconds),
            lease_pattern(prefix, exact=exact),
            owner,
        )
        return [
            ClaimedLease(
                **{name: _model_value(row[name]) for name in _CLAIMED_FIELDS if name != "tampered"},
                tampered=not await self._checked(row),
            )
            for row in rows
        ]

    async def make_leases_due(self, prefix: str, *, exact: bool = False) -> int:
        pattern = lease_pattern(prefix, exact=exact)
        return rows_affected(await self._execute("make_leases_due", pattern))

    async def count_pending_leases(self, prefix: str, *, exact: bool = False) -> int:
        pattern = lease_pattern(prefix, exact=exact)
        return int(await self._fetchval("count_pending_leases", pattern))

    async def finish_revocations(self, lease_ids: Sequence[str]) -> None:
        if lease_ids:
            await self._execute("finish_revocations", list(lease_ids))

    async def schedule_revocation_retry(
        self, lease_id: str, delay_seconds: float, error: str | None
    ) -> None:
        await self._execute("schedule_revocation_retry", lease_id, float(delay_seconds), error)

    async def schedule_revocation_recheck(self, lease_id: str, delay_seconds: float) -> None:
        await self._execute("schedule_revocation_recheck", lease_id, float(delay_seconds))

    async def force_revoked(self, prefix: str, *, exact: bool = False) -> int:
        pattern = lease_pattern(prefix, exact=exact)
        return rows_affected(await self._execute("force_revoked", pattern))

    async def release_claims(self, lease_ids: Sequence[str]) -> None:
        if lease_ids:
            await self._execute("release_claims", list(lease_ids))

    async def live_usernames(self, names: Sequence[str]) -> set[str]:
        rows = await self._fetch("live_usernames", list(names))
        return {row["username"] for row in rows}

    # -- reports and housekeeping ---------------------------------------------------------

    async def count_failing_leases(self) -> dict[str, int]:
        return {row["prefix"]: row["n"] for row in await self._fetch("count_failing_leases")}

    async def list_failing_leases(self, limit: int) -> list[dict[str, Any]]:
        return [dict(row) for row in await self._fetch("list_failing_leases", limit)]

    async def lease_counts(self) -> list[tuple[str, str, str, int]]:
        rows = await self._fetch("lease_counts")
        return [(r["state"], r["mount"], r["role_name"], r["n"]) for r in rows]

    async def sweep_backlog(self) -> int:
        return int(await self._fetchval("sweep_backlog"))

    async def tidy_leases(self, retention_seconds: float, batch: int) -> int:
        status = await self._execute("tidy_leases", float(retention_seconds), batch)
        return rows_affected(status)
