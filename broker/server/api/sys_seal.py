"""sys/init, sys/seal-status, sys/unseal, sys/seal, sys/rotate, sys/key-status."""

from __future__ import annotations

from aiohttp import web

from broker.exceptions import InvalidRequest
from broker.server.api.context import RequestContext
from broker.server.api.responses import json_response, no_content, vault_response
from broker.server.api.sys_wrapping import WRAP_TTL_HEADER


async def read_init(ctx: RequestContext) -> web.StreamResponse:
    status = await ctx.services.seal.status()
    return json_response({"initialized": status["initialized"]})


def _count(ctx: RequestContext, name: str, default: int) -> int:
    value = ctx.params.raw(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not (str(value).isascii() and str(value).isdigit()):
        raise InvalidRequest(f"{name}: expected a positive integer")
    return int(value)


async def initialize(ctx: RequestContext) -> web.StreamResponse:
    """Vault's body: secret_shares and secret_threshold (recovery_* with an auto-unseal).

    A wrapped answer is refused before anything is initialised: the unseal keys and the
    root token exist only in this answer, and wrapping needs the keyring that init has
    just made but that stays sealed, so the wrap would fail after the commit and the keys
    be lost with it."""
    if ctx.request.headers.get(WRAP_TTL_HEADER):
        raise InvalidRequest("sys/init cannot be response-wrapped: the keys would be lost")
    shares = _count(ctx, "secret_shares", 0) or _count(ctx, "recovery_shares", 5)
    threshold = _count(ctx, "secret_threshold", 0) or _count(ctx, "recovery_threshold", 3)
    result = await ctx.services.seal.initialize(shares, threshold)
    body = result.as_vault()
    if ctx.services.seal.auto_unseal:
        body["recovery_keys"] = body["keys"]
        body["recovery_keys_base64"] = body["keys_base64"]
    return json_response(body)


async def read_seal_status(ctx: RequestContext) -> web.StreamResponse:
    return json_response(await ctx.services.seal.status())


async def unseal(ctx: RequestContext) -> web.StreamResponse:
    reset = bool(ctx.params.flag("reset", False))
    key = ctx.params.text("key") or ""
    if not reset and not key:
        raise InvalidRequest("'key' must be specified in request body as JSON, or 'reset' set")
    await ctx.services.seal.submit_share(key, reset=reset)
    return json_response(await ctx.services.seal.status())


async def seal(ctx: RequestContext) -> web.StreamResponse:
    ctx.services.seal.seal()
    return no_content()


async def rotate(ctx: RequestContext) -> web.StreamResponse:
    await ctx.services.seal.rotate()
    return no_content()


async def key_status(ctx: RequestContext) -> web.StreamResponse:
    keyring = ctx.services.seal.keyring
    return vault_response(
        {
            "term": keyring.active.term,
            "install_time": keyring.active.installed_at,
            "encryptions": None,
            "terms": [k.term for k in keyring.keys],
        },
        top_level=True,
    )
