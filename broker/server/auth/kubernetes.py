"""The Kubernetes auth method: a pod logs in with its service-account JWT.

It follows Vault's ``vault-plugin-auth-kubernetes`` step by step, so that the vault-k8s
injector, Vault Agent, the CSI provider, External Secrets and hvac work unchanged:

1. the role must exist (400 ``invalid role name``) and the client be inside its
   ``token_bound_cidrs`` (403);
2. the JWT is parsed (and its signature checked when ``pem_keys`` is configured), then its
   issuer (unless disabled), its audience (when the role names one), its times, and the
   role's service-account name and namespace bounds; failures are 403 with Vault's words;
3. the cluster is **always** asked, with a TokenReview, whether the token is still valid
   (a deleted service account or pod, a revoked secret): the JWT's own claims are never
   trusted alone, since without ``pem_keys`` anyone can write them. Whatever goes wrong
   there is a bare 403 ``permission denied``; the reason is logged, never the token.

A JWT is a bearer credential: it appears in no log line, error text or stored row. The
``token_reviewer_jwt`` is stored sealed (``AuthStore.put_auth_entry``) and never read back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import re
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from broker.exceptions import InvalidRequest, NotFound, PermissionDenied
from broker.models import TokenEntry
from broker.server.auth.records import record_json, record_values
from broker.server.auth.role_tokens import RoleTokens
from broker.server.auth.tokens import Caller, TokenManager, in_cidrs
from broker.server.storage.auth import AuthStore

log = logging.getLogger(__name__)

#: Where a pod finds its own service-account token and the cluster's CA.
LOCAL_SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: The issuer legacy (secret-based) service-account tokens carry, and the one checked when
#: issuer validation is on and no ``issuer`` is configured (Vault's documented default).
DEFAULT_ISSUER = "kubernetes/serviceaccount"
#: The algorithms the API server may sign service-account tokens with (Vault's list,
#: taken from Kubernetes' OIDC authenticator). ``none`` and HMAC are never accepted.
ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"}
)
ALIAS_SOURCES = ("serviceaccount_uid", "serviceaccount_name")
#: go-jose's default clock-skew leeway, and cap's for a missing ``exp``/``nbf``.
_CLOCK_SKEW = 60
_DEFAULT_LEEWAY = 150
#: The TokenReview call: bounded in time and in the answer's size.
REVIEW_TIMEOUT = 10.0
MAX_REVIEW_BYTES = 1 << 20
#: How long a pod's own token and CA file are used before being read again (Vault's
#: figures: Kubernetes rotates projected tokens and recommends re-reading each minute).
_LOCAL_TOKEN_SECONDS = 60.0
_LOCAL_CA_SECONDS = 3600.0
#: Vault's ``GenericNameRegex`` (Go's ``\w`` is ASCII): Unicode letters would lower-case
#: into other names (the Kelvin sign into ``k``).
_ROLE_NAME = re.compile(r"^\w(?:[\w.-]*\w)?$", re.ASCII)
_SA_PREFIX = "system:serviceaccount"


# -- configuration -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KubernetesConfig:
    """``auth/<mount>/config``. A write replaces the whole configuration, as Vault's does:
    a field left out goes back to its default (so rewriting ``kubernetes_host`` without
    ``token_reviewer_jwt`` drops the stored reviewer token rather than sending it to the
    new host)."""

    host: str
    ca_cert: str = ""
    token_reviewer_jwt: str = field(default="", repr=False)
    pem_keys: tuple[str, ...] = ()
    issuer: str = ""
    disable_iss_validation: bool = True
    disable_local_ca_jwt: bool = False

    def checked(self) -> KubernetesConfig:
        host = self.host.strip()
        if not host:
            raise InvalidRequest("no host provided")
        try:
            parts = urlsplit(host)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
            valid = valid and (parts.port is None or parts.port > 0)
        except ValueError:  # "http://[::1", "https://host:port": urlsplit and .port raise
            valid = False
        if not valid:
            raise InvalidRequest(
                "kubernetes_host must be an http:// or https:// URL of the Kubernetes API server"
            )
        if self.ca_cert.strip():
            _ssl_context(self.ca_cert)  # 400 if it holds no usable certificate
        for pem in self.pem_keys:
            parse_public_key(pem)
        return dataclasses.replace(self, host=host)

    def to_json(self) -> dict[str, Any]:
        return record_json(self)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> KubernetesConfig:
        return cls(**record_values(cls, body))

    def describe(self) -> dict[str, Any]:
        """A config read: Vault's fields, the reviewer token only as ``..._set``."""
        return {
            "kubernetes_host": self.host,
            "kubernetes_ca_cert": self.ca_cert,
            "pem_keys": list(self.pem_keys),
            "issuer": self.issuer,
            "disable_iss_validation": self.disable_iss_validation,
            "disable_local_ca_jwt": self.disable_local_ca_jwt,
            "token_reviewer_jwt_set": bool(self.token_reviewer_jwt),
            "use_annotations_as_alias_metadata": False,
        }


