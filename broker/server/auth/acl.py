"""Vault ACL policies: parsing (HCL or JSON, through pyhcl) and evaluation. Pure logic.

A token's policies merge into one ACL: rules on the same path pattern union their
capabilities (``deny`` overrides the rest), then the single most specific pattern matching
a request decides, by Vault's documented priority:

1. the later the first wildcard (``+`` or ``*``), the higher;
2. a pattern not ending in ``*`` beats one that does;
3. fewer ``+`` segments win;
4. longer patterns win;
5. then the lexicographically greater one.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from broker.exceptions import InvalidRequest
from broker.server.hcl_documents import parse_document

CAPABILITIES = frozenset(
    {"create", "read", "update", "patch", "delete", "list", "sudo", "deny", "subscribe"}
)
_POLICY_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")

#: Vault's default policy, limited to the paths the broker serves.
DEFAULT_POLICY = """\
# Allow tokens to look up their own properties
path "auth/token/lookup-self" {
    capabilities = ["read"]
}

# Allow tokens to renew themselves
path "auth/token/renew-self" {
    capabilities = ["update"]
}

# Allow tokens to revoke themselves
path "auth/token/revoke-self" {
    capabilities = ["update"]
}

# Allow a token to look up its own capabilities on a path
path "sys/capabilities-self" {
    capabilities = ["update"]
}

# Allow a token to look up and renew leases it knows the id of
path "sys/leases/lookup" {
    capabilities = ["update"]
}
path "sys/leases/renew" {
    capabilities = ["update"]
}
path "sys/renew" {
    capabilities = ["update"]
}
"""


@dataclass(frozen=True, slots=True)
class PathRule:
    pattern: str
    capabilities: frozenset[str]
    _regex: re.Pattern[str]

    @classmethod
    def build(cls, pattern: str, capabilities: Iterable[str]) -> PathRule:
        caps = frozenset(capabilities)
        if "deny" in caps:
            caps = frozenset({"deny"})
        return cls(pattern, caps, _compile(pattern))

    def matches(self, path: str) -> bool:
        return self._regex.fullmatch(path) is not None

    @property
    def priority(self) -> tuple[int, bool, int, int, str]:
        wildcards = [i for i, ch in enumerate(self.pattern) if ch in "*+"]
        plus_segments = sum(1 for seg in self.pattern.split("/") if seg == "+")
        return (
            wildcards[0] if wildcards else len(self.pattern) + 1,
            not self.pattern.endswith("*"),
            -plus_segments,
            len(self.pattern),
            self.pattern,
        )


def _compile(pattern: str) -> re.Pattern[str]:
    glob = pattern.endswith("*")
    body = pattern[:-1] if glob else pattern
    parts = [("[^/]+" if seg == "+" else re.escape(seg)) for seg in body.split("/")]
    return re.compile("/".join(parts) + (".*" if glob else ""))


def _reaches(pattern: str, mount: str) -> bool:
    """Whether ``pattern`` can match some path under ``mount`` (which ends in ``/``):
    segment by segment, a ``+`` matches any segment and a trailing ``*`` anything that
    starts with what precedes it."""
    glob = pattern.endswith("*")
    parts = (pattern[:-1] if glob else pattern).split("/")
    segments = mount.rstrip("/").split("/")
    for i, segment in enumerate(segments):
        if i >= len(parts):
            return False
        part = parts[i]
        if glob and i == len(parts) - 1:
            return segment.startswith(part)
        if part not in ("+", segment):
            return False
    return len(parts) > len(segments) or glob


def check_policy_name(name: str) -> str:
    if not _POLICY_NAME.match(name):
        raise InvalidRequest(f"invalid policy name {name!r}")
    return name.lower()


def parse_policy(text: str) -> list[PathRule]:
    """Rules of one policy document; anything Vault would refuse is a 400 here.

    Cached by text: pyhcl takes ~30 ms per document (measured), far too slow for the
    request path, where the same few documents come back every time the ACL cache expires.
    """
    return list(_parse_policy_cached(text))


@functools.lru_cache(maxsize=512)
def _parse_policy_cached(text: str) -> tuple[PathRule, ...]:
    return tuple(_parse_policy(text))


def _parse_policy(text: str) -> list[PathRule]:
    document = parse_document(text, "policy", {"path", "name"})
    paths = document.get("path", {})
    if isinstance(paths, list):  # JSON may give a list of {pattern: body} objects
        merged: dict[str, Any] = {}
        for item in paths:
            if not isinstance(item, dict):
                raise InvalidRequest("failed to parse policy: bad path list")
            merged.update(item)
        paths = merged
    if not isinstance(paths, dict):
        raise InvalidRequest("failed to parse policy: 'path' must be a block")
    rules = []
    for pattern, body in paths.items():
        if not isinstance(body, dict):
            raise InvalidRequest(f"failed to parse policy: path {pattern!r} needs a block")
        caps = body.get("capabilities", [])
        if body.get("policy"):  # Vault's old shorthand
            caps = {
                "deny": ["deny"],
                "read": ["read", "list"],
                "write": ["create", "read", "update", "delete", "list"],
                "sudo": ["create", "read", "update", "delete", "list", "sudo"],
            }.get(str(body["policy"]))
            if caps is None:
                raise InvalidRequest(f"invalid policy value on path {pattern!r}")
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise InvalidRequest(f"capabilities of path {pattern!r} must be a list of strings")
        bad = sorted({c.lower() for c in caps} - CAPABILITIES)
        if bad:
            raise InvalidRequest(f"invalid capabilities on path {pattern!r}: {bad}")
        pattern = pattern.lstrip("/")
        if "*" in pattern[:-1]:
            raise InvalidRequest(f"path {pattern!r}: '*' is only allowed at the end")
        rules.append(PathRule.build(pattern, (c.lower() for c in caps)))
    return rules


class ACL:
    """The merged rules of a token's policies; ``root`` allows everything."""

    def __init__(self, rules: Iterable[PathRule], root: bool = False) -> None:
        self.root = root
        merged: dict[str, set[str]] = {}
        for rule in rules:
            merged.setdefault(rule.pattern, set()).update(rule.capabilities)
        self._rules = sorted(
            (PathRule.build(p, caps) for p, caps in merged.items()),
            key=lambda r: r.priority,
            reverse=True,
        )

    def capabilities(self, path: str) -> frozenset[str]:
        if self.root:
            return frozenset({"root"})
        for rule in self._rules:  # highest priority first
            if rule.matches(path):
                return rule.capabilities
        return frozenset({"deny"})

    def reaches_under(self, mount: str) -> bool:
        """Whether any capability is granted on ``mount`` (``database/``) or on a path
        beneath it: Vault's ``hasMountAccess``, which decides who may read a mount's
        description at ``sys/internal/ui/mounts/<path>``. A ``deny`` grants nothing, so a
        token denied on the mount itself still reaches it through an allowed path below."""
        if self.root:
            return True
        if "deny" not in self.capabilities(mount):
            return True
        return any(
            "deny" not in rule.capabilities and rule.capabilities and _reaches(rule.pattern, mount)
            for rule in self._rules
        )

    def allows(self, path: str, operation: str, *, sudo: bool = False) -> bool:
        """``operation`` is Vault's: read, list, update, delete. An update is allowed by
        ``create`` or ``update`` (the broker does not tell creation from update apart)."""
        if self.root:
            return True
        if operation == "list" and not path.endswith("/"):
            path += "/"
        caps = self.capabilities(path)
        if "deny" in caps or (sudo and "sudo" not in caps):
            return False
        if operation == "update":
            return bool(caps & {"create", "update", "patch"})
        return operation in caps
