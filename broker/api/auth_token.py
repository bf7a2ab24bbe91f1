"""auth/token/lookup-self: what hvac's ``is_authenticated()`` and ``vault token lookup`` call.

Until token auth lands the root token is the only token, so this describes it.
"""

from __future__ import annotations

import hashlib

from aiohttp import web

from broker.api.context import RequestContext
from broker.api.responses import vault_response


async def lookup_self(ctx: RequestContext) -> web.StreamResponse:
    accessor = hashlib.sha256(b"accessor:" + ctx.token.encode()).hexdigest()[:24]
    data = {
        "accessor": accessor,
        "creation_time": 0,
        "creation_ttl": 0,
        "display_name": ctx.display_name,
        "entity_id": "",
        "expire_time": None,
        "explicit_max_ttl": 0,
        "id": ctx.token,
        "meta": None,
        "num_uses": 0,
        "orphan": True,
        "path": "auth/token/root",
        "policies": ["root"],
        "renewable": False,
        "ttl": 0,
        "type": "service",
    }
    return vault_response(data)
