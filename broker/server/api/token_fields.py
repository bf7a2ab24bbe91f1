"""The ``token_*`` parameters of a login role write, under Vault's names and the deprecated
ones (``policies``, ``ttl``, ``max_ttl``, ``period``, ``num_uses``, ``bound_cidrs``) that
hvac 2.x still sends for Kubernetes and JWT roles. As in Vault's ``tokenutil``, the
``token_`` name wins when both are sent."""

from __future__ import annotations

from typing import Any

from broker.server.api.params import Params


def token_field_changes(p: Params) -> dict[str, Any]:
    """The ``RoleTokens`` fields a write sent (field name -> value); absent ones are left
    out, so an update keeps what is stored."""
    changes: dict[str, Any] = {}

    def pick(field: str, new: Any, old: Any) -> None:
        value = new if new is not None else old
        if value is not None:
            changes[field] = value

    pick("policies", p.strings("token_policies"), p.strings("policies"))
    pick("ttl", p.ttl("token_ttl"), p.ttl("ttl"))
    pick("max_ttl", p.ttl("token_max_ttl"), p.ttl("max_ttl"))
    pick("explicit_max_ttl", p.ttl("token_explicit_max_ttl"), None)
    pick("period", p.ttl("token_period"), p.ttl("period"))
    pick("num_uses", p.integer("token_num_uses"), p.integer("num_uses"))
    pick("bound_cidrs", p.strings("token_bound_cidrs"), p.strings("bound_cidrs"))
    pick("no_default_policy", p.flag("token_no_default_policy"), None)
    token_type = p.text("token_type")
    if token_type:
        changes["token_type"] = token_type
    return changes
