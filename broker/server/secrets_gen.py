"""Random identifiers and passwords, all from ``secrets``."""

from __future__ import annotations

import secrets
import string

BASE62 = string.ascii_letters + string.digits
# Lowercase letters and digits: safe unquoted in PostgreSQL and MySQL identifiers.
IDENTIFIER_ALPHABET = string.ascii_lowercase + string.digits
PASSWORD_LENGTH = 32


def random_string(length: int, alphabet: str = BASE62) -> str:
    """``length`` characters drawn uniformly from ``alphabet`` (len <= 256).

    Rejection sampling over ``secrets.token_bytes``: bytes at or above the largest multiple
    of the alphabet's size are dropped, so there is no modulo bias. One system call per
    string instead of one ``secrets.choice`` per character (it showed in profiles).
    """
    size = len(alphabet)
    limit = 256 - 256 % size
    out: list[str] = []
    while len(out) < length:
        for byte in secrets.token_bytes(length + length // 2 + 4):
            if byte < limit:
                out.append(alphabet[byte % size])
                if len(out) == length:
                    break
    return "".join(out)


def generate_password(length: int = PASSWORD_LENGTH) -> str:
    """A password with no quote, backslash or shell metacharacter, so statement templates
    can embed it in a string literal without escaping. 32 base62 characters ~ 190 bits."""
    while True:
        candidate = random_string(length)
        # Some password policies on targets demand every class; 32 chars nearly always have them.
        if (
            any(c.islower() for c in candidate)
            and any(c.isupper() for c in candidate)
            and any(c.isdigit() for c in candidate)
        ):
            return candidate


def lease_suffix() -> str:
    """Vault's lease id suffix: 24 base62 characters."""
    return random_string(24)


def token() -> str:
    return "hvs." + random_string(24)
