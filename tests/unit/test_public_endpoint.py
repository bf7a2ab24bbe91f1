"""``endpoints.public_endpoint``: where a connection's logins go, and never the admin login
written into its URL (userinfo, ``user=``/``password=`` parameters, filled placeholders)."""

from __future__ import annotations

import pytest

from broker.models import Connection
from broker.server.database.endpoints import public_endpoint


def _connection(plugin: str, url: str) -> Connection:
    return Connection("database", "c", plugin, url, "admin", "s3cret-admin", ("*",), "", False, {})


@pytest.mark.parametrize(
    ("plugin", "url", "expected"),
    [
        (
            "postgresql-database-plugin",
            "postgresql://{{username}}:{{password}}@db.internal:6432/app?sslmode=require",
            {"host": "db.internal", "port": "6432", "database": "app", "sslmode": "require"},
        ),
        (
            "postgresql-database-plugin",
            "host=/run/postgresql dbname=app user=admin password=s3cret-admin",
            {"host": "/run/postgresql", "port": "5432", "database": "app"},
        ),
        (
            "postgresql-database-plugin",
            "postgresql://admin:s3cret-admin@10.0.0.5/app?password=s3cret-admin",
            {"host": "10.0.0.5", "port": "5432", "database": "app"},
        ),
        (
            "mysql-database-plugin",
            "{{username}}:{{password}}@tcp(10.0.0.7:3307)/shop?tls=true",
            {"host": "10.0.0.7", "port": "3307", "database": "shop"},
        ),
        (
            "mariadb-database-plugin",
            "admin:s3cret-admin@unix(/run/mysqld/mysqld.sock)/",
            {"host": "/run/mysqld/mysqld.sock", "port": "3306", "database": ""},
        ),
    ],
)
def test_endpoint_keeps_the_address_and_drops_the_login(
    plugin: str, url: str, expected: dict[str, str]
) -> None:
    endpoint = public_endpoint(_connection(plugin, url))
    kind = "postgresql" if plugin.startswith("postgresql") else "mysql"
    assert endpoint == {"plugin": kind, **expected}
    assert not any("admin" in v or "{{" in v for v in endpoint.values())


def test_placeholder_in_the_address_is_left_out() -> None:
    """Filling it would be the administrator's value. Such a template is refused when
    written (a placeholder only stands in the user and password positions); one stored
    before that rule yields just the plugin."""
    endpoint = public_endpoint(
        _connection("postgresql-database-plugin", "host={{username}} dbname=app")
    )
    assert endpoint == {"plugin": "postgresql"}


def test_an_unreadable_url_yields_only_the_plugin() -> None:
    assert public_endpoint(_connection("mysql-database-plugin", "not a dsn")) == {"plugin": "mysql"}
