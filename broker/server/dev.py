"""``broker server --dev``: the demo objects that make ``broker creds readonly`` work at once.

Idempotent and done under the storage's set-up lock, so several dev servers sharing one
storage database create them once.
"""

from __future__ import annotations

import tempfile
import urllib.parse
from collections.abc import Awaitable

import asyncpg

from broker.exceptions import NotFound
from broker.server.database.catalog import Catalog, ConnectionUpdate, RoleUpdate
from broker.server.engines.base import ConnectionConfig
from broker.server.engines.postgres import connect_arguments

DEMO_DATABASE = "broker_demo"
DEMO_GROUP_ROLE = "broker_demo_readers"
DEMO_CONNECTION = "demo"
DEMO_ROLE = "readonly"
DEMO_MOUNT = "database"

_DEMO_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS inventory (id serial PRIMARY KEY, item text NOT NULL, qty int NOT NULL);
INSERT INTO inventory (item, qty)
    SELECT * FROM (VALUES ('widget', 12), ('gadget', 3), ('gizmo', 40)) AS v
    WHERE NOT EXISTS (SELECT 1 FROM inventory);
-- Not granted to the group: a query on it shows what an issued login cannot do.
CREATE TABLE IF NOT EXISTS payroll (id int, salary int);
GRANT USAGE ON SCHEMA public TO {DEMO_GROUP_ROLE};
GRANT SELECT ON inventory TO {DEMO_GROUP_ROLE};
"""

# The pattern that scales: each user joins a prepared group role, so no per-user grant
# touches a table's ACL (Vault's GRANT ... ON ALL TABLES fails under concurrency).
DEMO_CREATION_STATEMENTS = (
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; "
    f'GRANT {DEMO_GROUP_ROLE} TO "{{{{name}}}}";',
)


def dev_audit_file_dirs(configured: tuple[str, ...]) -> tuple[str, ...]:
    """Where dev mode's file audit devices may write: the configured directories, else the
    temp directory, so ``vault audit enable file file_path=/tmp/audit.log`` works at once.
    Nothing runs files from there by itself, unlike a home directory (a shell profile)."""
    return configured or (tempfile.gettempdir(),)


def demo_connection_url(admin_dsn: str) -> tuple[str, str, str]:
    """(connection_url template, username, password) for the demo database on the server
    that ``admin_dsn`` points at."""
    args = connect_arguments(ConnectionConfig(admin_dsn, "", ""))
    host = str(args.get("host", "127.0.0.1"))
    port = int(args.get("port", 5432))
    if host.startswith("/"):
        url = (
            f"postgresql://{{{{username}}}}:{{{{password}}}}@/{DEMO_DATABASE}"
            f"?host={urllib.parse.quote(host)}&port={port}"
        )
    else:
        url = f"postgresql://{{{{username}}}}:{{{{password}}}}@{host}:{port}/{DEMO_DATABASE}"
    return url, str(args.get("user", "postgres")), str(args.get("password", ""))


async def _prepare_demo_database(admin_dsn: str) -> None:
    args = connect_arguments(ConnectionConfig(admin_dsn, "", ""))
    conn = await asyncpg.connect(**args)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DEMO_DATABASE):
            await conn.execute(f"CREATE DATABASE {DEMO_DATABASE}")
        if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", DEMO_GROUP_ROLE):
            await conn.execute(f"CREATE ROLE {DEMO_GROUP_ROLE} NOLOGIN")
        await conn.execute(f"GRANT CONNECT ON DATABASE {DEMO_DATABASE} TO {DEMO_GROUP_ROLE}")
    finally:
        await conn.close()
    demo = await asyncpg.connect(**dict(args, database=DEMO_DATABASE))
    try:
        await demo.execute(_DEMO_SCHEMA)
    finally:
        await demo.close()


async def ensure_demo(catalog: Catalog, admin_dsn: str) -> None:
    async with catalog.setup_lock():
        await _prepare_demo_database(admin_dsn)
        if not await _exists(catalog.get_mount(DEMO_MOUNT)):
            await catalog.enable_mount(DEMO_MOUNT, "database", "dev-mode database secrets engine")
        if not await _exists(catalog.read_connection(DEMO_MOUNT, DEMO_CONNECTION)):
            url, user, password = demo_connection_url(admin_dsn)
            await catalog.write_connection(
                DEMO_MOUNT,
                DEMO_CONNECTION,
                ConnectionUpdate(
                    plugin_name="postgresql-database-plugin",
                    connection_url=url,
                    username=user,
                    password=password,
                    allowed_roles=(DEMO_ROLE,),
                ),
            )
        if not await _exists(catalog.read_role(DEMO_MOUNT, DEMO_ROLE)):
            await catalog.write_role(
                DEMO_MOUNT,
                DEMO_ROLE,
                RoleUpdate(
                    db_name=DEMO_CONNECTION,
                    creation_statements=DEMO_CREATION_STATEMENTS,
                    default_ttl=3600,
                    max_ttl=86400,
                ),
            )


async def _exists(read: Awaitable[object]) -> bool:
    """Whether a catalog read finds its entry (the catalog answers NotFound otherwise)."""
    try:
        await read
    except NotFound:
        return False
    return True
