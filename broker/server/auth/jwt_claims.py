"""The claim checks of the JWT/OIDC auth method, as Vault's plugin makes them
(``vault-plugin-auth-jwt`` claims.go, and the time rules of ``hashicorp/cap``'s validator).

Pure functions over a token's claims, once its signature is verified: finding a claim by
name or JSON pointer, the registered claims (``iss``, ``sub``, ``aud``, ``exp``/``nbf``/
``iat`` with leeways), ``bound_claims`` as exact values or globs, and the user, metadata
and groups claims a login turns into a token. Errors never quote a claim's value: a token
is its holder's credential and error texts reach logs and clients.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Vault's defaults: ``expiration_leeway`` and ``not_before_leeway`` (150 s) only derive a
#: missing ``exp`` or ``nbf``; ``clock_skew_leeway`` (60 s) widens every time check. A
#: stored 0 means the default, a negative value no leeway at all.
DEFAULT_LEEWAY = 150
DEFAULT_CLOCK_SKEW = 60


class ClaimError(ValueError):
    """A claim check failed; the message is Vault's, without the claim's value."""


def get_claim(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by name, or by JSON pointer (RFC 6901) when ``name`` starts with '/'
    (``/nested/claim``, ``/groups/0``), as Vault's ``getClaim``. None when absent."""
    if not name.startswith("/"):
        return claims.get(name)
    value: Any = claims
    for raw in name[1:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(value, Mapping):
            if part not in value:
                return None
            value = value[part]
        elif isinstance(value, list):
            # ASCII digits only: ``str.isdigit`` also takes "²", which ``int`` refuses.
            if not (part.isascii() and part.isdigit()) or int(part) >= len(value):
                return None
            value = value[int(part)]
        else:
            return None
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | bool) or _is_number(value)


def normalize_list(value: Any) -> list[Any] | None:
    """A list as it is, a single string, boolean or number as a one-item list; None for
    anything else (Vault's ``normalizeList``: providers send one group as a string)."""
    if isinstance(value, list):
        return value
    if _is_scalar(value):
        return [value]
    return None


def stringify(value: Any) -> str | None:
    """Vault's ``stringifyMetadataValue``: strings as they are, booleans as
    ``true``/``false``, numbers truncated to an integer; None for lists and objects."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value))
    return None


def glob_match(pattern: str, subject: str) -> bool:
    """``ryanuber/go-glob``, the matcher behind Vault's ``bound_claims_type=glob``: '*'
    matches any run of characters (none included); nothing else is special."""
    if pattern == "*":
        return True
    parts = pattern.split("*")
    if len(parts) == 1:
        return subject == pattern
    if not subject.startswith(parts[0]) or not subject.endswith(parts[-1]):
        return False
    position = len(parts[0])
    end = len(subject) - len(parts[-1])
    for middle in parts[1:-1]:
        found = subject.find(middle, position, end)
        if found < 0:
            return False
        position = found + len(middle)
    return position <= end


def _equal(expected: Any, actual: Any) -> bool:
    """Exact matching without Python's loose equalities (``True == 1``, ``1 == 1.0`` is
    fine, ``"1" == 1`` is not a match): same kind, same value."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and expected is actual
    if _is_number(expected) and _is_number(actual):
        return bool(expected == actual)
    return isinstance(expected, str) and isinstance(actual, str) and expected == actual


def check_bound_claims_values(bound_claims: Mapping[str, Any], glob: bool) -> None:
    """A role write's ``bound_claims``: each value a string, boolean or number, or a list
    of them (any of which may match); only strings when they are globs."""
    for name, expected in bound_claims.items():
        values = normalize_list(expected)
        if values is None or not values or not all(_is_scalar(v) for v in values):
            raise ClaimError(
                f'bound claim "{name}": expected a string, number or boolean, or a list'
            )
        if glob and not all(isinstance(v, str) for v in values):
            raise ClaimError(f'bound claim "{name}": glob values must be strings')


def validate_bound_claims(
    bound_claims: Mapping[str, Any], claims: Mapping[str, Any], glob: bool
) -> None:
    """Every bound claim present and matching one of its values (lists mean any of);
    Vault's ``validateBoundClaims``."""
    for name, expected in bound_claims.items():
        actual = get_claim(claims, name)
        if actual is None:
            raise ClaimError(f'claim "{name}" is missing')
        actual_values = normalize_list(actual)
        if actual_values is None:
            raise ClaimError(f'claim "{name}": received claim is not a string or list')
        expected_values = normalize_list(expected) or []
        if not any(
            (glob_match(e, a) if isinstance(a, str) else False) if glob else _equal(e, a)
            for e in expected_values
            for a in actual_values
        ):
            raise ClaimError(f'claim "{name}" does not match any associated bound claim values')


def audiences(claims: Mapping[str, Any]) -> list[str]:
    """The ``aud`` claim as a list (a single string is one audience)."""
    aud = claims.get("aud")
    if aud is None:
        return []
    if isinstance(aud, str):
        return [aud] if aud else []
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return list(aud)
    raise ClaimError("invalid audience (aud) claim: expected a string or a list of strings")


