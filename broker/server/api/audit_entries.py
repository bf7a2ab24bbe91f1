"""What an audit entry says about a request and its response (Vault's entry layout).

Built here, in the API layer, because it reads the HTTP request; ``broker.audit`` only
chains and writes entries. Every string in request or response data is hashed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from broker.logs import REQUEST_ID
from broker.server.api.context import RequestContext
from broker.server.api.responses import PAYLOAD
from broker.server.security.audit import now_text
from broker.server.security.audit_chain import hash_values


def audit_request_entry(
    ctx: RequestContext, operation: str, hmac: Callable[[str], str]
) -> dict[str, Any]:
    caller = ctx.caller
    auth: dict[str, Any] = {}
    if caller is not None:
        auth = {
            "client_token": hmac(caller.token),
            "accessor": caller.accessor or "",
            "display_name": caller.display_name,
            "policies": list(caller.policies),
            "token_type": "service",
            "remaining_uses": caller.entry.uses_left if caller.entry else 0,
        }
    return {
        "time": now_text(),
        "auth": auth,
        "request": {
            "id": REQUEST_ID.get(),
            "operation": operation,
            # The path as routed; a request the router could not match (a raw newline in
            # it) has none, and is recorded percent-encoded as it arrived.
            "path": ctx.request.match_info.get("tail", ctx.request.rel_url.raw_path),
            "mount_point": ctx.mount,
            "remote_address": ctx.remote,
            "data": hash_values(ctx.params.audit_view(), hmac) or None,
        },
    }


def audit_response_part(
    response: web.StreamResponse, error: str, hmac: Callable[[str], str], error_kind: str = ""
) -> dict[str, Any]:
    """The response half of an entry. ``error`` is hashed like every other value: an error
    message can quote what the caller sent (a template, a parameter), so it is never
    written in the clear; ``error_kind`` (the broker's error class, a fixed name) stays
    readable so refusals can be counted and told apart without the key."""
    payload = response.get(PAYLOAD) or {}
    body: dict[str, Any] = {"status": response.status}
    if payload.get("lease_id"):
        body["secret"] = {"lease_id": payload["lease_id"]}
    if payload.get("data") is not None:
        body["data"] = hash_values(payload["data"], hmac)
    if payload.get("auth"):
        body["auth"] = hash_values(payload["auth"], hmac)
    if "data" not in body and payload and not error and "errors" not in payload:
        # sys/ answers (init, seal status...) carry their fields at the top level.
        body["data"] = hash_values(payload, hmac)
    return {"response": body, "error": hmac(error) if error else "", "error_kind": error_kind}
