"""Session-wide real infrastructure: a PostgreSQL cluster that checks passwords (started
here, thrown away at the end), the machine's MariaDB, and a broker serving on a real port.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest

from broker.logs import JsonFormatter, RequestIdFilter
from broker.server.assembly import start_server
from broker.server.settings import Settings
from broker.server.storage.embedded import EmbeddedPostgres, free_port
from tests.support import ISSUED_PASSWORDS, MARIADB, VaultHTTP, mysql_admin

TOKEN = "test-root-" + secrets.token_hex(8)
# Every broker the suite starts, in process or as a subprocess (which inherits this
# environment), auto-unseals with one throwaway key and initialises its fresh storage.
# Tests of the Shamir seal set seal_type themselves.
SEAL_ENV = {
    "BROKER_SEAL_TYPE": "env",
    "BROKER_SEAL_KEY": secrets.token_hex(32),
    "BROKER_AUTO_INIT": "true",
}
os.environ.update(SEAL_ENV)
# Per session: two runs of the suite on one machine (a developer's beside CI's) must not
# drop each other's databases at teardown.
_SESSION = secrets.token_hex(3)
MYSQL_APP_DB = f"broker_test_app_{_SESSION}"
MYSQL_OTHER_DB = f"broker_test_other_{_SESSION}"
PG_READERS = "app_readers"
PG_WRITERS = "app_writers"
#: The suite's PostgreSQL admin: not a superuser, with exactly the grants the README's
#: "What the admin needs" gives (production's shape); a few tests use the superuser.
PG_ADMIN = "brkt_admin"
PG_ADMIN_PASSWORD = "adm-" + secrets.token_hex(12)


def pg_admin_grants(admin: str, password: str) -> list[str]:
    """The README's statements for a least-privilege admin, cluster-wide part (run as a
    superuser in any database)."""
    return [
        f"CREATE ROLE {admin} WITH LOGIN CREATEROLE PASSWORD '{password}'",
        f"GRANT pg_signal_backend TO {admin}",
        f"GRANT {PG_READERS}, {PG_WRITERS} TO {admin} WITH ADMIN OPTION",
    ]


def pg_admin_database_grants(admin: str, database: str) -> list[str]:
    """The README's per-database part: connecting, and granting on to users the table
    privileges that creation statements grant directly (Vault's documented examples)."""
    return [
        f"GRANT CONNECT ON DATABASE {database} TO {admin}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {admin} WITH GRANT OPTION",
    ]


PG_READONLY = (
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; "
    f'GRANT {PG_READERS} TO "{{{{name}}}}";'
)
MYSQL_READONLY = (
    "CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}'; "
    f"GRANT SELECT ON {MYSQL_APP_DB}.* TO '{{{{name}}}}'@'%';"
)


class _LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="session", autouse=True)
def no_password_in_logs() -> Iterator[_LogCapture]:
    """Every log line the in-process brokers write during the whole run, at DEBUG, is
    scanned at the end for every password the tests were issued."""
    capture = _LogCapture()
    capture.addFilter(RequestIdFilter())
    root = logging.getLogger()
    previous = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(previous)
    text = "\n".join(capture.lines)
    leaked = sum(1 for password in ISSUED_PASSWORDS if password in text)
    assert leaked == 0, f"{leaked} issued password(s) found in the logs"


@dataclass(frozen=True)
class PgCluster:
    server: EmbeddedPostgres

    def dsn(self, database: str = "postgres") -> str:
        return self.server.dsn(database)

    @property
    def url_template(self) -> str:
        return f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{self.server.port}/app"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    server = EmbeddedPostgres()
    server.start()
    try:
        yield PgCluster(server)
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def pg_target(pg_cluster: PgCluster) -> PgCluster:
    """Databases 'app' and 'app2': a readers group that may read 'items' but not 'payroll',
    a writers group that may create tables in both."""
    admin = await asyncpg.connect(pg_cluster.dsn())
    try:
        for db in ("app", "app2"):
            await admin.execute(f"CREATE DATABASE {db}")
        await admin.execute(f"CREATE ROLE {PG_READERS} NOLOGIN")
        await admin.execute(f"CREATE ROLE {PG_WRITERS} NOLOGIN")
        for statement in pg_admin_grants(PG_ADMIN, PG_ADMIN_PASSWORD):
            await admin.execute(statement)
    finally:
        await admin.close()
    for db in ("app", "app2"):
        conn = await asyncpg.connect(pg_cluster.dsn(db))
        try:
            await conn.execute(
                f"""
                CREATE TABLE items (id int PRIMARY KEY, name text);
                INSERT INTO items VALUES (1, 'one'), (2, 'two');
                CREATE TABLE payroll (id int, salary int);
                GRANT USAGE ON SCHEMA public TO {PG_READERS};
                GRANT SELECT ON items TO {PG_READERS};
                GRANT USAGE, CREATE ON SCHEMA public TO {PG_WRITERS};
                """
            )
            for statement in pg_admin_database_grants(PG_ADMIN, db):
                await conn.execute(statement)
        finally:
            await conn.close()
    return pg_cluster