def parse_public_key(pem: str) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    """A ``pem_keys`` entry: a PEM public key or certificate holding an RSA or ECDSA key
    (Vault takes the first PEM block of each entry)."""
    data = pem.strip().encode()
    key: Any = None
    try:
        key = load_pem_public_key(data)
    except ValueError:
        try:
            key = x509.load_pem_x509_certificate(data).public_key()
        except ValueError:
            key = None
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise InvalidRequest("data does not contain any valid RSA or ECDSA public keys")
    return key


_SSL_CONTEXTS: dict[str, ssl.SSLContext] = {}


def _ssl_context(ca_pem: str) -> ssl.SSLContext:
    """A client context trusting exactly ``ca_pem`` (the cluster's CA), or the system's
    roots when there is none (Vault's behaviour with ``disable_local_ca_jwt``). Built once
    per distinct PEM: loading certificates costs more than the TokenReview call."""
    digest = hashlib.sha256(ca_pem.encode()).hexdigest()
    context = _SSL_CONTEXTS.get(digest)
    if context is not None:
        return context
    try:
        if ca_pem.strip():
            context = ssl.create_default_context(cadata=ca_pem)
        else:
            context = ssl.create_default_context()
    except (ssl.SSLError, ValueError) as exc:
        raise InvalidRequest("The provided CA PEM data contains no valid certificates") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if len(_SSL_CONTEXTS) > 64:
        _SSL_CONTEXTS.clear()
    _SSL_CONTEXTS[digest] = context
    return context


