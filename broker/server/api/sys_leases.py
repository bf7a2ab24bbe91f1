"""sys/leases: lookup, list, renew, revoke, revoke-prefix, revoke-force (and Vault's
legacy aliases sys/renew, sys/revoke, sys/revoke-prefix, sys/revoke-force), plus the
broker's own sys/leases/history.

Lookup and renew answer as Vault does for a lease that is gone (revoked, expired and
swept, never issued): Vault forgets a lease when it revokes it, and clients read its
400 as "this login is over". The rows the broker keeps after revocation are served by
``sys/leases/history/:lease_id``, a path no Vault client calls, with its own policy.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web

from broker.exceptions import InvalidRequest, NotFound
from broker.models import Lease
from broker.server.api.context import RequestContext
from broker.server.api.responses import list_response, no_content, vault_response
from broker.server.database.leases import renewal_refusal, vault_knows


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if moment else None


def _lease_id(ctx: RequestContext) -> str:
    """The id from the URL tail (as the ACL judged it: canonical, nothing to trim) or the
    body (Vault accepts both; the ACL judged only the path then, so trimming is safe)."""
    lease_id = ctx.path_args.get("lease_id") or (ctx.params.text("lease_id") or "").strip("/")
    if not lease_id:
        raise InvalidRequest("lease_id must be specified")
    return lease_id


def _lease_data(lease: Lease) -> dict[str, Any]:
    """Vault's lookup fields, then the broker's own (ignored by Vault clients)."""
    now = dt.datetime.now(dt.UTC)
    live = vault_knows(lease)
    data = {
        "id": lease.lease_id,
        "issue_time": _iso(lease.issued_at),
        "expire_time": _iso(lease.expires_at) if live else None,
        "last_renewal": _iso(lease.last_renewed_at),
        "renewable": renewal_refusal(lease, now) is None,
        "ttl": max(0, int((lease.expires_at - now).total_seconds())) if live else 0,
        # Beyond Vault: where the lease is in its life, and why a revocation is retrying.
        "state": lease.state,
        "revocation_attempts": lease.attempts,
        "last_error": lease.last_error,
        "next_attempt_time": _iso(lease.due_at) if lease.state == "revoking" else None,
        "revoke_time": _iso(lease.revoked_at),
    }
    return data


async def lookup_lease(ctx: RequestContext) -> web.StreamResponse:
    """Vault's lookup: 400 "invalid lease" for a lease Vault would no longer hold."""
    lease = await ctx.services.leases.lookup(_lease_id(ctx))
    return vault_response(_lease_data(lease), top_level=True)


async def lease_history(ctx: RequestContext) -> web.StreamResponse:
    """The broker's record of a lease, revoked or not, until tidied (``lease_retention``).
    The id is in the path so a policy can scope it: ``sys/leases/history/database/*``."""
    lease = await ctx.services.leases.history(_lease_id(ctx))
    if lease is None:
        raise NotFound()
    # The token that asked for it (revoking that token revokes this lease): only here,
    # behind its own policy path; lookup, open to the default policy, never names it.
    return vault_response(
        {**_lease_data(lease), "token_accessor": lease.token_accessor}, top_level=True
    )


async def list_leases(ctx: RequestContext) -> web.StreamResponse:
    prefix = ctx.path_args.get("prefix", "")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return list_response(await ctx.services.leases.list_keys(prefix))


async def renew_lease(ctx: RequestContext) -> web.StreamResponse:
    lease_id = _lease_id(ctx)
    increment = ctx.params.ttl("increment", 0) or 0
    renewed = await ctx.services.leases.renew(lease_id, increment)
    return vault_response(
        None,
        lease_id=renewed.lease_id,
        renewable=True,
        lease_duration=renewed.lease_duration,
        warnings=renewed.warnings,
    )


async def revoke_lease(ctx: RequestContext) -> web.StreamResponse:
    lease_id = _lease_id(ctx)
    sync = ctx.params.flag("sync", True)
    await ctx.services.revocations.revoke(lease_id, sync=bool(sync))
    if not sync:
        ctx.services.sweep_soon()
        return web.Response(status=202)
    return no_content()


def _prefix(ctx: RequestContext) -> str:
    """The prefix exactly as the ACL saw it in the path (nothing trimmed after the check);
    the lease manager takes it as whole segments."""
    prefix = ctx.arg("prefix")
    if not prefix.strip("/ "):
        raise InvalidRequest("a non-empty prefix is required")
    return prefix


async def revoke_prefix(ctx: RequestContext) -> web.StreamResponse:
    sync = ctx.params.flag("sync", True)
    await ctx.services.revocations.revoke_prefix(_prefix(ctx), sync=bool(sync))
    if not sync:
        ctx.services.sweep_soon()
        return web.Response(status=202)
    return no_content()


async def revoke_force(ctx: RequestContext) -> web.StreamResponse:
    await ctx.services.revocations.revoke_force(_prefix(ctx))
    return no_content()


def _check_irrevocable(ctx: RequestContext) -> None:
    if ctx.params.text("type") != "irrevocable":
        raise InvalidRequest("type must be 'irrevocable'")


async def count_failing(ctx: RequestContext) -> web.StreamResponse:
    """Vault's irrevocable leases are ours whose revocation keeps failing: still retried
    (with backoff, forever), counted here so they are never out of sight."""
    _check_irrevocable(ctx)
    counts = await ctx.services.leases.failing_counts()
    return vault_response({"lease_count": sum(counts.values()), "counts": counts}, top_level=True)


async def list_failing(ctx: RequestContext) -> web.StreamResponse:
    _check_irrevocable(ctx)
    text = ctx.params.text("limit", "1000") or "1000"
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 10000:
        raise InvalidRequest("limit must be a whole number from 1 to 10000")
    rows = await ctx.services.leases.list_failing(int(text))
    leases = [
        {
            "lease_id": row["lease_id"],
            "expire_time": _iso(row["expires_at"]),
            "error": row["last_error"],
            "revocation_attempts": row["attempts"],
            "next_attempt_time": _iso(row["due_at"]),
        }
        for row in rows
    ]
    return vault_response({"lease_count": len(leases), "leases": leases}, top_level=True)


async def tidy(ctx: RequestContext) -> web.StreamResponse:
    """Remove finished lease rows past the retention now (a background job also does)."""
    removed = await ctx.services.revocations.tidy()
    return vault_response(
        {"removed": removed},
        warnings=[
            "Tidy operation successfully started. Any information from the operation "
            "will be printed to the broker's server logs."
        ],
        status=202,
    )
