"""What a handler gets: the parsed request and the services it may call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from broker.server.api.params import Params
from broker.server.auth.approle import AppRoleManager
from broker.server.auth.jwt_auth import JwtAuth
from broker.server.auth.kubernetes import KubernetesAuth
from broker.server.auth.methods import AuthMethods
from broker.server.auth.policy_store import PolicyStore
from broker.server.auth.tokens import Caller, TokenManager
from broker.server.auth.wrapping import Wrapper
from broker.server.database.catalog import Catalog
from broker.server.database.leases import LeaseManager
from broker.server.database.password_policies import PasswordPolicyStore
from broker.server.database.revocation import Revocations
from broker.server.database.rotation import Rotations
from broker.server.metrics import Metrics
from broker.server.nodes import NodeRegistry
from broker.server.security.audit import Auditor
from broker.server.security.ratelimit import RateLimiter
from broker.server.security.seal import SealManager


@dataclass(frozen=True, slots=True)
class Services:
    """The domain objects the API may call, one per concern, each typed.

    Flat on purpose: every field already names one concern (``leases``, ``tokens``...), so
    a handler reads ``ctx.services.leases.renew(...)``; grouping them would add a hop and
    narrow nothing. Storage, the engines, the settings and the background jobs' internals
    are not here: assembly keeps them, and handlers reach them only through these objects.
    """

    # The database secrets engine.
    catalog: Catalog
    leases: LeaseManager
    revocations: Revocations
    rotations: Rotations
    passwords: PasswordPolicyStore
    #: Hurry the expiry sweep (after an asynchronous revocation request).
    sweep_soon: Callable[[], None]
    # Auth: tokens, ACL policies, auth methods (AppRole), response wrapping.
    tokens: TokenManager
    policies: PolicyStore
    auth_methods: AuthMethods
    approle: AppRoleManager
    kubernetes: KubernetesAuth
    jwt: JwtAuth
    wrapper: Wrapper
    # Security: the seal, the audit devices, the rate limits taken before any lookup.
    seal: SealManager
    auditor: Auditor
    address_limits: RateLimiter
    token_limits: RateLimiter
    # This node: its membership of the cluster, its metrics.
    nodes: NodeRegistry
    metrics: Metrics


SERVICES = web.AppKey("services", Services)


def presented_token(request: web.Request) -> str:
    """The token a client sent: ``X-Vault-Token``, else ``Authorization: Bearer``."""
    token = request.headers.get("X-Vault-Token", "")
    if not token:
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            token = auth[7:].strip()
    return token


@dataclass(frozen=True, slots=True)
class RequestContext:
    request: web.Request
    services: Services
    params: Params
    path_args: dict[str, str]
    mount: str
    #: The caller, authenticated and authorised for this path; None on the paths that need
    #: no token (sys/health, sys/init, sys/unseal, AppRole login...).
    caller: Caller | None
    #: The client's address, for CIDR bindings.
    remote: str

    def arg(self, name: str) -> str:
        return self.path_args[name]

    @property
    def display_name(self) -> str:
        """Goes into generated user names (Vault's token display name)."""
        return self.caller.display_name if self.caller else ""

    @property
    def token(self) -> str:
        return self.caller.token if self.caller else ""

    def require_caller(self) -> Caller:
        if self.caller is None:  # a route table error, not a client's
            raise RuntimeError("this route needs an authenticated caller")
        return self.caller
