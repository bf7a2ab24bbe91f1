"""Where a connection's logins go: the target hosts a connection may name
(``allowed_target_hosts``) and the non-secret endpoint a creds answer may carry."""

from __future__ import annotations

import ipaddress

from broker.exceptions import BrokerError
from broker.models import Connection
from broker.server.engines.mysql import parse_connection_url as parse_mysql_url
from broker.server.engines.postgres import parse_connection_url as parse_postgres_url
from broker.server.engines.url_templates import masked_template


def host_allowed(host: str, allowed: list[str]) -> bool:
    """A socket path is local; an IP address must lie in a listed network; a name must be
    listed as written (resolving it here would itself reach out, and could be rebound)."""
    if host.startswith("/"):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host.lower() in {a.lower() for a in allowed}
    for entry in allowed:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


#: Connection parameters a client may see beside its login: how to reach the database,
#: never who the broker logs in as.
_PUBLIC_PG_PARAMS = ("sslmode", "target_session_attrs")


def public_endpoint(connection: Connection) -> dict[str, str]:
    """Where the logins of ``connection`` go (plugin, host, port, database), for clients
    that build a DSN or environment from a creds answer without read access to the
    connection itself. Picked key by key from the parsed URL, so the administrator's
    username and password (userinfo, ``user=``/``password=`` parameters) can never be
    among them; a value still holding a ``{{...}}`` placeholder is left out too, since
    filling it would be the administrator's. Never raises: a URL it cannot read (it was
    checked when written) yields just the plugin."""
    postgres = connection.plugin_name.startswith("postgresql")
    endpoint = {"plugin": "postgresql" if postgres else "mysql"}
    try:
        if postgres:
            params = parse_postgres_url(connection.connection_url)
            picked = {
                "host": params.get("host", "127.0.0.1"),
                "port": params.get("port", "5432"),
                "database": params.get("dbname", "postgres"),
            }
            picked.update({k: params[k] for k in _PUBLIC_PG_PARAMS if k in params})
        else:
            fields = parse_mysql_url(connection.connection_url)
            picked = {
                "host": fields.get("unix_socket") or fields.get("host", "127.0.0.1"),
                "port": fields.get("port", "3306"),
                "database": fields.get("db", ""),
            }
    except BrokerError:
        return endpoint
    endpoint.update({k: v for k, v in picked.items() if "{{" not in v})
    return endpoint


def shown_connection_url(connection: Connection) -> str:
    """The stored URL as a read answers it: a password written into it is masked, so
    the stored admin password never comes back out (``rotate-root`` promises only the
    broker knows it)."""
    return masked_template(connection.connection_url)
