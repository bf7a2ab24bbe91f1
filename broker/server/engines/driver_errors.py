"""Driver errors of statements, described by their structure, never by their text.

A database's message about a statement quotes the statement: MySQL's syntax errors give
the text ``near '... IDENTIFIED BY 'the password' ...'``, PostgreSQL's messages and
``DETAIL`` lines name the values involved (``Key (x)=(the value) already exists``, an
``invalid input syntax for type integer: "the password"``). Removing the known secrets
from such text (``redaction.redact``) misses what it does not know (a verifier, a value
cut short or re-encoded), so what a template's statement failed with is reported by what
the driver says about it in fields: the error class, the SQLSTATE or MySQL error number,
and which statement of how many. The server's log, which the operator reads anyway, has
the full message.
"""

from __future__ import annotations

import asyncpg
import pymysql

_STATEMENT_NOTE = "broker-statement:"

#: Names of MySQL/MariaDB errors that statement templates commonly meet.
_MYSQL_NAMES = {
    1044: "ER_DBACCESS_DENIED_ERROR",
    1045: "ER_ACCESS_DENIED_ERROR",
    1049: "ER_BAD_DB_ERROR",
    1064: "ER_PARSE_ERROR",
    1133: "ER_PASSWORD_NO_MATCH",
    1142: "ER_TABLEACCESS_DENIED_ERROR",
    1146: "ER_NO_SUCH_TABLE",
    1227: "ER_SPECIFIC_ACCESS_DENIED_ERROR",
    1396: "ER_CANNOT_USER",
    1410: "ER_CANT_CREATE_USER_WITH_GRANT",
    1470: "ER_WRONG_STRING_LENGTH",
    1819: "ER_NOT_VALID_PASSWORD",
}


def mark_statement(exc: BaseException, index: int, total: int) -> None:
    """Note on ``exc`` that statement ``index`` (1-based) of ``total`` raised it."""
    exc.add_note(f"{_STATEMENT_NOTE}{index}/{total}")


def _statement(exc: BaseException) -> str:
    for note in getattr(exc, "__notes__", ()):
        if isinstance(note, str) and note.startswith(_STATEMENT_NOTE):
            index, _, total = note[len(_STATEMENT_NOTE) :].partition("/")
            return f" in statement {index} of {total}"
    return ""


def describe(exc: BaseException) -> str:
    """``exc`` without its message: ``PostgreSQL error 42601 (PostgresSyntaxError)``,
    ``MySQL error 1064 (ER_PARSE_ERROR)``, with ``in statement 2 of 3`` when known."""
    where = _statement(exc)
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or "?"
        return f"PostgreSQL error {state} ({type(exc).__name__}){where}"
    if isinstance(exc, pymysql.err.MySQLError):
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        if code is None:
            return f"MySQL error ({type(exc).__name__}){where}"
        return f"MySQL error {code} ({_MYSQL_NAMES.get(code, type(exc).__name__)}){where}"
    return f"{type(exc).__name__}{where}"
