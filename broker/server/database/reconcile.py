"""Orphan reconciliation: users on a target that look like the broker's but have no live
lease (left by a bug, a restored backup of storage, or a hand-run statement).

Reports by default; drops them only when asked (``broker reconcile --revoke``). A user is
recognised by the literal prefix of the connection's user names: ``v_`` for the default
template, the text before the first ``{{`` of a custom one (no prefix: not reconciled,
since nothing identifies the broker's users), and by holding only the characters the
broker's names are made of: a name with quotes or control characters was made by someone
else, and is logged as skipped, never reported as an orphan nor dropped.

A prefix is not proof of ownership: another broker, or Vault itself, issuing ``v_`` users
on the same server makes the same names. So each user an engine creates carries a mark of
this install (``broker_install``'s id: a role comment on PostgreSQL, membership of a
privilege-less role ``broker_<id>_<admin tag>`` on MySQL/MariaDB), and only marked users are
orphans that ``--revoke`` may drop. An unmarked look-alike without a live lease is
reported as ``unmarked`` and never touched: another install's, someone's by hand, or this
install's from before marks existed (drop those by hand once checked).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from broker.exceptions import BrokerError
from broker.models import Connection
from broker.server.engines.base import RevokeUserRequest
from broker.server.engines.registry import EngineRegistry
from broker.server.engines.templates import is_issued_username
from broker.server.storage.catalog import CatalogStore
from broker.server.storage.leases import LeaseStore

log = logging.getLogger(__name__)
DEFAULT_PREFIX = "v_"


@dataclass(frozen=True, slots=True)
class Orphan:
    mount: str
    connection: str
    username: str


@dataclass(slots=True)
class ReconcileReport:
    orphans: list[Orphan]
    revoked: list[Orphan]
    errors: list[str]
    #: Look-alikes without this install's mark: reported, never dropped.
    unmarked: list[Orphan] = field(default_factory=list)


def username_prefix(connection: Connection) -> str:
    if not connection.username_template:
        return DEFAULT_PREFIX
    return connection.username_template.split("{{", 1)[0]


class Reconciler:
    def __init__(self, catalog: CatalogStore, leases: LeaseStore, engines: EngineRegistry) -> None:
        self._catalog = catalog
        self._leases = leases
        self._engines = engines

    async def run(self, *, revoke: bool = False) -> ReconcileReport:
        report = ReconcileReport([], [], [])
        seen: set[str] = set()
        for connection in await self._catalog.list_all_connections():
            prefix = username_prefix(connection)
            if not prefix:
                continue
            engine = self._engines.get(connection)
            try:
                names = [n for n in await engine.list_users(prefix) if n not in seen]
                marked = await engine.marked_users(prefix) if names else set()
            except BrokerError as exc:
                report.errors.append(f"{connection.mount}/{connection.name}: {exc.message}")
                continue
            seen.update(names)
            for odd in [n for n in names if not is_issued_username(n)]:
                log.warning(
                    "reconcile skips user %r on %s/%s: not a name the broker makes",
                    odd,
                    connection.mount,
                    connection.name,
                )
            names = [n for n in names if is_issued_username(n)]
            live = await self._leases.live_usernames(names) if names else set()
            for name in names:
                if name in live:
                    continue
                orphan = Orphan(connection.mount, connection.name, name)
                if name not in marked:
                    report.unmarked.append(orphan)
                    continue
                report.orphans.append(orphan)
                if revoke:
                    try:
                        await engine.revoke_user(RevokeUserRequest(name, ()))
                        report.revoked.append(orphan)
                    except BrokerError as exc:
                        report.errors.append(f"{name}: {exc.message}")
        return report

    async def report_orphans(self, *, revoke: bool = False) -> None:
        """The scheduled form: report-only unless ``revoke`` (``reconcile_revoke``)."""
        report = await self.run(revoke=revoke)
        dropped = set(report.revoked)
        for orphan in report.orphans:
            log.warning(
                "orphan user %s on %s/%s has no live lease%s",
                orphan.username,
                orphan.mount,
                orphan.connection,
                ": dropped" if orphan in dropped else "",
            )
        for error in report.errors:
            log.warning("reconcile: %s", error)
        for other in report.unmarked:
            log.info(
                "user %s on %s/%s looks like the broker's but is not this install's: left alone",
                other.username,
                other.mount,
                other.connection,
            )
