"""Connection URL templates, shared by the PostgreSQL and MySQL parsers: where
``{{username}}`` and ``{{password}}`` may stand, filling them, and quoting a template in
an error without the admin's password.

A template is parsed with its placeholders in; the stored admin credentials are put into
the parsed user and password fields only, when the engine builds its connect arguments.
They never go into a string that is parsed again, and never into a field whose error
message, host check or conversion could show them back (``port={{password}}`` once made
the answer quote the stored password).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from broker.exceptions import InvalidRequest
from broker.server.engines.base import ConnectionConfig

_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_.]+)\s*\}\}")
#: The one field each placeholder may stand in (the parsers name fields this way).
_POSITIONS: Mapping[str, str] = {"user": "username", "password": "password"}
_PLACEHOLDER_ONLY = re.compile(r"\A\s*(?:\{\{\s*[A-Za-z_.]+\s*\}\}\s*)*\Z")
_KEY_VALUE = re.compile(r"\A\s*[A-Za-z_]+\s*=")
_PASSWORD_PARAM = re.compile(r"(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&']*)")
MASK = "***"


def shown_template(template: str) -> str:
    """The template for an error message, as written but for a literal (non-placeholder)
    password in it, which is masked: the template is quoted, never a filled-in value."""
    return repr(masked_template(template))


def masked_template(template: str) -> str:
    """``template`` with a literal password in it (userinfo or ``password=``) replaced by
    ``***``, placeholders kept: what a read of the connection may show (Vault masks the
    password of a stored connection URL too)."""

    def mask(value: str) -> str:
        return value if _PLACEHOLDER_ONLY.match(value) else MASK

    text = _PASSWORD_PARAM.sub(lambda m: m.group(1) + mask(m.group(2)), template)
    if _KEY_VALUE.match(text):
        return text
    scheme, sep, body = text.partition("://")
    if not sep:  # Go's DSN: user:password@tcp(host:port)/db
        scheme, body = "", text
    end = re.search(r"[/?#]", body) if sep else None
    netloc = body[: end.start()] if end else body
    at = netloc.rfind("@")
    user, colon, password = netloc[: max(at, 0)].partition(":")
    if at > 0 and colon:
        text = f"{scheme}{sep}{user}:{mask(password)}{body[at:]}"
    return text


def check_placeholders(fields: Mapping[str, str], template: str) -> None:
    """Refuse a ``{{variable}}`` anywhere but ``{{username}}`` in the user field and
    ``{{password}}`` in the password field (the parsed key names count too)."""
    for key, value in fields.items():
        for where, text in (("a parameter name", key), (key, value)):
            for found in _VARIABLE.finditer(text):
                name = found.group(1)
                if text is value and _POSITIONS.get(key) == name:
                    continue
                if name not in ("username", "password"):
                    raise InvalidRequest(
                        f"connection_url: unknown variable {{{{{name}}}}} in {where}: "
                        + shown_template(template)
                    )
                allowed = "user" if name == "username" else "password"
                raise InvalidRequest(
                    f"connection_url: {{{{{name}}}}} may stand only in the {allowed} "
                    f"position (the URL's user info or the {allowed} parameter), "
                    f"not in {where}: {shown_template(template)}"
                )


def fill_credentials(fields: Mapping[str, str], config: ConnectionConfig) -> dict[str, str]:
    """``fields`` with the stored username and password filled into the user and password
    fields only (``check_placeholders`` has kept them out of every other), or supplied
    when the template names none."""
    filled = dict(fields)
    if "user" in filled:
        filled["user"] = _VARIABLE.sub(lambda _: config.username, filled["user"])
    if "password" in filled:
        filled["password"] = _VARIABLE.sub(lambda _: config.password, filled["password"])
    if not filled.get("user") and config.username:
        filled["user"] = config.username
    if not filled.get("password") and config.password:
        filled["password"] = config.password
    return filled
