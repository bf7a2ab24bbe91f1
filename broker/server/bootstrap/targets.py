"""What an apply writes through: the same domain objects the HTTP API calls, so a declared
object passes every check an API write does (templates, hosts, a verified connection,
policies an auth role may grant), plus the apply's own record in storage."""

from __future__ import annotations

from dataclasses import dataclass

from broker.server.auth.approle import AppRoleManager
from broker.server.auth.jwt_auth import JwtAuth
from broker.server.auth.kubernetes import KubernetesAuth
from broker.server.auth.methods import AuthMethods
from broker.server.auth.policy_store import PolicyStore
from broker.server.database.catalog import Catalog
from broker.server.database.password_policies import PasswordPolicyStore
from broker.server.database.rotation import Rotations
from broker.server.security.audit import Auditor
from broker.server.storage.declared import DeclaredStore


@dataclass(frozen=True, slots=True)
class Targets:
    """Built by the composition roots: assembly (the server, at unseal) and
    ``declarative_targets`` there (``broker apply``)."""

    catalog: Catalog
    rotations: Rotations
    passwords: PasswordPolicyStore
    policies: PolicyStore
    auth_methods: AuthMethods
    approle: AppRoleManager
    kubernetes: KubernetesAuth
    #: For ``jwt`` and ``oidc`` methods alike.
    jwt: JwtAuth
    auditor: Auditor
    ledger: DeclaredStore
