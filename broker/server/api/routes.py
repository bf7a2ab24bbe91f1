"""The route table: every path the broker serves, in one place."""

from __future__ import annotations

from broker.server.api import (
    auth_approle,
    auth_jwt,
    auth_kubernetes,
    auth_token,
    database_config,
    database_creds,
    database_roles,
    database_static,
    sys_audit,
    sys_auth,
    sys_capabilities,
    sys_health,
    sys_internal_ui,
    sys_leases,
    sys_metrics,
    sys_mounts,
    sys_openapi,
    sys_password_policies,
    sys_policy,
    sys_seal,
    sys_wrapping,
)
from broker.server.api.routing import Route, RouteTables, route

# Paths outside any secrets engine mount.
SYS_ROUTES: tuple[Route, ...] = (
    route(r"auth/token/create", update=auth_token.create),
    route(r"auth/token/create-orphan", update=auth_token.create_orphan),
    route(r"auth/token/lookup-self", read=auth_token.lookup_self),
    route(r"auth/token/lookup", update=auth_token.lookup),
    route(r"auth/token/lookup-accessor", update=auth_token.lookup_accessor),
    route(r"auth/token/renew-self", update=auth_token.renew_self),
    route(r"auth/token/renew", update=auth_token.renew),
    route(r"auth/token/renew-accessor", update=auth_token.renew_accessor),
    route(r"auth/token/revoke-self", update=auth_token.revoke_self),
    route(r"auth/token/revoke", update=auth_token.revoke),
    route(r"auth/token/revoke-accessor", update=auth_token.revoke_accessor),
    route(r"auth/token/revoke-orphan", sudo=True, update=auth_token.revoke_orphan),
    route(r"auth/token/accessors/?", sudo=True, list=auth_token.list_accessors),
    route(r"sys/health", authenticated=False, sealed_ok=True, read=sys_health.read_health),
    route(r"sys/internal/specs/openapi", authenticated=False, read=sys_openapi.read_openapi),
    # Vault serves these to any valid token, outside the ACL (no policy names them): the
    # handler decides from the token's policies what it may see.
    route(r"sys/internal/ui/mounts/?", acl=False, read=sys_internal_ui.list_mounts),
    route(r"sys/internal/ui/mounts/(?P<path>.+)", acl=False, read=sys_internal_ui.read_mount),
    route(
        r"sys/init",
        authenticated=False,
        sealed_ok=True,
        read=sys_seal.read_init,
        update=sys_seal.initialize,
    ),
    route(r"sys/seal-status", authenticated=False, sealed_ok=True, read=sys_seal.read_seal_status),
    route(r"sys/unseal", authenticated=False, sealed_ok=True, update=sys_seal.unseal),
    route(r"sys/seal", sudo=True, update=sys_seal.seal),
    route(r"sys/rotate", sudo=True, update=sys_seal.rotate),
    route(r"sys/key-status", read=sys_seal.key_status),
    route(r"sys/policy/?", read=sys_policy.list_policies, list=sys_policy.list_acl_policies),
    route(
        r"sys/policy/(?P<name>[^/]+)",
        case_insensitive=True,
        read=sys_policy.read_policy,
        update=sys_policy.write_policy,
        delete=sys_policy.delete_policy,
    ),
    route(r"sys/policies/acl/?", list=sys_policy.list_acl_policies),
    route(
        r"sys/policies/acl/(?P<name>[^/]+)",
        case_insensitive=True,
        read=sys_policy.read_policy,
        update=sys_policy.write_policy,
        delete=sys_policy.delete_policy,
    ),
    route(r"sys/policies/password/?", list=sys_password_policies.list_policies),
    route(
        r"sys/policies/password/(?P<name>[^/]+)",
        read=sys_password_policies.read_policy,
        update=sys_password_policies.write_policy,
        delete=sys_password_policies.delete_policy,
    ),
    route(r"sys/policies/password/(?P<name>[^/]+)/generate", read=sys_password_policies.generate),
    route(r"sys/wrapping/unwrap", authenticated=False, update=sys_wrapping.unwrap),
    route(
        r"sys/wrapping/lookup",
        authenticated=False,
        read=sys_wrapping.lookup,
        update=sys_wrapping.lookup,
    ),
    route(r"sys/wrapping/rewrap", authenticated=False, update=sys_wrapping.rewrap),
    route(r"sys/wrapping/wrap", update=sys_wrapping.wrap),
    route(r"sys/capabilities-self", update=sys_capabilities.capabilities_self),
    route(r"sys/capabilities", update=sys_capabilities.capabilities),
    route(r"sys/auth/?", read=sys_auth.list_auth),
    route(
        r"sys/auth/(?P<path>.+)",
        sudo=True,
        update=sys_auth.enable_auth,
        delete=sys_auth.disable_auth,
    ),
    route(r"sys/audit/?", sudo=True, read=sys_audit.list_devices),
    route(
        r"sys/audit/(?P<path>.+)",
        sudo=True,
        update=sys_audit.enable_device,
        delete=sys_audit.disable_device,
    ),
    route(r"sys/audit-hash/(?P<path>.+)", sudo=True, update=sys_audit.hash_value),
    route(r"sys/audit-verify/(?P<path>.+)", sudo=True, read=sys_audit.verify_device),
    route(r"sys/ha-status", read=sys_health.read_ha_status),
    route(r"sys/metrics", read=sys_metrics.read_metrics),
    route(r"sys/leases/count", read=sys_leases.count_failing),
    route(r"sys/leases", sudo=True, read=sys_leases.list_failing),
    route(r"sys/mounts/?", read=sys_mounts.list_mounts),
    route(
        r"sys/mounts/(?P<path>.+)",
        read=sys_mounts.read_mount,
        update=sys_mounts.enable_mount,
        delete=sys_mounts.disable_mount,
    ),
    # Vault: looking a lease up by id needs no sudo; listing lease ids does.
    route(r"sys/leases/lookup", update=sys_leases.lookup_lease),
    route(r"sys/leases/lookup/", sudo=True, list=sys_leases.list_leases),
    route(r"sys/leases/lookup/(?P<prefix>.+)", sudo=True, list=sys_leases.list_leases),
    route(r"sys/leases/renew(?:/(?P<lease_id>.+))?", update=sys_leases.renew_lease),
    route(r"sys/leases/revoke(?:/(?P<lease_id>.+))?", update=sys_leases.revoke_lease),
    route(r"sys/leases/revoke-prefix/(?P<prefix>.+)", sudo=True, update=sys_leases.revoke_prefix),
    route(r"sys/leases/revoke-force/(?P<prefix>.+)", sudo=True, update=sys_leases.revoke_force),
    # Vault's legacy aliases, still called by older clients. The ACL is checked on the path
    # requested, as Vault does: a policy must name sys/revoke-prefix/... itself.
    route(r"sys/renew(?:/(?P<lease_id>.+))?", update=sys_leases.renew_lease),
    route(r"sys/revoke(?:/(?P<lease_id>.+))?", update=sys_leases.revoke_lease),
    route(r"sys/revoke-prefix/(?P<prefix>.+)", sudo=True, update=sys_leases.revoke_prefix),
    route(r"sys/revoke-force/(?P<prefix>.+)", sudo=True, update=sys_leases.revoke_force),
    # The broker's own: what it keeps of a lease after Vault would have forgotten it.
    route(r"sys/leases/history/(?P<lease_id>.+)", read=sys_leases.lease_history),
    route(r"sys/leases/tidy", sudo=True, update=sys_leases.tidy),
)

