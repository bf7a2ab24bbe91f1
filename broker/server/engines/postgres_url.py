"""Where a PostgreSQL connection goes: libpq's URL and ``key=value`` forms parsed into
asyncpg's arguments, with the credentials filled in only after parsing."""

from __future__ import annotations

import math
import re
import urllib.parse
from typing import Any

from broker.exceptions import InvalidRequest
from broker.server.engines.base import ConnectionConfig
from broker.server.engines.url_templates import (
    check_placeholders,
    fill_credentials,
    shown_template,
)

_CONNINFO_PAIR = re.compile(r"\s*([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']*)")
#: libpq's sslmode values; anything else would reach asyncpg and fail at connect time.
_SSLMODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})


def parse_connection_url(template: str) -> dict[str, str]:
    """libpq parameters from a ``postgresql://`` URL or a ``key=value`` string.

    Parsed while ``{{username}}``/``{{password}}`` are still placeholders, so credentials
    containing ``@``, ``:`` or ``/`` cannot change where the broker connects; a
    placeholder anywhere but the user and password positions is refused (it would turn
    the stored admin password into a port, a host or a timeout, and its error into an
    oracle). Every message quotes the template, never a filled-in value.
    """
    text = template.strip()
    params = _parse(text, template)
    check_placeholders(params, template)
    _check_values(params, template)
    return params


def _parse(text: str, template: str) -> dict[str, str]:
    params: dict[str, str] = {}
    if text.startswith(("postgres://", "postgresql://")):
        url = urllib.parse.urlsplit(text)
        # The host:port part is checked as written, before anything converts it.
        check_placeholders({"host": url.netloc.rpartition("@")[2]}, template)
        if url.username:
            params["user"] = urllib.parse.unquote(url.username)
        if url.password:
            params["password"] = urllib.parse.unquote(url.password)
        if url.hostname:
            params["host"] = urllib.parse.unquote(url.hostname)
        try:
            port = url.port
        except ValueError as exc:
            raise InvalidRequest(
                f"connection_url: invalid port in {shown_template(template)}"
            ) from exc
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
            raise InvalidRequest(
                "connection_url: not a postgresql:// URL or key=value string: "
                + shown_template(template)
            )
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


def _check_values(params: dict[str, str], template: str) -> None:
    """What can be checked of the template itself: a bad port or timeout is a 400 on
    write, never a failure (or a 500) when connecting."""
    port = params.get("port")
    if port is not None and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise InvalidRequest(f"connection_url: invalid port in {shown_template(template)}")
    timeout = params.get("connect_timeout")
    if timeout is not None:
        try:
            seconds = float(timeout)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds >= 0):
            raise InvalidRequest(
                f"connection_url: invalid connect_timeout in {shown_template(template)}"
            )
    sslmode = params.get("sslmode")
    if sslmode is not None and sslmode not in _SSLMODES:
        raise InvalidRequest(f"connection_url: invalid sslmode in {shown_template(template)}")


def connect_arguments(config: ConnectionConfig) -> dict[str, Any]:
    """asyncpg keyword arguments for ``config``: the parsed template, with the stored
    credentials put only where credentials go (never a string parsed again)."""
    params = fill_credentials(parse_connection_url(config.connection_url), config)
    args: dict[str, Any] = {}
    for key, value in params.items():
        if key in ("host", "user", "password"):
            args[key] = value
        elif key == "port":
            args["port"] = int(value)
        elif key == "dbname":
            args["database"] = value
        elif key == "sslmode":
            args["ssl"] = None if value in ("disable", "allow") else value
        elif key == "connect_timeout" and float(value) > 0:  # libpq: 0 means no limit
            args["timeout"] = float(value)
    return args
