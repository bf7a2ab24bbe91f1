"""What a handler gets: the parsed request and the services it may call."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from broker.server.api.params import Params
from broker.server.auth.approle import AppRoleManager, AuthMethods
from broker.server.auth.policy_store import PolicyStore
from broker.server.auth.tokens import Caller, TokenManager
from broker.server.auth.wrapping import Wrapper
from broker.server.database.catalog import Catalog
from broker.server.database.issue_contexts import IssueContextCache
from broker.server.database.leases import LeaseManager
from broker.server.database.password_policies import PasswordPolicyStore
from broker.server.database.reconcile import Reconciler
from broker.server.database.rotation import Rotations
from broker.server.engines.registry import EngineRegistry
from broker.server.jobs import SweepScheduler
from broker.server.metrics import Metrics
from broker.server.nodes import NodeRegistry
from broker.server.security.audit import Auditor
from broker.server.security.ratelimit import RateLimiter
from broker.server.security.seal import SealManager
from broker.server.settings import Settings
from broker.server.storage.store import Storage


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
