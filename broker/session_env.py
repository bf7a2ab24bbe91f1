"""What a program needs to use issued credentials: where the database is (from the role's
connection) and the environment variables, URL or .pgpass line that carry the login.

Client side: used by ``broker creds``, ``broker exec`` and ``broker connect``.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from broker.client import BrokerClient
from broker.engines.mysql import parse_connection_url as parse_mysql
from broker.engines.postgres import parse_connection_url as parse_postgres


@dataclass(frozen=True, slots=True)
class Endpoint:
    kind: str  # "postgresql" or "mysql"
    host: str
    port: str
    database: str


def endpoint_of(client: BrokerClient, mount: str, role: str) -> Endpoint:
    """Host, port and database of the role's connection (needs read access to both)."""
    db_name = client.request("GET", f"{mount}/roles/{role}")["data"]["db_name"]
    data = client.request("GET", f"{mount}/config/{db_name}")["data"]
    url = data["connection_details"]["connection_url"]
    if data["plugin_name"].startswith("postgresql"):
        params = parse_postgres(url)
        return Endpoint(
            "postgresql",
            params.get("host", "127.0.0.1"),
            params.get("port", "5432"),
            params.get("dbname", "postgres"),
        )
    fields = parse_mysql(url)
    return Endpoint(
        "mysql", fields.get("host", "127.0.0.1"), fields.get("port", "3306"), fields.get("db", "")
    )


def database_url(endpoint: Endpoint, username: str, password: str) -> str:
    user, secret = urllib.parse.quote(username, safe=""), urllib.parse.quote(password, safe="")
    host = "localhost" if endpoint.host.startswith("/") else endpoint.host
    return f"{endpoint.kind}://{user}:{secret}@{host}:{endpoint.port}/{endpoint.database}"


def environment(endpoint: Endpoint, username: str, password: str) -> dict[str, str]:
    """libpq's or the mysql client's variables, plus DATABASE_URL."""
    if endpoint.kind == "postgresql":
        env = {
            "PGHOST": endpoint.host,
            "PGPORT": endpoint.port,
            "PGDATABASE": endpoint.database,
            "PGUSER": username,
            "PGPASSWORD": password,
        }
    else:
        env = {
            "MYSQL_HOST": endpoint.host,
            "MYSQL_TCP_PORT": endpoint.port,
            "MYSQL_DATABASE": endpoint.database,
            "MYSQL_USER": username,
            "MYSQL_PWD": password,
        }
    env["DATABASE_URL"] = database_url(endpoint, username, password)
    return env


def pgpass_line(endpoint: Endpoint, username: str, password: str) -> str:
    def esc(value: str) -> str:  # .pgpass escapes ':' and '\' with a backslash
        return value.replace("\\", "\\\\").replace(":", "\\:")

    return ":".join(
        esc(v) for v in (endpoint.host, endpoint.port, endpoint.database, username, password)
    )
