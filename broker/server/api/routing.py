"""One route table for every Vault path the broker serves.

Vault addresses operations, not HTTP methods: GET is read, LIST (or GET ?list=true) is
list, POST and PUT are both update, DELETE is delete. Secrets engine paths are relative to
a mount that can be enabled anywhere, so they are matched after the mount is resolved.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from broker.server.api.context import RequestContext


class Operation(enum.StrEnum):
    READ = "read"
    LIST = "list"
    UPDATE = "update"
    DELETE = "delete"


Handler = Callable[["RequestContext"], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    pattern: re.Pattern[str]
    handlers: Mapping[Operation, Handler]
    authenticated: bool = True
    #: The path with ``:name`` for each variable part: a bounded metrics label.
    template: str = ""
    #: Vault's root-protected paths: the policy must also grant ``sudo``.
    sudo: bool = False
    #: Served while sealed (seal status, init, unseal, health); every other path is a 503.
    sealed_ok: bool = False
    #: The names in this path are case-insensitive (Vault lower-cases policy names): the
    #: path is lower-cased before the ACL judges it, so handler and ACL see one name.
    case_insensitive: bool = False
    #: The ACL judges the path before the handler runs. False only where Vault serves a
    #: path to every valid token and its handler decides from the token's policies what it
    #: may see (``sys/internal/ui/mounts``): a token is still required.
    acl: bool = True


@dataclass(frozen=True, slots=True)
class RouteTables:
    """The tables (routes.py): paths under sys/ and auth/token/, the paths relative to a
    database secrets engine mount, and for each auth method type the paths relative to
    its mount (``auth/<mount>/...``)."""

    sys: tuple[Route, ...]
    database: tuple[Route, ...]
    auth: Mapping[str, tuple[Route, ...]]


#: The application's route tables: the dispatcher matches requests against them and the
#: OpenAPI handler describes them (reading them here, it need not import routes.py,
#: which lists it).
ROUTE_TABLES = web.AppKey("broker.route_tables", RouteTables)


def path_template(pattern: str) -> str:
    """``roles/(?P<name>[^/]+)`` -> ``roles/:name``; optional parts are kept."""
    text = re.sub(r"\(\?P<(\w+)>[^)]*\)", r":\1", pattern)
    return text.replace("(?:", "").replace(")?", "").replace("/?", "")


def route(
    pattern: str,
    authenticated: bool = True,
    *,
    sudo: bool = False,
    sealed_ok: bool = False,
    case_insensitive: bool = False,
    acl: bool = True,
    **handlers: Handler,
) -> Route:
    return Route(
        re.compile(pattern + r"\Z"),
        {Operation(op): fn for op, fn in handlers.items()},
        authenticated,
        path_template(pattern),
        sudo,
        sealed_ok,
        case_insensitive,
        acl,
    )


def operation_of(request: web.Request) -> Operation | None:
    method = request.method
    if method in ("GET", "LIST"):
        if method == "LIST" or request.query.get("list", "").lower() in ("true", "1"):
            return Operation.LIST
        return Operation.READ
    if method in ("POST", "PUT"):
        return Operation.UPDATE
    if method == "DELETE":
        return Operation.DELETE
    return None


def match(routes: tuple[Route, ...], path: str) -> tuple[Route, dict[str, str]] | None:
    for candidate in routes:
        found = candidate.pattern.match(path)
        if found:
            return candidate, {k: v for k, v in found.groupdict().items() if v is not None}
    return None
