"""The audit log's chain: entries as JSON lines, each naming the hash of the line before.

Pure functions, shared by the devices that write entries and by ``broker audit verify``,
which checks a file on the host: the first edited or removed line breaks the chain.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64
#: Keys whose values stay readable in the audit log: identifiers, never secrets.
_PLAIN_KEYS = frozenset(
    {"lease_id", "request_id", "accessor", "policies", "token_policies", "lease_duration"}
)


def line_hash(line: str) -> str:
    return hashlib.sha256(line.encode()).hexdigest()


def render_line(entry: Mapping[str, Any], prev_hash: str) -> str:
    """One JSON line. ``json.dumps`` escapes every control character and, with
    ``ensure_ascii``, every non-ASCII one (U+2028 too): no value, however a client spells
    it, can end the line or its string early."""
    return json.dumps({**entry, "prev_hash": prev_hash}, separators=(",", ":"), default=str)


def hash_values(value: Any, hmac: Callable[[str], str], key: str = "") -> Any:
    """Every string leaf replaced by its HMAC, but for the identifier keys above."""
    if isinstance(value, Mapping):
        return {k: hash_values(v, hmac, k) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [hash_values(v, hmac, key) for v in value]
    if isinstance(value, str) and value and key not in _PLAIN_KEYS:
        return hmac(value)
    return value


@dataclass(frozen=True, slots=True)
class ChainBreak:
    line_number: int
    reason: str


def verify_lines(lines: Iterator[str]) -> tuple[int, ChainBreak | None]:
    """(entries checked, first break or None). The first entry's ``prev_hash`` is taken as
    given: a file may continue a chain begun in a rotated-away file."""
    previous: str | None = None
    count = 0
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\n")
        if not line:
            continue
        try:
            entry = json.loads(line)
            prev = entry["prev_hash"]
        except (ValueError, KeyError, TypeError):
            return count, ChainBreak(number, "not an audit entry (unparseable or no prev_hash)")
        if previous is not None and prev != line_hash(previous):
            return count, ChainBreak(
                number,
                "prev_hash does not match the line before: that line or this one "
                "was edited, or lines between them were removed",
            )
        previous = line
        count += 1
    return count, None
