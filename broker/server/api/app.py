"""The aiohttp application: one dispatcher for every ``/v1/`` path and its middlewares."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from aiohttp import web

from broker.server.api.context import SERVICES, RequestContext, Services, presented_token

__all__ = ["SERVICES", "build_app", "dispatch"]
from broker.durations import parse_duration
from broker.exceptions import (
    BrokerError,
    InvalidRequest,
    PermissionDenied,
    Sealed,
    TooManyRequests,
)
from broker.logs import REQUEST_ID
from broker.server.api import console
from broker.server.api.audit_entries import audit_request_entry, audit_response_part
from broker.server.api.forwarding import CLIENT_ADDRESSES, ClientAddresses, client_address
from broker.server.api.params import Params
from broker.server.api.paths import canonical_path, judged_form, needs_token
from broker.server.api.responses import (
    PAYLOAD,
    broker_error_response,
    error_response,
    vault_response,
)
from broker.server.api.routes import TABLES
from broker.server.api.routing import (
    ROUTE_TABLES,
    Handler,
    Operation,
    Route,
    RouteTables,
    match,
    operation_of,
)
from broker.server.api.sys_wrapping import WRAP_TTL_HEADER
from broker.server.auth.tokens import Caller
from broker.server.auth.wrapping import MAX_WRAP_TTL
from broker.server.settings import Settings

log = logging.getLogger(__name__)
#: One line per request; paths hold role names and lease ids, never a secret.
access_log = logging.getLogger("broker.access")
#: Paths that answer while sealed (everything else is a 503 before any lookup).
_SEALED_PATHS = ("sys/init", "sys/seal-status", "sys/unseal")
#: The matched route's template, for the HTTP metrics.
ROUTE_KEY = web.RequestKey("broker.route", str)
#: A caller authenticated only once its route was known (an open-shaped path that routed to
#: a guarded one), handed back to dispatch so its last use still revokes it.
ROUTED_CALLER = web.RequestKey("broker.routed_caller", Caller)
#: Set once ``_audited`` has written the request's entries (see ``audit_refusals``).
AUDITED_KEY = web.RequestKey("broker.audited", bool)


async def _resolve(
    services: Services, tables: RouteTables, path: str
) -> tuple[Route, dict[str, str], str] | None:
    """The route for ``path`` and the mount it lies under ("" for sys/ and auth/token/)."""
    if path.startswith("sys/") or path.startswith("auth/token/"):
        found = match(tables.sys, path)
        return (*found, "") if found else None
    if path.startswith("auth/"):
        resolved = await services.auth_methods.resolve(path[len("auth/") :])
        if resolved is None:
            return None
        mount, type_, rest = resolved
        found = match(tables.auth.get(type_, ()), rest)
        return (*found, mount) if found else None
    mounted = await services.catalog.resolve_mount(path)
    if mounted is None:
        return None
    mount, rest = mounted
    found = match(tables.database, rest)
    return (*found, mount) if found else None


def _route_label(path: str, target: Route, mount: str) -> str:
    """The metrics label: the route's template under a placeholder for the mount."""
    if not mount:
        return target.template
    prefix = "auth/:mount" if path.startswith("auth/") else ":mount"
    return f"{prefix}/{target.template}"


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Parse, authenticate, authorise, audit, call: in that order, so nothing is done for a
    caller the policies refuse and nothing is served that no audit device recorded."""
    services = request.app[SERVICES]
    operation = operation_of(request)
    try:
        remote = client_address(request)  # the proxy's client, if it is a trusted proxy
    except BrokerError:
        # A forwarding header from a peer that may not send one: rate-limited by that
        # peer all the same, so a flood of forged headers cannot become audit writes.
        services.address_limits.take(request.remote or "", "address")
        raise
    services.address_limits.take(remote, "address")
    # The one form of the path that the ACL judges and the handler acts on (paths.py).
    path = canonical_path(request.match_info["tail"], operation is Operation.LIST)
    if services.seal.sealed and not (path == "sys/health" or path.startswith(_SEALED_PATHS)):
        raise Sealed()
    # Authenticate before routing: without a valid token every path but the open ones is
    # the same 403, so no 404 tells a stranger which mounts or roles exist (paths.py).
    caller: Caller | None = None
    token_checked = needs_token(path)
    if token_checked:
        caller = await services.tokens.authenticate(presented_token(request), remote)
        if caller is None:
            raise PermissionDenied()
    # A use-limited token's last use revokes it (and its tree) however the request ends.
    try:
        return await _route_and_call(request, services, operation, remote, path, caller)
    finally:
        last = caller or request.get(ROUTED_CALLER)
        if last is not None and last.spent:
            await services.tokens.after_request(last)


async def _route_and_call(
    request: web.Request,
    services: Services,
    operation: Operation | None,
    remote: str,
    path: str,
    caller: Caller | None,
) -> web.StreamResponse:
    """The rest of ``dispatch``, once the token (if the path's shape needs one) is known:
    route, check the request, authorise, audit, call."""
    token_checked = caller is not None
    found = await _resolve(services, request.app[ROUTE_TABLES], path)
    if found is None:
        await _refuse_unrouted(services, caller, path, operation)
        return error_response(404, [f'no handler for route "{path}". route entry not found.'])
    target, args, mount = found
    prefix = "" if not mount else f"auth/{mount}/" if path.startswith("auth/") else f"{mount}/"
    path, args = judged_form(path, target, args, prefix)
    request[ROUTE_KEY] = _route_label(path, target, mount)
    if services.seal.sealed and not target.sealed_ok:
        raise Sealed()
    handler = target.handlers.get(operation) if operation else None
    if handler is None:
        await _refuse_unrouted(services, caller, path, operation)
        return error_response(405, ["unsupported operation"])
    # Everything about the request is checked before any handler runs: a handler's side
    # effects (a login, a lease) happen only for a request that will get its answer.
    params = await Params.from_request(request)
    wrap_ttl = _wrap_ttl(request.headers.get(WRAP_TTL_HEADER, ""))
    denied = False
    if target.authenticated:
        if not token_checked:  # an open-shaped path that routed to a guarded one
            caller = await services.tokens.authenticate(presented_token(request), remote)
            if caller is not None:
                request[ROUTED_CALLER] = caller  # dispatch revokes it if its last use
        if caller is not None:
            services.token_limits.take(caller.accessor or "root", "token")
            acl = await services.policies.acl(caller.policies)
            denied = target.acl and not acl.allows(path, operation or "", sudo=target.sudo)
        else:
            denied = True
    ctx = RequestContext(request, services, params, args, mount, caller, remote)
    if (
        wrap_ttl
        and not denied
        and (path == "sys/wrapping/wrap" or not path.startswith("sys/wrapping/"))
    ):
        handler = _wrapped(handler, wrap_ttl, path)
    auditing = services.auditor.enabled and not services.seal.sealed
    if not auditing:
        if denied:
            raise PermissionDenied()
        return await handler(ctx)
    return await _audited(ctx, handler, operation or "", denied)


async def _refuse_unrouted(
    services: Services, caller: Caller | None, path: str, operation: Operation | None
) -> None:
    """Before a 404 or 405: a token its policies do not allow on ``path`` gets Vault's 403
    instead, so only a caller who may use a path learns whether anything is there (a
    use-limited token's last use is spent all the same: dispatch revokes it after)."""
    if caller is None:
        return
    acl = await services.policies.acl(caller.policies)
    if not acl.allows(path, operation.value if operation else ""):
        raise PermissionDenied()


def _wrap_ttl(header: str) -> int:
    """The requested wrap TTL in seconds (0: no wrapping), refused with a 400 before any
    handler runs: a bad TTL found after issuing credentials would leave a login nobody
    received."""
    if not header:
        return 0
    ttl = parse_duration(header, "X-Vault-Wrap-TTL")
    if not 1 <= ttl <= MAX_WRAP_TTL:
        raise InvalidRequest(f"X-Vault-Wrap-TTL must be 1s to {MAX_WRAP_TTL}s")
    return ttl


def _wrapped(handler: Handler, ttl: int, path: str) -> Handler:
    """Vault's response wrapping: a successful answer is stored behind a single-use token
    and the client gets only ``wrap_info``."""

    async def wrapping(ctx: RequestContext) -> web.StreamResponse:
        response = await handler(ctx)
        payload = response.get(PAYLOAD)
        if response.status != 200 or payload is None:
            return response
        try:
            info = await ctx.services.wrapper.wrap(payload, ttl, path)
        except BaseException:
            await _undo_unsent(ctx, payload)
            raise
        return vault_response(None, wrap_info=info)

    return wrapping


async def _undo_unsent(ctx: RequestContext, payload: Mapping[str, Any]) -> None:
    """A lease or a token that will not reach the client (its wrapping or its audit entry
    failed) is revoked now, not left alive for its whole TTL."""
    lease_id = payload.get("lease_id")
    auth = payload.get("auth")
    accessor = auth.get("accessor") if isinstance(auth, Mapping) else None
    try:
        if lease_id and isinstance(lease_id, str):
            await ctx.services.revocations.revoke(lease_id)
        if accessor and isinstance(accessor, str):
            await ctx.services.tokens.revoke(accessor)
    except BrokerError:
        log.warning("an answer that was not delivered left a lease or token to expire")


async def _audited(
    ctx: RequestContext, handler: Handler, operation: str, denied: bool
) -> web.StreamResponse:
    services = ctx.services
    ctx.request[AUDITED_KEY] = True
    hmac = services.auditor.hash_value
    entry = audit_request_entry(ctx, operation, hmac)
    await services.auditor.record({**entry, "type": "request"})
    error = kind = ""
    try:
        if denied:
            raise PermissionDenied()
        response = await handler(ctx)
    except BrokerError as exc:
        response = broker_error_response(exc)
        error, kind = "; ".join(exc.errors), type(exc).__name__
    if entry["request"]["path"] == "sys/seal" and response.status == 204:
        # The node sealed itself: its audit devices closed with the keyring, so there is
        # no response entry to write. Vault audits a seal's request only (SealWithRequest)
        # and answers 204; failing here would tell the operator the seal failed.
        return response
    try:
        await services.auditor.record(
            {**entry, "type": "response", **audit_response_part(response, error, hmac, kind)}
        )
    except BaseException:
        payload = response.get(PAYLOAD)
        if response.status == 200 and payload is not None:
            await _undo_unsent(ctx, payload)
        raise
    return response


def loggable_path(request: web.Request) -> str:
    """The request's path for a log line: percent-encoded as it arrived (an encoded
    newline cannot forge a line), with the query string's names but not its values.
    Parameters are read from the query string too, so a client may send a JWT, a token
    or a secret ID there (``auth/jwt/login?jwt=...``); its value must not be logged."""
    raw_query = request.rel_url.raw_query_string
    if not raw_query:
        return request.rel_url.raw_path
    names = [item.partition("=")[0] for item in raw_query.split("&") if item]
    return request.rel_url.raw_path + "?" + "&".join(names)


@web.middleware
async def request_context(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Give the request an id (logs, ``X-Request-Id``, the body's ``request_id``); count,
    time and log it by route template (never the raw path as a label: unbounded). The
    logged path stays percent-encoded, so an encoded newline cannot forge a log line."""
    request_id = str(uuid.uuid4())
    REQUEST_ID.set(request_id)
    started = time.perf_counter()
    response = await handler(request)
    elapsed = time.perf_counter() - started
    response.headers["X-Request-Id"] = request_id
    route_name = request.get(ROUTE_KEY) or "unmatched"
    metrics = request.app[SERVICES].metrics
    metrics.http_requests.labels(route_name, request.method, str(response.status)).inc()
    metrics.http_seconds.labels(route_name).observe(elapsed)
    logged_path = loggable_path(request)
    access_log.info(
        "%s %s %d",
        request.method,
        logged_path,
        response.status,
        extra={
            "method": request.method,
            "path": logged_path,
            "route": route_name,
            "status": response.status,
            "duration_ms": round(elapsed * 1000, 2),
        },
    )
    return response


@web.middleware
async def vault_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure leaves as Vault's ``{"errors": [...]}``; nothing leaks a traceback."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except BrokerError as exc:
        return broker_error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, [exc.reason])
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, loggable_path(request))
        return error_response(500, ["internal error"])


@web.middleware
async def audit_refusals(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Audit the ``/v1/`` requests refused before ``_audited`` ran (no route, no such
    operation, a body that does not parse, NUL, a bad wrap TTL, too large): with a device
    enabled and the node unsealed, every request that reaches the API gets a request and a
    response entry, and if no device can record them the answer is the audit failure.
    Rate-limit refusals are the exception, so a flood cannot become audit writes."""
    kind = ""
    try:
        response = await handler(request)
    except TooManyRequests:
        raise
    except BrokerError as exc:
        if request.get(AUDITED_KEY) or not _auditing(request):
            raise
        response, kind = broker_error_response(exc), type(exc).__name__
    except web.HTTPException as exc:
        if exc.status < 400 or request.get(AUDITED_KEY) or not _auditing(request):
            raise
        response, kind = error_response(exc.status, [exc.reason]), type(exc).__name__
    if response.status < 400 or request.get(AUDITED_KEY) or not _auditing(request):
        return response
    services = request.app[SERVICES]
    errors = (response.get(PAYLOAD) or {}).get("errors") or [response.reason or ""]
    try:
        remote = client_address(request)
    except BrokerError:  # the refusal being audited may be the forwarding check's own
        remote = request.remote or ""
    ctx = RequestContext(request, services, Params({}), {}, "", None, remote)
    hmac = services.auditor.hash_value
    operation = operation_of(request) or request.method.lower()
    entry = audit_request_entry(ctx, operation, hmac)
    await services.auditor.record({**entry, "type": "request"})
    part = audit_response_part(response, "; ".join(map(str, errors)), hmac, kind or "refused")
    await services.auditor.record({**entry, "type": "response", **part})
    return response


def _auditing(request: web.Request) -> bool:
    services = request.app[SERVICES]
    return request.path.startswith("/v1/") and services.auditor.enabled and not services.seal.sealed


def build_app(
    settings: Settings,
    services_ctx: Callable[[web.Application], AbstractAsyncContextManager[None]],
) -> web.Application:
    """The aiohttp application: the dispatcher on ``/v1/``, the console, and the
    middlewares; ``services_ctx`` (``broker.server.assembly``) builds and tears down what
    the handlers call, so the API itself never constructs storage or engines."""
    app = web.Application(
        middlewares=[request_context, vault_errors, audit_refusals],
        client_max_size=settings.max_request_bytes,
    )
    app[ROUTE_TABLES] = TABLES
    app[CLIENT_ADDRESSES] = ClientAddresses.from_settings(settings)
    app.router.add_route("*", "/v1/{tail:.*}", dispatch)
    console.add_routes(app)
    app.cleanup_ctx.append(services_ctx)
    return app
