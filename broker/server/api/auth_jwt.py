"""auth/<jwt or oidc mount>/*: config, roles and login (auth/jwt_auth.py does the work).

Parameters are read the way Vault's framework reads them: lists as JSON arrays or
comma-separated strings, maps as JSON objects or JSON text, leeways as seconds or
durations that may be negative (-1 disables a leeway).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from broker.durations import parse_duration
from broker.exceptions import InvalidRequest
from broker.server.api.auth_token import auth_block
from broker.server.api.context import RequestContext
from broker.server.api.params import Params
from broker.server.api.responses import list_response, no_content, vault_response
from broker.server.api.token_fields import token_field_changes
from broker.server.auth.jwt_auth import JwtConfig

#: Config parameters of Vault's that the broker refuses unless empty: each would change
#: which tokens verify or what a login gets, so ignoring one silently is not an option.
_UNSUPPORTED_CONFIG = ("provider_config", "jwks_pairs", "unsupported_critical_cert_extensions")


def _text(p: Params, name: str) -> str:
    return (p.text(name) or "").strip()


def _map(p: Params, name: str) -> dict[str, Any] | None:
    """A JSON object, or JSON text of one (how the vault CLI sends ``name=@file``)."""
    value = p.raw(name)
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise InvalidRequest(f"{name}: expected a JSON object") from exc
    if not isinstance(value, dict):
        raise InvalidRequest(f"{name}: expected a JSON object")
    return value


def _string_pairs(p: Params, name: str) -> dict[str, str] | None:
    """Vault's ``TypeKVPairs``: a map of strings, its JSON text, or ``key=value`` items."""
    value = p.raw(name)
    if isinstance(value, list) or (isinstance(value, str) and "=" in value and "{" not in value):
        items = value if isinstance(value, list) else value.split(",")
        pairs: dict[str, str] = {}
        for item in items:
            key, sep, val = str(item).partition("=")
            if not sep or not key.strip():
                raise InvalidRequest(f"{name}: expected key=value pairs")
            pairs[key.strip()] = val.strip()
        return pairs
    mapping = _map(p, name)
    if mapping is not None and not all(isinstance(v, str) for v in mapping.values()):
        raise InvalidRequest(f"{name}: expected a map of strings")
    return mapping


def _signed_seconds(p: Params, name: str) -> int | None:
    """Vault's ``TypeSignedDurationSecond``: seconds or a duration, negative allowed."""
    value = p.raw(name)
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        return -parse_duration(-value, name)
    if isinstance(value, str) and value.strip().startswith("-"):
        return -parse_duration(value.strip()[1:], name)
    return parse_duration(value, name)


def _strings(p: Params, name: str) -> tuple[str, ...]:
    return p.strings(name) or ()


async def write_config(ctx: RequestContext) -> web.StreamResponse:
    p = ctx.params
    for name in _UNSUPPORTED_CONFIG:
        value = p.raw(name)
        if value not in (None, "", [], {}):
            raise InvalidRequest(f"{name} is not supported by the broker")
    namespace_in_state = p.flag("namespace_in_state")
    config = JwtConfig(
        oidc_discovery_url=_text(p, "oidc_discovery_url"),
        oidc_discovery_ca_pem=p.text("oidc_discovery_ca_pem") or "",
        oidc_client_id=_text(p, "oidc_client_id"),
        oidc_client_secret=p.text("oidc_client_secret") or "",
        oidc_response_mode=_text(p, "oidc_response_mode"),
        oidc_response_types=_strings(p, "oidc_response_types"),
        jwks_url=_text(p, "jwks_url"),
        jwks_ca_pem=p.text("jwks_ca_pem") or "",
        jwt_validation_pubkeys=_strings(p, "jwt_validation_pubkeys"),
        jwt_supported_algs=_strings(p, "jwt_supported_algs"),
        bound_issuer=_text(p, "bound_issuer"),
        default_role=_text(p, "default_role"),
        namespace_in_state=True if namespace_in_state is None else namespace_in_state,
    )
    await ctx.services.jwt.write_config(
        ctx.mount, config, keep_namespace=namespace_in_state is None
    )
    warnings = p.unused_warning()
    return vault_response(None, warnings=warnings) if warnings else no_content()


async def read_config(ctx: RequestContext) -> web.StreamResponse:
    config = await ctx.services.jwt.read_config(ctx.mount)
    return vault_response(config.describe())


async def write_role(ctx: RequestContext) -> web.StreamResponse:
    p = ctx.params
    p.raw("name")  # hvac repeats the path's name in the body
    changes: dict[str, Any] = {
        "role_type": p.text("role_type"),
        "user_claim": p.text("user_claim"),
        "user_claim_json_pointer": p.flag("user_claim_json_pointer"),
        "bound_audiences": p.strings("bound_audiences"),
        "bound_subject": p.text("bound_subject"),
        "bound_claims_type": p.text("bound_claims_type"),
        "bound_claims": _map(p, "bound_claims"),
        "claim_mappings": _string_pairs(p, "claim_mappings"),
        "groups_claim": p.text("groups_claim"),
        "clock_skew_leeway": _signed_seconds(p, "clock_skew_leeway"),
        "expiration_leeway": _signed_seconds(p, "expiration_leeway"),
        "not_before_leeway": _signed_seconds(p, "not_before_leeway"),
        "oidc_scopes": p.strings("oidc_scopes"),
        "allowed_redirect_uris": p.strings("allowed_redirect_uris"),
        "callback_mode": p.text("callback_mode"),
        "poll_interval": p.integer("poll_interval"),
        "max_age": p.ttl("max_age"),
        "verbose_oidc_logging": p.flag("verbose_oidc_logging"),
    }
    warnings = await ctx.services.jwt.write_role(
        ctx.mount,
        ctx.arg("name"),
        {k: v for k, v in changes.items() if v is not None},
        token_field_changes(p),
        ctx.require_caller(),
    )
    warnings += p.unused_warning()
    return vault_response(None, warnings=warnings) if warnings else no_content()


async def read_role(ctx: RequestContext) -> web.StreamResponse:
    role = await ctx.services.jwt.read_role(ctx.mount, ctx.arg("name"))
    return vault_response(role.describe())


async def list_roles(ctx: RequestContext) -> web.StreamResponse:
    return list_response(await ctx.services.jwt.list_roles(ctx.mount))


async def delete_role(ctx: RequestContext) -> web.StreamResponse:
    await ctx.services.jwt.delete_role(ctx.mount, ctx.arg("name"))
    return no_content()


async def login(ctx: RequestContext) -> web.StreamResponse:
    p = ctx.params
    token, entry = await ctx.services.jwt.login(
        ctx.mount, p.text("role") or "", p.text("jwt") or "", ctx.remote
    )
    return vault_response(None, auth=auth_block(token, entry))