# -- roles ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KubernetesRole:
    names: tuple[str, ...]
    namespaces: tuple[str, ...]
    audience: str = ""
    alias_name_source: str = "serviceaccount_uid"
    tokens: RoleTokens = field(default_factory=RoleTokens)

    def to_json(self) -> dict[str, Any]:
        return {
            "bound_service_account_names": list(self.names),
            "bound_service_account_namespaces": list(self.namespaces),
            "audience": self.audience,
            "alias_name_source": self.alias_name_source,
            "tokens": self.tokens.to_json(),
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> KubernetesRole:
        return cls(
            names=tuple(body.get("bound_service_account_names") or ()),
            namespaces=tuple(body.get("bound_service_account_namespaces") or ()),
            audience=str(body.get("audience") or ""),
            alias_name_source=str(body.get("alias_name_source") or "serviceaccount_uid"),
            tokens=RoleTokens.from_json(body.get("tokens") or {}),
        )

    def describe(self) -> dict[str, Any]:
        """A role read, as Vault's: ``audience`` only when set, the selector empty (the
        broker does not take one), the token fields under both names."""
        data: dict[str, Any] = {
            "bound_service_account_names": list(self.names),
            "bound_service_account_namespaces": list(self.namespaces),
            "bound_service_account_namespace_selector": "",
            "alias_name_source": self.alias_name_source,
        }
        if self.audience:
            data["audience"] = self.audience
        data.update(self.tokens.describe())
        return data


@dataclass(frozen=True, slots=True)
class RoleUpdate:
    """The fields a role write sent; None keeps the stored value (or the default)."""

    names: tuple[str, ...] | None = None
    namespaces: tuple[str, ...] | None = None
    namespace_selector: str | None = None
    audience: str | None = None
    alias_name_source: str | None = None
    token_changes: Mapping[str, Any] = field(default_factory=dict)


def _check_bounds(role: KubernetesRole) -> None:
    """Vault's rules (path_role.go): both lists non-empty, and ``*`` alone or not at all.
    Both may be ``*``: any service account of any namespace, which Vault allows too."""
    if not role.names:
        raise InvalidRequest('"bound_service_account_names" can not be empty')
    if len(role.names) > 1 and "*" in role.names:
        raise InvalidRequest('can not mix "*" with values')
    if not role.namespaces:
        raise InvalidRequest(
            '"bound_service_account_namespaces" can not be empty if '
            '"bound_service_account_namespace_selector" is not set'
        )
    if len(role.namespaces) > 1 and "*" in role.namespaces:
        raise InvalidRequest('can not mix "*" with values')


def glob_match(pattern: str, value: str) -> bool:
    """Vault's ``strutil.GlobbedStringsMatch``: a ``*`` only at the start and/or the end
    (``app-*``, ``*-prod``, ``*mid*``); anywhere else it is a literal character."""
    if len(pattern) < 2:
        return value == pattern
    prefix, suffix = pattern.startswith("*"), pattern.endswith("*")
    if prefix and suffix:
        return pattern[1:-1] in value
    if prefix:
        return value.endswith(pattern[1:])
    if suffix:
        return value.startswith(pattern[:-1])
    return value == pattern


# -- the service account a JWT names -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """What the JWT claims, legacy (``kubernetes.io/serviceaccount/...``) or projected
    (``kubernetes.io: {namespace, serviceaccount, pod}``); projected values win."""

    name: str
    namespace: str
    uid: str
    secret_name: str
    audiences: tuple[str, ...]

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> ServiceAccount:
        def text(value: Any) -> str:
            if value is None:
                return ""
            if not isinstance(value, str):
                raise PermissionDenied("invalid service account claims")
            return value

        name = text(claims.get("kubernetes.io/serviceaccount/service-account.name"))
        uid = text(claims.get("kubernetes.io/serviceaccount/service-account.uid"))
        namespace = text(claims.get("kubernetes.io/serviceaccount/namespace"))
        secret_name = text(claims.get("kubernetes.io/serviceaccount/secret.name"))
        projected = claims.get("kubernetes.io")
        if projected is not None:
            if not isinstance(projected, Mapping):
                raise PermissionDenied("invalid service account claims")
            namespace = text(projected.get("namespace"))
            account = projected.get("serviceaccount")
            if account is not None:
                if not isinstance(account, Mapping):
                    raise PermissionDenied("invalid service account claims")
                name, uid = text(account.get("name")), text(account.get("uid"))
        return cls(name, namespace, uid, secret_name, _audiences(claims.get("aud")))

    def alias_name(self, source: str) -> str:
        """Vault's alias name (path_login.go ``getAliasName``); the broker has no identity
        store, so it names the login in the log, and an account it cannot be made for is
        refused as Vault refuses it."""
        if source == "serviceaccount_name":
            if not self.namespace or not self.name:
                raise PermissionDenied("service account namespace and name must be set")
            return f"{self.namespace}/{self.name}"
        if not self.uid:
            raise PermissionDenied("could not parse UID from claims")
        return self.uid


def _audiences(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):  # RFC 7519 allows a single string
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise PermissionDenied("invalid audience (aud) claim")


def _verified_claims(
    token: str, keys: Sequence[rsa.RSAPublicKey | ec.EllipticCurvePublicKey]
) -> dict[str, Any]:
    """The claims of ``token``, a JWS signed with an allowed algorithm (by one of
    ``keys`` when there are any). Anything that is not such a JWT is Vault's bare
    ``permission denied`` (cap's "error verifying token signature")."""
    jws = jwt.PyJWS()
    try:
        header = jwt.get_unverified_header(token)
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise PermissionDenied()
        if not keys:
            payload = jws.decode_complete(token, options={"verify_signature": False})["payload"]
        else:
            payload = None
            for key in keys:
                if isinstance(key, rsa.RSAPublicKey) != (alg[0] in "RP"):
                    continue
                try:
                    payload = jws.decode_complete(token, key=key, algorithms=[alg])["payload"]
                    break
                except (jwt.PyJWTError, ValueError, TypeError):
                    continue  # another key may be the one (a curve or size that differs)
            if payload is None:
                raise PermissionDenied()
        claims = json.loads(payload)
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError) as exc:
        # RecursionError: claims nested deeper than the interpreter's stack.
        raise PermissionDenied() from exc
    if not isinstance(claims, dict):
        raise PermissionDenied()
    return claims


#: go-jose reads a NumericDate into an int64: anything beyond it does not parse there.
_MAX_NUMERIC_DATE = 2**63 - 1


def _numeric(claims: Mapping[str, Any], name: str) -> float:
    """A NumericDate claim; 0 when absent. NaN and infinities (which Python's JSON reads
    and Go's does not) are refused: every comparison with NaN is false, so a NaN ``exp``
    would pass the expiry check. Too large for a float (``float(10**400)`` raises) too."""
    value = claims.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PermissionDenied(f"invalid {name} claim")
    if not abs(value) <= _MAX_NUMERIC_DATE:  # NaN fails every comparison
        raise PermissionDenied(f"invalid {name} claim")
    return float(value)


def _check_times(claims: Mapping[str, Any], now: float) -> None:
    """cap's ``ValidateAllowMissingIatNbfExp``: legacy tokens carry no times at all and
    pass; otherwise a missing ``exp`` or ``nbf`` is derived as cap does, and all three are
    checked with a minute of clock skew."""
    iat, nbf, exp = (_numeric(claims, n) for n in ("iat", "nbf", "exp"))
    if not (iat or nbf or exp):
        return
    if not exp:
        exp = max(iat, nbf) + _DEFAULT_LEEWAY
    if not nbf:
        nbf = iat or exp - _DEFAULT_LEEWAY
    if now + _CLOCK_SKEW < nbf:
        raise PermissionDenied("invalid not before (nbf) claim: token not yet valid")
    if now - _CLOCK_SKEW > exp:
        raise PermissionDenied("invalid expiration time (exp) claim: token is expired")
    if iat and now + _CLOCK_SKEW < iat:
        raise PermissionDenied("invalid issued at (iat) claim: token issued in the future")


# -- the TokenReview -----------------------------------------------------------------------


class ReviewRefused(Exception):
    """The cluster did not confirm the token; the text (never a token) is for the log."""


@dataclass(frozen=True, slots=True)
class _Cluster:
    """The configuration as a login uses it, with a pod's own files filled in."""

    host: str
    ca_pem: str
    reviewer_jwt: str = field(repr=False)


class KubernetesAuth:
    """Configuration, roles and logins of every Kubernetes auth mount."""

    def __init__(
        self,
        store: AuthStore,
        tokens: TokenManager,
        service_account_dir: Path = LOCAL_SERVICE_ACCOUNT_DIR,
    ) -> None:
        self._store = store
        self._tokens = tokens
        #: Where the pod's own ``token`` and ``ca.crt`` are read from (tests point it at
        #: a directory of their own).
        self.service_account_dir = service_account_dir
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._local: dict[Path, tuple[float, str]] = {}

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    # -- configuration -----------------------------------------------------------------

    async def write_config(self, mount: str, config: KubernetesConfig) -> None:
        await self._store.put_auth_entry(mount, "config", "config", config.checked().to_json())

    async def read_config(self, mount: str) -> KubernetesConfig:
        body = await self._store.get_auth_entry(mount, "config", "config")
        if body is None:
            raise NotFound()
        return KubernetesConfig.from_json(body)

    # -- roles -------------------------------------------------------------------------

    @staticmethod
    def _role_key(name: str) -> str:
        """Vault stores and finds roles by their lower-cased name."""
        if not _ROLE_NAME.match(name):
            raise InvalidRequest(f"invalid role name {name!r}: use letters, digits, '_', '.', '-'")
        return name.lower()

    async def write_role(self, mount: str, name: str, update: RoleUpdate, writer: Caller) -> None:
        key = self._role_key(name)
        if update.namespace_selector:
            raise InvalidRequest(
                "bound_service_account_namespace_selector is not supported by the broker: "
                "list the namespaces in bound_service_account_namespaces"
            )
        stored = await self._store.get_auth_entry(mount, "role", key)
        role = KubernetesRole.from_json(stored) if stored else KubernetesRole((), ())
        changes: dict[str, Any] = {}
        if update.names is not None:
            changes["names"] = tuple(update.names)
        if update.namespaces is not None:
            changes["namespaces"] = tuple(update.namespaces)
        if update.audience is not None:
            changes["audience"] = update.audience
        if update.alias_name_source:
            changes["alias_name_source"] = update.alias_name_source
        role = dataclasses.replace(role, **changes)
        if role.alias_name_source not in ALIAS_SOURCES:
            raise InvalidRequest(
                "invalid alias_name_source, must be one of: " + ", ".join(ALIAS_SOURCES)
            )
        _check_bounds(role)
        tokens = role.tokens.changed(update.token_changes).checked(writer)
        role = dataclasses.replace(role, tokens=tokens)
        await self._store.put_auth_entry(mount, "role", key, role.to_json())

    async def read_role(self, mount: str, name: str) -> KubernetesRole:
        body = await self._store.get_auth_entry(mount, "role", name.lower())
        if body is None:
            raise NotFound()
        return KubernetesRole.from_json(body)

    async def list_roles(self, mount: str) -> list[str]:
        return await self._store.list_auth_entries(mount, "role")

    async def delete_role(self, mount: str, name: str) -> None:
        await self._store.delete_auth_entry(mount, "role", name.lower())

    # -- login -------------------------------------------------------------------------

    async def login(
        self, mount: str, role_name: str, token: str, remote: str
    ) -> tuple[str, TokenEntry]:
        """Vault's ``pathLogin``, in its order; see the module docstring."""
        token = token.strip()  # some clients send the file as read, newline and all
        if not role_name:
            raise InvalidRequest("missing role")
        if not token:
            raise InvalidRequest("missing jwt")
        body = await self._store.get_auth_entry(mount, "role", role_name.lower())
        if body is None:
            raise InvalidRequest(f'invalid role name "{role_name}"')
        role = KubernetesRole.from_json(body)
        if not in_cidrs(remote, role.tokens.bound_cidrs):
            raise PermissionDenied()
        stored = await self._store.get_auth_entry(mount, "config", "config")
        if stored is None:
            raise InvalidRequest("could not load backend configuration")
        config = KubernetesConfig.from_json(stored)
        account = self._validated_account(token, role, config)
        alias = account.alias_name(role.alias_name_source)
        cluster = await self._cluster(config)
        wanted = [role.audience] if role.audience else list(account.audiences)
        try:
            reviewed = await self._review(cluster, token, wanted)
            if not account.uid:
                raise ReviewRefused("could not parse UID from claims")
            if account.name != reviewed[1]:
                raise ReviewRefused("JWT names did not match")
            if account.uid != reviewed[2]:
                raise ReviewRefused("JWT UIDs did not match")
            if account.namespace != reviewed[0]:
                raise ReviewRefused("JWT namespaces did not match")
        except ReviewRefused as exc:
            log.info(
                "kubernetes login on auth/%s refused by the TokenReview: %s",
                mount,
                _scrub(str(exc), token, cluster.reviewer_jwt),
            )
            raise PermissionDenied() from None
        meta = {
            "role": role_name,
            "service_account_name": account.name,
            "service_account_namespace": account.namespace,
            "service_account_secret_name": account.secret_name,
            "service_account_uid": account.uid,
        }
        # Vault prefixes the method's mount path to the method's "NS-NAME".
        display = f"{mount.replace('/', '-')}-{account.namespace}-{account.name}"
        made = await self._tokens.create_for_login(
            role.tokens.request(display, meta, f"auth/{mount}/login")
        )
        log.info("kubernetes login on auth/%s: role %s, alias %s", mount, role_name, alias)
        return made

    def _validated_account(
        self, token: str, role: KubernetesRole, config: KubernetesConfig
    ) -> ServiceAccount:
        """Vault's ``parseAndValidateJWT``: signature, issuer, audience, times, bounds."""
        keys = [parse_public_key(pem) for pem in config.pem_keys]
        claims = _verified_claims(token, keys)
        issuer = config.issuer or DEFAULT_ISSUER
        if not config.disable_iss_validation and claims.get("iss") != issuer:
            raise PermissionDenied("invalid issuer (iss) claim")
        account = ServiceAccount.from_claims(claims)
        if role.audience and role.audience not in account.audiences:
            raise PermissionDenied(
                "invalid audience (aud) claim: audience claim does not match any expected audience"
            )
        _check_times(claims, time.time())
        if role.names != ("*",) and not any(glob_match(p, account.name) for p in role.names):
            raise PermissionDenied("service account name not authorized")
        if not (
            role.namespaces[:1] == ("*",)
            or any(glob_match(p, account.namespace) for p in role.namespaces)
        ):
            raise PermissionDenied("namespace not authorized")
        return account

    async def _cluster(self, config: KubernetesConfig) -> _Cluster:
        """Inside a pod, a configuration without a CA or a reviewer token uses the pod's
        own (``disable_local_ca_jwt`` turns that off). Without a reviewer token the
        client's JWT is the bearer of its own review; without any CA, the system's."""
        ca_pem, reviewer = config.ca_cert, config.token_reviewer_jwt
        if not config.disable_local_ca_jwt:
            if not reviewer:
                reviewer = await self._local_file("token", _LOCAL_TOKEN_SECONDS)
            if not ca_pem.strip():
                ca_pem = await self._local_file("ca.crt", _LOCAL_CA_SECONDS)
        return _Cluster(config.host, ca_pem, reviewer.strip())

    async def _local_file(self, name: str, keep_for: float) -> str:
        path = self.service_account_dir / name
        now = time.monotonic()
        cached = self._local.get(path)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            text = await asyncio.to_thread(path.read_text)
        except (OSError, UnicodeDecodeError):
            text = ""  # not in a pod (or not mounted): the configured values stand alone
        self._local[path] = (now + keep_for, text)
        return text

    def _client(self) -> aiohttp.ClientSession:
        """One pooled session per event loop (Vault keeps one HTTP client too)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=REVIEW_TIMEOUT),
                connector=aiohttp.TCPConnector(limit=32),
            )
            self._session_loop = loop
        return self._session

    async def _review(
        self, cluster: _Cluster, token: str, audiences: Sequence[str]
    ) -> tuple[str, str, str]:
        """``POST /apis/authentication.k8s.io/v1/tokenreviews`` (Vault's token_review.go):
        the (namespace, name, uid) the cluster says the token belongs to."""
        url = cluster.host.rstrip("/") + "/apis/authentication.k8s.io/v1/tokenreviews"
        spec: dict[str, Any] = {"token": token}
        if audiences:
            spec["audiences"] = list(audiences)
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        headers = {
            "Authorization": f"Bearer {cluster.reviewer_jwt or token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        tls: ssl.SSLContext | bool = False
        if url.startswith("https://"):
            tls = _ssl_context(cluster.ca_pem)
        try:
            async with self._client().post(
                url, data=json.dumps(request), headers=headers, ssl=tls, allow_redirects=False
            ) as resp:
                status = resp.status
                raw = bytearray()
                async for chunk in resp.content.iter_chunked(65536):
                    raw += chunk
                    if len(raw) > MAX_REVIEW_BYTES:
                        raise ReviewRefused("the TokenReview answer is too large")
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise ReviewRefused(
                f"TokenReview request to {cluster.host} failed: {type(exc).__name__}: {exc}"
            ) from None
        return _reviewed_identity(status, bytes(raw), audiences)


def _reviewed_identity(status: int, raw: bytes, audiences: Sequence[str]) -> tuple[str, str, str]:
    """Vault's ``parseResponse`` and ``Review``: a non-2xx answer or a ``Status`` object is
    a failure (401 meaning the reviewer's token is gone), then the review's own verdict."""
    try:
        body = json.loads(raw) if raw.strip() else None
    except (ValueError, UnicodeDecodeError, RecursionError):  # nested past the stack
        body = None
    if not 200 <= status <= 206:
        if status == 401:
            raise ReviewRefused(
                "lookup failed: service account unauthorized; this could mean it has been "
                "deleted or recreated with a new token"
            )
        raise ReviewRefused(f"TokenReview answered HTTP {status}: {_status_message(body, raw)}")
    if not isinstance(body, dict):
        raise ReviewRefused("the TokenReview answer is not a JSON object")
    if isinstance(body.get("status"), str) and body["status"] != "Success":
        raise ReviewRefused(f"TokenReview answered a Status: {_status_message(body, raw)}")
    review = body.get("status")
    if not isinstance(review, dict):
        review = {}
    if review.get("error"):
        raise ReviewRefused(f"lookup failed: {review['error']}")
    if review.get("authenticated") is not True:
        raise ReviewRefused("lookup failed: service account jwt not valid")
    if audiences:
        granted = review.get("audiences")
        if not isinstance(granted, list) or not set(audiences) & {
            a for a in granted if isinstance(a, str)
        }:
            raise ReviewRefused(
                f"lookup failed: service account jwt valid for audience(s) {granted}, "
                f"but wanted {list(audiences)}"
            )
    user = review.get("user")
    user = user if isinstance(user, dict) else {}
    username, uid = user.get("username"), user.get("uid")
    parts = username.split(":") if isinstance(username, str) else []
    if len(parts) != 4:
        raise ReviewRefused("lookup failed: unexpected username format")
    if f"{parts[0]}:{parts[1]}" != _SA_PREFIX:
        raise ReviewRefused("lookup failed: username returned is not a service account")
    return parts[2], parts[3], uid if isinstance(uid, str) else ""


def _status_message(body: Any, raw: bytes) -> str:
    """The ``message`` of a Kubernetes ``Status`` object, else the start of the body."""
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])[:300]
    return raw[:300].decode("utf-8", "replace")


def _scrub(text: str, *secrets: str) -> str:
    """``text`` without any of ``secrets`` (a cluster's error could quote a token) and
    without control characters (it could also try to forge a log line)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return "".join(c if c.isprintable() else " " for c in text)
