"""The auth methods' stored records (configs, roles, their token fields) as JSON and back.

They are frozen dataclasses holding tuples and mappings, stored as sealed JSON
(``AuthStore.put_auth_entry``): one conversion for all of them, so a field added to a
record is stored and read back without a per-class copy of the same loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any


def record_json(record: Any) -> dict[str, Any]:
    """Every field of ``record``: tuples as lists, mappings as dicts, nested records as
    their own JSON."""
    body: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = record_json(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Mapping):
            value = dict(value)
        body[f.name] = value
    return body


def record_values(
    cls: type[Any],
    body: Mapping[str, Any],
    nested: Mapping[str, Callable[[Any], Any]] | None = None,
) -> dict[str, Any]:
    """The constructor arguments of ``cls`` found in ``body``: unknown keys dropped (a
    record written by a newer version), lists as tuples, ``nested`` fields rebuilt by
    their own reader."""
    known = {f.name for f in dataclasses.fields(cls)}
    readers = nested or {}
    values: dict[str, Any] = {}
    for key, value in body.items():
        if key not in known:
            continue
        if key in readers:
            value = readers[key](value)
        elif isinstance(value, list):
            value = tuple(value)
        values[key] = value
    return values
