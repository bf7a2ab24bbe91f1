"""The ``[declarative]`` section of the server's TOML configuration, loaded into the objects
it declares, each checked as the API would check it (names, paths, HCL policies, statement
templates, option ranges) before anything is applied: a mistake stops the start, with the
key that holds it.

Secrets are never written in the file. A connection's password comes from an environment
variable (``password_env``) or a file (``password_file``, a mounted Kubernetes Secret);
``password = "..."`` is refused, and so is a connection URL with a literal password in it.
An auth method's config secret (``token_reviewer_jwt``, ``oidc_client_secret``) is read
the same way, from ``<name>_env`` or ``<name>_file``. Relative file names
(``password_file``, ``policy_file``, a CA's ``..._file``) are read beside the
configuration file.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.exceptions import InvalidRequest
from broker.server.auth.acl import check_policy_name, parse_policy
from broker.server.auth.methods import AUTH_TYPES
from broker.server.bootstrap.auth_configs import AUTH_CONFIG_TYPES
from broker.server.bootstrap.auth_roles import AUTH_ROLE_TYPES
from broker.server.bootstrap.fields import (
    DeclarativeConfigError,
    Field,
    check_keys,
    convert,
    count,
    duration,
    flag,
    names,
    statements,
    string_map,
    table,
    text,
)
from broker.server.database.catalog import (
    MOUNT_TYPES,
    check_name,
    check_options,
    normalise_mount_path,
)
from broker.server.database.password_policies import parse_password_policy
from broker.server.engines.templates import ROLE_STATEMENT_KINDS, check_statements
from broker.server.engines.url_templates import masked_template
from broker.server.security.audit import DEVICE_TYPES

#: The kinds of object, in the order they are created and updated (each may need the ones
#: before it: a connection its mount and password policy, a role its connection, an auth
#: method's config its method, an auth role the policies it grants); deletions run in the
#: reverse order. Each kind's section name is what ``prune`` lists.
KIND_SECTIONS: dict[str, str] = {
    "password_policy": "password_policies",
    "policy": "policies",
    "audit_device": "audit",
    "mount": "mounts",
    "connection": "connections",
    "role": "roles",
    "static_role": "static_roles",
    "auth_method": "auth",
    "auth_config": "auth_configs",
    "auth_role": "auth_roles",
}
KIND_ORDER = tuple(KIND_SECTIONS)
#: Kinds an apply never deletes, so ``prune`` does not take them: an auth method's config
#: has no delete (in Vault either); it goes with its method (``auth`` pruned).
UNPRUNABLE = frozenset({"auth_config"})
PRUNABLE = tuple(s for k, s in KIND_SECTIONS.items() if k not in UNPRUNABLE)
_SECTIONS = ("serial", "prune", "password_policies", "policies", "audit", "mounts", "auth")
_PATH = re.compile(r"^[A-Za-z0-9_.\-]+(?:/[A-Za-z0-9_.\-]+)*$")


@dataclass(frozen=True, slots=True)
class Declared:
    """One object of the file. ``path`` is its API path (``database/config/app``), which
    names it in plans, logs and the apply's record; ``key`` the arguments the domain takes;
    ``values`` what it is written with and compared by; ``create_only`` what is written
    when it is created and never compared (a mount's description: no API changes it)."""

    kind: str
    path: str
    key: tuple[str, ...]
    values: dict[str, Any]
    create_only: dict[str, Any] = field(default_factory=dict)
    secret: str | None = field(default=None, repr=False)
    #: What the secret is called in plans (``password``, ``token_reviewer_jwt``...).
    secret_name: str = "password"


@dataclass(frozen=True, slots=True)
class DeclarativeConfig:
    objects: tuple[Declared, ...]
    #: Kinds whose objects are deleted once removed from the file (and only those the
    #: file created or adopted): the section names of ``KIND_SECTIONS``.
    prune: frozenset[str]
    source: str
    #: Optional version of the file, raised with each change: a file older than the one
    #: last applied is not applied (a node restarted mid-roll with the previous ConfigMap
    #: would otherwise set back what the new one changed).
    serial: int | None = None


def load_declarative(path: str, environ: Mapping[str, str] | None = None) -> DeclarativeConfig:
    """The ``[declarative]`` section of the TOML file at ``path``."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise DeclarativeConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise DeclarativeConfigError(f"{path}: {exc}") from exc
    section = raw.get("declarative")
    if section is None:
        raise DeclarativeConfigError(f"{path}: no [declarative] section")
    base = Path(path).resolve().parent
    return parse_declarative(section, base, os.environ if environ is None else environ, path)


def parse_declarative(
    section: Any, base: Path, environ: Mapping[str, str], source: str = ""
) -> DeclarativeConfig:
    section = table("declarative", section)
    check_keys("declarative", section, _SECTIONS)
    reader = _Reader(base, environ)
    objects: list[Declared] = []
    for name, body in _tables("declarative.password_policies", section, "password_policies"):
        objects.append(reader.password_policy(name, body))
    for name, body in _tables("declarative.policies", section, "policies"):
        objects.append(reader.policy(name, body))
    for name, body in _tables("declarative.audit", section, "audit"):
        objects.append(reader.audit_device(name, body))
    for name, body in _tables("declarative.mounts", section, "mounts"):
        objects.extend(reader.mount(name, body))
    for name, body in _tables("declarative.auth", section, "auth"):
        objects.extend(reader.auth_method(name, body))
    paths = [(o.kind, o.path) for o in objects]
    duplicates = sorted({p for k, p in paths if paths.count((k, p)) > 1})
    if duplicates:
        # Two spellings of one name ("App" and "app" for a policy, "db/" and "db" for a
        # mount) in the file: it would apply both, the later winning, on every start.
        raise DeclarativeConfigError(f"declared twice: {', '.join(duplicates)}")
    order = {kind: i for i, kind in enumerate(KIND_ORDER)}
    objects.sort(key=lambda o: order[o.kind])
    serial = count("declarative.serial", section["serial"]) if "serial" in section else None
    return DeclarativeConfig(tuple(objects), _prune(section.get("prune", [])), source, serial)


def _prune(value: Any) -> frozenset[str]:
    kinds = names("declarative.prune", value)
    unknown = sorted(set(kinds) - set(PRUNABLE))
    if unknown:
        raise DeclarativeConfigError(
            f"declarative.prune: unknown kind(s) {', '.join(unknown)}; use: {', '.join(PRUNABLE)}"
        )
    return frozenset(kinds)


def _tables(where: str, parent: Mapping[str, Any], key: str) -> list[tuple[str, dict[str, Any]]]:
    """The named tables under ``parent[key]``: ``[where.NAME]`` each."""
    found = table(where, parent.get(key, {}))
    return [(name, table(f"{where}.{name}", body)) for name, body in found.items()]


def _checked(where: str, check: Callable[..., Any], *args: Any) -> Any:
    """Run a domain check; its 400 becomes a configuration error naming the key."""
    try:
        return check(*args)
    except InvalidRequest as exc:
        raise DeclarativeConfigError(f"{where}: {exc.message}") from exc


_CONNECTION_FIELDS: Mapping[str, Field] = {
    "plugin_name": Field(text),
    "connection_url": Field(text),
    "username": Field(text, ""),
    "allowed_roles": Field(names, []),
    "username_template": Field(text, ""),
    "verify_connection": Field(flag, True),
}
#: Stored among the connection's options, as the API stores them; written and compared
#: only when given (all of them are optional in the API too).
_CONNECTION_OPTIONS: Mapping[str, Field] = {
    "password_policy": Field(text),
    "password_authentication": Field(text),
    "root_rotation_statements": Field(statements),
    "max_open_connections": Field(count),
    "max_idle_connections": Field(count),
    "max_connection_lifetime": Field(duration),
    "connect_timeout": Field(count),
    "statement_timeout": Field(count),
    "expiry_event": Field(flag),
    "expiry_event_schema": Field(text),
}
_SECRET_KEYS = ("password_env", "password_file")
_ROLE_FIELDS: Mapping[str, Field] = {
    "db_name": Field(text),
    "creation_statements": Field(statements, []),
    "revocation_statements": Field(statements, []),
    "rollback_statements": Field(statements, []),
    "renew_statements": Field(statements, []),
    "default_ttl": Field(duration, 0),
    "max_ttl": Field(duration, 0),
    "orphan_leases": Field(flag, False),
    "max_leases": Field(count, 0),
}
_STATIC_ROLE_FIELDS: Mapping[str, Field] = {
    "db_name": Field(text),
    "username": Field(text),
    "rotation_period": Field(duration, 0),
    "rotation_schedule": Field(text, ""),
    "rotation_window": Field(duration, 0),
    "rotation_statements": Field(statements, []),
}
_AUDIT_FIELDS: Mapping[str, Field] = {
    "type": Field(text),
    "description": Field(text, ""),
    "options": Field(string_map, {}),
}


class _Reader:
    def __init__(self, base: Path, environ: Mapping[str, str]) -> None:
        self._base = base
        self._environ = environ

    def _read_file(self, where: str, name: Any) -> str:
        if not isinstance(name, str) or not name:
            raise DeclarativeConfigError(f"{where}: expected a file name")
        try:
            return (self._base / name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise DeclarativeConfigError(f"{where}: cannot read {name}: {reason}") from exc

    def _document(self, where: str, body: Mapping[str, Any]) -> str:
        """A policy's text: ``policy`` inline, or ``policy_file``; exactly one."""
        check_keys(where, body, ("policy", "policy_file"))
        if ("policy" in body) == ("policy_file" in body):
            raise DeclarativeConfigError(f"{where}: give either policy or policy_file")
        if "policy" in body:
            return text(f"{where}.policy", body["policy"])
        return self._read_file(f"{where}.policy_file", body["policy_file"])

    def _secret(self, where: str, body: Mapping[str, Any], name: str = "password") -> str | None:
        """The secret ``name`` from ``<name>_env`` or ``<name>_file``; never from the file."""
        env, file = f"{name}_env", f"{name}_file"
        if name in body:
            raise DeclarativeConfigError(
                f"{where}: an inline {name} is refused (the configuration is not a "
                f'secret store): use {env} = "VARIABLE" or {file} = "/path"'
            )
        if env in body and file in body:
            raise DeclarativeConfigError(f"{where}: give either {env} or {file}")
        if env in body:
            variable = body[env]
            if not isinstance(variable, str) or not variable:
                raise DeclarativeConfigError(f"{where}.{env}: expected a variable name")
            value = self._environ.get(variable)
            if value is None:
                raise DeclarativeConfigError(
                    f"{where}.{env}: the environment variable {variable} is not set"
                )
            return value
        if file in body:
            # A Secret mounted as a file, or `echo secret > file`: one trailing line break
            # is the file's, not the secret's.
            value = self._read_file(f"{where}.{file}", body[file])
            return value.removesuffix("\n").removesuffix("\r")
        return None

    def _with_files(
        self, where: str, body: Mapping[str, Any], keys: tuple[str, ...]
    ) -> dict[str, Any]:
        """``body`` with each ``<key>_file`` read into ``<key>`` (a CA certificate kept
        beside the configuration); one of the two."""
        found = dict(body)
        for key in keys:
            if f"{key}_file" not in found:
                continue
            if key in found:
                raise DeclarativeConfigError(f"{where}: give either {key} or {key}_file")
            found[key] = self._read_file(f"{where}.{key}_file", found.pop(f"{key}_file"))
        return found

    def password_policy(self, name: str, body: Mapping[str, Any]) -> Declared:
        where = f"declarative.password_policies.{name}"
        name = _checked(where, check_policy_name, name)
        document = self._document(where, body)
        _checked(where, parse_password_policy, document)
        return Declared(
            "password_policy", f"sys/policies/password/{name}", (name,), {"policy": document}
        )

    def policy(self, name: str, body: Mapping[str, Any]) -> Declared:
        where = f"declarative.policies.{name}"
        name = _checked(where, check_policy_name, name)
        if name == "root":
            raise DeclarativeConfigError(f'{where}: the "root" policy cannot be written')
        document = self._document(where, body)
        _checked(where, parse_policy, document)
        return Declared("policy", f"sys/policies/acl/{name}", (name,), {"policy": document})

    def audit_device(self, path: str, body: Mapping[str, Any]) -> Declared:
        where = f"declarative.audit.{path}"
        path = path.strip("/")
        if not _PATH.match(path):
            raise DeclarativeConfigError(f"{where}: invalid audit device path")
        values = convert(where, body, _AUDIT_FIELDS)
        if values["type"] not in DEVICE_TYPES:
            raise DeclarativeConfigError(
                f"{where}.type: unknown audit device type {values['type']!r}; use file or table"
            )
        options = values["options"]
        if values["type"] == "file":
            # Stored as the API stores it: ``path`` is an alias of ``file_path``.
            target = options.pop("path", None)
            options.setdefault("file_path", target or "")
            if not options["file_path"]:
                raise DeclarativeConfigError(f"{where}.options: file_path is required")
        return Declared("audit_device", f"sys/audit/{path}", (path,), values)

    def mount(self, path: str, body: Mapping[str, Any]) -> list[Declared]:
        where = f"declarative.mounts.{path}"
        path = _checked(where, normalise_mount_path, path)
        children = ("connections", "roles", "static_roles")
        fields = {"type": Field(text, "database"), "description": Field(text, "")}
        values = convert(where, body, fields, children)
        if values["type"] not in MOUNT_TYPES:
            raise DeclarativeConfigError(f"{where}.type: unknown secrets engine {values['type']!r}")
        description = values.pop("description")
        found = [
            Declared("mount", f"sys/mounts/{path}", (path,), values, {"description": description})
        ]
        for name, child in _tables(f"{where}.connections", body, "connections"):
            found.append(self.connection(path, name, child))
        for name, child in _tables(f"{where}.roles", body, "roles"):
            found.append(self.role(path, name, child))
        for name, child in _tables(f"{where}.static_roles", body, "static_roles"):
            found.append(self.static_role(path, name, child))
        return found

    def connection(self, mount: str, name: str, body: Mapping[str, Any]) -> Declared:
        where = f"declarative.mounts.{mount}.connections.{name}"
        _checked(where, check_name, "connection", name)
        secret = self._secret(where, body)
        extra = (*_CONNECTION_OPTIONS, *_SECRET_KEYS)
        values = convert(where, body, _CONNECTION_FIELDS, extra)
        options = {
            key: spec.convert(f"{where}.{key}", body[key])
            for key, spec in _CONNECTION_OPTIONS.items()
            if key in body
        }
        _checked(where, check_options, options)
        rotation = options.get("root_rotation_statements", [])
        _checked(where, check_statements, "root_rotation_statements", rotation)
        url = values["connection_url"]
        if masked_template(url) != url:
            raise DeclarativeConfigError(
                f"{where}.connection_url: a password written into the URL is refused; "
                "write {{password}} there and give password_env or password_file"
            )
        values["options"] = options
        return Declared("connection", f"{mount}/config/{name}", (mount, name), values, {}, secret)

    def role(self, mount: str, name: str, body: Mapping[str, Any]) -> Declared:
        where = f"declarative.mounts.{mount}.roles.{name}"
        _checked(where, check_name, "role", name)
        values = convert(where, body, _ROLE_FIELDS)
        for kind in ROLE_STATEMENT_KINDS:
            _checked(f"{where}.{kind}", check_statements, kind, values[kind])
        return Declared("role", f"{mount}/roles/{name}", (mount, name), values)

    def static_role(self, mount: str, name: str, body: Mapping[str, Any]) -> Declared:
        where = f"declarative.mounts.{mount}.static_roles.{name}"
        _checked(where, check_name, "static role", name)
        values = convert(where, body, _STATIC_ROLE_FIELDS)
        if bool(values["rotation_period"]) == bool(values["rotation_schedule"]):
            raise DeclarativeConfigError(
                f"{where}: give exactly one of rotation_period or rotation_schedule"
            )
        return Declared("static_role", f"{mount}/static-roles/{name}", (mount, name), values)

    def auth_method(self, path: str, body: Mapping[str, Any]) -> list[Declared]:
        where = f"declarative.auth.{path}"
        path = path.strip("/")
        if not _PATH.match(path) or path.split("/", 1)[0] == "token":
            raise DeclarativeConfigError(f"{where}: invalid auth method path")
        fields = {"type": Field(text), "description": Field(text, "")}
        values = convert(where, body, fields, ("config", "roles"))
        type_ = values["type"]
        if type_ not in AUTH_TYPES:
            raise DeclarativeConfigError(f"{where}.type: unknown auth method type {type_!r}")
        description = values.pop("description")
        found = [
            Declared(
                "auth_method", f"sys/auth/{path}", (path,), values, {"description": description}
            )
        ]
        if "config" in body:
            found.append(self.auth_config(path, type_, table(f"{where}.config", body["config"])))
        roles = _tables(f"{where}.roles", body, "roles")
        if roles and type_ not in AUTH_ROLE_TYPES:
            raise DeclarativeConfigError(
                f"{where}.roles: roles of {type_} auth methods cannot be declared (yet); "
                f"declarable: {', '.join(sorted(AUTH_ROLE_TYPES))}"
            )
        for name, role in roles:
            role_where = f"{where}.roles.{name}"
            _checked(role_where, check_name, "role", name)
            kind = AUTH_ROLE_TYPES[type_]
            role_values = convert(role_where, role, kind.fields)
            name = kind.name(name)
            found.append(
                Declared("auth_role", f"auth/{path}/role/{name}", (path, name), role_values)
            )
        return found

    def auth_config(self, path: str, type_: str, body: Mapping[str, Any]) -> Declared:
        where = f"declarative.auth.{path}.config"
        kind = AUTH_CONFIG_TYPES.get(type_)
        if kind is None:
            raise DeclarativeConfigError(f"{where}: {type_} auth methods have no config")
        secret = self._secret(where, body, kind.secret)
        if secret is not None and not secret.strip():
            raise DeclarativeConfigError(f"{where}: {kind.secret} is empty")
        body = self._with_files(where, body, kind.files)
        # The ``_file`` keys are read already; named so an unknown key's error lists them.
        extra = (f"{kind.secret}_env", f"{kind.secret}_file", *(f"{k}_file" for k in kind.files))
        values = convert(where, body, kind.fields, extra)
        values[kind.secret_set] = secret is not None
        values = _checked(where, kind.check, values)
        return Declared(
            "auth_config",
            f"auth/{path}/config",
            (path,),
            values,
            {},
            secret,
            kind.secret,
        )
