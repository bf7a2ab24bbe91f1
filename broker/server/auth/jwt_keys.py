"""Where the JWT/OIDC auth method gets its verification keys, and the signature check.

Three sources, exactly one per mount (Vault's rule): PEM public keys in the config, a JWKS
URL, or an OIDC discovery URL whose document names the JWKS. Remote key sets are fetched
with aiohttp (never blocking the event loop), over TLS verified against the configured CA
only when one is given, within 10 seconds and 1 MiB, following redirects only within the
same origin, and cached per mount.

An unknown ``kid`` is how a provider's key rotation shows, so it makes the cache refetch;
but anyone can send a token with a made-up ``kid``, so refetches caused by logins are
rate-limited per mount (``MIN_REFETCH_SECONDS``) and concurrent logins share one fetch: a
flood of bad tokens costs the provider at most one request per interval per node.

The signature is checked with PyJWT against the key whose ``kid`` matches, only for the
asymmetric algorithms the config allows: never ``none``, never an HMAC algorithm (which
would take a public key as a shared secret).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import ssl
import time
import urllib.parse
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

log = logging.getLogger(__name__)

#: Vault's (cap's) signing algorithms: the asymmetric ones.
SUPPORTED_ALGS = (
    "RS256",
    "RS384",
    "RS512",
    "ES256",
    "ES384",
    "ES512",
    "PS256",
    "PS384",
    "PS512",
    "EdDSA",
)
#: At most one login-caused fetch of a mount's keys in this many seconds.
MIN_REFETCH_SECONDS = 10.0
#: Cached keys are fetched again after this long, so a key the provider withdrew stops
#: verifying tokens within it.
MAX_KEY_AGE_SECONDS = 600.0
FETCH_TIMEOUT_SECONDS = 10.0
MAX_DOCUMENT_BYTES = 1 << 20
_MAX_REDIRECTS = 3
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)


class KeySourceError(ValueError):
    """Keys could not be fetched or parsed; the message names no secret."""


class SignatureError(ValueError):
    """The token's signature or header was refused; the message is Vault's."""


@dataclass(frozen=True, slots=True)
class VerifyingKey:
    key: PublicKey
    kid: str | None = None
    #: The JWK's own ``alg``, when it names one: the key verifies only that algorithm.
    alg: str | None = None


@dataclass(frozen=True, slots=True)
class KeySource:
    """One mount's key source, as configured."""

    discovery_url: str = ""
    jwks_url: str = ""
    ca_pem: str = ""
    pubkeys: tuple[str, ...] = ()

    @property
    def remote(self) -> bool:
        return bool(self.discovery_url or self.jwks_url)

    @property
    def fingerprint(self) -> str:
        """Identifies the source: a config change starts a new cache entry."""
        text = json.dumps([self.discovery_url, self.jwks_url, self.ca_pem, list(self.pubkeys)])
        return hashlib.sha256(text.encode()).hexdigest()


# -- parsing -------------------------------------------------------------------------------


def parse_public_key(pem: str) -> PublicKey:
    """A PEM public key (``PUBLIC KEY``, ``RSA PUBLIC KEY``) or a certificate's key."""
    data = pem.strip().encode()
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except ValueError as exc:
        raise KeySourceError("data does not contain any valid public keys") from exc
    if not isinstance(key, PublicKey):
        raise KeySourceError("unsupported public key type")
    return key


