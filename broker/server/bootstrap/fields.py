"""Fields of the ``[declarative]`` section: each key's conversion from TOML to the value
the domain is written with and compared by (JSON-shaped: lists, not tuples), and its
default. A key the schema does not name is an error, so a typo stops the start instead of
being ignored."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from broker.durations import parse_duration
from broker.exceptions import InvalidRequest


class DeclarativeConfigError(ValueError):
    """The declarative section is malformed; the message names the key, never a secret."""


Convert = Callable[[str, Any], Any]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


class _Optional:
    def __repr__(self) -> str:
        return "OPTIONAL"


#: The key must be given.
REQUIRED: Any = _Required()
#: The key may be left out; then it is neither written nor compared (a role ID the broker
#: generates, say), rather than reset to a default.
OPTIONAL: Any = _Optional()


@dataclass(frozen=True, slots=True)
class Field:
    convert: Convert
    #: The value a key left out stands for: an object declared is declared whole, so a
    #: value set through the API on a key the file leaves out is drift, set back here.
    default: Any = REQUIRED


def text(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise DeclarativeConfigError(f"{where}: expected a string")
    return value


def flag(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise DeclarativeConfigError(f"{where}: expected true or false")
    return value


def count(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DeclarativeConfigError(f"{where}: expected a whole number, 0 or more")
    return value


def duration(where: str, value: Any) -> int:
    """Seconds, from a number of seconds or a duration such as "1h30m" (Vault's TTLs)."""
    try:
        return parse_duration(value, where)
    except InvalidRequest as exc:
        raise DeclarativeConfigError(exc.message) from exc


def signed_duration(where: str, value: Any) -> int:
    """Seconds that may be negative (``-1`` turns a JWT role's leeway off): a number, or a
    duration with an optional leading ``-`` (Vault's ``TypeSignedDurationSecond``)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        return -duration(where, -value)
    if isinstance(value, str) and value.strip().startswith("-"):
        return -duration(where, value.strip()[1:])
    return duration(where, value)


def names(where: str, value: Any) -> list[str]:
    """A list of strings; one string is a list of one."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise DeclarativeConfigError(f"{where}: expected a list of strings")


def statements(where: str, value: Any) -> list[str]:
    """SQL statements: a list, or one string (never split on semicolons or commas)."""
    return [s for s in names(where, value) if s.strip()]


def string_map(where: str, value: Any) -> dict[str, str]:
    """A table of strings; true, false and numbers are written as Vault's API takes them."""
    if not isinstance(value, dict):
        raise DeclarativeConfigError(f"{where}: expected a table")
    converted: dict[str, str] = {}
    for key, item in value.items():
        if isinstance(item, bool):
            converted[key] = "true" if item else "false"
        elif isinstance(item, int | float | str):
            converted[key] = str(item)
        else:
            raise DeclarativeConfigError(f"{where}.{key}: expected a string")
    return converted


def claims(where: str, value: Any) -> dict[str, Any]:
    """A JWT role's ``bound_claims``: each a string, number or boolean, or a list of them
    (any of which may match), kept as JSON takes them."""
    if not isinstance(value, dict):
        raise DeclarativeConfigError(f"{where}: expected a table")
    converted: dict[str, Any] = {}
    for key, item in value.items():
        items = item if isinstance(item, list) else [item]
        if not items or not all(isinstance(v, str | bool | int | float) for v in items):
            raise DeclarativeConfigError(
                f"{where}.{key}: expected a string, number or boolean, or a list of them"
            )
        converted[key] = list(item) if isinstance(item, list) else item
    return converted


def table(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DeclarativeConfigError(f"{where}: expected a table ([{where}])")
    return value


def check_keys(where: str, values: Mapping[str, Any], allowed: Iterable[str]) -> None:
    allowed = set(allowed)
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise DeclarativeConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def convert(
    where: str,
    values: Mapping[str, Any],
    fields: Mapping[str, Field],
    also_allowed: Iterable[str] = (),
) -> dict[str, Any]:
    """``values`` converted by ``fields``, with defaults filled in (OPTIONAL ones left
    out); unknown keys refused, except ``also_allowed`` (nested tables, secrets), which
    the caller reads itself."""
    check_keys(where, values, [*fields, *also_allowed])
    converted: dict[str, Any] = {}
    for key, spec in fields.items():
        if key in values:
            converted[key] = spec.convert(f"{where}.{key}", values[key])
        elif spec.default is REQUIRED:
            raise DeclarativeConfigError(f"{where}: {key} is required")
        elif spec.default is not OPTIONAL:
            converted[key] = copy.deepcopy(spec.default)
    return converted


def plain(value: Any) -> Any:
    """A stored value in the shape the file's values are compared in (lists, dicts)."""
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value
