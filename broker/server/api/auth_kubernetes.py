"""auth/<kubernetes mount>/*: config, roles and login (Vault's vault-plugin-auth-kubernetes
paths, with the parameter forms hvac 2.x sends)."""

from __future__ import annotations

from aiohttp import web

from broker.exceptions import InvalidRequest
from broker.server.api.auth_token import auth_block
from broker.server.api.context import RequestContext
from broker.server.api.responses import list_response, no_content, vault_response
from broker.server.api.token_fields import token_field_changes
from broker.server.auth.kubernetes import KubernetesConfig, RoleUpdate


async def write_config(ctx: RequestContext) -> web.StreamResponse:
    """A whole new configuration: fields left out take their defaults, as in Vault."""
    p = ctx.params
    if p.flag("use_annotations_as_alias_metadata"):
        raise InvalidRequest(
            "use_annotations_as_alias_metadata is not supported by the broker "
            "(it has no identity store to put alias metadata in)"
        )
    config = KubernetesConfig(
        host=p.text("kubernetes_host") or "",
        ca_cert=p.text("kubernetes_ca_cert") or "",
        token_reviewer_jwt=(p.text("token_reviewer_jwt") or "").strip(),
        pem_keys=p.strings("pem_keys") or (),
        issuer=p.text("issuer") or "",
        disable_iss_validation=bool(p.flag("disable_iss_validation", True)),
        disable_local_ca_jwt=bool(p.flag("disable_local_ca_jwt", False)),
    )
    await ctx.services.kubernetes.write_config(ctx.mount, config)
    warnings = p.unused_warning()
    return vault_response(None, warnings=warnings) if warnings else no_content()


async def read_config(ctx: RequestContext) -> web.StreamResponse:
    config = await ctx.services.kubernetes.read_config(ctx.mount)
    return vault_response(config.describe())


async def write_role(ctx: RequestContext) -> web.StreamResponse:
    p = ctx.params
    update = RoleUpdate(
        names=p.strings("bound_service_account_names"),
        namespaces=p.strings("bound_service_account_namespaces"),
        namespace_selector=p.text("bound_service_account_namespace_selector"),
        audience=p.text("audience"),
        alias_name_source=p.text("alias_name_source"),
        token_changes=token_field_changes(p),
    )
    await ctx.services.kubernetes.write_role(
        ctx.mount, ctx.arg("name"), update, ctx.require_caller()
    )
    warnings = p.unused_warning()
    return vault_response(None, warnings=warnings) if warnings else no_content()


async def read_role(ctx: RequestContext) -> web.StreamResponse:
    role = await ctx.services.kubernetes.read_role(ctx.mount, ctx.arg("name"))
    return vault_response(role.describe())


async def list_roles(ctx: RequestContext) -> web.StreamResponse:
    return list_response(await ctx.services.kubernetes.list_roles(ctx.mount))


async def delete_role(ctx: RequestContext) -> web.StreamResponse:
    await ctx.services.kubernetes.delete_role(ctx.mount, ctx.arg("name"))
    return no_content()


async def login(ctx: RequestContext) -> web.StreamResponse:
    p = ctx.params
    token, entry = await ctx.services.kubernetes.login(
        ctx.mount, p.text("role") or "", p.text("jwt") or "", ctx.remote
    )
    return vault_response(None, auth=auth_block(token, entry))
