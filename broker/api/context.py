"""What a handler gets: the parsed request and the services it may call."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from broker.api.params import Params
from broker.audit import Auditor
from broker.auth.approle import AppRoleManager, AuthMethods
from broker.auth.policies import PolicyStore
from broker.auth.tokens import Caller, TokenManager
from broker.catalog import Catalog
from broker.catalog_cache import IssueContextCache
from broker.engines.registry import EngineRegistry
from broker.leases import LeaseManager
from broker.metrics import Metrics
from broker.nodes import NodeRegistry
from broker.password_policy import PasswordPolicyStore
from broker.ratelimit import RateLimiter
from broker.reconcile import Reconciler
from broker.rotation import Rotations
from broker.scheduler import SweepScheduler
from broker.seal import SealManager
from broker.settings import Settings
from broker.storage import Storage
from broker.wrapping import Wrapper


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    storage: Storage
    catalog: Catalog
    leases: LeaseManager
    scheduler: SweepScheduler
    nodes: NodeRegistry
    reconciler: Reconciler
    engines: EngineRegistry
    metrics: Metrics
    seal: SealManager
    tokens: TokenManager
    policies: PolicyStore
    auth_methods: AuthMethods
    approle: AppRoleManager
    auditor: Auditor
    address_limits: RateLimiter
    token_limits: RateLimiter
    contexts: IssueContextCache
    rotations: Rotations
    passwords: PasswordPolicyStore
    wrapper: Wrapper


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
