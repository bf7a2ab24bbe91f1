"""<mount>/config/:name: database connections."""

from __future__ import annotations

from aiohttp import web

from broker.exceptions import InvalidRequest
from broker.server.api.context import RequestContext
from broker.server.api.responses import list_response, no_content, vault_response
from broker.server.database.catalog import OPTION_RANGES, ConnectionUpdate
from broker.server.database.endpoints import shown_connection_url

#: Stored with the options but shown at the top level of a read, where Vault puts them.
_TOP_LEVEL_OPTIONS = ("password_policy", "root_rotation_statements")
_OPTION_KEYS = (
    "max_open_connections",
    "max_idle_connections",
    "max_connection_lifetime",
    "connect_timeout",
    "statement_timeout",
)


async def write_connection(ctx: RequestContext) -> web.StreamResponse:
    p = ctx.params
    options: dict[str, object] = {}
    for key in _OPTION_KEYS:
        value = p.raw(key)
        if value is not None:
            if key == "max_connection_lifetime":
                options[key] = p.ttl(key)
                continue
            low, high = OPTION_RANGES[key]
            try:
                number = int(value)
            except (TypeError, ValueError) as exc:
                raise InvalidRequest(f"{key}: expected an integer") from exc
            if isinstance(value, bool) or not low <= number <= high:
                raise InvalidRequest(f"{key}: expected a whole number from {low} to {high}")
            options[key] = number
    expiry_event = p.flag("expiry_event")
    if expiry_event is not None:
        options["expiry_event"] = expiry_event
    event_schema = p.text("expiry_event_schema")
    if event_schema is not None:
        options["expiry_event_schema"] = event_schema
    password_policy = p.text("password_policy")
    if password_policy is not None:
        options["password_policy"] = password_policy
    # Vault's PostgreSQL option: "scram-sha-256" (the broker's default) or "password";
    # the engine checks the value, so a bad one is a 400 before anything is stored.
    password_authentication = p.text("password_authentication")
    if password_authentication is not None:
        options["password_authentication"] = password_authentication
    root_statements = p.statements("root_rotation_statements")
    if root_statements is None:
        root_statements = p.statements("root_credentials_rotate_statements")
    if root_statements is not None:
        options["root_rotation_statements"] = list(root_statements)
    update = ConnectionUpdate(
        plugin_name=p.text("plugin_name"),
        connection_url=p.text("connection_url"),
        username=p.text("username"),
        password=p.text("password"),
        allowed_roles=p.strings("allowed_roles"),
        username_template=p.text("username_template"),
        verify_connection=p.flag("verify_connection"),
        options=options or None,
    )
    # Vault-style warnings: privileges the admin lacks (named with the GRANT that fixes
    # each), then parameters that were ignored.
    warnings = await ctx.services.catalog.write_connection(ctx.mount, ctx.arg("name"), update)
    warnings += p.unused_warning()
    if warnings:
        return vault_response(None, warnings=warnings)
    return no_content()


async def read_connection(ctx: RequestContext) -> web.StreamResponse:
    c = await ctx.services.catalog.read_connection(ctx.mount, ctx.arg("name"))
    data = {
        "plugin_name": c.plugin_name,
        "plugin_version": "",
        "connection_details": {
            "connection_url": shown_connection_url(c),
            "username": c.username,
            **{k: v for k, v in c.options.items() if k not in _TOP_LEVEL_OPTIONS},
        },
        "allowed_roles": list(c.allowed_roles),
        "username_template": c.username_template,
        "verify_connection": c.verify_connection,
        "root_credentials_rotate_statements": list(c.options.get("root_rotation_statements") or []),
        "password_policy": c.options.get("password_policy") or "",
    }
    return vault_response(data)


async def list_connections(ctx: RequestContext) -> web.StreamResponse:
    return list_response(await ctx.services.catalog.list_connections(ctx.mount))


async def delete_connection(ctx: RequestContext) -> web.StreamResponse:
    """Refused while live leases need the connection; ``force=true`` (query or body, a
    broker extension) revokes them first and answers how many it revoked."""
    force = bool(ctx.params.flag("force", False))
    revoked = await ctx.services.catalog.delete_connection(ctx.mount, ctx.arg("name"), force=force)
    if not force:
        return no_content()
    return vault_response({"revoked_leases": revoked})