# Relative to a database secrets engine mount.
DATABASE_ROUTES: tuple[Route, ...] = (
    route(r"config/?", list=database_config.list_connections),
    route(
        r"config/(?P<name>[^/]+)",
        read=database_config.read_connection,
        update=database_config.write_connection,
        delete=database_config.delete_connection,
    ),
    route(r"roles/?", list=database_roles.list_roles),
    route(
        r"roles/(?P<name>[^/]+)",
        read=database_roles.read_role,
        update=database_roles.write_role,
        delete=database_roles.delete_role,
    ),
    route(r"creds/(?P<name>[^/]+)", read=database_creds.read_creds),
    route(r"static-roles/?", list=database_static.list_static_roles),
    route(
        r"static-roles/(?P<name>[^/]+)",
        read=database_static.read_static_role,
        update=database_static.write_static_role,
        delete=database_static.delete_static_role,
    ),
    route(r"static-creds/(?P<name>[^/]+)", read=database_static.read_static_creds),
    route(r"rotate-role/(?P<name>[^/]+)", update=database_static.rotate_role),
    route(r"rotate-root/(?P<name>[^/]+)", update=database_static.rotate_root),
    route(r"reset/(?P<name>[^/]+)", update=database_static.reset_connection),
)

# Relative to an AppRole auth method mount (auth/<mount>/...).
APPROLE_ROUTES: tuple[Route, ...] = (
    route(r"login", authenticated=False, update=auth_approle.login),
    route(r"role/?", list=auth_approle.list_roles),
    route(
        r"role/(?P<name>[^/]+)",
        read=auth_approle.read_role,
        update=auth_approle.write_role,
        delete=auth_approle.delete_role,
    ),
    route(
        r"role/(?P<name>[^/]+)/role-id",
        read=auth_approle.read_role_id,
        update=auth_approle.write_role_id,
    ),
    route(
        r"role/(?P<name>[^/]+)/secret-id/?",
        update=auth_approle.new_secret_id,
        list=auth_approle.list_secret_ids,
    ),
    route(r"role/(?P<name>[^/]+)/secret-id/lookup", update=auth_approle.lookup_secret_id),
    route(r"role/(?P<name>[^/]+)/secret-id/destroy", update=auth_approle.destroy_secret_id),
    route(
        r"role/(?P<name>[^/]+)/secret-id-accessor/lookup",
        update=auth_approle.lookup_secret_id_accessor,
    ),
    route(
        r"role/(?P<name>[^/]+)/secret-id-accessor/destroy",
        update=auth_approle.destroy_secret_id_accessor,
    ),
)

