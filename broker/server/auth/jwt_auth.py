"""The JWT/OIDC auth method (types ``jwt`` and ``oidc``), with Vault's API and rules
(``vault-plugin-auth-jwt``: path_config.go, path_role.go, path_login.go, claims.go).

A machine presents a JWT its platform signed (a GitHub Actions OIDC token, a workload
identity token...) and a role; the broker checks the signature against the mount's keys
(jwt_keys.py), the registered claims and the role's bindings (jwt_claims.py), and hands
out an orphan token with the role's ``token_*`` settings. The browser flow of ``oidc``
roles (``oidc/auth_url``, ``oidc/callback``) is not served: such roles can be written and
read, and refuse ``login`` as Vault does.

The config and the roles are stored as sealed JSON (storage/auth.py ``put_auth_entry``):
``oidc_client_secret`` never leaves storage in plain text and no read returns it.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.exceptions import InvalidRequest, NotFound, PermissionDenied
from broker.models import TokenEntry
from broker.server.auth.jwt_claims import (
    ClaimError,
    Expected,
    audiences,
    check_bound_claims_values,
    group_names,
    mapped_metadata,
    user_name,
    validate_bound_claims,
    validate_registered,
)
from broker.server.auth.jwt_keys import (
    SUPPORTED_ALGS,
    KeySets,
    KeySource,
    KeySourceError,
    SignatureError,
    candidates,
    check_url,
    fetch_keys,
    parse_public_key,
    read_header,
    ssl_context,
    verify_with,
)
from broker.server.auth.records import record_json, record_values
from broker.server.auth.role_tokens import RoleTokens
from broker.server.auth.tokens import Caller, TokenManager, in_cidrs
from broker.server.storage.auth import AuthStore

_NAME = re.compile(r"^[a-z0-9_](?:[a-z0-9_.\-]*[a-z0-9_])?$")
_RESPONSE_TYPES = ("code", "id_token")
_CALLBACK_MODES = ("client", "direct", "device")
#: Token metadata keys a claim mapping may not write (Vault's ``reservedMetadata``).
_RESERVED_METADATA = ("role",)
#: The longest JWT a login accepts: far above any real provider's, far below a body limit.
MAX_TOKEN_BYTES = 64 * 1024


def role_name(name: str) -> str:
    """A role named in a login's body or by ``default_role``: Vault lowercases role
    names (``TypeLowerCaseString``); surrounding blanks a client sent are dropped."""
    return name.strip().lower()


def path_role_name(name: str) -> str:
    """A role named by its path (``role/<name>``), lower-cased as the dispatcher lower-
    cased it for the ACL (``Route.case_insensitive``) and nothing more: stripping blanks
    here would let ``role/admin%20`` act on the ``admin`` a policy denies."""
    return name.lower()


@dataclass(frozen=True, slots=True)
class JwtConfig:
    """``auth/<mount>/config``. Exactly one key source: discovery, JWKS URL or PEM keys."""

    oidc_discovery_url: str = ""
    oidc_discovery_ca_pem: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = field(default="", repr=False)
    oidc_response_mode: str = ""
    oidc_response_types: tuple[str, ...] = ()
    jwks_url: str = ""
    jwks_ca_pem: str = ""
    jwt_validation_pubkeys: tuple[str, ...] = ()
    jwt_supported_algs: tuple[str, ...] = ()
    bound_issuer: str = ""
    default_role: str = ""
    namespace_in_state: bool = True

    @property
    def source(self) -> KeySource:
        if self.oidc_discovery_url:
            return KeySource(
                discovery_url=self.oidc_discovery_url, ca_pem=self.oidc_discovery_ca_pem
            )
        if self.jwks_url:
            return KeySource(jwks_url=self.jwks_url, ca_pem=self.jwks_ca_pem)
        return KeySource(pubkeys=self.jwt_validation_pubkeys)

    @property
    def allowed_algs(self) -> tuple[str, ...]:
        """Vault's login rule: the configured algorithms, else every asymmetric one."""
        return self.jwt_supported_algs or SUPPORTED_ALGS

    @property
    def expected_issuer(self) -> str:
        """``bound_issuer``; with discovery and none set, the provider's own issuer (the
        document's ``issuer`` equals the URL), so another issuer's token sharing its
        keys is refused."""
        return self.bound_issuer or self.oidc_discovery_url

    def to_json(self) -> dict[str, Any]:
        return record_json(self)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> JwtConfig:
        return cls(**record_values(cls, body))

    def checked(self) -> JwtConfig:
        """The config as stored, after Vault's checks that need no network (an API write
        then fetches the discovery document or JWKS; the declarative file is checked with
        this at load): one key source, the OIDC client pair, the algorithms, the response
        settings, the public keys."""
        config = dataclasses.replace(self, default_role=role_name(self.default_role))
        sources = (config.oidc_discovery_url, config.jwks_url, config.jwt_validation_pubkeys)
        if sum(1 for source in sources if source) != 1:
            raise InvalidRequest(
                "exactly one of 'jwt_validation_pubkeys', 'jwks_url' or 'oidc_discovery_url' "
                "must be set"
            )
        if bool(config.oidc_client_id) != bool(config.oidc_client_secret):
            raise InvalidRequest(
                "both 'oidc_client_id' and 'oidc_client_secret' must be set for OIDC"
            )
        if config.oidc_client_id and not config.oidc_discovery_url:
            raise InvalidRequest("'oidc_discovery_url' must be set for OIDC")
        for alg in config.jwt_supported_algs:
            if alg not in SUPPORTED_ALGS:
                raise InvalidRequest(
                    f'invalid jwt_supported_algs: unsupported signing algorithm "{alg}"'
                )
        config._check_response()
        for pem in config.jwt_validation_pubkeys:
            try:
                parse_public_key(pem)
            except KeySourceError as exc:
                raise InvalidRequest(f"error parsing public key: {exc}") from exc
        return config

    def _check_response(self) -> None:
        """``oidc_response_types`` and ``oidc_response_mode``, checked as Vault does
        although the browser flow they configure is not served."""
        if not set(self.oidc_response_types) <= set(_RESPONSE_TYPES):
            raise InvalidRequest(
                f"invalid response_types {list(self.oidc_response_types)}. "
                "'code' and 'id_token' are allowed"
            )
        mode = self.oidc_response_mode
        if mode in ("", "query"):
            if "id_token" in self.oidc_response_types:
                raise InvalidRequest(
                    "query response_mode may not be used with an id_token response_type"
                )
        elif mode != "form_post":
            raise InvalidRequest(f'invalid response_mode: "{mode}"')

    def describe(self) -> dict[str, Any]:
        """A config read: everything but ``oidc_client_secret``."""
        body = self.to_json()
        del body["oidc_client_secret"]
        return {
            **body,
            "provider_config": {},
            "jwks_pairs": [],
            "unsupported_critical_cert_extensions": [],
        }


