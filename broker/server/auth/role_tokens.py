"""The ``token_*`` fields every login role carries (Vault's ``tokenutil.TokenParams``).

Kubernetes and JWT/OIDC roles store them inside their sealed body (storage/auth.py
``put_auth_entry``), so the checks live here once: the policies a role hands out are held
to its writer's own and never include ``root``, the numbers are not negative, and the
token type is one the broker can issue. A login then turns them into the ``TokenRequest``
of ``TokenManager.create_for_login``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.exceptions import InvalidRequest
from broker.server.auth.policy_store import ROOT
from broker.server.auth.records import record_json, record_values
from broker.server.auth.tokens import (
    Caller,
    TokenRequest,
    check_cidrs,
    grantable_policies,
    normalise_policies,
)

#: Vault's token types. The broker issues service tokens only: a role asking for batch
#: tokens is refused when written, not silently given service tokens.
SERVICE_TYPES = ("default", "service", "default-service")
BATCH_TYPES = ("batch", "default-batch")
#: The most uses a token row holds (an ``integer`` column).
MAX_NUM_USES = 2**31 - 1


@dataclass(frozen=True, slots=True)
class RoleTokens:
    """What a login through the role gets. Zero means "not set" (the broker's defaults)."""

    policies: tuple[str, ...] = ()
    ttl: int = 0
    max_ttl: int = 0
    explicit_max_ttl: int = 0
    period: int = 0
    num_uses: int = 0
    bound_cidrs: tuple[str, ...] = ()
    no_default_policy: bool = False
    token_type: str = "default"

    def changed(self, changes: Mapping[str, Any]) -> RoleTokens:
        """This set with ``changes`` (field name -> value, only the fields a write sent)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - known
        if unknown:  # a programming error: the API parses only known fields
            raise ValueError(f"unknown token fields {sorted(unknown)}")
        return dataclasses.replace(self, **dict(changes))

    def checked(self, writer: Caller) -> RoleTokens:
        """The set as stored, after Vault's checks and the broker's own: a role writer may
        not hand out policies it does not hold itself, nor ``root``."""
        policies = self.policies
        if ROOT in normalise_policies(policies):
            raise InvalidRequest("auth methods cannot create root tokens")
        policies = grantable_policies(writer, policies)
        check_cidrs(self.bound_cidrs, "token_bound_cidrs")
        numbers = (self.ttl, self.max_ttl, self.explicit_max_ttl, self.period, self.num_uses)
        if min(numbers) < 0:
            raise InvalidRequest("token TTLs, period and num_uses cannot be negative")
        if self.num_uses > MAX_NUM_USES:
            # Refused now, not at every login: the token row could not hold it.
            raise InvalidRequest(f"token_num_uses cannot be more than {MAX_NUM_USES}")
        if self.max_ttl and self.ttl > self.max_ttl:
            raise InvalidRequest("token_ttl cannot be greater than token_max_ttl")
        if self.token_type in BATCH_TYPES:
            raise InvalidRequest(
                f"token_type {self.token_type!r}: the broker issues service tokens only"
            )
        if self.token_type not in SERVICE_TYPES:
            raise InvalidRequest(f"invalid token_type {self.token_type!r}")
        return dataclasses.replace(self, policies=policies)

    def to_json(self) -> dict[str, Any]:
        return record_json(self)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> RoleTokens:
        return cls(**record_values(cls, body))

    def describe(self) -> dict[str, Any]:
        """A role read's token fields, under Vault's names and the deprecated ones that
        hvac 2.x still reads (``policies``, ``ttl``, ``max_ttl``...)."""
        return {
            "token_policies": list(self.policies),
            "token_ttl": self.ttl,
            "token_max_ttl": self.max_ttl,
            "token_explicit_max_ttl": self.explicit_max_ttl,
            "token_period": self.period,
            "token_num_uses": self.num_uses,
            "token_bound_cidrs": list(self.bound_cidrs),
            "token_no_default_policy": self.no_default_policy,
            "token_type": self.token_type,
            "policies": list(self.policies),
            "ttl": self.ttl,
            "max_ttl": self.max_ttl,
            "period": self.period,
            "num_uses": self.num_uses,
            "bound_cidrs": list(self.bound_cidrs),
        }

    def request(self, display_name: str, meta: Mapping[str, str], path: str) -> TokenRequest:
        """The token a login through the role creates. ``create_for_login`` refuses
        ``root`` again, whatever a stored role says."""
        # Vault: a periodic token has no maximum but an explicit one; otherwise the role's
        # max TTL caps it too (the broker's tokens carry one cap: the tighter).
        caps = [c for c in (self.max_ttl, self.explicit_max_ttl) if c and not self.period]
        if self.period and self.explicit_max_ttl:
            caps = [self.explicit_max_ttl]
        return TokenRequest(
            policies=self.policies,
            ttl=self.ttl or None,
            explicit_max_ttl=min(caps) if caps else 0,
            period=self.period,
            num_uses=self.num_uses,
            no_parent=True,
            no_default_policy=self.no_default_policy,
            display_name=display_name,
            meta=dict(meta),
            bound_cidrs=self.bound_cidrs,
            path=path,
        )
