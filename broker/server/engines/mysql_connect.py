"""Reaching a MySQL or MariaDB server: Vault's DSN (or a ``mysql://`` URL) parsed into
aiomysql's arguments, and which driver errors mean the server could not be reached."""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

import pymysql

from broker.exceptions import InvalidRequest
from broker.server.engines.base import ConnectionConfig
from broker.server.engines.url_templates import (
    check_placeholders,
    fill_credentials,
    shown_template,
)

_GO_DSN = re.compile(
    r"^(?:(?P<user>[^:@]*)(?::(?P<password>.*))?@)?"
    r"(?:(?P<net>tcp|unix)\((?P<addr>[^)]*)\))?"
    r"/(?P<db>[^?]*)(?:\?(?P<params>.*))?$"
)
# Errors that mean the server is unreachable or refused us, as opposed to a bad statement.
_CONNECT_ERROR_CODES = {1040, 1045, 1049, 1129, 1130, 2002, 2003, 2005, 2006, 2013}


def parse_connection_url(template: str) -> dict[str, str]:
    """Connection fields from Vault's Go driver DSN
    (``{{username}}:{{password}}@tcp(host:port)/db?params``) or a ``mysql://`` URL.

    Parsed with the placeholders still in, so credentials cannot change the address; a
    placeholder anywhere but the user and password positions is refused, and messages
    quote the template, never a filled-in value (see ``url_templates``).
    """
    text = template.strip()
    fields: dict[str, str] = {}
    if text.startswith(("mysql://", "mariadb://")):
        url = urllib.parse.urlsplit(text)
        check_placeholders(
            {"host": url.netloc.rpartition("@")[2], "db": url.path, "params": url.query},
            template,
        )
        fields["user"] = urllib.parse.unquote(url.username or "")
        fields["password"] = urllib.parse.unquote(url.password or "")
        fields["host"] = url.hostname or "127.0.0.1"
        try:
            fields["port"] = str(url.port or 3306)
        except ValueError as exc:
            raise InvalidRequest(
                f"connection_url: invalid port in {shown_template(template)}"
            ) from exc
        fields["db"] = url.path.strip("/")
        check_placeholders(fields, template)
        return fields
    match = _GO_DSN.match(text)
    if not match:
        raise InvalidRequest(
            "connection_url: expected {{username}}:{{password}}@tcp(host:port)/dbname, got "
            + shown_template(template)
        )
    check_placeholders(
        {
            "user": match.group("user") or "",
            "password": match.group("password") or "",
            "address": match.group("addr") or "",
            "db": match.group("db") or "",
            "params": match.group("params") or "",
        },
        template,
    )
    fields["user"] = match.group("user") or ""
    fields["password"] = match.group("password") or ""
    fields["db"] = match.group("db") or ""
    addr = match.group("addr") or "127.0.0.1:3306"
    if match.group("net") == "unix":
        fields["unix_socket"] = addr
    else:
        host, _, port = addr.rpartition(":") if ":" in addr else (addr, "", "3306")
        fields["host"] = host.strip("[]") or "127.0.0.1"
        if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            raise InvalidRequest(f"connection_url: invalid port in {shown_template(template)}")
        fields["port"] = port
    return fields


def connect_arguments(config: ConnectionConfig) -> dict[str, Any]:
    """aiomysql keyword arguments for ``config``: the parsed template, with the stored
    credentials put only where credentials go (never a string parsed again)."""
    fields = fill_credentials(parse_connection_url(config.connection_url), config)
    args: dict[str, Any] = {
        "user": fields.get("user", ""),
        "password": fields.get("password", ""),
        "autocommit": True,
        "connect_timeout": int(config.options.get("connect_timeout", 5)),
        # Expiry events are scheduled in UTC whatever the server's zone.
        "init_command": "SET time_zone = '+00:00'",
    }
    if fields.get("db"):
        args["db"] = fields["db"]
    if "unix_socket" in fields:
        args["unix_socket"] = fields["unix_socket"]
    else:
        args["host"] = fields["host"]
        args["port"] = int(fields["port"])
    return args


def is_connect_error(exc: BaseException) -> bool:
    """Whether ``exc`` means the server is out of reach (or refused us), rather than a
    statement failing on a live connection."""
    if isinstance(exc, OSError | TimeoutError):
        return True
    if isinstance(exc, pymysql.err.MySQLError) and exc.args:
        return exc.args[0] in _CONNECT_ERROR_CODES
    return False
