"""Vault's response envelope and error body, with the exact headers clients expect."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from broker.exceptions import BrokerError, TooManyRequests
from broker.logs import REQUEST_ID

# Exactly this: hvac ignores the error list when a charset is appended.
_JSON_HEADERS = {"Content-Type": "application/json", "Cache-Control": "no-store"}
#: The body a response was rendered from, for the audit log (which hashes its secrets).
PAYLOAD = web.ResponseKey("broker.payload", dict)


def json_response(body: Mapping[str, Any], status: int = 200) -> web.Response:
    response = web.Response(
        body=json.dumps(body, separators=(",", ":"), default=str).encode(),
        status=status,
        headers=_JSON_HEADERS,
    )
    response[PAYLOAD] = dict(body)
    return response


def vault_response(
    data: Mapping[str, Any] | None,
    *,
    lease_id: str = "",
    renewable: bool = False,
    lease_duration: int = 0,
    warnings: Sequence[str] = (),
    top_level: bool = False,
    status: int = 200,
    auth: Mapping[str, Any] | None = None,
    wrap_info: Mapping[str, Any] | None = None,
) -> web.Response:
    """Vault's envelope. ``top_level`` copies ``data`` keys beside it, as Vault does for
    ``sys/`` paths (hvac reads some of them there)."""
    body: dict[str, Any] = {
        "request_id": REQUEST_ID.get() or str(uuid.uuid4()),
        "lease_id": lease_id,
        "renewable": renewable,
        "lease_duration": lease_duration,
        "data": dict(data) if data is not None else None,
        "wrap_info": dict(wrap_info) if wrap_info is not None else None,
        "warnings": list(warnings) or None,
        "auth": dict(auth) if auth is not None else None,
    }
    if top_level and data is not None:
        for key, value in data.items():
            body.setdefault(key, value)
    return json_response(body, status)


def list_response(keys: Sequence[str], *, warnings: Sequence[str] = ()) -> web.Response:
    if not keys:
        return error_response(404, [])
    return vault_response({"keys": list(keys)}, warnings=warnings)


def no_content() -> web.Response:
    return web.Response(status=204)


def error_response(status: int, errors: Sequence[str]) -> web.Response:
    return json_response({"errors": [str(e) for e in errors]}, status)


def broker_error_response(exc: BrokerError) -> web.Response:
    response = error_response(exc.status, exc.errors)
    if isinstance(exc, TooManyRequests):
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after + 0.5)))
    return response