def parse_jwks(document: Any) -> tuple[VerifyingKey, ...]:
    """The signing keys of a JWK Set. Keys for encryption, symmetric keys and keys PyJWT
    cannot read are skipped; a private JWK contributes only its public half."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise KeySourceError("the document is not a JWK Set (no 'keys' list)")
    keys: list[VerifyingKey] = []
    for jwk in document["keys"]:
        if not isinstance(jwk, Mapping) or jwk.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        alg = jwk.get("alg")
        if alg is not None and alg not in SUPPORTED_ALGS:
            continue
        try:
            parsed = jwt.PyJWK(dict(jwk))
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            continue
        key: Any = parsed.key
        if hasattr(key, "public_key") and not isinstance(key, PublicKey):
            key = key.public_key()  # a private JWK: keep only what verifies
        if not isinstance(key, PublicKey):
            continue
        kid = jwk.get("kid")
        keys.append(VerifyingKey(key, kid if isinstance(kid, str) else None, alg))
    return tuple(keys)


def static_keys(pems: Sequence[str]) -> tuple[VerifyingKey, ...]:
    return tuple(VerifyingKey(parse_public_key(pem)) for pem in pems)


def key_fits(key: PublicKey, alg: str) -> bool:
    """Whether ``key`` can verify ``alg`` (an RSA key never verifies ES256...)."""
    if alg.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey)
    if alg in _EC_CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _EC_CURVES[alg]
    if alg == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


# -- the signature -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenHeader:
    alg: str
    kid: str | None


def read_header(token: str, allowed_algs: Sequence[str]) -> TokenHeader:
    """The JWS header, refused unless its ``alg`` is one of ``allowed_algs`` (all
    asymmetric: ``none`` and ``HS*`` never are)."""
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.InvalidTokenError, ValueError, RecursionError) as exc:
        # InvalidTokenError, not only DecodeError: PyJWT also refuses a ``kid`` that is not
        # a string and a ``crit`` it does not support (go-jose refuses both too).
        raise SignatureError("error verifying token signature: malformed token") from exc
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in allowed_algs or alg not in SUPPORTED_ALGS:
        raise SignatureError(
            "invalid algorithm (alg) header parameter: token signed with unexpected algorithm"
        )
    kid = header.get("kid")
    return TokenHeader(alg, kid if isinstance(kid, str) else None)


def candidates(keys: Sequence[VerifyingKey], header: TokenHeader) -> list[VerifyingKey]:
    """The keys that may have signed the token: those with its ``kid`` (every key when
    it names none), of the right type, and not bound to another algorithm."""
    return [
        k
        for k in keys
        if (header.kid is None or k.kid == header.kid)
        and (k.alg is None or k.alg == header.alg)
        and key_fits(k.key, header.alg)
    ]


def verify_with(token: str, header: TokenHeader, keys: Sequence[VerifyingKey]) -> dict[str, Any]:
    """The claims, if one of ``keys`` verifies the signature."""
    for candidate in keys:
        try:
            decoded = jwt.PyJWS().decode_complete(token, key=candidate.key, algorithms=[header.alg])
        except (jwt.InvalidTokenError, jwt.InvalidKeyError, ValueError, RecursionError):
            continue
        try:
            claims = json.loads(decoded["payload"])
        except (ValueError, RecursionError) as exc:
            raise SignatureError("error verifying token signature: malformed claims") from exc
        if not isinstance(claims, dict):
            raise SignatureError("error verifying token signature: malformed claims")
        return claims
    raise SignatureError("error verifying token signature: failed to verify id token signature")


# -- fetching ------------------------------------------------------------------------------


def ssl_context(ca_pem: str) -> ssl.SSLContext:
    """System CAs, or only the configured ones (as Vault builds its pool)."""
    if not ca_pem.strip():
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cadata=ca_pem)
    except (ssl.SSLError, ValueError) as exc:
        raise KeySourceError("could not parse CA PEM value successfully") from exc


def check_url(url: str, name: str) -> None:
    try:
        _origin(url)
    except KeySourceError:
        raise KeySourceError(f"{name} must be an http:// or https:// URL") from None


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of an http(s) URL; KeySourceError for anything else, an
    unparsable one included (``urlsplit`` and ``.port`` raise ValueError on ``http://[::1``
    or ``http://host:x``, which a config or a provider's redirect may hold)."""
    try:
        parts = urllib.parse.urlsplit(url)
        origin = parts.scheme, parts.hostname or "", parts.port
    except ValueError as exc:
        raise KeySourceError(f"{url!r} is not a valid URL") from exc
    if origin[0] not in ("http", "https") or not origin[1]:
        raise KeySourceError(f"{url!r} is not an http:// or https:// URL")
    return origin


