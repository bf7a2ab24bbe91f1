"""sys/internal/ui/mounts: which mount holds a path, as Vault answers it.

consul-template, Vault Agent's templates and the vault CLI's ``kv`` commands call
``GET sys/internal/ui/mounts/<path>`` before reading ``<path>``, to learn the mount's type
and options. Vault serves it outside the ACL (no policy names it, the default one
included) and decides itself: a token sees a mount if its policies grant anything on the
mount or beneath it (Vault's ``hasMountAccess``), and every other case, an unknown mount
included, is the same 403, so the path cannot be used to list what is mounted. The list
form (no path) answers the mounts the token can see, secrets and auth apart.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from broker.exceptions import NotFound, PermissionDenied
from broker.server.api import sys_auth, sys_mounts
from broker.server.api.context import RequestContext
from broker.server.api.responses import vault_response
from broker.server.auth.acl import ACL

#: Vault's built-in mounts the broker serves: ``sys/`` (a secrets-table entry of type
#: ``system``) and the token method.
_SYS = {
    "type": "system",
    "description": "system endpoints used for control, policy and debugging",
    "accessor": "system_builtin",
    "config": {"default_lease_ttl": 0, "max_lease_ttl": 0, "force_no_cache": False},
    "options": None,
    "local": False,
    "seal_wrap": False,
    "external_entropy_access": False,
    "plugin_version": "",
    "running_plugin_version": "",
    "uuid": "system_builtin",
}
_TOKEN = ("token", "auth_token_builtin", "token based credentials")


def _auth_info(type_: str, accessor: str, description: str) -> dict[str, Any]:
    return {
        **sys_auth._describe(type_, accessor, description),
        "external_entropy_access": False,
        "plugin_version": "",
        "running_plugin_version": "",
        "uuid": accessor,
    }


async def _acl(ctx: RequestContext) -> ACL:
    return await ctx.services.policies.acl(ctx.require_caller().policies)


async def list_mounts(ctx: RequestContext) -> web.StreamResponse:
    """``{secret: {path/: info}, auth: {path/: info}}``: the mounts the token reaches."""
    acl = await _acl(ctx)
    secret: dict[str, Any] = {}
    for mount in await ctx.services.catalog.list_mounts():
        if acl.reaches_under(mount.path + "/"):
            secret[mount.path + "/"] = sys_mounts._describe(mount)
    if acl.reaches_under("sys/"):
        secret["sys/"] = dict(_SYS)
    auth: dict[str, Any] = {}
    if acl.reaches_under("auth/token/"):
        auth["token/"] = _auth_info(*_TOKEN)
    for method in await ctx.services.auth_methods.list():
        if acl.reaches_under(f"auth/{method['path']}/"):
            auth[method["path"] + "/"] = _auth_info(
                method["type"], method["accessor"], method["description"]
            )
    return vault_response({"secret": secret, "auth": auth})


async def read_mount(ctx: RequestContext) -> web.StreamResponse:
    """The mount holding ``<path>``, with ``path`` as Vault gives it: the mount's own path
    in its table (``database/``; ``approle/`` for ``auth/approle/...``). The ACL is asked
    about the mount's full path (``auth/approle/``)."""
    wanted = ctx.arg("path").strip("/") + "/"
    refused = PermissionDenied(
        "preflight capability check returned 403, please ensure client's policies grant "
        f'access to path "{wanted}"'
    )
    found = await _holding(ctx, wanted)
    if found is None:
        raise refused  # unknown: the same answer, so mounts cannot be probed for
    full_path, table_path, info = found
    if not (await _acl(ctx)).reaches_under(full_path):
        raise refused
    return vault_response({**info, "path": table_path})


async def _holding(ctx: RequestContext, path: str) -> tuple[str, str, dict[str, Any]] | None:
    """(full mount path, path in its table, description) of the mount holding ``path``."""
    if path.startswith("sys/"):
        return "sys/", "sys/", dict(_SYS)
    if path.startswith("auth/"):
        rest = path[len("auth/") :]
        if rest.startswith("token/"):
            return "auth/token/", "token/", _auth_info(*_TOKEN)
        resolved = await ctx.services.auth_methods.resolve(rest.rstrip("/"))
        if resolved is None:
            return None
        mount = resolved[0]
        for method in await ctx.services.auth_methods.list():
            if method["path"] == mount:
                info = _auth_info(method["type"], method["accessor"], method["description"])
                return f"auth/{mount}/", f"{mount}/", info
        return None  # disabled in between
    mounted = await ctx.services.catalog.resolve_mount(path.rstrip("/"))
    if mounted is None:
        return None
    try:
        engine = await ctx.services.catalog.get_mount(mounted[0])
    except NotFound:
        return None  # disabled in between
    return f"{engine.path}/", f"{engine.path}/", sys_mounts._describe(engine)