@pytest.fixture(scope="session")
async def mysql_target() -> AsyncIterator[None]:
    await mysql_admin(
        f"DROP DATABASE IF EXISTS {MYSQL_APP_DB}",
        f"DROP DATABASE IF EXISTS {MYSQL_OTHER_DB}",
        f"CREATE DATABASE {MYSQL_APP_DB}",
        f"CREATE DATABASE {MYSQL_OTHER_DB}",
        f"CREATE TABLE {MYSQL_APP_DB}.items (id int PRIMARY KEY, name text)",
        f"INSERT INTO {MYSQL_APP_DB}.items VALUES (1, 'one'), (2, 'two')",
        f"CREATE TABLE {MYSQL_OTHER_DB}.payroll (id int, salary int)",
    )
    yield
    await drop_test_mysql_users()
    await mysql_admin(
        f"DROP DATABASE IF EXISTS {MYSQL_APP_DB}", f"DROP DATABASE IF EXISTS {MYSQL_OTHER_DB}"
    )


async def drop_test_mysql_users() -> None:
    """Every user the tests' roles could have made (they all carry 'brkt' in the name)."""
    import aiomysql

    conn = await aiomysql.connect(autocommit=True, **MARIADB)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT User, Host FROM mysql.user WHERE User LIKE 'v\\_%brkt%'")
            for user, host in await cur.fetchall():
                await cur.execute("DROP USER IF EXISTS %s@%s", (user, host))
            # The install-marker roles the suite's brokers made (one per install and admin:
            # broker_<install id>_<admin>): nothing else on this MariaDB is named so.
            await cur.execute(
                "SELECT User FROM mysql.user WHERE is_role = 'Y' AND User LIKE 'broker\\_%'"
            )
            for (role,) in await cur.fetchall():
                await cur.execute(f"DROP ROLE IF EXISTS `{role}`")
    finally:
        conn.close()


async def create_database(pg_cluster: PgCluster, prefix: str) -> str:
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(pg_cluster.dsn())
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    return name


def pg_connection_config(pg: PgCluster) -> dict[str, str]:
    """A ``database/config`` body for the test cluster, as the least-privilege admin."""
    return {
        "plugin_name": "postgresql-database-plugin",
        "connection_url": pg.url_template,
        "username": PG_ADMIN,
        "password": PG_ADMIN_PASSWORD,
        "allowed_roles": "*",
    }


def pg_superuser_config(pg: PgCluster) -> dict[str, str]:
    """The same, as the cluster's superuser (still supported; a few tests use it)."""
    return {**pg_connection_config(pg), "username": "postgres", "password": pg.server.password}


def own_broker_settings(storage_dsn: str, **changes: Any) -> Settings:
    """Settings for a broker of a test's own, on a real port, auto-unsealed like the rest
    of the suite's brokers, with the suite's root token."""
    return Settings(
        storage_dsn=storage_dsn,
        listen_address=f"127.0.0.1:{free_port()}",
        root_token=TOKEN,
        seal_type="env",
        auto_init=True,
        **changes,
    )


@pytest.fixture
async def fresh_storage_db(pg_target: PgCluster) -> AsyncIterator[str]:
    """An empty storage database on the test cluster, for a broker of the test's own;
    dropped afterwards."""
    name = await create_database(pg_target, "brkt_storage")
    yield name
    admin = await asyncpg.connect(pg_target.dsn())
    try:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


@dataclass(frozen=True)
class RunningBroker:
    address: str
    settings: Settings
    http: VaultHTTP


@pytest.fixture(scope="session")
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="session")
async def broker(
    pg_target: PgCluster,
    mysql_target: None,
    http_session: aiohttp.ClientSession,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[RunningBroker]:
    """A broker on a real port, with a database mount, a PostgreSQL connection 'pg' and a
    MariaDB connection 'my', and one read-only role on each ('brkt' marks test users)."""
    storage_db = await create_database(pg_target, "broker_storage")
    settings = Settings(
        storage_dsn=pg_target.dsn(storage_db),
        listen_address=f"127.0.0.1:{free_port()}",
        root_token=TOKEN,
        sweep_interval=0.2,
        creation_timeout=5,
        seal_type="env",
        auto_init=True,
        audit_file_dirs=(str(tmp_path_factory.getbasetemp()),),  # tests' tmp_path
    )
    runner = await start_server(settings)
    address = f"http://{settings.listen_address}"
    http = VaultHTTP(http_session, address, TOKEN)
    try:
        assert (await http.write("sys/mounts/database", {"type": "database"})).status == 204
        reply = await http.write("database/config/pg", pg_connection_config(pg_target))
        assert reply.status == 204, reply.body
        reply = await http.write(
            "database/config/my",
            {
                "plugin_name": "mysql-database-plugin",
                "connection_url": "{{username}}:{{password}}@tcp(127.0.0.1:3306)/",
                "username": "root",
                "password": "",
                "allowed_roles": ["brkt-my-ro", "brkt-my-short", "brkt-my-bad"],
            },
        )
        assert reply.status == 204, reply.body
        for name, db, statements in (
            ("brkt-pg-ro", "pg", PG_READONLY),
            ("brkt-my-ro", "my", MYSQL_READONLY),
        ):
            reply = await http.write(
                f"database/roles/{name}",
                {
                    "db_name": db,
                    "creation_statements": [statements],
                    "default_ttl": "1h",
                    "max_ttl": "24h",
                },
            )
            assert reply.status == 204, reply.body
        yield RunningBroker(address, settings, http)
    finally:
        # Revoke what the tests left, so no user outlives the session.
        await http.write("sys/leases/revoke-prefix/database/")
        await runner.cleanup()
        await asyncio.sleep(0)