async def fetch_json(url: str, ca_pem: str) -> Any:
    """GET a JSON document: 200 only, bounded in time and size, redirects followed only
    to the same scheme, host and port."""
    context = ssl_context(ca_pem)
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_SECONDS)
    try:
        async with aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(ssl=context)
        ) as session:
            for _ in range(_MAX_REDIRECTS + 1):
                async with session.get(
                    url, allow_redirects=False, headers={"Accept": "application/json"}
                ) as response:
                    if response.status in (301, 302, 303, 307, 308):
                        target = urllib.parse.urljoin(url, response.headers.get("Location", ""))
                        if _origin(target) != _origin(url):
                            raise KeySourceError(f"{url}: redirect to another origin refused")
                        url = target
                        continue
                    if response.status != 200:
                        raise KeySourceError(f"{url}: HTTP {response.status}")
                    body = bytearray()
                    async for chunk in response.content.iter_chunked(65536):
                        body += chunk
                        if len(body) > MAX_DOCUMENT_BYTES:
                            raise KeySourceError(f"{url}: document larger than 1 MiB")
                    break
            else:
                raise KeySourceError(f"{url}: too many redirects")
    except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as exc:
        raise KeySourceError(f"{url}: {type(exc).__name__}: {exc}".rstrip(": ")) from exc
    try:
        return json.loads(bytes(body))
    except (ValueError, RecursionError) as exc:
        raise KeySourceError(f"{url}: not a JSON document") from exc


@dataclass(frozen=True, slots=True)
class Discovery:
    issuer: str
    jwks_uri: str


async def discover(url: str, ca_pem: str) -> Discovery:
    """The provider's ``.well-known/openid-configuration``; its ``issuer`` must be the
    configured URL exactly (OpenID Connect Discovery 1.0, section 4.3)."""
    check_url(url, "oidc_discovery_url")
    document = await fetch_json(url.rstrip("/") + "/.well-known/openid-configuration", ca_pem)
    if not isinstance(document, Mapping):
        raise KeySourceError("the discovery document is not a JSON object")
    issuer = document.get("issuer")
    if issuer != url:
        raise KeySourceError(
            f"issuer did not match the issuer returned by provider, expected {url!r} got {issuer!r}"
        )
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str):
        raise KeySourceError("the discovery document has no jwks_uri")
    check_url(jwks_uri, "jwks_uri")
    return Discovery(url, jwks_uri)


@dataclass(frozen=True, slots=True)
class Fetched:
    keys: tuple[VerifyingKey, ...]
    #: Where they came from (a discovery document's ``jwks_uri`` is remembered).
    jwks_uri: str = ""


async def fetch_keys(source: KeySource, jwks_uri: str = "") -> Fetched:
    """A remote source's current keys; ``jwks_uri`` skips a discovery already made."""
    if source.discovery_url:
        if not jwks_uri:
            jwks_uri = (await discover(source.discovery_url, source.ca_pem)).jwks_uri
    else:
        check_url(source.jwks_url, "jwks_url")
        jwks_uri = source.jwks_url
    keys = parse_jwks(await fetch_json(jwks_uri, source.ca_pem))
    if not keys:
        raise KeySourceError(f"{jwks_uri}: the JWK Set has no usable signing key")
    return Fetched(keys, jwks_uri)


# -- the per-mount cache -------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    fingerprint: str
    fetched: Fetched | None = None
    fetched_at: float = 0.0
    #: When a login last caused a fetch (successful or not): the rate limit's clock.
    attempted_at: float = float("-inf")
    inflight: asyncio.Task[Fetched] | None = field(default=None, repr=False)


Fetcher = Callable[[KeySource, str], Coroutine[Any, Any, Fetched]]


