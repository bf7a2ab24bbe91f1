"""Removes secret values from text before it reaches an error, a log line or a table."""

from __future__ import annotations

from collections.abc import Iterable

REDACTED = "[redacted]"
#: Databases quote statements cut short ("... IDENTIFIED BY '9rKorqbvJQv7rU1D..."), so any
#: run of this many characters of a secret counts as the secret.
FRAGMENT = 8


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret, and every fragment of one at least ``FRAGMENT`` long."""
    hidden = [False] * len(text)
    for secret in secrets:
        if not secret or len(secret) < 4:
            continue
        size = min(FRAGMENT, len(secret))
        grams = {secret[i : i + size] for i in range(len(secret) - size + 1)}
        for start in range(len(text) - size + 1):
            if text[start : start + size] in grams:
                hidden[start : start + size] = [True] * size
    if not any(hidden):
        return text
    out: list[str] = []
    for index, char in enumerate(text):
        if not hidden[index]:
            out.append(char)
        elif index == 0 or not hidden[index - 1]:
            out.append(REDACTED)
    return "".join(out)
