"""The roles of auth methods in the declarative section, one entry per method type.

``AUTH_ROLE_TYPES`` is the extension point: a method type whose roles can be declared
names the keys a role may carry (``fields``, checked when the file is loaded) and builds
its writer from the domain objects (``writer``), which reads a stored role in the same
shape, writes one through the method's domain object and deletes one. Adding a type is an
entry here and a writer of a dozen lines; ``Targets`` (targets.py) gains the method's
domain object if the writer needs one that is not there yet. A method's config is the
same idea in auth_configs.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from broker.exceptions import NotFound
from broker.server.auth.approle import AppRoleManager, AppRoleUpdate
from broker.server.auth.jwt_auth import JwtAuth, role_name
from broker.server.auth.kubernetes import KubernetesAuth
from broker.server.auth.kubernetes import RoleUpdate as KubernetesRoleUpdate
from broker.server.auth.role_tokens import RoleTokens
from broker.server.auth.tokens import Caller, normalise_policies
from broker.server.bootstrap.fields import (
    OPTIONAL,
    Field,
    claims,
    count,
    duration,
    flag,
    names,
    plain,
    signed_duration,
    string_map,
    text,
)
from broker.server.bootstrap.targets import Targets

#: Who an apply writes as: auth roles are written with the root's authority (a token
#: could only grant its own policies), since the configuration is the server operator's.
#: No ``root`` policy can be granted either way: the domain refuses it to every writer.
CONFIGURATION = Caller(policies=("root",), display_name="declarative", entry=None, token="")


class AuthRoleWriter(Protocol):
    """Reads a role as the dict its ``fields`` convert to (so the two compare), writes
    one whole (returning the domain's warnings), deletes one. ``read`` returns None when
    the role does not exist."""

    async def read(self, mount: str, name: str) -> dict[str, Any] | None: ...

    async def write(self, mount: str, name: str, values: Mapping[str, Any]) -> list[str]: ...

    async def delete(self, mount: str, name: str) -> None: ...


def _same(name: str) -> str:
    return name


@dataclass(frozen=True, slots=True)
class AuthRoleType:
    fields: Mapping[str, Field]
    writer: Callable[[Targets], AuthRoleWriter]
    #: The name the method stores a role under (Kubernetes and JWT roles: lower-cased),
    #: so the file's path is the stored one and two spellings of a name are one object.
    name: Callable[[str], str] = _same


def policies(where: str, value: Any) -> list[str]:
    """Policy names as stored and compared: trimmed, lower-cased, sorted, no duplicates."""
    return list(normalise_policies(names(where, value)))


APPROLE_FIELDS: Mapping[str, Field] = {
    # Left out: the broker generates one when the role is created and keeps it.
    "role_id": Field(text, OPTIONAL),
    "bind_secret_id": Field(flag, True),
    "token_policies": Field(policies, []),
    "token_ttl": Field(duration, 0),
    "token_max_ttl": Field(duration, 0),
    "token_period": Field(duration, 0),
    "token_num_uses": Field(count, 0),
    "token_bound_cidrs": Field(names, []),
    "secret_id_ttl": Field(duration, 0),
    "secret_id_num_uses": Field(count, 0),
    "secret_id_bound_cidrs": Field(names, []),
}
_TUPLES = ("token_policies", "token_bound_cidrs", "secret_id_bound_cidrs")


class AppRoleWriter:
    def __init__(self, approle: AppRoleManager) -> None:
        self._approle = approle

    async def read(self, mount: str, name: str) -> dict[str, Any] | None:
        try:
            role = await self._approle.read_role(mount, name)
        except NotFound:
            return None
        return {key: plain(getattr(role, key)) for key in APPROLE_FIELDS}

    async def write(self, mount: str, name: str, values: Mapping[str, Any]) -> list[str]:
        update = AppRoleUpdate(
            **{k: tuple(v) if k in _TUPLES else v for k, v in values.items()}  # type: ignore[arg-type]
        )
        await self._approle.write_role(mount, name, update, CONFIGURATION)
        return []

    async def delete(self, mount: str, name: str) -> None:
        await self._approle.delete_role(mount, name)


#: The ``token_*`` keys Kubernetes and JWT roles share (``RoleTokens``, Vault's
#: ``tokenutil``): the key in the file and the API -> the field of ``RoleTokens``.
_TOKEN_KEYS: Mapping[str, str] = {
    "token_policies": "policies",
    "token_ttl": "ttl",
    "token_max_ttl": "max_ttl",
    "token_explicit_max_ttl": "explicit_max_ttl",
    "token_period": "period",
    "token_num_uses": "num_uses",
    "token_bound_cidrs": "bound_cidrs",
    "token_no_default_policy": "no_default_policy",
    "token_type": "token_type",
}
TOKEN_FIELDS: Mapping[str, Field] = {
    "token_policies": Field(policies, []),
    "token_ttl": Field(duration, 0),
    "token_max_ttl": Field(duration, 0),
    "token_explicit_max_ttl": Field(duration, 0),
    "token_period": Field(duration, 0),
    "token_num_uses": Field(count, 0),
    "token_bound_cidrs": Field(names, []),
    "token_no_default_policy": Field(flag, False),
    "token_type": Field(text, "default"),
}


def _token_values(tokens: RoleTokens) -> dict[str, Any]:
    return {key: plain(getattr(tokens, attr)) for key, attr in _TOKEN_KEYS.items()}


def _token_changes(values: Mapping[str, Any]) -> dict[str, Any]:
    """Every token field, so a write replaces the stored set whole."""
    return {
        attr: tuple(values[key]) if isinstance(values[key], list) else values[key]
        for key, attr in _TOKEN_KEYS.items()
    }


KUBERNETES_FIELDS: Mapping[str, Field] = {
    "bound_service_account_names": Field(names),
    "bound_service_account_namespaces": Field(names),
    "audience": Field(text, ""),
    "alias_name_source": Field(text, "serviceaccount_uid"),
    **TOKEN_FIELDS,
}


class KubernetesRoleWriter:
    def __init__(self, kubernetes: KubernetesAuth) -> None:
        self._kubernetes = kubernetes

    async def read(self, mount: str, name: str) -> dict[str, Any] | None:
        try:
            role = await self._kubernetes.read_role(mount, name)
        except NotFound:
            return None
        return {
            "bound_service_account_names": list(role.names),
            "bound_service_account_namespaces": list(role.namespaces),
            "audience": role.audience,
            "alias_name_source": role.alias_name_source,
            **_token_values(role.tokens),
        }

    async def write(self, mount: str, name: str, values: Mapping[str, Any]) -> list[str]:
        update = KubernetesRoleUpdate(
            names=tuple(values["bound_service_account_names"]),
            namespaces=tuple(values["bound_service_account_namespaces"]),
            audience=values["audience"],
            alias_name_source=values["alias_name_source"],
            token_changes=_token_changes(values),
        )
        await self._kubernetes.write_role(mount, name, update, CONFIGURATION)
        return []

    async def delete(self, mount: str, name: str) -> None:
        await self._kubernetes.delete_role(mount, name)


#: Vault's defaults, which a key left out stands for (``role_type`` ``oidc`` too: a role
#: for machines says ``role_type = "jwt"``, as it must in a ``vault write``).
_JWT_ROLE_FIELDS: Mapping[str, Field] = {
    "role_type": Field(text, "oidc"),
    "user_claim": Field(text),
    "user_claim_json_pointer": Field(flag, False),
    "bound_audiences": Field(names, []),
    "bound_subject": Field(text, ""),
    "bound_claims_type": Field(text, "string"),
    "bound_claims": Field(claims, {}),
    "claim_mappings": Field(string_map, {}),
    "groups_claim": Field(text, ""),
    "clock_skew_leeway": Field(signed_duration, 0),
    "expiration_leeway": Field(signed_duration, 0),
    "not_before_leeway": Field(signed_duration, 0),
    "oidc_scopes": Field(names, []),
    "allowed_redirect_uris": Field(names, []),
    "callback_mode": Field(text, "client"),
    "poll_interval": Field(count, 0),
    "max_age": Field(duration, 0),
    "verbose_oidc_logging": Field(flag, False),
}
JWT_FIELDS: Mapping[str, Field] = {**_JWT_ROLE_FIELDS, **TOKEN_FIELDS}


class JwtRoleWriter:
    """For ``jwt`` and ``oidc`` methods (one code)."""

    def __init__(self, jwt: JwtAuth) -> None:
        self._jwt = jwt

    async def read(self, mount: str, name: str) -> dict[str, Any] | None:
        try:
            role = await self._jwt.read_role(mount, name)
        except NotFound:
            return None
        values = {key: plain(getattr(role, key)) for key in _JWT_ROLE_FIELDS}
        return {**values, **_token_values(role.tokens)}

    async def write(self, mount: str, name: str, values: Mapping[str, Any]) -> list[str]:
        changes = {
            key: tuple(values[key]) if isinstance(values[key], list) else values[key]
            for key in _JWT_ROLE_FIELDS
        }
        return await self._jwt.write_role(
            mount, name, changes, _token_changes(values), CONFIGURATION
        )

    async def delete(self, mount: str, name: str) -> None:
        await self._jwt.delete_role(mount, name)


_JWT_ROLES = AuthRoleType(JWT_FIELDS, lambda targets: JwtRoleWriter(targets.jwt), role_name)

#: Auth method type -> how its roles are declared: every type ``sys/auth`` enables.
AUTH_ROLE_TYPES: dict[str, AuthRoleType] = {
    "approle": AuthRoleType(APPROLE_FIELDS, lambda targets: AppRoleWriter(targets.approle)),
    "kubernetes": AuthRoleType(
        KUBERNETES_FIELDS, lambda targets: KubernetesRoleWriter(targets.kubernetes), str.lower
    ),
    "jwt": _JWT_ROLES,
    "oidc": _JWT_ROLES,
}