#: go-jose reads a NumericDate into an int64: anything beyond it does not parse there.
_MAX_NUMERIC_DATE = 2**63 - 1


def _numeric_date(claims: Mapping[str, Any], name: str) -> int:
    """A NumericDate claim in whole seconds; 0 when absent (go-jose reads them so).
    Checked without converting to float: ``math.isfinite(10**400)`` raises."""
    value = claims.get(name)
    if value is None:
        return 0
    if isinstance(value, float) and not math.isfinite(value):
        raise ClaimError(f"invalid {name} claim: expected a number")
    if not _is_number(value) or abs(value) > _MAX_NUMERIC_DATE:
        raise ClaimError(f"invalid {name} claim: expected a number")
    return int(value)


def _leeway(configured: int, default: int) -> int:
    """Vault's leeway convention: 0 means the default, negative means none."""
    if configured < 0:
        return 0
    return configured or default


@dataclass(frozen=True, slots=True)
class Expected:
    """What the registered claims must say (``hashicorp/cap`` ``jwt.Expected``): empty
    fields are not checked."""

    issuer: str = ""
    subject: str = ""
    audiences: tuple[str, ...] = ()
    clock_skew_leeway: int = 0
    expiration_leeway: int = 0
    not_before_leeway: int = 0


def validate_registered(claims: Mapping[str, Any], expected: Expected, now: float) -> None:
    """``iss``, ``sub``, ``aud``, then the times, in cap's order and with its messages.

    At least one of ``iat``, ``nbf``, ``exp`` is required. A missing ``exp`` becomes the
    later of ``iat``/``nbf`` plus the expiration leeway; a missing ``nbf`` becomes
    ``iat``, else ``exp`` minus the not-before leeway; the clock skew leeway then widens
    all three checks."""
    for name in ("iss", "sub"):
        if claims.get(name) is not None and not isinstance(claims[name], str):
            raise ClaimError(f"invalid {name} claim: expected a string")
    if expected.issuer and claims.get("iss") != expected.issuer:
        raise ClaimError("invalid issuer (iss) claim")
    if expected.subject and claims.get("sub") != expected.subject:
        raise ClaimError("invalid subject (sub) claim")
    aud = audiences(claims)
    if expected.audiences and not set(expected.audiences) & set(aud):
        raise ClaimError(
            "invalid audience (aud) claim: audience claim does not match any expected audience"
        )
    iat, nbf, exp = (_numeric_date(claims, n) for n in ("iat", "nbf", "exp"))
    if not (iat or nbf or exp):
        raise ClaimError(
            "no issued at (iat), not before (nbf), or expiration time (exp) claims in token"
        )
    if not exp:
        exp = max(iat, nbf) + _leeway(expected.expiration_leeway, DEFAULT_LEEWAY)
    if not nbf:
        nbf = iat or exp - _leeway(expected.not_before_leeway, DEFAULT_LEEWAY)
    skew = _leeway(expected.clock_skew_leeway, DEFAULT_CLOCK_SKEW)
    if now + skew < nbf:
        raise ClaimError("invalid not before (nbf) claim: token not yet valid")
    if now - skew > exp:
        raise ClaimError("invalid expiration time (exp) claim: token is expired")
    if iat and now + skew < iat:
        raise ClaimError("invalid issued at (iat) claim: token issued in the future")


def user_name(claims: Mapping[str, Any], user_claim: str, json_pointer: bool) -> str:
    """The alias name: the ``user_claim`` as a string (a whole number is taken as its
    decimal digits; booleans, fractions, lists and objects are refused)."""
    value = get_claim(claims, user_claim) if json_pointer else claims.get(user_claim)
    if value is None:
        raise ClaimError(f'claim "{user_claim}" not found in token')
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ClaimError(f'claim "{user_claim}" could not be converted to string')
    if not value:
        raise ClaimError(f'claim "{user_claim}" is empty')
    return value


def mapped_metadata(claims: Mapping[str, Any], mappings: Mapping[str, str]) -> dict[str, str]:
    """``claim_mappings``: each claim present copied, as a string, to its metadata key."""
    metadata: dict[str, str] = {}
    for source, target in mappings.items():
        value = get_claim(claims, source)
        if value is None:
            continue
        text = stringify(value)
        if text is None:
            raise ClaimError(f"error converting claim '{source}' to string")
        metadata[target] = text
    return metadata


def group_names(claims: Mapping[str, Any], groups_claim: str) -> list[str]:
    """The ``groups_claim``: a list of strings, or one string; empty names are dropped."""
    value = get_claim(claims, groups_claim)
    if value is None:
        raise ClaimError(f'failed to fetch groups: "{groups_claim}" claim not found in token')
    values = normalize_list(value)
    if values is None:
        raise ClaimError(f'"{groups_claim}" claim could not be converted to string list')
    if not all(isinstance(v, str) for v in values):
        raise ClaimError(f'a value in the "{groups_claim}" claim could not be parsed as string')
    return [v for v in values if v]
