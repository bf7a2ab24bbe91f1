"""Request parameters the way Vault accepts them: JSON or form body, query string, and
loose types (TTL strings, comma-separated lists, "true")."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.web_protocol import RequestPayloadError

from broker.durations import parse_duration
from broker.exceptions import InvalidRequest


class Params:
    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values
        self._used: set[str] = set()

    @classmethod
    async def from_request(cls, request: web.Request) -> Params:
        values: dict[str, Any] = {k: v for k, v in request.query.items() if k != "list"}
        if request.can_read_body:
            try:
                raw = await request.read()
            except (ContentEncodingError, RequestPayloadError) as exc:
                # e.g. "Content-Encoding: gzip" on a body that is not gzip
                raise InvalidRequest("the request body could not be decoded") from exc
            if raw.strip():
                values.update(_parse_body(raw, request.content_type))
        if _has_nul(values) or "\x00" in request.path:
            # PostgreSQL text cannot hold NUL; refuse it here, before anything is touched.
            raise InvalidRequest("parameters must not contain NUL characters")
        return cls(values)

    def audit_view(self) -> dict[str, Any]:
        """Every parameter as sent, for the audit log to hash."""
        return dict(self._values)

    def has(self, name: str) -> bool:
        return name in self._values

    def _get(self, name: str) -> Any:
        self._used.add(name)
        return self._values.get(name)

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool | dict | list):
            raise InvalidRequest(f"{name}: expected a string")
        return str(value)

    def required_str(self, name: str) -> str:
        value = self.text(name)
        if not value:
            raise InvalidRequest(f"missing required parameter {name!r}")
        return value

    def flag(self, name: str, default: bool | None = None) -> bool | None:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "t", "yes"):
            return True
        if text in ("false", "0", "f", "no", ""):
            return False
        raise InvalidRequest(f"{name}: expected a boolean")

    def ttl(self, name: str, default: int | None = None) -> int | None:
        value = self._get(name)
        if value is None or value == "":
            return default
        return parse_duration(value, name)

    def integer(self, name: str) -> int | None:
        """An integer, sent as a JSON number or as digits ("3"); None when absent or empty."""
        value = self._get(name)
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            raise InvalidRequest(f"{name}: expected an integer")
        try:
            return int(value)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"{name}: expected an integer") from exc

    def strings(self, name: str) -> tuple[str, ...] | None:
        """A JSON list or a comma-separated string (Vault accepts both)."""
        value = self._get(name)
        if value is None:
            return None
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise InvalidRequest(f"{name}: expected a list of strings or a comma-separated string")

    def statements(self, name: str) -> tuple[str, ...] | None:
        """Statement lists: a JSON list, or one string (not split on commas: SQL has them)."""
        value = self._get(name)
        if value is None:
            return None
        if isinstance(value, str):
            return (value,) if value.strip() else ()
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(v for v in value if v.strip())
        raise InvalidRequest(f"{name}: expected a string or a list of strings")

    def raw(self, name: str) -> Any:
        return self._get(name)

    def unused_warning(self) -> list[str]:
        unused = sorted(set(self._values) - self._used)
        if not unused:
            return []
        return [f"Endpoint ignored these unrecognized parameters: [{' '.join(unused)}]"]


def _parse_body(raw: bytes, content_type: str) -> dict[str, Any]:
    if content_type == "application/x-www-form-urlencoded":
        try:
            pairs = urllib.parse.parse_qsl(
                raw.decode(), keep_blank_values=True, strict_parsing=True
            )
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidRequest("failed to parse form body") from exc
        return dict(pairs)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest("failed to parse JSON input: " + str(exc).split(":")[0]) from exc
    except RecursionError as exc:  # nesting deeper than the interpreter's stack allows
        raise InvalidRequest(_TOO_DEEP) from exc
    if not isinstance(body, dict):
        raise InvalidRequest("failed to parse JSON input: expected an object")
    if _too_deep(body):
        raise InvalidRequest(_TOO_DEEP)
    return body


#: Vault's default ``max_json_depth``. Everything after parsing (the NUL check, the audit
#: log's hashing, handlers) walks values recursively: a body nested deeper than this is
#: refused first, so no later walk can exhaust the stack and turn into a 500.
MAX_JSON_DEPTH = 300
_TOO_DEEP = f"failed to parse JSON input: nested deeper than {MAX_JSON_DEPTH} levels"


def _too_deep(value: Any) -> bool:
    """Whether ``value`` nests objects and arrays more than ``MAX_JSON_DEPTH`` deep;
    iterative, so the check itself cannot overflow."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False
