"""Statement and username templates: the one place they are checked and rendered.

Statements are checked when a role is written (unknown ``{{variables}}`` are a 400 then,
not a failure at issuance); usernames are built so they can never collide, even when
the database's length limit forces shortening.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import re
import shlex
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

from broker.exceptions import InvalidRequest
from broker.server.secrets_gen import IDENTIFIER_ALPHABET, random_string

#: ``{{password_hash}}`` (a broker extension) is the password in the server's stored form
#: (``verifiers``): MySQL's ``mysql_native_password`` hash, PostgreSQL's SCRAM verifier.
STATEMENT_VARIABLES: Mapping[str, frozenset[str]] = {
    "creation_statements": frozenset(
        {"name", "username", "password", "password_hash", "expiration"}
    ),
    "revocation_statements": frozenset({"name", "username"}),
    "rollback_statements": frozenset(
        {"name", "username", "password", "password_hash", "expiration"}
    ),
    "renew_statements": frozenset({"name", "username", "expiration"}),
    "rotation_statements": frozenset({"name", "username", "password", "password_hash"}),
    "root_rotation_statements": frozenset({"name", "username", "password", "password_hash"}),
}
#: The statement lists of a dynamic role.
ROLE_STATEMENT_KINDS = (
    "creation_statements",
    "revocation_statements",
    "rollback_statements",
    "renew_statements",
)
_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_.]+)\s*\}\}")


def check_statements(kind: str, statements: Iterable[str]) -> None:
    """Refuse variables the statement kind cannot be given (e.g. a password on revoke)."""
    allowed = STATEMENT_VARIABLES[kind]
    for statement in statements:
        for match in _VARIABLE.finditer(statement):
            if match.group(1) not in allowed:
                raise InvalidRequest(
                    f"{kind}: unknown variable {{{{{match.group(1)}}}}}; "
                    f"allowed: {', '.join(sorted(allowed))}"
                )


def render(statement: str, values: Mapping[str, str]) -> str:
    """Fill ``{{variables}}`` as they are. Not for SQL: statements go through
    ``render_sql``, which refuses values that could end the quotes around them."""
    return _VARIABLE.sub(lambda m: values.get(m.group(1), m.group(0)), statement)


# -- values that reach SQL ----------------------------------------------------------------

#: Characters that can end a quoted identifier or string literal in PostgreSQL or MySQL
#: (``\`` where backslash escapes are on, as in MySQL's default SQL mode).
_SQL_QUOTES = frozenset("'\"`\\")


def _sql_unsafe(value: str) -> str | None:
    """Why ``value`` cannot stand inside quotes in a statement, or None if it can."""
    if any(c in _SQL_QUOTES for c in value):
        return "quotes (' \" `) or backslashes"
    if not value.isprintable():  # NUL, newlines, other control and invisible characters
        return "control or non-printable characters"
    return None


def check_account_name(field: str, name: str) -> None:
    """Refuse an existing account's name (a static role's ``username``, a connection's
    admin) that could not be written safely between quotes in a statement.

    Names may hold what real accounts use ('-', '.', '@', spaces inside, non-ASCII
    letters), but not quote characters, backslashes or control characters: statements
    written by a role's author put ``{{name}}`` between quotes, and no rendering can know
    which quotes those are. Leading or trailing blanks are refused too: MySQL ignores
    trailing spaces when comparing names, so such a name would stand for another account.
    """
    if not name:
        raise InvalidRequest(f"{field} is required")
    why = _sql_unsafe(name)
    if why is not None:
        raise InvalidRequest(f"{field} may not contain {why}")
    if name != name.strip():
        raise InvalidRequest(f"{field} may not begin or end with a space")


def render_sql(statement: str, values: Mapping[str, str]) -> str:
    """``render`` for statements sent to a database.

    Every value substituted is checked: a user name or password that holds a quote could
    close the quotes the statement's author put around ``{{name}}`` and append SQL of its
    own, run with the connection's privileges. The broker's own values never fail this
    (generated names and passwords come from quote-free alphabets, account names are
    checked on write); a failure means a check was missed upstream, so nothing runs.
    """

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            return match.group(0)
        why = _sql_unsafe(values[name])
        if why is not None:  # the value itself is never echoed: it may be a password
            raise InvalidRequest(f"the value of {{{{{name}}}}} contains {why}; refused")
        return values[name]

    return _VARIABLE.sub(value, statement)


def split_statements(text: str) -> list[str]:
    """Split on ``;`` outside quotes, dollar quotes and comments (Vault splits naively and
    breaks ``DO $$ ... ; ... $$`` blocks)."""
    out: list[str] = []
    buf: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in ("'", '"', "`"):
            end = i + 1
            while end < n:
                if text[end] == c:
                    if end + 1 < n and text[end + 1] == c:  # doubled quote escapes itself
                        end += 2
                        continue
                    break
                if text[end] == "\\" and c != '"':
                    end += 1
                end += 1
            buf.append(text[i : end + 1])
            i = end + 1
            continue
        if c == "$":
            m = re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$", text[i:])
            if m:
                tag = m.group(0)
                end = text.find(tag, i + len(tag))
                end = n if end < 0 else end + len(tag)
                buf.append(text[i:end])
                i = end
                continue
        if c == "-" and text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if c == ";":
            out.append("".join(buf))
            buf = []
            i += 1
            continue
        buf.append(c)
        i += 1
    out.append("".join(buf))
    return [s.strip() for s in out if s.strip()]


def expand_statements(statements: Iterable[str]) -> list[str]:
    """A role's statement list, each entry possibly holding several ``;``-separated ones."""
    return [part for statement in statements for part in split_statements(statement)]


