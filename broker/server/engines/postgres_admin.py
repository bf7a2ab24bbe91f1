"""What a PostgreSQL admin account lacks for issuing and revoking, each as a warning that
names the statement granting it (``check_admin``)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import asyncpg

from broker.server.engines.postgres_common import quote_ident

_NAME = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
# GRANT of roles (no ON clause): GRANT a, "b" TO ...
_GRANT_ROLES = re.compile(rf"\bGRANT\s+({_NAME}(?:\s*,\s*{_NAME})*)\s+TO\b", re.IGNORECASE)


def granted_roles(statements: Sequence[str]) -> list[str]:
    """The roles that ``GRANT role TO ...`` statements grant (the membership kind, without
    ON), for ``check_admin``: names as the server stores them (unquoted ones folded)."""
    found: list[str] = []
    for statement in statements:
        for match in _GRANT_ROLES.finditer(statement):
            for part in re.findall(_NAME, match.group(1)):
                quoted = part.startswith('"')
                name = part[1:-1].replace('""', '"') if quoted else part.lower()
                if name.upper() not in ("ALL", "SELECT", "USAGE") and name not in found:
                    found.append(name)
    return found


async def admin_warnings(conn: asyncpg.Connection, creation_statements: Sequence[str]) -> list[str]:
    """What the admin cannot do of what issuing and revoking need, one warning per
    missing privilege with the statement that grants it: create roles, grant the group
    roles ``creation_statements`` grant (PostgreSQL 16 wants ADMIN OPTION on them),
    end other roles' sessions, and connect to every database to clean up there."""
    groups = granted_roles(creation_statements)
    me_row = await conn.fetchrow(
        "SELECT current_user AS me, rolsuper, rolcreaterole, "
        "pg_has_role(current_user, 'pg_signal_backend', 'USAGE') AS can_signal, "
        "current_setting('server_version_num')::int AS version "
        "FROM pg_roles WHERE rolname = current_user"
    )
    if me_row is None:
        return []
    me = quote_ident(str(me_row["me"]))
    if me_row["rolsuper"]:
        return []
    warnings: list[str] = []
    if not me_row["rolcreaterole"]:
        warnings.append(
            f"the admin {me} cannot create roles, so no credential can be issued: "
            f"ALTER ROLE {me} CREATEROLE"
        )
    if not me_row["can_signal"]:
        warnings.append(
            f"the admin {me} cannot end other roles' sessions: a lease whose user "
            "still has a session open cannot be revoked (it stays failing): "
            f"GRANT pg_signal_backend TO {me}"
        )
    rows = await conn.fetch(
        "SELECT g.name, r.rolsuper, "
        "r.oid IS NOT NULL AND pg_has_role(current_user, r.oid, "
        "'MEMBER WITH ADMIN OPTION') AS admin_option "
        "FROM unnest($1::text[]) AS g(name) LEFT JOIN pg_roles r ON r.rolname = g.name",
        groups,
    )
    for row in rows:
        group = quote_ident(str(row["name"]))
        if row["rolsuper"] is None:
            warnings.append(f"creation statements grant role {group}, which does not exist")
        elif row["admin_option"]:
            continue
        elif row["rolsuper"] or me_row["version"] >= 160000:
            warnings.append(
                f"the admin {me} cannot grant {group} to the users it creates: "
                f"GRANT {group} TO {me} WITH ADMIN OPTION"
            )
    databases = await conn.fetch(
        "SELECT datname FROM pg_database "
        "WHERE datallowconn AND NOT has_database_privilege(datname, 'CONNECT') "
        "ORDER BY 1"
    )
    for row in databases:
        database = quote_ident(str(row["datname"]))
        warnings.append(
            f"the admin {me} cannot connect to database {database}, so it cannot "
            "remove what a user owns or was granted there when revoking it: "
            f"GRANT CONNECT ON DATABASE {database} TO {me}"
        )
    return warnings
