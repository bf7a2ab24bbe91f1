"""How each kind of declared object is read, written and deleted through the domain.

``read`` returns the stored object in the shape the file's values take (so the two
compare key by key), or None if it does not exist. ``write`` writes the declared values
whole (creating, or updating an existing object); ``delete`` removes one. Each calls the
domain object the API calls for the same path, so an apply is held to the same checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from broker.exceptions import InvalidRequest, NotFound
from broker.server.bootstrap.auth_configs import AUTH_CONFIG_TYPES, AuthConfigType
from broker.server.bootstrap.auth_roles import AUTH_ROLE_TYPES, AuthRoleType
from broker.server.bootstrap.config import Declared
from broker.server.bootstrap.fields import plain
from broker.server.bootstrap.targets import Targets
from broker.server.database.catalog import ConnectionUpdate, RoleUpdate
from broker.server.database.rotation import StaticRoleUpdate

Key = tuple[str, ...]


class Kind:
    """The operations of one kind; the subclasses below, one per kind."""

    #: Whether a stored secret that differs from the file's is kept while the file's is
    #: the one last applied: a connection's password, which ``rotate-root`` changes. A
    #: kind whose secret only the file sets says False: a different stored one is drift.
    keeps_secret = True

    async def read(self, t: Targets, key: Key) -> dict[str, Any] | None:
        raise NotImplementedError

    async def stored_secret(self, t: Targets, key: Key) -> str | None:
        """The secret stored with the object, for the kinds that declare one."""
        return None

    async def write(
        self, t: Targets, obj: Declared, current: dict[str, Any] | None, secret: str | None
    ) -> list[str]:
        """``secret``: the declared secret when it is to be written, else None (kept).
        Returns the warnings the domain gave (Vault's ``warnings``: a missing grant)."""
        raise NotImplementedError

    async def delete(self, t: Targets, key: Key) -> None:
        raise NotImplementedError


class PasswordPolicyKind(Kind):
    async def read(self, t: Targets, key: Key) -> dict[str, Any] | None:
        try:
            return {"policy": await t.passwords.read(key[0])}
        except NotFound:
            return None

    async def write(
        self, t: Targets, obj: Declared, current: dict[str, Any] | None, secret: str | None
    ) -> list[str]:
        await t.passwords.write(obj.key[0], obj.values["policy"])
        return []

    async def delete(self, t: Targets, key: Key) -> None:
        await t.passwords.delete(key[0])


class PolicyKind(Kind):
    async def read(self, t: Targets, key: Key) -> dict[str, Any] | None:
        try:
            return {"policy": await t.policies.read(key[0])}
        except NotFound:
            return None

    async def write(
        self, t: Targets, obj: Declared, current: dict[str, Any] | None, secret: str | None
    ) -> list[str]:
        await t.policies.write(obj.key[0], obj.values["policy"])
        return []

    async def delete(self, t: Targets, key: Key) -> None:
        await t.policies.delete(key[0])


class AuditDeviceKind(Kind):
    async def read(self, t: Targets, key: Key) -> dict[str, Any] | None:
        for device in await t.auditor.list():
            if device.path == key[0]:
                return {
                    "type": device.type,
                    "description": device.description,
                    "options": dict(device.options),
                }
        return None

    async def write(
        self, t: Targets, obj: Declared, current: dict[str, Any] | None, secret: str | None
    ) -> list[str]:
        """A device is never changed in place (nor through the API): a changed one is
        disabled, its chain checkpointed, and enabled again with the declared values."""
        if current is not None:
            await t.auditor.disable(obj.key[0])
        values = obj.values
        await t.auditor.enable(
            obj.key[0],
            values["type"],
            values["description"],
            dict(values["options"]),
            from_config=True,
        )
        return []

    async def delete(self, t: Targets, key: Key) -> None:
        await t.auditor.disable(key[0])


class MountKind(Kind):
    async def read(self, t: Targets, key: Key) -> dict[str, Any] | None:
        try:
            mount = await t.catalog.get_mount(key[0])
        except NotFound:
            return None
        return {"type": mount.type}

    async def write(
        self, t: Targets, obj: Declared, current: dict[str, Any] | None, secret: str | None
    ) -> list[str]:
        if current is not None:
            raise InvalidRequest(
                f"the mount at {obj.key[0]}/ is of type {current['type']!r}: a mount's type "
                "cannot change (disable it first; that revokes all its leases)"
            )
        await t.catalog.enable_mount(
            obj.key[0], obj.values["type"], obj.create_only.get("description", "")
        )
        return []

    async def delete(self, t: Targets, key: Key) -> None:
        await t.catalog.disable_mount(key[0])


class ConnectionKind(Kind):
    async def read(self, t: Targets, key: Key) -> dict[str, Any] | None:
        try:
            c = await t.catalog.read_connection(*key)
        except NotFound:
            return None
        return {
            "plugin_name": c.plugin_name,
            "connection_url": c.connection_url,
            "username": c.username,
            "allowed_roles": plain(c.allowed_roles),
            "username_template": c.username_template,
            "verify_connection": c.verify_connection,
            "options": plain(c.options),
        }

    async def stored_secret(self, t: Targets, key: Key) -> str | None:
        try:
            return (await t.catalog.read_connection(*key)).password
        except NotFound:
            return None

    async def write(
        self, t: Targets, obj: Declared, current: dict[str, Any] | None, secret: str | None
    ) -> list[str]:
        v = obj.values
        update = ConnectionUpdate(
            plugin_name=v["plugin_name"],
            connection_url=v["connection_url"],
            username=v["username"],
            password=secret,
            allowed_roles=tuple(v["allowed_roles"]),
            username_template=v["username_template"],
            verify_connection=v["verify_connection"],
            options=dict(v["options"]),
            replace_options=True,
        )
        mount, name = obj.key
        return await t.catalog.write_connection(mount, name, update)

    async def delete(self, t: Targets, key: Key) -> None:
        """Refused while live leases need the connection for their revocation (the
        error says how many): an apply never revokes leases to delete a connection."""
        await t.catalog.delete_connection(*key)


class RoleKind(Kind):
    async def read(self, t: Targets, key: Key) -> dict[str, Any] | None:
        try:
            r = await t.catalog.read_role(*key)
        except NotFound:
            return None
        return {
            "db_name": r.db_name,
            "creation_statements": plain(r.creation_statements),
            "revocation_statements": plain(r.revocation_statements),
            "rollback_statements": plain(r.rollback_statements),
            "renew_statements": plain(r.renew_statements),
            "default_ttl": r.default_ttl,
            "max_ttl": r.max_ttl,
            "orphan_leases": r.orphan_leases,
            "max_leases": r.max_leases,
        }

    async def write(
        self, t: Targets, obj: Declared, current: dict[str, Any] | None, secret: str | None
    ) -> list[str]:
        v = obj.values
        update = RoleUpdate(
            db_name=v["db_name"],
            creation_statements=tuple(v["creation_statements"]),
            revocation_statements=tuple(v["revocation_statements"]),
            rollback_statements=tuple(v["rollback_statements"]),
            renew_statements=tuple(v["renew_statements"]),
            default_ttl=v["default_ttl"],
            max_ttl=v["max_ttl"],
            orphan_leases=v["orphan_leases"],
            max_leases=v["max_leases"],
        )
        mount, name = obj.key
        return await t.catalog.write_role(mount, name, update)

    async def delete(self, t: Targets, key: Key) -> None:
        await t.catalog.delete_role(*key)


class StaticRoleKind(Kind):
    async def read(self, t: Targets, key: Key) -> dict[str, Any] | None:
        try:
            r = await t.rotations.read_static_role(*key)
        except NotFound:
            return None
        return {
            "db_name": r.db_name,
            "username": r.username,
            "rotation_period": r.rotation_period,
            "rotation_schedule": r.rotation_schedule,
            "rotation_window": r.rotation_window,
            "rotation_statements": plain(r.rotation_statements),
        }

    async def write(
        self, t: Targets, obj: Declared, current: dict[str, Any] | None, secret: str | None
    ) -> list[str]:
        """Created as the API creates one: the password is rotated at once. An update
        that changes the username is refused by the domain (the account is the role)."""
        v = obj.values
        update = StaticRoleUpdate(
            db_name=v["db_name"],
            username=v["username"],
            rotation_period=v["rotation_period"],
            rotation_schedule=v["rotation_schedule"],
            rotation_window=v["rotation_window"],
            rotation_statements=tuple(v["rotation_statements"]),
        )
        mount, name = obj.key
        await t.rotations.write_static_role(mount, name, update)
        return []

    async def delete(self, t: Targets, key: Key) -> None:
        await t.rotations.delete_static_role(*key)


class AuthMethodKind(Kind):
    async def read(self, t: Targets, key: Key) -> dict[str, Any] | None:
        for method in await t.auth_methods.list():
            if method["path"] == key[0]:
                return {"type": method["type"]}
        return None

    async def write(
        self, t: Targets, obj: Declared, current: dict[str, Any] | None, secret: str | None
    ) -> list[str]:
        if current is not None:
            raise InvalidRequest(
                f"the auth method at auth/{obj.key[0]}/ is of type {current['type']!r}: a "
                "method's type cannot change (disable it first; that deletes its roles)"
            )
        await t.auth_methods.enable(
            obj.key[0], obj.values["type"], obj.create_only.get("description", "")
        )
        return []

    async def delete(self, t: Targets, key: Key) -> None:
        await t.auth_methods.disable(key[0])


async def _method_type(t: Targets, mount: str) -> str | None:
    """The type of the auth method enabled at ``mount``, if one is."""
    for method in await t.auth_methods.list():
        if method["path"] == mount:
            return str(method["type"])
    return None


def _check_type(type_: str, mount: str, keys: Iterable[str], allowed: Iterable[str]) -> None:
    """An object declared for one method type, at a mount that holds another (the
    method's type could not change): refused rather than written with keys the stored
    method does not have."""
    if not set(keys) <= set(allowed):
        raise InvalidRequest(
            f"the auth method at auth/{mount}/ is of type {type_!r}, not the one the file "
            "declares (disable it first; that deletes its roles)"
        )


class AuthConfigKind(Kind):
    """Through the writer of the method type stored at the mount (``AUTH_CONFIG_TYPES``).
    Never deleted (``UNPRUNABLE``): there is no delete, in Vault either."""

    keeps_secret = False

    async def _type(self, t: Targets, mount: str) -> tuple[str, AuthConfigType] | None:
        type_ = await _method_type(t, mount)
        if type_ is None:
            return None
        kind = AUTH_CONFIG_TYPES.get(type_)
        if kind is None:
            raise InvalidRequest(f"{type_} auth methods have no config")
        return type_, kind

    async def read(self, t: Targets, key: Key) -> dict[str, Any] | None:
        found = await self._type(t, key[0])
        return None if found is None else await found[1].writer(t).read(key[0])

    async def stored_secret(self, t: Targets, key: Key) -> str | None:
        found = await self._type(t, key[0])
        return None if found is None else await found[1].writer(t).stored_secret(key[0])

    async def write(
        self, t: Targets, obj: Declared, current: dict[str, Any] | None, secret: str | None
    ) -> list[str]:
        """With the declared secret whatever ``secret`` says: a config write replaces the
        whole config, and nothing but the file sets these secrets (auth_configs.py)."""
        found = await self._type(t, obj.key[0])
        if found is None:
            raise InvalidRequest(f"no auth method is enabled at auth/{obj.key[0]}/")
        type_, kind = found
        _check_type(type_, obj.key[0], obj.values, [*kind.fields, kind.secret_set])
        return await kind.writer(t).write(obj.key[0], obj.values, obj.secret or "")

    async def delete(self, t: Targets, key: Key) -> None:
        raise InvalidRequest("an auth method's config is deleted only with its method")


class AuthRoleKind(Kind):
    """Through the writer of the method type stored at the mount (``AUTH_ROLE_TYPES``):
    a role under a method the file does not declare, or of another type, is that
    method's."""

    async def _type(self, t: Targets, mount: str) -> tuple[str, AuthRoleType] | None:
        type_ = await _method_type(t, mount)
        if type_ is None:
            return None
        kind = AUTH_ROLE_TYPES.get(type_)
        if kind is None:
            raise InvalidRequest(f"roles of {type_} auth methods cannot be declared (yet)")
        return type_, kind

    async def read(self, t: Targets, key: Key) -> dict[str, Any] | None:
        found = await self._type(t, key[0])
        return None if found is None else await found[1].writer(t).read(*key)

    async def write(
        self, t: Targets, obj: Declared, current: dict[str, Any] | None, secret: str | None
    ) -> list[str]:
        found = await self._type(t, obj.key[0])
        if found is None:
            raise InvalidRequest(f"no auth method is enabled at auth/{obj.key[0]}/")
        type_, kind = found
        mount, name = obj.key
        _check_type(type_, mount, obj.values, kind.fields)
        return await kind.writer(t).write(mount, name, obj.values)

    async def delete(self, t: Targets, key: Key) -> None:
        found = await self._type(t, key[0])
        if found is not None:
            await found[1].writer(t).delete(*key)


KINDS: Mapping[str, Kind] = {
    "password_policy": PasswordPolicyKind(),
    "policy": PolicyKind(),
    "audit_device": AuditDeviceKind(),
    "mount": MountKind(),
    "connection": ConnectionKind(),
    "role": RoleKind(),
    "static_role": StaticRoleKind(),
    "auth_method": AuthMethodKind(),
    "auth_config": AuthConfigKind(),
    "auth_role": AuthRoleKind(),
}