# -- usernames ----------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^a-z0-9]+")
_RANDOM_LENGTH = 20
_MIN_RANDOM_LENGTH = 8
# \Z, not $: "$" also matches before a final newline.
_TEMPLATE_OUTPUT = re.compile(r"\A[A-Za-z0-9_.\-]+\Z")


def is_issued_username(name: str) -> bool:
    """Whether the broker could have made ``name``: default and templated user names only
    ever hold letters, digits, '_', '.' and '-'. Reconciliation acts on nothing else."""
    return bool(_TEMPLATE_OUTPUT.match(name))


def _slug(text: str) -> str:
    return _UNSAFE.sub("_", text.lower()).strip("_")


def default_username(display_name: str, role_name: str, max_length: int) -> str:
    """Vault's ``v-<display>-<role>-<random>-<unix time>``, with ``_`` for ``-`` so no
    database needs it quoted, shortened to ``max_length`` by cutting the display and
    role names first: the random part is never cut below 8 characters, so two leases can
    never share a user (Vault's truncation could). Limits too short for that shape
    (mysql-legacy's 16) get ``v_<role>_<random>``."""
    unix = str(int(time.time()))
    display, role = _slug(display_name) or "token", _slug(role_name) or "role"
    fixed = len("v_") + 3 + len(unix)  # prefix, three separators, the time
    random_len = _RANDOM_LENGTH
    budget = max_length - fixed - random_len
    if budget < 2:
        random_len = _MIN_RANDOM_LENGTH
        budget = max_length - fixed - random_len
    if budget < 2:
        role_len = max(0, min(len(role), max_length - 3 - _MIN_RANDOM_LENGTH))
        if max_length - 3 - role_len < _MIN_RANDOM_LENGTH:
            raise InvalidRequest(f"a {max_length}-character user name limit is too short")
        random_part = random_string(max_length - 3 - role_len, IDENTIFIER_ALPHABET)
        return f"v_{role[:role_len]}_{random_part}" if role_len else f"v_{random_part}"[:max_length]
    role_len = min(len(role), max(1, budget - min(len(display), budget // 2)))
    display_len = max(1, min(len(display), budget - role_len))
    random_part = random_string(random_len, IDENTIFIER_ALPHABET)
    return "_".join(["v", display[:display_len], role[:role_len], random_part, unix])


_GO_LAYOUT = re.compile(r"2006|Z07:00|-07:00|MST|Jan|Mon|01|02|15|04|05|06")
_GO_TOKENS = {
    "2006": "%Y",
    "06": "%y",
    "01": "%m",
    "02": "%d",
    "15": "%H",
    "04": "%M",
    "05": "%S",
    "Jan": "%b",
    "Mon": "%a",
    "MST": "UTC",
    "Z07:00": "Z",
    "-07:00": "+00:00",
}


def go_time_format(layout: str, moment: dt.datetime) -> str:
    """Go's reference-time layouts (``2006-01-02T15:04:05Z07:00``), as Vault's templates
    take them, for the common elements; always in UTC."""
    pattern = _GO_LAYOUT.sub(lambda m: _GO_TOKENS[m.group(0)], layout.replace("%", "%%"))
    return moment.strftime(pattern)


class UsernameTemplate:
    """Vault's ``username_template``, the subset that needs no general Go template engine:
    ``{{.DisplayName}}``, ``{{.RoleName}}``, ``{{random N}}``, ``{{unix_time}}``,
    ``{{unix_time_millis}}``, ``{{timestamp "2006-01-02"}}``, ``{{uuid}}``, piped through
    ``truncate N``, ``truncate_sha256 N``, ``sha256``, ``lowercase``, ``uppercase`` and
    ``replace "old" "new"``. Anything else is refused when the connection is written."""

    _ACTION = re.compile(r"\{\{(.*?)\}\}")

    def __init__(self, source: str) -> None:
        self.source = source
        self._check()

    def _check(self) -> None:
        sample = self.render("display", "role")
        if not _TEMPLATE_OUTPUT.match(sample):
            raise InvalidRequest(
                "username_template must render to letters, digits, '_', '.' or '-' only"
            )

    def render(self, display_name: str, role_name: str) -> str:
        """Checked on every render, not only when the template is written: the display
        name comes from whoever created the token, and the result is quoted into SQL."""

        def action(match: re.Match[str]) -> str:
            return self._pipeline(match.group(1), display_name, role_name)

        rendered = self._ACTION.sub(action, self.source)
        if not _TEMPLATE_OUTPUT.match(rendered):
            raise InvalidRequest(
                "username_template rendered characters other than letters, digits, '_', '.' or '-'"
            )
        return rendered

    def _pipeline(self, text: str, display_name: str, role_name: str) -> str:
        """One ``{{action | function args | ...}}``: the action's value, then each
        function of the pipeline applied to it in turn."""
        try:
            stages = [shlex.split(stage) for stage in text.split("|")]
        except ValueError as exc:
            raise InvalidRequest(f"username_template: {exc}") from exc
        if not stages or not stages[0]:
            raise InvalidRequest("username_template: empty action")
        head, *args = stages[0]
        action = _ACTIONS.get(head)
        if action is None or not action.accepts(args):
            raise InvalidRequest(f"username_template: unsupported action {text.strip()!r}")
        value = action.apply(args, _Names(display_name, role_name))
        for stage in stages[1:]:
            if not stage:
                raise InvalidRequest("username_template: empty pipeline stage")
            name, *fargs = stage
            function = _FUNCTIONS.get(name)
            if function is None or not function.accepts(fargs):
                raise InvalidRequest(f"username_template: unsupported function {' '.join(stage)!r}")
            value = function.apply(fargs, value)
        return value


class _Names(NamedTuple):
    """What a template's ``.DisplayName`` and ``.RoleName`` stand for."""

    display_name: str
    role_name: str


_In = TypeVar("_In")


@dataclass(frozen=True, slots=True)
class _Step(Generic[_In]):
    """An action (``_In``: the names) or a pipeline function (``_In``: the value so far)
    of a username template, with the arguments it takes: ``arity`` of them, all digits
    when ``numeric``."""

    arity: int
    apply: Callable[[list[str], _In], str]
    numeric: bool = False

    def accepts(self, args: list[str]) -> bool:
        return len(args) == self.arity and not (
            self.numeric and not all(a.isascii() and a.isdigit() for a in args)
        )


def _truncate_sha256(args: list[str], value: str) -> str:
    """Keep ``value`` within the limit, its last 8 kept characters a hash of what was cut,
    so two long values that share a prefix still differ."""
    limit = int(args[0])
    if len(value) <= limit:
        return value
    if limit < 8:
        raise InvalidRequest("username_template: truncate_sha256 needs >= 8")
    digest = hashlib.sha256(value[limit - 8 :].encode()).hexdigest()
    return value[: limit - 8] + digest[:8]


_ACTIONS: Mapping[str, _Step[_Names]] = {
    ".DisplayName": _Step(0, lambda _, names: names.display_name),
    ".RoleName": _Step(0, lambda _, names: names.role_name),
    "random": _Step(
        1, lambda args, _: random_string(int(args[0]), IDENTIFIER_ALPHABET), numeric=True
    ),
    "unix_time": _Step(0, lambda _, __: str(int(time.time()))),
    "unix_time_millis": _Step(0, lambda _, __: str(int(time.time() * 1000))),
    "timestamp": _Step(1, lambda args, _: go_time_format(args[0], dt.datetime.now(dt.UTC))),
    "uuid": _Step(0, lambda _, __: str(uuid.uuid4())),
}
_FUNCTIONS: Mapping[str, _Step[str]] = {
    "truncate": _Step(1, lambda args, value: value[: int(args[0])], numeric=True),
    "lowercase": _Step(0, lambda _, value: value.lower()),
    "uppercase": _Step(0, lambda _, value: value.upper()),
    "replace": _Step(2, lambda args, value: value.replace(args[0], args[1])),
    "truncate_sha256": _Step(1, _truncate_sha256, numeric=True),
    "sha256": _Step(0, lambda _, value: hashlib.sha256(value.encode()).hexdigest()),
}


@functools.lru_cache(maxsize=256)
def compiled_template(source: str) -> UsernameTemplate:
    """A checked template per source text: issuance renders it on every request."""
    return UsernameTemplate(source)
