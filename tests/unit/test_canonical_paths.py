"""Property: for every route and every spelling of a path to it, the path the ACL judges is
exactly the one the handler acts on.

Each route's template is filled with sample names, then spelled in random ways (repeated
slashes, a leading or trailing slash, case changes of the names). Whatever the spelling,
the canonical path must reach the same route, the handler's arguments must rebuild
exactly the judged path, and a policy that denies the sample's canonical path must deny
every spelling that reaches the same target. Before paths were canonicalised, ``sys/mounts//tmpdb``,
``sys/mounts/tmpdb/`` and ``sys/policy/Narrow`` broke this.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.exceptions import InvalidRequest
from broker.server.api.paths import CASE_INSENSITIVE_PREFIXES, canonical_path, judged_form
from broker.server.api.routes import APPROLE_ROUTES, DATABASE_ROUTES, SYS_ROUTES
from broker.server.api.routing import Operation, Route, match
from broker.server.auth.acl import ACL, parse_policy

#: Every route with the prefix it is served under (mounts as the dev server names them).
ROUTES: list[tuple[str, tuple[Route, ...], Route]] = [
    *(("", SYS_ROUTES, r) for r in SYS_ROUTES),
    *(("database/", DATABASE_ROUTES, r) for r in DATABASE_ROUTES),
    *(("auth/approle/", APPROLE_ROUTES, r) for r in APPROLE_ROUTES),
]
_SAMPLES = {"[^/]+": "Brkt-Name.1", ".+": "database/creds/Brkt-Ro/abc"}


def _sample(route: Route) -> str:
    """The route's template with each variable part given a sample value."""
    pattern = route.pattern.pattern.removesuffix(r"\Z")
    pattern = re.sub(r"\(\?:/\(\?P<\w+>([^)]*)\)\)\?", r"/(?P<x>\1)", pattern)
    pattern = pattern.replace("/?", "")
    return re.sub(r"\(\?P<\w+>([^)]*)\)", lambda m: _SAMPLES[m.group(1)], pattern)


def _judge(
    prefix: str, table: tuple[Route, ...], raw: str, operation: Operation
) -> tuple[str, Route, dict[str, str]] | None:
    """What dispatch does: canonical path, the route (relative to its mount), judged form."""
    path = canonical_path(raw, operation is Operation.LIST)
    if not path.startswith(prefix):
        return None
    found = match(table, path[len(prefix) :])
    if found is None:
        return None
    target, args = found
    judged, args = judged_form(path, target, args)
    return judged, target, args


@st.composite
def spellings(draw: st.DrawFn, path: str, case_insensitive: bool) -> str:
    segments = path.split("/")
    out = "/" * draw(st.integers(0, 2))
    for index, segment in enumerate(segments):
        if case_insensitive and "Brkt" in segment and draw(st.booleans()):
            segment = draw(st.sampled_from([segment.upper(), segment.lower(), segment.title()]))
        out += segment
        if index < len(segments) - 1:
            out += "/" * draw(st.integers(1, 3))
    return out + "/" * draw(st.integers(0, 2))


@pytest.mark.parametrize(
    ("prefix", "table", "route"),
    ROUTES,
    ids=[prefix + route.template for prefix, _, route in ROUTES],
)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_acl_and_handler_agree_on_every_spelling(
    prefix: str, table: tuple[Route, ...], route: Route, data: st.DataObject
) -> None:
    sample = prefix + _sample(route)
    for operation in route.handlers:
        expected = _judge(prefix, table, sample, operation)
        assert expected is not None, sample
        judged, target, args = expected
        if target is not route:
            continue  # an earlier route serves this spelling (e.g. sys/policy/ lists)
        deny = ACL(
            parse_policy(
                f'path "*" {{ capabilities = ["sudo", "create", "update", '
                f'"read", "list", "delete"] }}\n'
                f'path "{judged}" {{ capabilities = ["deny"] }}'
            )
        )
        assert not deny.allows(judged, operation.value)
        raw = data.draw(spellings(sample, route.case_insensitive))
        got = _judge(prefix, table, raw, operation)
        assert got is not None, raw
        variant_path, variant_route, variant_args = got
        assert variant_route is route, (raw, variant_path)
        # The handler's arguments rebuild exactly the path the ACL judged...
        rebuilt = route.template
        for name, value in variant_args.items():
            rebuilt = rebuilt.replace(f":{name}", value)
        assert variant_path.rstrip("/") == (prefix + rebuilt).rstrip("/")
        for value in variant_args.values():
            assert not value.startswith("/") and "//" not in value, value
            assert operation is Operation.LIST or not value.endswith("/"), value
        if route.case_insensitive:
            assert all(value == value.lower() for value in variant_args.values())
        # ...so whatever reaches the denied target is denied.
        if variant_args == args:
            assert variant_path == judged
            assert not deny.allows(variant_path, operation.value)


@pytest.mark.parametrize(
    "raw",
    [
        "sys/mounts/../policy/x",
        "sys/./mounts/x",
        "database/creds/..",
        "sys/mounts/a\x00b",
        "sys/mounts/a\nb",
        "sys/mounts/a\x7fb",
    ],
)
def test_paths_no_handler_could_mean_are_refused(raw: str) -> None:
    with pytest.raises(InvalidRequest):
        canonical_path(raw, listing=False)


def test_list_paths_keep_one_trailing_slash_others_none() -> None:
    assert canonical_path("sys//policies/acl", listing=True) == "sys/policies/acl/"
    assert canonical_path("/sys/policies/acl//", listing=True) == "sys/policies/acl/"
    assert canonical_path("sys/mounts/tmpdb/", listing=False) == "sys/mounts/tmpdb"
    assert canonical_path("", listing=True) == ""


def test_case_insensitive_routes_and_prefixes_agree() -> None:
    """sys/capabilities lower-cases by prefix, dispatch by route: they must be the same."""
    flagged = {prefix + route.template for prefix, _, route in ROUTES if route.case_insensitive}
    assert flagged
    for template in flagged:
        assert template.startswith(CASE_INSENSITIVE_PREFIXES), template
    for wanted in CASE_INSENSITIVE_PREFIXES:
        assert any(t.startswith(wanted) for t in flagged), wanted
