"""Making storage match the declarative section: the plan, and applying it.

The plan compares each declared object with storage and with what the last apply wrote
(the record in ``broker_declared``): ``create`` (missing), ``update`` (differs from the
file: ``fields`` names what), ``unchanged``; for objects the record holds but the file no
longer declares, ``delete`` when the file prunes their kind, else ``release`` (left in
storage, no longer managed). ``drift`` names the fields that changed outside the file
since it was last applied (through the API): the apply sets them back, and says so.

Only what the record holds is ever deleted, so objects made through the API are never
touched by pruning unless the file declares them (which adopts them). A connection's
password is written when the connection is created, when the file's password changes
(known by its keyed hash in the record), or when an object is adopted whose stored
password differs from the file's; otherwise a password the broker rotated since
(``rotate-root``) is kept, not set back to the file's. An auth method's config secret,
which nothing but the file sets, is compared with the stored one as well: a different one
is drift, set back.

An apply holds a cluster-wide advisory lock from before the plan is made until the last
write, so nodes starting together apply one after another; the later ones find every
object unchanged. Applying twice changes nothing the second time.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from broker.exceptions import BrokerError
from broker.server.bootstrap.config import (
    KIND_ORDER,
    KIND_SECTIONS,
    UNPRUNABLE,
    DeclarativeConfig,
    Declared,
)
from broker.server.bootstrap.kinds import KINDS
from broker.server.bootstrap.targets import Targets
from broker.server.storage.declared import DeclaredEntry

log = logging.getLogger(__name__)
ACTIONS = ("create", "update", "delete", "unchanged", "release", "error")


@dataclass(frozen=True, slots=True)
class Change:
    """One line of a plan. Names of fields only, never values (a statement or an option
    may be sensitive enough; a password certainly is)."""

    kind: str
    path: str
    action: str
    #: What differs between storage and the file (``password``, or the object's other
    #: secret name: the file's secret is to be written).
    fields: tuple[str, ...] = ()
    #: Of those, the ones changed outside the file since it was last applied.
    drift: tuple[str, ...] = ()
    note: str = ""
    #: Why applying it failed (or, for ``error``, reading it).
    error: str = ""
    #: What the domain warned of when writing it (a privilege the target admin lacks).
    warnings: tuple[str, ...] = ()

    def line(self) -> str:
        parts = [f"{self.action:<9}", f"{self.kind:<15}", self.path]
        if self.fields:
            parts.append(f"[{', '.join(self.fields)}]")
        if self.drift:
            parts.append(f"drift: {', '.join(self.drift)} changed outside the file")
        if self.note:
            parts.append(f"({self.note})")
        if self.error:
            parts.append(f"FAILED: {self.error}")
        parts.extend(f"warning: {warning}" for warning in self.warnings)
        return "  ".join(parts)


@dataclass(frozen=True, slots=True)
class _Step:
    change: Change
    obj: Declared | None = None
    entry: DeclaredEntry | None = None
    #: The declared secret, when it is to be written.
    secret: str | None = dataclasses.field(default=None, repr=False)
    #: The record to write once done (also for ``unchanged`` objects adopted or whose
    #: record is out of date), else None.
    record: bool = False


def summary(changes: list[Change]) -> str:
    counts = Counter(c.action for c in changes)
    parts = [f"{counts[a]} to {a}" for a in ("create", "update", "delete") if counts[a]]
    parts += [f"{counts[a]} {a}" for a in ("unchanged", "release") if counts[a]]
    drifted = sum(1 for c in changes if c.drift or c.note == "deleted outside the file")
    failed = sum(1 for c in changes if c.error)
    if drifted:
        parts.append(f"{drifted} drifted")
    if failed:
        parts.append(f"{failed} failed")
    return ", ".join(parts) or "nothing declared"


def pending(changes: list[Change]) -> bool:
    """Whether applying would change storage."""
    return any(c.action in ("create", "update", "delete") for c in changes)


def _ledger_value(obj: Declared) -> dict[str, Any]:
    return {"key": list(obj.key), "values": obj.values}


async def _plan_object(t: Targets, obj: Declared, entry: DeclaredEntry | None) -> _Step:
    kind = KINDS[obj.kind]
    current = await kind.read(t, obj.key)
    applied: dict[str, Any] | None = entry.applied.get("values") if entry else None
    if current is None:
        note = "deleted outside the file" if entry is not None else ""
        change = Change(obj.kind, obj.path, "create", note=note)
        return _Step(change, obj, entry, obj.secret, record=True)
    fields = [k for k, v in obj.values.items() if current.get(k) != v]
    drift = [k for k in fields if applied is not None and current.get(k) != applied.get(k)]
    write_secret = False
    if obj.secret is not None:
        hashed = t.ledger.secret_hmac(obj.kind, obj.path, obj.secret)
        recorded = entry.secret_hmac if entry is not None else ""
        if recorded and kind.keeps_secret:
            write_secret = hashed != recorded
        else:
            write_secret = await kind.stored_secret(t, obj.key) != obj.secret
            if write_secret and hashed == recorded:
                drift.append(obj.secret_name)  # the file's is the one applied last
    if write_secret:
        fields.append(obj.secret_name)
    note = "" if entry is not None else "adopted: made outside the file"
    action = "update" if fields else "unchanged"
    stale = (
        entry is None
        or entry.applied != _ledger_value(obj)
        or (
            obj.secret is not None
            and entry.secret_hmac != t.ledger.secret_hmac(obj.kind, obj.path, obj.secret)
        )
    )
    change = Change(obj.kind, obj.path, action, tuple(fields), tuple(drift), note)
    return _Step(change, obj, entry, obj.secret if write_secret else None, record=stale)


#: The record of the highest ``serial`` applied (never an object: no kind of KIND_ORDER).
_SERIAL = ("serial", "declarative")


async def make_plan(t: Targets, config: DeclarativeConfig) -> tuple[list[_Step], int | None]:
    """The steps, and the serial last applied (None: none recorded)."""
    ledger = await t.ledger.entries()
    last = ledger.get(_SERIAL)
    applied_serial = int(last.applied.get("serial", 0)) if last is not None else None
    if config.serial is not None and applied_serial is not None and config.serial < applied_serial:
        error = (
            f"this file's serial {config.serial} is older than the one applied last "
            f"({applied_serial}): nothing applied"
        )
        return [_Step(Change(*_SERIAL, "error", error=error))], applied_serial
    steps: list[_Step] = []
    declared = {(o.kind, o.path) for o in config.objects}
    for obj in config.objects:
        entry = ledger.get((obj.kind, obj.path))
        try:
            steps.append(await _plan_object(t, obj, entry))
        except BrokerError as exc:
            steps.append(_Step(Change(obj.kind, obj.path, "error", error=exc.message)))
    order = {kind: i for i, kind in enumerate(KIND_ORDER)}
    removed = sorted(
        (e for k, e in ledger.items() if k not in declared and e.kind in order),
        key=lambda e: (-order[e.kind], e.path),
    )
    for entry in removed:
        if KIND_SECTIONS[entry.kind] in config.prune:
            steps.append(_Step(Change(entry.kind, entry.path, "delete"), entry=entry))
        else:
            note = f"removed from the file; {KIND_SECTIONS[entry.kind]!r} is not in prune"
            if entry.kind in UNPRUNABLE:
                note = "removed from the file; it is deleted only with its auth method"
            steps.append(_Step(Change(entry.kind, entry.path, "release", note=note), entry=entry))
    return steps, applied_serial


async def _execute(t: Targets, step: _Step) -> Change:
    change, obj, entry = step.change, step.obj, step.entry
    if change.action == "error":
        return change
    if change.action in ("create", "update") and obj is not None:
        current = None if change.action == "create" else await KINDS[obj.kind].read(t, obj.key)
        warnings = await KINDS[obj.kind].write(t, obj, current, step.secret)
        change = dataclasses.replace(change, warnings=tuple(warnings))
    elif change.action == "delete" and entry is not None:
        key = tuple(entry.applied.get("key") or ())
        kind = KINDS[entry.kind]
        if await kind.read(t, key) is not None:
            await kind.delete(t, key)
    if change.action in ("delete", "release"):
        await t.ledger.forget(change.kind, change.path)
    elif step.record and obj is not None:
        # A file that stops naming the password keeps the record of the last one it wrote:
        # naming the same one again later must not set back a password rotated since. A
        # secret only the file sets has none to keep: it was unset with the write.
        secret_hmac = entry.secret_hmac if entry is not None else ""
        if obj.secret is not None:
            secret_hmac = t.ledger.secret_hmac(obj.kind, obj.path, obj.secret)
        elif not KINDS[obj.kind].keeps_secret:
            secret_hmac = ""
        await t.ledger.record(obj.kind, obj.path, _ledger_value(obj), secret_hmac)
    return change


async def apply(t: Targets, config: DeclarativeConfig, *, dry_run: bool = False) -> list[Change]:
    """The plan, and unless ``dry_run`` its execution: every object is attempted, a
    failure is recorded on its change (``error``) and the rest go on (an object that
    needs the failed one fails too, with its own reason)."""
    if dry_run:
        steps, _ = await make_plan(t, config)
        return [step.change for step in steps]
    async with t.ledger.lock():
        steps, applied_serial = await make_plan(t, config)
        done: list[Change] = []
        for step in steps:
            try:
                done.append(await _execute(t, step))
            except BrokerError as exc:
                done.append(dataclasses.replace(step.change, error=exc.message))
        stale = any(c.kind == _SERIAL[0] for c in done)
        if config.serial is not None and config.serial != applied_serial and not stale:
            await t.ledger.record(*_SERIAL, {"serial": config.serial}, "")
        return done


class DeclarativeRunner:
    """The server's applies: after every unseal, before the node serves (so a node that
    reports healthy has its declared objects), and every ``RETRY_SECONDS`` while the last
    one left failures (a target not reachable yet at start). A failure never keeps the
    node from serving: leases must be revoked whatever the configuration says."""

    RETRY_SECONDS = 30.0

    def __init__(
        self,
        targets: Targets,
        config: DeclarativeConfig,
        report_failures: Callable[[int], None] = lambda _: None,
    ) -> None:
        self._targets = targets
        self._config = config
        self._report = report_failures
        self._failed = False

    async def apply(self) -> list[Change]:
        try:
            changes = await apply(self._targets, self._config)
        except BrokerError as exc:  # storage or the keyring: the whole apply
            log.error("declarative configuration not applied: %s", exc.message)
            self._failed = True
            self._report(1)
            return []
        except Exception:
            # Never a reason to stay sealed: the node must go on revoking leases.
            log.exception("declarative configuration not applied")
            self._failed = True
            self._report(1)
            return []
        failures = 0
        for change in changes:
            if change.error:
                failures += 1
                log.error("declarative configuration: %s", change.line())
            elif change.warnings:
                log.warning("declarative configuration: %s", change.line())
            elif change.action != "unchanged":
                log.info("declarative configuration: %s", change.line())
        log.info(
            "declarative configuration from %s applied: %s", self._config.source, summary(changes)
        )
        self._failed = failures > 0
        self._report(failures)
        return changes

    async def retry(self) -> None:
        """The periodic job: apply again only while the last apply left failures."""
        if self._failed:
            await self.apply()
