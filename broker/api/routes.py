"""The route table: every path the broker serves, in one place."""

from __future__ import annotations

from broker.api import (
    auth_token,
    database_config,
    database_creds,
    database_roles,
    sys_health,
    sys_leases,
    sys_metrics,
    sys_mounts,
)
from broker.api.routing import Route, route

# Paths outside any secrets engine mount.
SYS_ROUTES: tuple[Route, ...] = (
    route(r"auth/token/lookup-self", read=auth_token.lookup_self),
    route(r"sys/health", authenticated=False, read=sys_health.read_health),
    route(r"sys/ha-status", read=sys_health.read_ha_status),
    route(r"sys/metrics", read=sys_metrics.read_metrics),
    route(r"sys/leases/count", read=sys_leases.count_failing),
    route(r"sys/leases", read=sys_leases.list_failing),
    route(r"sys/mounts/?", read=sys_mounts.list_mounts),
    route(
        r"sys/mounts/(?P<path>.+)",
        read=sys_mounts.read_mount,
        update=sys_mounts.enable_mount,
        delete=sys_mounts.disable_mount,
    ),
    route(r"sys/leases/lookup/?", update=sys_leases.lookup_lease, list=sys_leases.list_leases),
    route(r"sys/leases/lookup/(?P<prefix>.+)", list=sys_leases.list_leases),
    route(r"sys/leases/renew(?:/(?P<lease_id>.+))?", update=sys_leases.renew_lease),
    route(r"sys/leases/revoke(?:/(?P<lease_id>.+))?", update=sys_leases.revoke_lease),
    route(r"sys/leases/revoke-prefix/(?P<prefix>.+)", update=sys_leases.revoke_prefix),
    route(r"sys/leases/revoke-force/(?P<prefix>.+)", update=sys_leases.revoke_force),
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
)
