"""The one canonical form of a request path: what the ACL judges and what handlers act on.

An ACL decision is only as good as its agreement with the handler: if the policy check
sees ``sys/mounts//tmpdb`` and the handler, after ``strip("/")``, disables ``tmpdb``, a
deny on ``sys/mounts/tmpdb`` protects nothing. So the path is put in canonical form once,
before routing and before the ACL, and no handler normalises it again:

- repeated slashes collapse and a leading slash goes (``sys//mounts`` is ``sys/mounts``);
- a trailing slash is kept only on LIST, where one is added if missing (Vault's rule for
  list requests); every other operation loses it, so ``sys/mounts/tmpdb/`` is
  ``sys/mounts/tmpdb``;
- ``.`` and ``..`` segments (after percent-decoding) and control characters are refused:
  they have no meaning in Vault's paths and only serve to confuse a matcher;
- segments Vault treats as case-insensitive (policy names, the role names of the
  Kubernetes and JWT/OIDC methods) are lower-cased by the route (``Route.case_insensitive``)
  before the ACL sees the path.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from broker.exceptions import InvalidRequest

if TYPE_CHECKING:
    from broker.server.api.routing import Route

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Where Vault's names are case-insensitive (policy names); the routes under these set
#: ``case_insensitive`` (a unit test keeps the two in step).
CASE_INSENSITIVE_PREFIXES = ("sys/policy/", "sys/policies/acl/")


def canonical_path(raw: str, listing: bool) -> str:
    """``raw`` (the percent-decoded path after ``/v1/``) in canonical form; 400 for a
    path no handler could mean."""
    if _CONTROL.search(raw):
        raise InvalidRequest("invalid request path: control characters are not allowed")
    segments = [segment for segment in raw.split("/") if segment]
    if any(segment in (".", "..") for segment in segments):
        raise InvalidRequest("invalid request path: '.' and '..' segments are not allowed")
    path = "/".join(segments)
    if listing and path:
        path += "/"
    return path


#: The paths that need no token (Vault's unauthenticated paths), known by their shape alone.
OPEN_PATHS = frozenset(
    {
        "sys/health",
        "sys/init",
        "sys/seal-status",
        "sys/unseal",
        "sys/wrapping/unwrap",
        "sys/wrapping/lookup",
        "sys/wrapping/rewrap",
        "sys/internal/specs/openapi",
    }
)
_LOGIN = re.compile(r"auth/(?!token/)[^/]+(?:/[^/]+)*/login")


def needs_token(path: str) -> bool:
    """Whether ``path`` (canonical) can only be served to a valid token. Decided by shape,
    before any route or mount is resolved, so a caller without a token learns nothing of
    what exists (every such path is the same 403) and costs no mount lookup; only an auth
    method's login (``auth/<mount>/login``) is resolved without one."""
    return path not in OPEN_PATHS and not _LOGIN.fullmatch(path)


def judged_form(
    path: str, target: Route, args: dict[str, str], mount_prefix: str = ""
) -> tuple[str, dict[str, str]]:
    """The path the ACL judges and the arguments the handler gets, from one canonical path
    and the route it matched: lower-cased together where the route's names are
    case-insensitive, so ``sys/policy/Narrow`` is judged as the ``narrow`` it writes and
    ``auth/jwt/role/Admin`` as the ``admin`` role it rewrites. Only the part after
    ``mount_prefix`` (``auth/<mount>/``, ``<mount>/``) is lower-cased: mount paths are
    case-sensitive, and the ACL must see the mount the handler acts on as it is."""
    if not target.case_insensitive:
        return path, args
    if not path.startswith(mount_prefix):  # the dispatcher resolved the mount from path
        raise ValueError(f"{path!r} is not under {mount_prefix!r}")
    judged = mount_prefix + path[len(mount_prefix) :].lower()
    return judged, {name: value.lower() for name, value in args.items()}


def capability_forms(raw: str) -> tuple[str, str]:
    """The two forms ``sys/capabilities`` must judge for ``raw``: the one a read, write or
    delete of it is judged in, and the one a LIST is (with its trailing slash), each
    lower-cased where its names are case-insensitive. Answering for ``raw`` as written
    would claim capabilities that enforcement, judging the canonical form, then refuses."""
    plain = canonical_path(raw, listing=False)
    listing = canonical_path(raw, listing=True)
    if plain.startswith(CASE_INSENSITIVE_PREFIXES):
        plain, listing = plain.lower(), listing.lower()
    return plain, listing
