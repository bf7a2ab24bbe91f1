"""Vault's TTL syntax: whole seconds, or Go duration strings such as ``1h30m``."""

from __future__ import annotations

import re

from broker.exceptions import InvalidRequest

_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")


def parse_duration(value: object, field: str) -> int:
    """Seconds for ``value``; a 400 naming ``field`` if it is not a duration.

    Accepts ints, digit strings ("3600") and Go-style strings ("1h30m", "90s", "2d").
    Fractions of a second are truncated as Vault does.
    """
    if isinstance(value, bool):
        raise InvalidRequest(f"invalid {field}: expected seconds or a duration like '1h30m'")
    if isinstance(value, int):
        seconds: float = value
    elif isinstance(value, float) and value.is_integer():
        seconds = value
    elif isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit():
            seconds = int(text)
        else:
            pos, seconds = 0, 0.0
            for match in _PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
                pos = match.end()
            if not text or pos != len(text):
                raise InvalidRequest(
                    f"invalid {field} {value!r}: expected seconds or a duration like '1h30m'"
                )
    else:
        raise InvalidRequest(f"invalid {field}: expected seconds or a duration like '1h30m'")
    if seconds < 0:
        raise InvalidRequest(f"invalid {field}: must not be negative")
    if seconds > 10 * 365 * 86400:
        raise InvalidRequest(f"invalid {field}: longer than ten years")
    return int(seconds)
