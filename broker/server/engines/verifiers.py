"""The forms a database server stores a password in, computed by the broker so that the
statements it sends carry those instead of the password.

A statement's text reaches places a password must not: the server's log
(``log_statement = 'ddl'``, MariaDB's general log), ``pg_stat_activity``,
``pg_stat_statements``, the binary log and its replicas. PostgreSQL (10 and later) and
MySQL's ``mysql_native_password`` take a password already in their stored form, so the
broker computes that form here and the server never sees the password itself; a login
with the password works exactly as before.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from collections.abc import Mapping
from typing import Any, Final, Literal

from broker.exceptions import InvalidRequest

#: PostgreSQL's default (``scram_iterations``, fixed before PostgreSQL 16) and Vault's.
SCRAM_ITERATIONS: Final = 4096
#: PostgreSQL's ``SCRAM_DEFAULT_SALT_LEN``.
SCRAM_SALT_BYTES: Final = 16

PasswordAuthentication = Literal["password", "scram-sha-256"]
#: Vault's PostgreSQL connection option; the broker's default is the verifier (Vault's
#: is ``password``), which every supported PostgreSQL (10 and later) accepts.
PASSWORD_AUTHENTICATION_OPTION: Final = "password_authentication"
PASSWORD_AUTHENTICATION_VALUES: Final[tuple[PasswordAuthentication, ...]] = (
    "scram-sha-256",
    "password",
)


def password_authentication(options: Mapping[str, Any]) -> PasswordAuthentication:
    """The connection's ``password_authentication``: what ``{{password}}`` renders as in
    PostgreSQL statements. Empty or absent is the broker's default, ``scram-sha-256``."""
    value = options.get(PASSWORD_AUTHENTICATION_OPTION) or "scram-sha-256"
    for known in PASSWORD_AUTHENTICATION_VALUES:
        if value == known:
            return known
    raise InvalidRequest(
        f"{PASSWORD_AUTHENTICATION_OPTION}: expected one of "
        f"{', '.join(PASSWORD_AUTHENTICATION_VALUES)}"
    )


# -- SASLprep (RFC 4013), as PostgreSQL's pg_saslprep applies it ---------------------------


def _prohibited(char: str) -> bool:
    """RFC 4013 section 2.3 (tables C.1.2 to C.9) and unassigned code points (A.1), which
    a stored string may not contain."""
    return (
        stringprep.in_table_c12(char)
        or stringprep.in_table_c21_c22(char)
        or stringprep.in_table_c3(char)
        or stringprep.in_table_c4(char)
        or stringprep.in_table_c5(char)
        or stringprep.in_table_c6(char)
        or stringprep.in_table_c7(char)
        or stringprep.in_table_c8(char)
        or stringprep.in_table_c9(char)
        or stringprep.in_table_a1(char)
    )


def saslprep(password: str) -> str:
    """What PostgreSQL derives the SCRAM keys from (``pg_saslprep`` in
    ``src/common/saslprep.c``): an ASCII password as it is; otherwise non-ASCII spaces
    mapped to a space, then "commonly mapped to nothing" characters dropped, NFKC (of Unicode
    3.2, which RFC 3454's tables are from), and, when the result is empty, holds a
    prohibited or unassigned character, or breaks the bidirectional rule, the password
    as it was: PostgreSQL then uses the raw bytes too, and so do clients (libpq, asyncpg),
    so the login still matches."""
    if password.isascii():
        return password
    # Spaces first, as PostgreSQL does: U+200B is in both tables (a space in Unicode 3.2),
    # and PostgreSQL maps it to a space, not to nothing.
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c
        for c in password
        if stringprep.in_table_c12(c) or not stringprep.in_table_b1(c)
    )
    if not mapped:
        return password
    normalised = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    if any(_prohibited(c) for c in normalised):
        return password
    if any(stringprep.in_table_d1(c) for c in normalised) and (
        any(stringprep.in_table_d2(c) for c in normalised)
        or not stringprep.in_table_d1(normalised[0])
        or not stringprep.in_table_d1(normalised[-1])
    ):
        return password
    return normalised


# -- the verifiers -------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def scram_sha256_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> str:
    """PostgreSQL's stored SCRAM secret (RFC 5802, RFC 7677):
    ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``, base64 with padding, a
    fresh 16-byte random salt unless one is given. ``CREATE ROLE ... PASSWORD`` and
    ``ALTER ROLE ... PASSWORD`` store a string of this shape as it is, without hashing it
    again. The characters are base64's, ``$`` and ``:``: nothing that can end a quoted
    literal."""
    if salt is None:
        salt = secrets.token_bytes(SCRAM_SALT_BYTES)
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode("utf-8"), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def mysql_native_hash(password: str) -> str:
    """``mysql_native_password``'s stored form, what MariaDB's ``PASSWORD()`` returns:
    ``*`` and the upper-case hex of SHA1(SHA1(password)), over the password's UTF-8 bytes
    (the server hashes the literal in the connection's character set, utf8mb4 for the
    broker). For ``IDENTIFIED BY PASSWORD '...'`` (MariaDB, MySQL 5.7) or ``IDENTIFIED
    WITH mysql_native_password AS '...'`` (MySQL 5.7 and 8.0). Unsalted, like the server's
    own: a generated password of 190 bits is what keeps it from being reversed."""
    inner = hashlib.sha1(password.encode("utf-8")).digest()
    return "*" + hashlib.sha1(inner).hexdigest().upper()
