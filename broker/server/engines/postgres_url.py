"""Where a PostgreSQL connection goes: libpq's URL and ``key=value`` forms parsed into
asyncpg's arguments, with the credentials filled in only after parsing."""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from broker.exceptions import InvalidRequest
from broker.server.engines.base import ConnectionConfig
from broker.server.engines.templates import render

_CONNINFO_PAIR = re.compile(r"\s*([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']*)")


def parse_connection_url(template: str) -> dict[str, str]:
    """libpq parameters from a ``postgresql://`` URL or a ``key=value`` string.

    Parsed while ``{{username}}``/``{{password}}`` are still placeholders, so credentials
    containing ``@``, ``:`` or ``/`` cannot change where the broker connects.
    """
    text = template.strip()
    params: dict[str, str] = {}
    if text.startswith(("postgres://", "postgresql://")):
        url = urllib.parse.urlsplit(text)
        if url.username:
            params["user"] = urllib.parse.unquote(url.username)
        if url.password:
            params["password"] = urllib.parse.unquote(url.password)
        if url.hostname:
            params["host"] = urllib.parse.unquote(url.hostname)
        try:
            port = url.port
        except ValueError as exc:
            raise InvalidRequest(f"connection_url: invalid port: {exc}") from exc
        if port:
            params["port"] = str(port)
        if url.path.strip("/"):
            params["dbname"] = urllib.parse.unquote(url.path.strip("/"))
        for key, values in urllib.parse.parse_qs(url.query).items():
            params[key] = values[-1]
        return params
    pos = 0
    while pos < len(text):
        match = _CONNINFO_PAIR.match(text, pos)
        if not match or match.end() == pos:
            raise InvalidRequest("connection_url: not a postgresql:// URL or key=value string")
        key, value = match.group(1), match.group(2)
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[key] = value
        pos = match.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    if not params:
        raise InvalidRequest("connection_url is empty")
    return params


def connect_arguments(config: ConnectionConfig) -> dict[str, Any]:
    """asyncpg keyword arguments for ``config``, placeholders filled."""
    params = parse_connection_url(config.connection_url)
    fill = {"username": config.username, "password": config.password}
    params = {key: render(value, fill) for key, value in params.items()}
    if not params.get("user") and config.username:
        params["user"] = config.username
    if not params.get("password") and config.password:
        params["password"] = config.password
    args: dict[str, Any] = {}
    for key, value in params.items():
        if key in ("host", "user", "password"):
            args[key] = value
        elif key == "port":
            if not value.isdigit() or not 0 < int(value) < 65536:
                raise InvalidRequest(f"connection_url: invalid port {value!r}")
            args["port"] = int(value)
        elif key == "dbname":
            args["database"] = value
        elif key == "sslmode":
            args["ssl"] = None if value in ("disable", "allow") else value
        elif key == "connect_timeout":
            args["timeout"] = float(value)
    return args
