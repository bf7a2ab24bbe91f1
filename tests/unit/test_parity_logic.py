"""Pure logic of the parity work: password policies, Go time layouts, rotation times."""

from __future__ import annotations

import datetime as dt

import pytest

from broker.exceptions import InvalidRequest
from broker.models import StaticRole
from broker.server.database.password_policies import parse_password_policy
from broker.server.database.rotation import next_rotation
from broker.server.engines.templates import go_time_format

POLICY = """
length = 12
rule "charset" {
  charset = "ab"
  min-chars = 4
}
rule "charset" {
  charset = "01"
  min-chars = 4
}
"""


def test_every_rule_is_kept_and_met() -> None:
    policy = parse_password_policy(POLICY)
    assert [r.charset for r in policy.rules] == ["ab", "01"]  # pyhcl alone keeps one
    for _ in range(200):
        password = policy.generate()
        assert len(password) == 12 and set(password) <= set("ab01")
        assert sum(c in "ab" for c in password) >= 4 and sum(c in "01" for c in password) >= 4


@pytest.mark.parametrize(
    "text",
    [
        'length = 8\nrule "charset" {\n  charset = "a\\\\b"\n}',
        'length = 8\nrule "other" {\n  x = 1\n}',
        'length = "8"\nrule "charset" {\n  charset = "ab"\n}',
        'length = 200\nrule "charset" {\n  charset = "ab"\n}',
        'rule "charset" {\n  charset = "ab"\n}',
    ],
)
def test_policies_vault_would_refuse(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_password_policy(text)


def test_go_time_layouts() -> None:
    moment = dt.datetime(2026, 1, 2, 15, 4, 5, tzinfo=dt.UTC)
    assert go_time_format("2006-01-02T15:04:05Z07:00", moment) == "2026-01-02T15:04:05Z"
    assert go_time_format("20060102%", moment) == "20260102%"


def test_next_rotation_by_period_and_by_schedule() -> None:
    now = dt.datetime(2026, 11, 29, 10, 30, tzinfo=dt.UTC)
    base = StaticRole("m", "r", "c", "u", 3600, "", 0, (), "", None, None, now, 0, None)
    assert next_rotation(base, now) == now + dt.timedelta(hours=1)
    nightly = StaticRole("m", "r", "c", "u", 0, "0 3 * * *", 3600, (), "", None, None, now, 0, None)
    assert next_rotation(nightly, now) == dt.datetime(2026, 11, 30, 3, 0, tzinfo=dt.UTC)