# Relative to a Kubernetes auth method mount (auth/<mount>/...).
KUBERNETES_ROUTES: tuple[Route, ...] = (
    route(r"login", authenticated=False, update=auth_kubernetes.login),
    route(r"config", read=auth_kubernetes.read_config, update=auth_kubernetes.write_config),
    route(r"role/?", list=auth_kubernetes.list_roles),
    # Vault lower-cases these role names: so does the ACL (paths.py ``judged_form``).
    route(
        r"role/(?P<name>[^/]+)",
        case_insensitive=True,
        read=auth_kubernetes.read_role,
        update=auth_kubernetes.write_role,
        delete=auth_kubernetes.delete_role,
    ),
)

# Relative to a JWT/OIDC auth method mount (auth/<mount>/...): the non-browser part, the
# same for both types (the OIDC browser flow's oidc/auth_url and oidc/callback are not
# served; docs/compatibility.md).
JWT_ROUTES: tuple[Route, ...] = (
    route(r"login", authenticated=False, update=auth_jwt.login),
    route(r"config", read=auth_jwt.read_config, update=auth_jwt.write_config),
    route(r"role/?", list=auth_jwt.list_roles),
    # Vault lower-cases these role names: so does the ACL (paths.py ``judged_form``).
    route(
        r"role/(?P<name>[^/]+)",
        case_insensitive=True,
        read=auth_jwt.read_role,
        update=auth_jwt.write_role,
        delete=auth_jwt.delete_role,
    ),
)

#: Each auth method type's table, by the type ``sys/auth/<path>`` enabled.
AUTH_ROUTES = {
    "approle": APPROLE_ROUTES,
    "kubernetes": KUBERNETES_ROUTES,
    "jwt": JWT_ROUTES,
    "oidc": JWT_ROUTES,
}

TABLES = RouteTables(SYS_ROUTES, DATABASE_ROUTES, AUTH_ROUTES)
