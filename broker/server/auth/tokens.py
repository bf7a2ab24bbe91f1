"""Tokens: creation, authentication, renewal and revocation, with Vault's rules.

A token is 24 random bytes behind Vault's ``hvs.`` prefix. Storage keeps only its HMAC
under a keyring key (``Barrier.token_hmac``): lookups stay exact-match and a copy of the
table gives nothing to replay. Revoking a token removes its descendants and makes every
lease they asked for due, in one statement; the sweep then drops the logins.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from broker.exceptions import InvalidRequest, PermissionDenied
from broker.models import TokenEntry
from broker.server.auth.policy_store import DEFAULT, ROOT
from broker.server.settings import Settings
from broker.server.storage.auth import AuthStore

log = logging.getLogger(__name__)
TOKEN_PREFIX = "hvs."
_CACHE_SECONDS = 2.0
_EXPIRY_BATCH = 500
_DISPLAY_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9-]")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(24)


def new_accessor() -> str:
    return secrets.token_urlsafe(18)


def in_cidrs(address: str, cidrs: Sequence[str]) -> bool:
    """Whether ``address`` falls in any of ``cidrs`` (an empty list binds nothing)."""
    if not cidrs:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(c, strict=False) for c in cidrs)


def check_cidrs(cidrs: Sequence[str], field_name: str) -> tuple[str, ...]:
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise InvalidRequest(f"{field_name}: invalid CIDR block {cidr!r}") from exc
    return tuple(cidrs)


def child_cidrs(parent: Sequence[str], wanted: Sequence[str]) -> tuple[str, ...]:
    """The CIDR binding of a token created by a token bound to ``parent``: the parent's
    when none is asked for (Vault copies them), else ``wanted`` if every block lies inside
    one of the parent's. A child may narrow its parent's binding, never widen it:
    otherwise a token bound to one network would mint an unbound one from there and hand
    it anywhere. (Vault ignores the request and copies the parent's; narrowing is safe.)"""
    if not wanted:
        return tuple(parent)
    parents = [ipaddress.ip_network(c, strict=False) for c in parent]
    for cidr in wanted:
        block = ipaddress.ip_network(cidr, strict=False)
        if not any(
            block.version == p.version and block.subnet_of(p)  # type: ignore[arg-type]
            for p in parents
        ):
            raise InvalidRequest(
                f"bound_cidrs: {cidr} is not within the parent token's bound CIDRs"
            )
    return tuple(wanted)


def normalise_policies(names: Sequence[str]) -> tuple[str, ...]:
    """Policy names as stored and compared: trimmed, lower-cased (Vault's), no blanks."""
    return tuple(sorted({n.strip().lower() for n in names if n.strip()}))


def grantable_policies(writer: Caller, names: Sequence[str]) -> tuple[str, ...]:
    """``names`` normalised, if ``writer`` may hand them out: Vault's rule for child
    tokens (a non-root writer grants only a subset of its own policies, ``default``
    aside), applied to everything that grants policies: tokens and auth method roles.
    Without it, whoever may write an AppRole role could write one carrying ``root``."""
    wanted = normalise_policies(names)
    if not writer.is_root:
        extra = sorted(set(wanted) - set(writer.policies) - {DEFAULT})
        if extra:
            raise PermissionDenied(f"child policies must be subset of parent: {', '.join(extra)}")
    return wanted


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is making a request: a stored token, or the configured root token."""

    policies: tuple[str, ...]
    display_name: str
    entry: TokenEntry | None
    token: str = field(repr=False)
    #: The request spent the token's last use: it is revoked once the request is done.
    spent: bool = False

    @property
    def accessor(self) -> str | None:
        return self.entry.accessor if self.entry else None

    @property
    def is_root(self) -> bool:
        return ROOT in self.policies


@dataclass(frozen=True, slots=True)
class TokenRequest:
    policies: tuple[str, ...] | None = None
    ttl: int | None = None
    explicit_max_ttl: int = 0
    num_uses: int = 0
    renewable: bool = True
    no_parent: bool = False
    no_default_policy: bool = False
    display_name: str = ""
    meta: dict[str, str] = field(default_factory=dict)
    bound_cidrs: tuple[str, ...] = ()
    path: str = "auth/token/create"
    #: Vault's periodic token: every renewal sets the TTL back to this (seconds), with no
    #: maximum but ``explicit_max_ttl``. Auth methods pass their role's ``token_period``.
    period: int = 0


class TokenManager:
    def __init__(
        self, store: AuthStore, settings: Settings, kick_sweep: Callable[[], None] | None = None
    ) -> None:
        self._store = store
        self._settings = settings
        self._kick_sweep = kick_sweep
        self._cache: dict[bytes, tuple[float, TokenEntry]] = {}

    def invalidate(self) -> None:
        self._cache.clear()

    # -- authentication -------------------------------------------------------------------

    async def authenticate(self, token: str, remote: str) -> Caller | None:
        """The caller behind ``token`` from ``remote``, or None (Vault's 403)."""
        if not token:
            return None
        if self._settings.token_is_root(token):
            return Caller((ROOT,), "root", None, token)
        digest = self._store.barrier.token_hmac(token)
        entry = await self._entry_by_hmac(digest)
        if entry is None:
            return None
        if entry.expires_at is not None and entry.expires_at <= _now():
            return None
        if not in_cidrs(remote, entry.bound_cidrs):
            return None
        spent = False
        if entry.num_uses > 0:
            left = await self._store.use_token(entry.accessor)
            if left is None:
                return None
            spent = left == 0
        return Caller(entry.policies, entry.display_name, entry, token, spent)

    async def _entry_by_hmac(self, digest: bytes) -> TokenEntry | None:
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        entry = await self._store.get_token_by_hmac(digest)
        if entry is not None and entry.num_uses == 0:  # a use count must be read fresh
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now + _CACHE_SECONDS, entry)
        return entry

    async def after_request(self, caller: Caller) -> None:
        """Vault's rule for use-limited tokens: the last use revokes the token with its
        descendants and their leases, once the request it authorised is done. (Such a
        token cannot create children, but a tree revoke leaves no way for one to live on.)"""
        if caller.spent and caller.entry is not None:
            await self.revoke(caller.entry.accessor)

    # -- creation -------------------------------------------------------------------------

    async def create(
        self,
        parent: Caller,
        request: TokenRequest,
        *,
        may_orphan: bool = False,
        may_period: bool = False,
    ) -> tuple[str, TokenEntry]:
        """``auth/token/create``: a child of ``parent`` (or an orphan, for callers allowed
        to make one) under Vault's rules: a use-limited token has no children, a non-root
        parent hands out only its own policies, a child cannot outlive its parent, and only
        root or sudo makes a periodic token (``may_period``: the caller has sudo on the
        path), which would otherwise be a way past every maximum TTL."""
        if parent.entry is not None and parent.entry.num_uses > 0:
            # Vault's rule: otherwise a token's last use would buy an unlimited child.
            raise InvalidRequest("restricted use token cannot generate child tokens")
        policies = self._child_policies(parent, request)
        if request.no_parent and not (parent.is_root or may_orphan):
            raise PermissionDenied("root or sudo privileges required to create orphan token")
        if request.period and not (parent.is_root or may_period):
            raise InvalidRequest("root or sudo privileges required to create periodic token")
        ceiling = None if request.no_parent or parent.entry is None else parent.entry
        if parent.entry is not None and parent.entry.bound_cidrs:
            bound = child_cidrs(parent.entry.bound_cidrs, request.bound_cidrs)
            request = replace(request, bound_cidrs=bound)
        return await self._insert(request, policies, parent.accessor, ceiling)

    async def create_for_login(self, request: TokenRequest) -> tuple[str, TokenEntry]:
        """The token an auth method (AppRole now; Kubernetes and JWT next) hands out at
        login: always an orphan, never root, whatever the method's stored role says."""
        policies = normalise_policies(request.policies or ())
        if ROOT in policies:
            raise InvalidRequest("auth methods cannot create root tokens")
        if not request.no_default_policy:
            policies = tuple(sorted({*policies, DEFAULT}))
        return await self._insert(replace(request, no_parent=True), policies, None, None)

    async def _insert(
        self,
        request: TokenRequest,
        policies: tuple[str, ...],
        parent_accessor: str | None,
        ceiling: TokenEntry | None,
    ) -> tuple[str, TokenEntry]:
        """Store a new token. ``ceiling`` is the parent a child may not outlive: the
        child's expiry and maximum are capped at the parent's maximum."""
        if request.num_uses < 0:
            raise InvalidRequest("number of uses cannot be negative")
        if request.period < 0:
            raise InvalidRequest("period must be positive")
        now = _now()
        max_ttl = self._max_ttl(request.explicit_max_ttl)
        if request.period:
            # Vault's periodic token: the TTL is the period (capped at the maximum, as
            # every renewal will be), and only an explicit max TTL ends its renewals.
            ttl = min(request.period, max_ttl)
        elif request.ttl is None and ROOT in policies:
            ttl = 0  # a root token asked for without a TTL never expires
        else:
            ttl = request.ttl if request.ttl else self._settings.token_default_ttl
            ttl = min(ttl, max_ttl)
        # Vault's sanitising: anything but letters, digits and '-' becomes '-'; the name
        # ends up in database user names.
        name = _DISPLAY_NAME_UNSAFE.sub("-", request.display_name)
        display = "token" + (f"-{name}" if name else "")
        if request.path != "auth/token/create":
            display = _DISPLAY_NAME_UNSAFE.sub("-", request.display_name) or display
        expires_at = now + dt.timedelta(seconds=ttl) if ttl else None
        max_expires_at = now + dt.timedelta(seconds=max_ttl) if ttl else None
        if request.period:
            explicit = request.explicit_max_ttl
            max_expires_at = now + dt.timedelta(seconds=explicit) if explicit else None
        if ceiling is not None and ceiling.max_expires_at is not None:
            limit = ceiling.max_expires_at
            if expires_at is None or expires_at > limit:
                expires_at = limit
            if max_expires_at is None or max_expires_at > limit:
                max_expires_at = limit
            if expires_at <= now:
                raise InvalidRequest("the parent token has expired")
            ttl = max(1, int((expires_at - now).total_seconds()))
        entry = TokenEntry(
            accessor=new_accessor(),
            parent_accessor=parent_accessor,
            policies=policies,
            display_name=display,
            meta=dict(request.meta),
            num_uses=request.num_uses,
            uses_left=request.num_uses,
            ttl=ttl,
            explicit_max_ttl=request.explicit_max_ttl,
            renewable=request.renewable and ttl > 0,
            path=request.path,
            bound_cidrs=request.bound_cidrs,
            created_at=now,
            expires_at=expires_at,
            max_expires_at=max_expires_at,
            period=request.period,
        )
        token = new_token()
        await self._store.insert_token(self._store.barrier.token_hmac(token), entry)
        return token, entry

    @staticmethod
    def _child_policies(parent: Caller, request: TokenRequest) -> tuple[str, ...]:
        """Vault's rules: no policies given inherits the parent's; a non-root parent can
        only hand out a subset of its own; ``default`` is added unless refused."""
        if request.policies is None:
            wanted = [p for p in parent.policies if p != DEFAULT]
        else:
            wanted = list(grantable_policies(parent, request.policies))
        if not request.no_default_policy and ROOT not in wanted:
            wanted.append(DEFAULT)
        return tuple(sorted(set(wanted)))

    async def create_root(self) -> str:
        """The initial root token of ``sys/init``."""
        request = TokenRequest(policies=(ROOT,), no_parent=True, path="auth/token/root")
        token, _ = await self._insert(request, (ROOT,), None, None)
        return token

    # -- lookup and renewal ---------------------------------------------------------------

    async def lookup(self, token: str) -> TokenEntry:
        entry = await self._store.get_token_by_hmac(self._store.barrier.token_hmac(token))
        if entry is None or (entry.expires_at is not None and entry.expires_at <= _now()):
            raise InvalidRequest("bad token")
        return entry

    async def lookup_accessor(self, accessor: str) -> TokenEntry:
        entry = await self._store.get_token_by_accessor(accessor)
        if entry is None or (entry.expires_at is not None and entry.expires_at <= _now()):
            raise InvalidRequest("invalid accessor")
        return entry

    async def list_accessors(self) -> list[str]:
        return await self._store.list_token_accessors()

    def _max_ttl(self, explicit_max_ttl: int) -> int:
        """The most a token's TTL can be at once: the configured maximum, or its explicit
        max TTL if smaller (Vault's ``CalculateTTL``)."""
        max_ttl = self._settings.token_max_ttl
        return min(max_ttl, explicit_max_ttl) if explicit_max_ttl else max_ttl

    async def renew(self, entry: TokenEntry, increment: int) -> TokenEntry:
        """Vault's token renewal: the TTL becomes ``increment`` (or the last TTL), never
        past the token's maximum; a periodic token's becomes its period whatever the
        increment, and it has no maximum but its explicit max TTL."""
        if entry.expires_at is None:
            return entry  # nothing to renew: it never expires
        if not entry.renewable:
            raise InvalidRequest("token is not renewable")
        now = _now()
        if entry.period:
            increment = min(entry.period, self._max_ttl(entry.explicit_max_ttl))
        else:
            increment = increment if increment > 0 else entry.ttl
        expires_at = now + dt.timedelta(seconds=increment)
        if entry.max_expires_at is not None and expires_at > entry.max_expires_at:
            expires_at = entry.max_expires_at
        if expires_at <= now:
            raise InvalidRequest("token has reached its max TTL and cannot be renewed")
        if not await self._store.renew_token(entry.accessor, expires_at, increment):
            raise InvalidRequest("bad token")
        await self._changed()
        return await self.lookup_accessor(entry.accessor)

    # -- revocation -----------------------------------------------------------------------

    async def revoke(self, accessor: str) -> None:
        """The token, its descendants and all their leases (the sweep drops the logins)."""
        tokens, leases = await self._store.revoke_token_trees([accessor])
        await self._revoked(tokens, leases)

    async def revoke_logins(self, mount: str) -> int:
        """Every token the auth method at ``mount`` issued, with its descendants and all
        their leases: Vault logs out an auth method's users when the method is disabled.
        The number of tokens revoked."""
        accessors = await self._store.login_token_accessors(f"auth/{mount}/login")
        if not accessors:
            return 0
        tokens, leases = await self._store.revoke_token_trees(accessors)
        await self._revoked(tokens, leases)
        return tokens

    async def revoke_orphan(self, accessor: str) -> None:
        """The token and its leases; its children become orphans and live on."""
        await self._store.orphan_children(accessor)
        tokens, leases = await self._store.revoke_token_trees([accessor])
        await self._revoked(tokens, leases)

    async def revoke_expired(self) -> int:
        """Scheduled: expired tokens go as if revoked (with their children and leases)."""
        total = 0
        while True:
            accessors = await self._store.expired_tokens(_EXPIRY_BATCH)
            if not accessors:
                break
            tokens, leases = await self._store.revoke_token_trees(accessors)
            total += tokens
            await self._revoked(tokens, leases)
        return total

    async def revoke_orphaned_leases(self) -> int:
        """Scheduled, less often (it scans every live token-bound lease): a lease issued to
        a token in the moment that token was revoked becomes due too. Revocation itself
        takes a token's leases in the same statement, so this only closes that race."""
        leftover = await self._store.revoke_leases_of_missing_tokens()
        if leftover and self._kick_sweep is not None:
            self._kick_sweep()
        return leftover

    async def _revoked(self, tokens: int, leases: int) -> None:
        if tokens:
            log.info("revoked %d token(s); %d lease(s) queued for revocation", tokens, leases)
            await self._changed()
        if leases and self._kick_sweep is not None:
            self._kick_sweep()

    async def _changed(self) -> None:
        self.invalidate()
        await self._store.notify_changed("tokens")

    # -- rendering ------------------------------------------------------------------------

    @staticmethod
    def describe(entry: TokenEntry, token: str | None = None) -> dict[str, Any]:
        """Vault's token lookup fields, with its JSON types (``handleLookup`` in Vault's
        token store): times as RFC 3339 strings, durations as integer seconds; ``period``
        only for a periodic token and ``bound_cidrs`` only for a bound one, as Vault."""
        now = _now()
        ttl = 0
        if entry.expires_at is not None:
            ttl = max(0, int((entry.expires_at - now).total_seconds()))
        described: dict[str, Any] = {
            "accessor": entry.accessor,
            "creation_time": int(entry.created_at.timestamp()),
            "creation_ttl": entry.ttl,
            "display_name": entry.display_name,
            "entity_id": "",
            "expire_time": rfc3339(entry.expires_at) if entry.expires_at else None,
            "explicit_max_ttl": entry.explicit_max_ttl,
            "id": token or "",
            "issue_time": rfc3339(entry.created_at),
            "meta": entry.meta or None,
            "num_uses": entry.uses_left if entry.num_uses else 0,
            "orphan": entry.parent_accessor is None,
            "path": entry.path,
            "policies": list(entry.policies),
            "renewable": entry.renewable,
            "ttl": ttl,
            "type": "service",
        }
        if entry.period:
            described["period"] = entry.period
        if entry.bound_cidrs:
            described["bound_cidrs"] = list(entry.bound_cidrs)
        return described


def rfc3339(moment: dt.datetime) -> str:
    """A time as Go's ``time.Time`` writes it in JSON (RFC 3339, UTC as ``Z``), which is
    what Vault clients parse: ``2025-01-02T03:04:05.123456Z``."""
    text = moment.astimezone(dt.UTC).isoformat()
    return text.removesuffix("+00:00") + "Z"
