"""Password rotation of existing accounts: static roles, and the broker's own admin
account on a target (rotate-root).

Both follow one crash-safe sequence, so that no crash can leave a password that nobody
knows:

1. the new password is stored (barrier ciphertext) as *pending*, committed;
2. the account is changed on the target (running it again with the same password is
   harmless);
3. the pending password becomes the current one.

The password served (static-creds) or used (the connection) stays the old one until step 3.
A rotation found with a pending password (a crash between 1 and 3) is finished by running
2 and 3 again with the stored pending password. Rotations of one account are serialised
across nodes by an advisory lock held on a storage session for the rotation's length.

When rotations happen is decided by APScheduler's triggers (a fixed period, or a cron
schedule with a window); the time of the next one is kept in storage, and a periodic job on
every node rotates what is due, so a rotation is neither lost nor run twice when nodes come
and go.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass

from apscheduler.triggers.cron import CronTrigger

from broker.exceptions import (
    BrokerError,
    InvalidRequest,
    NotFound,
    StatementError,
    TargetUnreachable,
    TooManyRequests,
)
from broker.models import Connection, StaticRole
from broker.server.database.password_policies import PasswordPolicyStore
from broker.server.database.revocation import backoff_seconds
from broker.server.engines.base import SetPasswordRequest
from broker.server.engines.registry import EngineRegistry, build_engine
from broker.server.engines.templates import check_account_name, check_statements
from broker.server.faults import crash_point
from broker.server.storage.catalog import CatalogStore

log = logging.getLogger(__name__)
MIN_ROTATION_PERIOD = 5  # seconds, as in Vault
_DUE_BATCH = 50


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_schedule(schedule: str) -> CronTrigger:
    try:
        return CronTrigger.from_crontab(schedule, timezone=dt.UTC)
    except ValueError as exc:
        raise InvalidRequest(f"rotation_schedule: {exc}") from exc


def next_rotation(role: StaticRole, after: dt.datetime) -> dt.datetime:
    if role.rotation_schedule:
        fire = parse_schedule(role.rotation_schedule).get_next_fire_time(None, after)
        assert fire is not None  # a five-field crontab always fires again
        return fire  # type: ignore[no-any-return]
    return after + dt.timedelta(seconds=role.rotation_period)


@dataclass(frozen=True, slots=True)
class StaticRoleUpdate:
    db_name: str | None = None
    username: str | None = None
    rotation_period: int | None = None
    rotation_schedule: str | None = None
    rotation_window: int | None = None
    rotation_statements: tuple[str, ...] | None = None


class RotationBusy(TooManyRequests):
    """Another rotation of the account holds its lock: a 429 with Retry-After."""

    def __init__(self) -> None:
        super().__init__("another rotation of this account is in progress; try again shortly")


class Rotations:
    def __init__(
        self, store: CatalogStore, engines: EngineRegistry, passwords: PasswordPolicyStore
    ) -> None:
        self._store = store
        self._engines = engines
        self._passwords = passwords

    async def _connection(self, mount: str, name: str) -> Connection:
        connection = await self._store.get_connection(mount, name)
        if connection is None:
            raise InvalidRequest(f"unknown database connection {name!r}")
        return connection

    # -- static roles ---------------------------------------------------------------------

    async def write_static_role(self, mount: str, name: str, update: StaticRoleUpdate) -> None:
        """Validate, store, and (on creation, as Vault does) rotate at once, so the broker
        knows the password it will serve."""
        existing = await self._store.get_static_role(mount, name)
        if existing is None:
            if not update.db_name or not update.username:
                raise InvalidRequest("db_name and username are required")
            check_account_name("username", update.username)
            base = StaticRole(mount, name, "", "", 0, "", 0, (), "", None, None, _now(), 0, None)
        else:
            if update.username not in (None, existing.username):
                raise InvalidRequest("cannot change the username of a static role")
            base = existing
        changes = {k: v for k, v in dataclasses.asdict(update).items() if v is not None}
        if update.rotation_period and "rotation_schedule" not in changes:
            changes["rotation_schedule"] = ""
        if update.rotation_schedule and "rotation_period" not in changes:
            changes["rotation_period"] = 0
        role = dataclasses.replace(base, **changes)
        if bool(role.rotation_period) == bool(role.rotation_schedule):
            raise InvalidRequest("exactly one of rotation_period or rotation_schedule is needed")
        if role.rotation_period and role.rotation_period < MIN_ROTATION_PERIOD:
            raise InvalidRequest(f"rotation_period must be at least {MIN_ROTATION_PERIOD}s")
        if role.rotation_schedule:
            parse_schedule(role.rotation_schedule)
        elif role.rotation_window:
            raise InvalidRequest("rotation_window is only valid with rotation_schedule")
        if role.rotation_window < 0:
            raise InvalidRequest("rotation_window cannot be negative")
        check_statements("rotation_statements", role.rotation_statements)
        connection = await self._connection(mount, role.db_name)
        if not connection.allows_role(name):
            raise InvalidRequest(f"{name!r} is not an allowed role of connection {role.db_name!r}")
        if role.username == connection.username:
            raise InvalidRequest(
                "the static role's account is the connection's own; rotate it with rotate-root"
            )
        if existing is None and not await self._engines.get(connection).user_exists(role.username):
            # Checked before anything is stored, as Vault does: a static role manages an
            # account that exists; it never creates one.
            raise InvalidRequest(
                f"user {role.username!r} does not exist on database connection {role.db_name!r}"
            )
        role = dataclasses.replace(role, next_rotation=next_rotation(role, _now()))
        await self._store.upsert_static_role(role)
        if existing is None:
            try:
                await self.rotate_static(mount, name)
            except (StatementError, TargetUnreachable):
                # Nothing changed on the target (no such account, no privilege, target not
                # reached): as in Vault, the role is not created. Any other failure leaves
                # the pending rotation for the scheduler, which knows its password.
                await self._store.delete_static_role(mount, name)
                raise

    async def read_static_role(self, mount: str, name: str) -> StaticRole:
        role = await self._store.get_static_role(mount, name)
        if role is None:
            raise NotFound()
        return role

    async def list_static_roles(self, mount: str) -> list[str]:
        return await self._store.list_static_roles(mount)

    async def delete_static_role(self, mount: str, name: str) -> None:
        """The account stays on the target with its last password (Vault's behaviour)."""
        await self._store.delete_static_role(mount, name)

    async def rotate_static(self, mount: str, name: str, *, wait: bool = True) -> bool:
        """Rotate now. False when another rotation holds the account and ``wait`` is off."""
        async with self._store.rotation_lock(f"static/{mount}/{name}") as got:
            if not got:
                if wait:
                    raise RotationBusy()
                return False
            role = await self.read_static_role(mount, name)
            connection = await self._connection(mount, role.db_name)
            password = role.pending_password
            if password is None:
                password = await self._passwords.generate(connection.options.get("password_policy"))
                await self._store.set_static_pending(mount, name, password)
            crash_point("after_static_pending")
            try:
                # Checked again here for roles stored before names were checked on write.
                check_account_name("username", role.username)
                await self._engines.get(connection).set_password(
                    SetPasswordRequest(role.username, password, role.rotation_statements)
                )
            except BrokerError as exc:
                delay = backoff_seconds(role.attempts + 1, cap=300.0)
                await self._store.fail_static_rotation(mount, name, exc.message, delay)
                raise
            crash_point("after_static_change")
            await self._store.commit_static_rotation(
                mount, name, password, next_rotation(role, _now())
            )
            log.info("rotated static role %s/%s", mount, name)
            return True

    async def rotate_due(self) -> int:
        """Scheduled: rotate what is due (or left pending by a crash). A scheduled time
        missed by more than ``rotation_window`` waits for the next one, as in Vault."""
        done = 0
        for mount, name in await self._store.due_static_roles(_DUE_BATCH):
            role = await self._store.get_static_role(mount, name)
            if role is None:
                continue
            late = (_now() - role.next_rotation).total_seconds()
            if (
                role.pending_password is None
                and role.rotation_schedule
                and role.rotation_window
                and late > role.rotation_window
                and role.attempts == 0
            ):
                await self._store.upsert_static_role(
                    dataclasses.replace(role, next_rotation=next_rotation(role, _now()))
                )
                continue
            try:
                if await self.rotate_static(mount, name, wait=False):
                    done += 1
            except BrokerError as exc:
                log.warning("rotating static role %s/%s failed: %s", mount, name, exc.message)
        return done

    # -- the broker's own admin account ---------------------------------------------------

    async def rotate_root(self, mount: str, name: str) -> None:
        async with self._store.rotation_lock(f"root/{mount}/{name}") as got:
            if not got:
                raise RotationBusy()
            connection = await self._connection(mount, name)
            if not connection.username:
                raise InvalidRequest("the connection has no username whose password to rotate")
            check_account_name("the connection's username", connection.username)
            pending = await self._store.connection_pending_password(mount, name)
            if pending is None:
                pending = await self._passwords.generate(connection.options.get("password_policy"))
                await self._store.set_connection_pending_password(mount, name, pending)
            crash_point("after_root_pending")
            await self._change_root(connection, pending)
            crash_point("after_root_change")
            await self._store.commit_connection_password(mount, name)
            self._engines.forget(mount, name)
            log.info("rotated the root credentials of %s/%s", mount, name)

    async def _change_root(self, connection: Connection, new_password: str) -> None:
        """With the current password; if that no longer works, a crashed rotation may
        already have set the new one: then there is nothing left to change."""
        statements = tuple(connection.options.get("root_rotation_statements") or ())
        engine = build_engine(connection)
        try:
            await engine.set_password(
                SetPasswordRequest(connection.username, new_password, statements)
            )
            return
        except BrokerError as exc:
            first_error = exc
        finally:
            await engine.close()
        with_new = build_engine(dataclasses.replace(connection, password=new_password))
        try:
            await with_new.verify_connection()
        except BrokerError:
            raise first_error from None
        finally:
            await with_new.close()

    async def finish_root_rotations(self) -> int:
        """Scheduled and after unseal: rotations of root credentials a crash left pending."""
        finished = 0
        for mount, name in await self._store.connections_with_pending_password():
            try:
                await self.rotate_root(mount, name)
                finished += 1
            except BrokerError as exc:
                log.warning("finishing rotate-root of %s/%s failed: %s", mount, name, exc.message)
        return finished
