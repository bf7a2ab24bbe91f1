"""The configs of auth methods in the declarative section (``auth/<path>/config``), one
entry per method type, as auth_roles.py has their roles.

A config holds at most one secret (the Kubernetes reviewer token, the OIDC client
secret). It is never written in the file: config.py reads it from ``<secret>_env`` or
``<secret>_file`` as it reads a connection's password, and refuses it inline. The values
compared and recorded carry only whether one is set (``<secret>_set``, what a config read
shows); the plan knows the secret itself by its keyed hash in the apply's record, and
compares it with the stored one in memory (a secret only the file sets: a different one
is drift, set back).

A config write replaces the whole config, as Vault's does (what is not sent is unset), so
every write sends the declared secret too: nothing in the broker changes these secrets,
so there is none to keep.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from broker.exceptions import NotFound
from broker.server.auth.jwt_auth import JwtAuth, JwtConfig
from broker.server.auth.kubernetes import KubernetesAuth, KubernetesConfig
from broker.server.bootstrap.fields import Field, flag, names, plain, text
from broker.server.bootstrap.targets import Targets


class AuthConfigWriter(Protocol):
    """Reads a config as the dict its ``fields`` convert to, with ``<secret>_set`` (None
    when the method has none yet), the stored secret (for the plan's comparison only),
    and writes one whole with the declared secret ("" for none)."""

    async def read(self, mount: str) -> dict[str, Any] | None: ...

    async def stored_secret(self, mount: str) -> str | None: ...

    async def write(self, mount: str, values: Mapping[str, Any], secret: str) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class AuthConfigType:
    fields: Mapping[str, Field]
    #: The secret's key, given only as ``<secret>_env`` or ``<secret>_file``.
    secret: str
    #: Keys whose value may instead come from a file beside the configuration
    #: (``<key>_file``): CA certificates, which are long and kept as files.
    files: tuple[str, ...]
    #: The domain's rules that need no network, run when the file is loaded so a mistake
    #: stops the start; returns the values as the domain stores them. Raises
    #: ``InvalidRequest``.
    check: Callable[[dict[str, Any]], dict[str, Any]]
    writer: Callable[[Targets], AuthConfigWriter]

    @property
    def secret_set(self) -> str:
        return f"{self.secret}_set"


# -- kubernetes ---------------------------------------------------------------------------

#: Vault's defaults: inside the broker's pod the host alone is enough (its own token and
#: CA are used for the TokenReview unless ``disable_local_ca_jwt``).
KUBERNETES_CONFIG_FIELDS: Mapping[str, Field] = {
    "kubernetes_host": Field(text),
    "kubernetes_ca_cert": Field(text, ""),
    "pem_keys": Field(names, []),
    "issuer": Field(text, ""),
    "disable_iss_validation": Field(flag, True),
    "disable_local_ca_jwt": Field(flag, False),
}


def _kubernetes_config(values: Mapping[str, Any], secret: str) -> KubernetesConfig:
    return KubernetesConfig(
        host=values["kubernetes_host"],
        ca_cert=values["kubernetes_ca_cert"],
        token_reviewer_jwt=secret,
        pem_keys=tuple(values["pem_keys"]),
        issuer=values["issuer"],
        disable_iss_validation=values["disable_iss_validation"],
        disable_local_ca_jwt=values["disable_local_ca_jwt"],
    )


def _check_kubernetes(values: dict[str, Any]) -> dict[str, Any]:
    """The host's URL, the CA and ``pem_keys`` parsed (``KubernetesConfig.checked``)."""
    checked = _kubernetes_config(values, "").checked()
    return {**values, "kubernetes_host": checked.host}


class KubernetesConfigWriter:
    def __init__(self, kubernetes: KubernetesAuth) -> None:
        self._kubernetes = kubernetes

    async def _config(self, mount: str) -> KubernetesConfig | None:
        try:
            return await self._kubernetes.read_config(mount)
        except NotFound:
            return None

    async def read(self, mount: str) -> dict[str, Any] | None:
        config = await self._config(mount)
        if config is None:
            return None
        # What the API's read shows: the reviewer token only as ..._set.
        return {
            "kubernetes_host": config.host,
            "kubernetes_ca_cert": config.ca_cert,
            "pem_keys": list(config.pem_keys),
            "issuer": config.issuer,
            "disable_iss_validation": config.disable_iss_validation,
            "disable_local_ca_jwt": config.disable_local_ca_jwt,
            "token_reviewer_jwt_set": bool(config.token_reviewer_jwt),
        }

    async def stored_secret(self, mount: str) -> str | None:
        config = await self._config(mount)
        return None if config is None else config.token_reviewer_jwt

    async def write(self, mount: str, values: Mapping[str, Any], secret: str) -> list[str]:
        await self._kubernetes.write_config(mount, _kubernetes_config(values, secret))
        return []


# -- jwt and oidc -------------------------------------------------------------------------

JWT_CONFIG_FIELDS: Mapping[str, Field] = {
    "oidc_discovery_url": Field(text, ""),
    "oidc_discovery_ca_pem": Field(text, ""),
    "oidc_client_id": Field(text, ""),
    "oidc_response_mode": Field(text, ""),
    "oidc_response_types": Field(names, []),
    "jwks_url": Field(text, ""),
    "jwks_ca_pem": Field(text, ""),
    "jwt_validation_pubkeys": Field(names, []),
    "jwt_supported_algs": Field(names, []),
    "bound_issuer": Field(text, ""),
    "default_role": Field(text, ""),
    "namespace_in_state": Field(flag, True),
}


def _jwt_config(values: Mapping[str, Any], secret: str) -> JwtConfig:
    fields: dict[str, Any] = {
        key: tuple(values[key]) if isinstance(values[key], list) else values[key]
        for key in JWT_CONFIG_FIELDS
    }
    return JwtConfig(**fields, oidc_client_secret=secret)


def _check_jwt(values: dict[str, Any]) -> dict[str, Any]:
    """``JwtConfig.checked``: the rules of an API write that need no network (a discovery
    or JWKS URL is fetched when the config is written: an unreachable one fails that
    object then). The secret is read later; whether the file names one is enough here."""
    secret = "<declared>" if values["oidc_client_secret_set"] else ""
    checked = _jwt_config(values, secret).checked()
    return {**values, "default_role": checked.default_role}


class JwtConfigWriter:
    """For ``jwt`` and ``oidc`` methods (one code)."""

    def __init__(self, jwt: JwtAuth) -> None:
        self._jwt = jwt

    async def _config(self, mount: str) -> JwtConfig | None:
        try:
            return await self._jwt.read_config(mount)
        except NotFound:
            return None

    async def read(self, mount: str) -> dict[str, Any] | None:
        config = await self._config(mount)
        if config is None:
            return None
        # What the API's read shows: everything but the client secret, that only as ..._set.
        values = {key: plain(getattr(config, key)) for key in JWT_CONFIG_FIELDS}
        return {**values, "oidc_client_secret_set": bool(config.oidc_client_secret)}

    async def stored_secret(self, mount: str) -> str | None:
        config = await self._config(mount)
        return None if config is None else config.oidc_client_secret

    async def write(self, mount: str, values: Mapping[str, Any], secret: str) -> list[str]:
        """Fetches the discovery document or JWKS now, as an API write does: a provider
        the broker cannot reach fails this object (and the apply is retried)."""
        config = _jwt_config(values, secret)
        # keep_namespace=False: namespace_in_state is declared like every other key.
        await self._jwt.write_config(mount, config, keep_namespace=False)
        return []


_JWT_CONFIG = AuthConfigType(
    JWT_CONFIG_FIELDS,
    "oidc_client_secret",
    ("oidc_discovery_ca_pem", "jwks_ca_pem"),
    _check_jwt,
    lambda targets: JwtConfigWriter(targets.jwt),
)

#: Auth method type -> how its config is declared. AppRole has no config.
AUTH_CONFIG_TYPES: dict[str, AuthConfigType] = {
    "kubernetes": AuthConfigType(
        KUBERNETES_CONFIG_FIELDS,
        "token_reviewer_jwt",
        ("kubernetes_ca_cert",),
        _check_kubernetes,
        lambda targets: KubernetesConfigWriter(targets.kubernetes),
    ),
    "jwt": _JWT_CONFIG,
    "oidc": _JWT_CONFIG,
}
