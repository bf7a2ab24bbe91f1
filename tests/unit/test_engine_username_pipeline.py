"""Every action and pipeline function of a username template, through the table that
replaced ``_pipeline``'s if-ladder: what each yields, and what each refuses (a 400)."""

from __future__ import annotations

import hashlib
import re

import pytest

from broker.exceptions import InvalidRequest
from broker.server.engines.templates import UsernameTemplate


def render(source: str) -> str:
    return UsernameTemplate(source).render("Display.Name", "role-name")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{.DisplayName}}", "Display.Name"),
        ("{{.RoleName}}", "role-name"),
        ("{{.RoleName | uppercase}}", "ROLE-NAME"),
        ("{{.DisplayName | lowercase}}", "display.name"),
        ("{{.RoleName | truncate 4}}", "role"),
        ('{{.RoleName | replace "-" "_"}}', "role_name"),
        ("{{.RoleName | truncate_sha256 20}}", "role-name"),
        (
            "{{.RoleName | truncate_sha256 8}}",
            hashlib.sha256(b"role-name").hexdigest()[:8],
        ),
        ("{{.RoleName | sha256}}", hashlib.sha256(b"role-name").hexdigest()),
        ("{{.RoleName | uppercase | truncate 2 | lowercase}}", "ro"),
    ],
)
def test_functions(source: str, expected: str) -> None:
    assert render(source) == expected


def test_actions_with_generated_values() -> None:
    assert re.fullmatch(r"[a-z0-9]{7}", render("{{random 7}}").lower())
    assert re.fullmatch(r"\d{10}", render("{{unix_time}}"))
    assert re.fullmatch(r"\d{13}", render("{{unix_time_millis}}"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", render('{{timestamp "2006-01-02"}}'))
    assert re.fullmatch(r"[0-9a-f-]{36}", render("{{uuid}}"))


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{.DisplayName x}}", "unsupported action '.DisplayName x'"),
        ("{{random}}", "unsupported action 'random'"),
        ("{{random x}}", "unsupported action 'random x'"),
        ("{{timestamp}}", "unsupported action 'timestamp'"),
        ("{{uuid 1}}", "unsupported action 'uuid 1'"),
        ("{{nope}}", "unsupported action 'nope'"),
        ("{{ }}", "empty action"),
        ('{{"unclosed}}', "No closing quotation"),
        ("{{.RoleName | }}", "empty pipeline stage"),
        ("{{.RoleName | truncate x}}", "unsupported function 'truncate x'"),
        ("{{.RoleName | replace a}}", "unsupported function 'replace a'"),
        ("{{.RoleName | sha256 1}}", "unsupported function 'sha256 1'"),
        ("{{.RoleName | nope}}", "unsupported function 'nope'"),
        ("{{.RoleName | truncate_sha256 4}}", "truncate_sha256 needs >= 8"),
    ],
)
def test_refusals(source: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        render(source)


@pytest.mark.parametrize("template", ["{{random ²}}", "{{.RoleName | truncate ٣}}"])
def test_non_ascii_digits_are_refused_not_a_crash(template: str) -> None:
    """``"²".isdigit()`` is true but ``int("²")`` fails: such a count must be a 400."""
    with pytest.raises(InvalidRequest):
        UsernameTemplate(template).render("Display.Name", "role-name")
