from __future__ import annotations

import re

import pytest

from broker.exceptions import InvalidRequest
from broker.server.engines.templates import (
    UsernameTemplate,
    check_statements,
    default_username,
    expand_statements,
    render,
    split_statements,
)


def test_split_respects_quotes_dollar_quotes_and_comments() -> None:
    text = (
        "CREATE ROLE \"a;b\" PASSWORD 'x;y'; -- a comment; with semicolon\n"
        "DO $$ BEGIN PERFORM 1; END $$; DO $tag$ ; $tag$;  ;"
    )
    assert split_statements(text) == [
        "CREATE ROLE \"a;b\" PASSWORD 'x;y'",
        "DO $$ BEGIN PERFORM 1; END $$",
        "DO $tag$ ; $tag$",
    ]


def test_expand_and_render() -> None:
    statements = expand_statements(["CREATE USER '{{name}}'; GRANT x TO '{{ username }}'"])
    assert [render(s, {"name": "u", "username": "u"}) for s in statements] == [
        "CREATE USER 'u'",
        "GRANT x TO 'u'",
    ]


def test_check_statements_refuses_variables_the_kind_cannot_have() -> None:
    check_statements("creation_statements", ["{{name}} {{password}} {{expiration}}"])
    with pytest.raises(InvalidRequest, match="password"):
        check_statements("revocation_statements", ["DROP ROLE {{password}}"])
    with pytest.raises(InvalidRequest, match="nme"):
        check_statements("creation_statements", ["CREATE ROLE {{nme}}"])


@pytest.mark.parametrize("limit", [16, 32, 63])
def test_default_username_fits_and_keeps_random_and_time(limit: int) -> None:
    long = "a-very-long-display-name-that-goes-on"
    names = {default_username(long, "an-equally-long-role-name-here", limit) for _ in range(200)}
    assert len(names) == 200  # never truncated into the random part
    for name in names:
        assert len(name) <= limit
        assert re.fullmatch(r"[a-z0-9_]+", name), name  # needs no quoting anywhere
        parts = name.split("_")
        assert parts[0] == "v"
        if limit >= 32:  # Vault's shape: ..._<random>_<unix time>
            assert parts[-1].isdigit() and len(parts[-1]) == 10
            assert len(parts[-2]) >= 8
        else:  # mysql-legacy: v_<role>_<random>
            assert len(parts[-1]) >= 8


def test_default_username_keeps_short_names_whole() -> None:
    name = default_username("root", "readonly", 63)
    assert name.startswith("v_root_readonly_")


def test_username_template_subset() -> None:
    template = UsernameTemplate(
        "{{.RoleName | uppercase}}-{{.DisplayName | truncate 3}}-{{random 6}}-{{unix_time}}"
    )
    rendered = template.render("developer", "app")
    assert re.fullmatch(r"APP-dev-[a-z0-9]{6}-\d{10}", rendered)
    assert UsernameTemplate('{{.RoleName | replace "-" "_"}}').render("d", "a-b") == "a_b"
    with pytest.raises(InvalidRequest, match="unsupported"):
        UsernameTemplate('{{printf "%s" .RoleName}}')
    with pytest.raises(InvalidRequest, match="letters"):
        UsernameTemplate("bad'name{{.RoleName}}")