@dataclass(frozen=True, slots=True)
class JwtRole:
    """``auth/<mount>/role/:name``."""

    name: str
    role_type: str = "oidc"
    user_claim: str = ""
    user_claim_json_pointer: bool = False
    bound_audiences: tuple[str, ...] = ()
    bound_subject: str = ""
    bound_claims_type: str = "string"
    bound_claims: Mapping[str, Any] = field(default_factory=dict)
    claim_mappings: Mapping[str, str] = field(default_factory=dict)
    groups_claim: str = ""
    clock_skew_leeway: int = 0
    expiration_leeway: int = 0
    not_before_leeway: int = 0
    oidc_scopes: tuple[str, ...] = ()
    allowed_redirect_uris: tuple[str, ...] = ()
    callback_mode: str = "client"
    poll_interval: int = 0
    max_age: int = 0
    verbose_oidc_logging: bool = False
    tokens: RoleTokens = field(default_factory=RoleTokens)

    def to_json(self) -> dict[str, Any]:
        return record_json(self)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> JwtRole:
        return cls(**record_values(cls, body, {"tokens": RoleTokens.from_json}))

    def describe(self) -> dict[str, Any]:
        """A role read: Vault's fields, then the token fields under both names."""
        body = self.to_json()
        del body["name"], body["tokens"]
        if not self.poll_interval:
            del body["poll_interval"]
        return {**body, **self.tokens.describe()}


@dataclass(frozen=True, slots=True)
class Login:
    """What a successful login hands to the token manager."""

    role: str
    alias: str
    metadata: dict[str, str]


