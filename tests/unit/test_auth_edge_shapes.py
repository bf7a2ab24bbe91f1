"""The open paths are told by shape before routing (paths.needs_token): every route that
needs no token must have such a shape, or it would answer 403 to everyone."""

from __future__ import annotations

import re

from broker.server.api.paths import needs_token
from broker.server.api.routes import APPROLE_ROUTES, SYS_ROUTES


def test_every_unauthenticated_route_is_open_by_shape() -> None:
    for prefix, routes in (("", SYS_ROUTES), ("auth/some/mount/", APPROLE_ROUTES)):
        for route in routes:
            path = prefix + re.sub(r":\w+", "x", route.template)
            assert needs_token(path) == route.authenticated, path


def test_shapes_that_need_a_token() -> None:
    assert needs_token("database/roles/x")
    assert needs_token("auth/token/login")  # the token method has no login
    assert needs_token("sys/health/")  # a LIST of it is not the health check
    assert needs_token("auth/approle/login/x")
    assert not needs_token("auth/approle/login")
