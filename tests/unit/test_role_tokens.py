"""The token fields of login roles (Kubernetes, JWT/OIDC): Vault's names and the deprecated
ones hvac 2.x sends, and the checks that keep a role writer from handing out more than it
holds."""

from __future__ import annotations

import pytest

from broker.exceptions import InvalidRequest, PermissionDenied
from broker.server.api.params import Params
from broker.server.api.token_fields import token_field_changes
from broker.server.auth.role_tokens import RoleTokens
from broker.server.auth.tokens import Caller

ROOT = Caller(("root",), "root", None, "t")
APP_ADMIN = Caller(("app", "default"), "x", None, "t")


def test_deprecated_names_are_read_and_the_new_ones_win() -> None:
    sent = {
        "policies": "a,b",
        "ttl": "1h",
        "max_ttl": 7200,
        "period": "30m",
        "num_uses": "3",
        "bound_cidrs": ["10.0.0.0/8"],
    }
    assert token_field_changes(Params(dict(sent))) == {
        "policies": ("a", "b"),
        "ttl": 3600,
        "max_ttl": 7200,
        "period": 1800,
        "num_uses": 3,
        "bound_cidrs": ("10.0.0.0/8",),
    }
    both = {**sent, "token_policies": ["c"], "token_ttl": "5m", "token_type": "service"}
    changes = token_field_changes(Params(both))
    assert changes["policies"] == ("c",) and changes["ttl"] == 300
    assert changes["token_type"] == "service"
    assert token_field_changes(Params({})) == {}


@pytest.mark.parametrize(
    ("field", "value"),
    [("token_num_uses", "many"), ("token_ttl", "soon"), ("token_no_default_policy", "maybe")],
)
def test_malformed_fields_are_a_400(field: str, value: str) -> None:
    with pytest.raises(InvalidRequest):
        token_field_changes(Params({field: value}))


def test_checks() -> None:
    ok = RoleTokens().changed({"policies": ("App",), "ttl": 60, "max_ttl": 120}).checked(ROOT)
    assert ok.policies == ("app",)
    with pytest.raises(InvalidRequest, match="root"):
        RoleTokens(policies=("root",)).checked(ROOT)
    with pytest.raises(PermissionDenied):
        RoleTokens(policies=("admin",)).checked(APP_ADMIN)  # more than the writer holds
    assert RoleTokens(policies=("app",)).checked(APP_ADMIN).policies == ("app",)
    for bad in (
        RoleTokens(ttl=-1),
        RoleTokens(ttl=300, max_ttl=60),
        RoleTokens(bound_cidrs=("not-a-cidr",)),
        RoleTokens(token_type="batch"),
        RoleTokens(token_type="nonsense"),
    ):
        with pytest.raises(InvalidRequest):
            bad.checked(ROOT)


def test_round_trip_and_request() -> None:
    tokens = RoleTokens(
        policies=("app",), ttl=60, max_ttl=600, explicit_max_ttl=300, bound_cidrs=("10.0.0.0/8",)
    )
    assert RoleTokens.from_json(tokens.to_json()) == tokens
    described = tokens.describe()
    assert described["token_policies"] == described["policies"] == ["app"]
    assert described["token_ttl"] == described["ttl"] == 60
    request = tokens.request("kubernetes-prod-app", {"role": "app"}, "auth/kubernetes/login")
    assert request.explicit_max_ttl == 300  # the tighter of max_ttl and explicit_max_ttl
    assert request.no_parent and request.ttl == 60 and request.meta == {"role": "app"}
    periodic = tokens.changed({"period": 120}).request("x", {}, "auth/jwt/login")
    assert periodic.period == 120 and periodic.explicit_max_ttl == 300  # max_ttl does not cap
    assert RoleTokens(period=120, max_ttl=600).request("x", {}, "p").explicit_max_ttl == 0
    with pytest.raises(ValueError, match="unknown"):
        tokens.changed({"nonsense": 1})