class KeySets:
    """Each mount's verification keys. Static keys are parsed once per config; remote
    ones are fetched on first use, after ``max_age``, and on an unknown ``kid``, with at
    most one login-caused fetch per ``min_refetch`` seconds and one in flight at a time.

    ``fetcher`` and ``clock`` are parameters so unit tests can count and step them."""

    def __init__(
        self,
        fetcher: Fetcher = fetch_keys,
        *,
        min_refetch: float = MIN_REFETCH_SECONDS,
        max_age: float = MAX_KEY_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetcher = fetcher
        self._min_refetch = min_refetch
        self._max_age = max_age
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._static: dict[str, tuple[VerifyingKey, ...]] = {}

    def _entry(self, mount: str, source: KeySource) -> _Entry:
        entry = self._entries.get(mount)
        if entry is None or entry.fingerprint != source.fingerprint:
            if entry is not None and entry.inflight is not None:
                entry.inflight.cancel()
            entry = self._entries[mount] = _Entry(source.fingerprint)
        return entry

    def prime(self, mount: str, source: KeySource, fetched: Fetched) -> None:
        """Keys fetched while a config was written (an administrator's request, not a
        login's: it does not count against the refetch limit)."""
        entry = self._entry(mount, source)
        entry.fetched, entry.fetched_at = fetched, self._clock()

    def close(self) -> None:
        """Stop the fetches in flight (the server is shutting down)."""
        for entry in self._entries.values():
            if entry.inflight is not None:
                entry.inflight.cancel()

    def forget(self, mount: str) -> None:
        entry = self._entries.pop(mount, None)
        if entry is not None and entry.inflight is not None:
            entry.inflight.cancel()

    async def current(self, mount: str, source: KeySource) -> tuple[VerifyingKey, ...]:
        """The keys to try first: cached ones, fetched if there are none yet or they are
        older than ``max_age`` (stale keys stay in use if that fetch fails)."""
        if not source.remote:
            keys = self._static.get(source.fingerprint)
            if keys is None:
                if len(self._static) > 256:
                    self._static.clear()
                keys = self._static[source.fingerprint] = static_keys(source.pubkeys)
            return keys
        entry = self._entry(mount, source)
        now = self._clock()
        if entry.fetched is not None and now - entry.fetched_at < self._max_age:
            return entry.fetched.keys
        refreshed = await self._fetch(entry, source)
        if refreshed is not None:
            return refreshed.keys
        if entry.fetched is not None:
            return entry.fetched.keys
        raise KeySourceError("the keys could not be fetched; try again later")

    async def refetch(self, mount: str, source: KeySource) -> tuple[VerifyingKey, ...] | None:
        """Fresh keys for a token whose ``kid`` the cache does not know; None when the
        rate limit refuses (the caller refuses the token)."""
        if not source.remote:
            return None
        fetched = await self._fetch(self._entry(mount, source), source)
        return fetched.keys if fetched is not None else None

    async def _fetch(self, entry: _Entry, source: KeySource) -> Fetched | None:
        """One fetch shared by every login waiting for it; None when rate-limited or
        failed."""
        task = entry.inflight
        if task is None:
            now = self._clock()
            if now - entry.attempted_at < self._min_refetch:
                return None
            entry.attempted_at = now
            jwks_uri = entry.fetched.jwks_uri if entry.fetched else ""
            task = entry.inflight = asyncio.get_running_loop().create_task(
                self._fetcher(source, jwks_uri)
            )
            task.add_done_callback(lambda done: self._finished(entry, done))
        try:
            return await asyncio.shield(task)
        except KeySourceError:
            return None  # logged once, by _finished
        except asyncio.CancelledError:
            if task.cancelled():  # the config changed under it, not this request
                return None
            raise

    def _finished(self, entry: _Entry, task: asyncio.Task[Fetched]) -> None:
        if entry.inflight is task:
            entry.inflight = None
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            entry.fetched, entry.fetched_at = task.result(), self._clock()
        else:  # the provider's address is configuration, not a secret
            log.warning("fetching JWT verification keys failed: %s", error)