class JwtAuth:
    """The config, roles and logins of every ``jwt``/``oidc`` mount."""

    def __init__(self, store: AuthStore, tokens: TokenManager, keys: KeySets | None = None) -> None:
        self._store = store
        self._tokens = tokens
        self.keys = keys or KeySets()

    async def close(self) -> None:
        self.keys.close()

    # -- config ---------------------------------------------------------------------------

    async def read_config(self, mount: str) -> JwtConfig:
        config = await self._config(mount)
        if config is None:
            raise NotFound()
        return config

    async def _config(self, mount: str) -> JwtConfig | None:
        body = await self._store.get_auth_entry(mount, "config", "config")
        return JwtConfig.from_json(body) if body is not None else None

    async def write_config(self, mount: str, config: JwtConfig, keep_namespace: bool) -> None:
        """Replace the config (Vault's write is not a merge: what is not sent is unset),
        after Vault's checks. A discovery URL or JWKS URL is fetched now, so a mistake
        shows at write time, and the keys fetched serve the first logins."""
        existing = await self._config(mount)
        if keep_namespace and existing is not None:
            config = dataclasses.replace(config, namespace_in_state=existing.namespace_in_state)
        config = config.checked()
        source = config.source
        fetched = None
        if source.remote:
            what = "oidc discovery URL" if config.oidc_discovery_url else "jwks URL"
            field_name = "oidc_discovery_url" if config.oidc_discovery_url else "jwks_url"
            try:
                check_url(config.oidc_discovery_url or config.jwks_url, field_name)
                ssl_context(source.ca_pem)
                fetched = await fetch_keys(source)
            except KeySourceError as exc:
                raise InvalidRequest(f"error checking {what}: {exc}") from exc
        await self._store.put_auth_entry(mount, "config", "config", config.to_json())
        self.keys.forget(mount)
        if fetched is not None:
            self.keys.prime(mount, source, fetched)

    # -- roles ----------------------------------------------------------------------------

    async def read_role(self, mount: str, name: str) -> JwtRole:
        role = await self._role(mount, path_role_name(name))
        if role is None:
            raise NotFound()
        return role

    async def _role(self, mount: str, name: str) -> JwtRole | None:
        body = await self._store.get_auth_entry(mount, "role", name)
        return JwtRole.from_json(body) if body is not None else None

    async def list_roles(self, mount: str) -> list[str]:
        return await self._store.list_auth_entries(mount, "role")

    async def delete_role(self, mount: str, name: str) -> None:
        await self._store.delete_auth_entry(mount, "role", path_role_name(name))

    async def write_role(
        self,
        mount: str,
        name: str,
        changes: Mapping[str, Any],
        token_changes: Mapping[str, Any],
        writer: Caller,
    ) -> list[str]:
        """Create or update a role with the fields a write sent; the warnings to return.

        As in Vault, ``role_type``, ``bound_claims_type`` and ``callback_mode`` take their
        defaults (``oidc``, ``string``, ``client``) on every write that leaves them out,
        and a ``jwt`` role must bind something: an audience, the subject, claims or the
        client's addresses."""
        name = path_role_name(name)
        if not _NAME.match(name):
            raise InvalidRequest(f"invalid role name {name!r}: use letters, digits, '_', '.', '-'")
        known = {f.name for f in dataclasses.fields(JwtRole)} - {"name", "tokens"}
        unknown = set(changes) - known
        if unknown:  # a programming error: the API parses only known fields
            raise ValueError(f"unknown role fields {sorted(unknown)}")
        existing = await self._role(mount, name) or JwtRole(name)
        defaults = {"role_type": "oidc", "bound_claims_type": "string", "callback_mode": "client"}
        values = {**defaults, **{k: v for k, v in changes.items() if v is not None}}
        for key in defaults:
            values[key] = values[key] or defaults[key]
        if values["role_type"] not in ("jwt", "oidc"):
            raise InvalidRequest(f"invalid 'role_type': {values['role_type']}")
        tokens = existing.tokens.changed(token_changes).checked(writer)
        role = dataclasses.replace(existing, **values, tokens=tokens)
        if role.bound_claims_type not in ("string", "glob"):
            raise InvalidRequest(f"invalid 'bound_claims_type': {role.bound_claims_type}")
        try:
            check_bound_claims_values(role.bound_claims, role.bound_claims_type == "glob")
        except ClaimError as exc:
            raise InvalidRequest(str(exc)) from exc
        self._check_mappings(role.claim_mappings)
        if not role.user_claim:
            raise InvalidRequest("a user claim must be defined on the role")
        if role.callback_mode not in _CALLBACK_MODES:
            raise InvalidRequest(f"invalid 'callback_mode': {role.callback_mode}")
        if role.role_type == "oidc" and not role.allowed_redirect_uris:
            raise InvalidRequest(
                "'allowed_redirect_uris' must be set if 'role_type' is 'oidc' or unspecified."
            )
        if role.role_type == "jwt" and not (
            role.bound_audiences or role.bound_subject or role.bound_claims or tokens.bound_cidrs
        ):
            raise InvalidRequest(
                "must have at least one bound constraint when creating/updating a role"
            )
        await self._store.put_auth_entry(mount, "role", name, role.to_json())
        warnings = []
        if role.verbose_oidc_logging:
            warnings.append(
                "verbose_oidc_logging has been enabled for this role. The broker never logs "
                "tokens or claims, so it has no effect."
            )
        return warnings

    @staticmethod
    def _check_mappings(mappings: Mapping[str, str]) -> None:
        targets: set[str] = set()
        for target in mappings.values():
            if target in _RESERVED_METADATA:
                raise InvalidRequest(
                    f'metadata key "{target}" is reserved and may not be a mapping destination'
                )
            if target in targets:
                raise InvalidRequest(f'multiple keys are mapped to metadata key "{target}"')
            targets.add(target)

    # -- login ----------------------------------------------------------------------------

    async def login(self, mount: str, role: str, token: str, remote: str) -> tuple[str, TokenEntry]:
        """Vault's ``pathLogin``: each refusal is a 400 with Vault's message (a 403 for a
        client outside ``token_bound_cidrs``), and none creates anything."""
        config = await self._config(mount)
        if config is None:
            raise InvalidRequest("could not load configuration")
        name = role_name(role) or config.default_role
        if not name:
            raise InvalidRequest("missing role")
        found = await self._role(mount, name)
        if found is None:
            raise InvalidRequest(f'role "{name}" could not be found')
        if found.role_type == "oidc":
            raise InvalidRequest("role with oidc role_type is not allowed")
        token = token.strip()
        if not token:
            raise InvalidRequest("missing token")
        if not in_cidrs(remote, found.tokens.bound_cidrs):
            raise PermissionDenied()
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidRequest("error validating token: the token is too large")
        claims = await self._verified_claims(mount, config, found, token)
        login = self._login(found, claims)
        request = found.tokens.request(
            f"{mount.replace('/', '-')}-{login.alias}",
            {"role": login.role, **login.metadata},
            f"auth/{mount}/login",
        )
        return await self._tokens.create_for_login(request)

    async def _verified_claims(
        self, mount: str, config: JwtConfig, role: JwtRole, token: str
    ) -> dict[str, Any]:
        try:
            header = read_header(token, config.allowed_algs)
            source = config.source
            try:
                keys = await self.keys.current(mount, source)
            except KeySourceError as exc:
                raise SignatureError(f"error verifying token signature: {exc}") from exc
            usable = candidates(keys, header)
            if not usable and source.remote:
                # An unknown kid: the provider may have rotated its keys.
                fresh = await self.keys.refetch(mount, source)
                usable = candidates(fresh or (), header)
            claims = verify_with(token, header, usable)
            expected = Expected(
                issuer=config.expected_issuer,
                subject=role.bound_subject,
                audiences=role.bound_audiences,
                clock_skew_leeway=role.clock_skew_leeway,
                expiration_leeway=role.expiration_leeway,
                not_before_leeway=role.not_before_leeway,
            )
            validate_registered(claims, expected, time.time())
        except (SignatureError, ClaimError) as exc:
            raise InvalidRequest(f"error validating token: {exc}") from exc
        return claims

    @staticmethod
    def _login(role: JwtRole, claims: Mapping[str, Any]) -> Login:
        """The alias and metadata of a verified token, then the role's bound claims
        (Vault's order once the token itself is valid).

        A ``groups_claim`` is checked as Vault checks it (present, a string or a list of
        strings) and goes no further: Vault turns it into identity group aliases, which
        the broker does not have, and never into token metadata."""
        try:
            if audiences(claims) and not role.bound_audiences:
                raise InvalidRequest(
                    "audience claim found in JWT but no audiences bound to the role"
                )
            alias = user_name(claims, role.user_claim, role.user_claim_json_pointer)
            metadata = mapped_metadata(claims, role.claim_mappings)
            if role.groups_claim:
                group_names(claims, role.groups_claim)
        except ClaimError as exc:
            raise InvalidRequest(str(exc)) from exc
        try:
            validate_bound_claims(role.bound_claims, claims, role.bound_claims_type == "glob")
        except ClaimError as exc:
            raise InvalidRequest(f"error validating claims: {exc}") from exc
        return Login(role.name, alias, metadata)
