"""What a program needs to use issued credentials: where the database is and the
environment variables, URL or .pgpass line that carry the login.

Client side: used by ``broker creds``, ``broker exec``, ``broker connect`` and the agent.
Where the database is comes from the creds answer itself (``data.connection``, a broker
extension asked for with ``?connection=true``), so a token that may only read its role's
creds is enough: no read of the role or the connection, and nothing of the server's code
(engines, storage) is imported here.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Endpoint:
    kind: str  # "postgresql" or "mysql"
    host: str  # a name, an address, or a socket path starting with "/"
    port: str
    database: str
    sslmode: str = ""  # PostgreSQL only, when the connection sets one

    @property
    def is_socket(self) -> bool:
        return self.host.startswith("/")


def endpoint_of(issued: Mapping[str, Any]) -> Endpoint:
    """The endpoint a creds answer describes; ``ValueError`` when it describes none
    (a Vault server, or a broker older than the extension): only the formats that need
    a host (env, dsn, pgpass, exec, connect) call this."""
    data = issued.get("data") or {}
    described = data.get("connection") if isinstance(data, Mapping) else None
    if not isinstance(described, Mapping) or not described.get("host"):
        raise ValueError(
            "the creds answer does not say where the database is (data.connection, a "
            "broker extension); use --format json or table with this server"
        )
    postgres = described.get("plugin") == "postgresql"
    return Endpoint(
        "postgresql" if postgres else "mysql",
        str(described["host"]),
        str(described.get("port") or ("5432" if postgres else "3306")),
        str(described.get("database") or ""),
        str(described.get("sslmode") or "") if postgres else "",
    )


def database_url(endpoint: Endpoint, username: str, password: str) -> str:
    user, secret = urllib.parse.quote(username, safe=""), urllib.parse.quote(password, safe="")
    database = urllib.parse.quote(endpoint.database, safe="")
    query: dict[str, str] = {}
    host = endpoint.host
    if endpoint.is_socket:
        # libpq takes a socket directory as ?host=; mysql drivers as ?unix_socket=.
        query["host" if endpoint.kind == "postgresql" else "unix_socket"] = endpoint.host
        host = "" if endpoint.kind == "postgresql" else "localhost"
    elif ":" in host:
        host = f"[{host}]"  # an IPv6 address
    if endpoint.sslmode:
        query["sslmode"] = endpoint.sslmode
    suffix = f"?{urllib.parse.urlencode(query)}" if query else ""
    authority = f"{host}:{endpoint.port}" if host else ""
    return f"{endpoint.kind}://{user}:{secret}@{authority}/{database}{suffix}"


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
        if endpoint.sslmode:
            env["PGSSLMODE"] = endpoint.sslmode
    else:
        env = {
            "MYSQL_HOST": "localhost" if endpoint.is_socket else endpoint.host,
            "MYSQL_TCP_PORT": endpoint.port,
            "MYSQL_DATABASE": endpoint.database,
            "MYSQL_USER": username,
            "MYSQL_PWD": password,
        }
        if endpoint.is_socket:
            env["MYSQL_UNIX_PORT"] = endpoint.host
    env["DATABASE_URL"] = database_url(endpoint, username, password)
    return env


def pgpass_line(endpoint: Endpoint, username: str, password: str) -> str:
    def esc(value: str) -> str:  # .pgpass escapes ':' and '\' with a backslash
        return value.replace("\\", "\\\\").replace(":", "\\:")

    host = "localhost" if endpoint.is_socket else endpoint.host  # libpq's rule for sockets
    return ":".join(esc(v) for v in (host, endpoint.port, endpoint.database, username, password))
