"""The OpenAPI 3.1 document of ``sys/internal/specs/openapi``, built from the route table
the dispatcher uses, so the two cannot drift.

Like Vault's, it describes the mounts that exist: engine and auth method paths appear under
each enabled mount. A list operation is a GET on the path with a trailing slash and
``list=true``, as in Vault's document; writes are POST (PUT is accepted too).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import broker
from broker.server.api.routing import Operation, Route

ERRORS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["errors"],
    "properties": {"errors": {"type": "array", "items": {"type": "string"}}},
}
#: What any route may answer besides success: Vault's error body in every case.
_ERROR_STATUSES = {
    "400": "invalid request",
    "403": "permission denied",
    "404": "not found (a read of something absent: an empty error list)",
    "405": "unsupported operation",
    "413": "request body too large",
    "429": "rate limit or lease quota reached (see Retry-After)",
    "503": "sealed, or storage or a target unavailable",
}
_HEALTH_CODES = {
    "429": "rate limited",
    "501": "not initialised",
    "503": "sealed or storage unavailable",
}
_TARGET_ERROR = {"502": "the target database refused or failed the operation"}
_GROUP = re.compile(r"\(\?P<(\w+)>([^)]*)\)")
_OPTIONAL = re.compile(r"\(\?:(/\(\?P<\w+>[^)]*\))\)\?")


def _variants(pattern: str) -> list[str]:
    """Concrete path templates of a route pattern: an optional ``(?:/(?P<x>...))?`` part
    gives one path without it and one with it; a trailing ``/?`` is dropped."""
    without = _OPTIONAL.sub("", pattern)
    with_part = _OPTIONAL.sub(r"\1", pattern)
    paths = []
    for variant in dict.fromkeys((without, with_part)):
        text = variant[:-2] if variant.endswith("/?") else variant
        paths.append(_GROUP.sub(r"{\1}", text))
    return paths


def _error_responses(extra: dict[str, str]) -> dict[str, Any]:
    return {
        status: {
            "description": text,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Errors"}}},
        }
        for status, text in {**_ERROR_STATUSES, **extra}.items()
    }


def _summary(route: Route, operation: Operation) -> str:
    handler = route.handlers[operation]
    doc = (handler.__doc__ or "").strip().splitlines()
    return doc[0] if doc else handler.__name__.replace("_", " ")


def _operation(
    route: Route, operation: Operation, path: str, prefix: str, tag: str, extra: dict[str, str]
) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", path)
    ]
    if operation is Operation.LIST:
        params.append(
            {
                "name": "list",
                "in": "query",
                "required": True,
                "schema": {"type": "string", "enum": ["true"]},
            }
        )
    success: dict[str, Any] = {
        "200": {
            "description": "OK",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    }
    if operation in (Operation.UPDATE, Operation.DELETE):
        success["204"] = {"description": "done; nothing to return"}
    if operation is Operation.UPDATE:
        success["202"] = {
            "description": "accepted (asynchronous revocation)",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    responses = {**success, **_error_responses(extra)}
    if route.template == "sys/health":  # its status codes carry the health body
        for status in ("429", "501", "503"):
            responses[status] = {**success["200"], "description": _HEALTH_CODES[status]}
    op: dict[str, Any] = {
        "operationId": f"{operation.value}-{prefix}{path}".replace("/", "-").strip("-"),
        "summary": _summary(route, operation),
        "tags": [tag],
        "parameters": params,
        "responses": responses,
    }
    if not route.authenticated:
        op["security"] = []
    if route.sudo:
        op["description"] = "Root-protected: the policy must grant sudo on this path."
    if operation is Operation.UPDATE:
        op["requestBody"] = {
            "required": False,
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/x-www-form-urlencoded": {"schema": {"type": "object"}},
            },
        }
    return op


def _add_routes(
    paths: dict[str, Any],
    routes: Iterable[Route],
    prefix: str,
    tag: str,
    extra: dict[str, str] | None = None,
) -> None:
    for route in routes:
        for variant in _variants(route.pattern.pattern.removesuffix(r"\Z")):
            for operation in route.handlers:
                path = f"/{prefix}{variant}"
                if operation is Operation.LIST and not path.endswith("/"):
                    path += "/"
                method = {
                    Operation.READ: "get",
                    Operation.LIST: "get",
                    Operation.UPDATE: "post",
                    Operation.DELETE: "delete",
                }[operation]
                item = paths.setdefault(path, {})
                item[method] = _operation(route, operation, variant, prefix, tag, extra or {})


def build_document(
    sys_routes: Iterable[Route],
    database_routes: Iterable[Route],
    database_mounts: Iterable[str],
    auth_mounts: Iterable[tuple[str, Iterable[Route]]],
) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    _add_routes(paths, sys_routes, "", "system")
    for mount in database_mounts:
        _add_routes(paths, database_routes, f"{mount}/", "secrets", _TARGET_ERROR)
    for mount, auth_routes in auth_mounts:
        _add_routes(paths, auth_routes, f"auth/{mount}/", "auth")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "broker",
            "description": "Short-lived database logins behind HashiCorp Vault's HTTP API.",
            "version": broker.__version__,
        },
        "servers": [{"url": "/v1"}],
        "components": {
            "schemas": {"Errors": ERRORS_SCHEMA},
            "securitySchemes": {
                "vaultToken": {"type": "apiKey", "in": "header", "name": "X-Vault-Token"}
            },
        },
        "security": [{"vaultToken": []}],
        "paths": dict(sorted(paths.items())),
    }
