"""Vault's password policies: ``length`` and ``rule "charset"`` blocks in HCL (pyhcl).

A generated password has exactly ``length`` characters from the union of the rules'
charsets and at least ``min-chars`` of each rule's charset. It is built to satisfy the
rules (the required characters first, the rest from the union, then shuffled with the
``secrets`` generator) rather than drawn until one passes, so generation never fails.

Generated passwords are embedded in statement templates inside SQL string literals, so a
charset may not contain a quote, a backslash or a control character: refused on write.
"""

from __future__ import annotations

import functools
import re
import secrets
import time
from dataclasses import dataclass

from broker.exceptions import InvalidRequest, NotFound
from broker.server.hcl_documents import parse_document
from broker.server.secrets_gen import generate_password, random_string
from broker.server.storage.catalog import CatalogStore

MIN_LENGTH, MAX_LENGTH = 4, 100
_UNSAFE = set("'\"\\`")
_CACHE_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class CharsetRule:
    charset: str
    min_chars: int


@dataclass(frozen=True, slots=True)
class PasswordPolicy:
    length: int
    rules: tuple[CharsetRule, ...]

    def generate(self) -> str:
        union = "".join(sorted({c for rule in self.rules for c in rule.charset}))
        chars = [
            random_string(1, rule.charset) for rule in self.rules for _ in range(rule.min_chars)
        ]
        chars += list(random_string(self.length - len(chars), union))
        _shuffle(chars)
        return "".join(chars)


def _shuffle(items: list[str]) -> None:
    for i in range(len(items) - 1, 0, -1):  # Fisher-Yates with a CSPRNG
        j = secrets.randbelow(i + 1)
        items[i], items[j] = items[j], items[i]


def parse_password_policy(text: str) -> PasswordPolicy:
    return _parse_cached(text)


@functools.lru_cache(maxsize=128)
def _parse_cached(text: str) -> PasswordPolicy:
    doc = parse_document(_label(text), "password policy", {"length", "rule"})
    length = doc.get("length")
    if isinstance(length, bool) or not isinstance(length, int):
        raise InvalidRequest("password policy: length must be a number")
    if not MIN_LENGTH <= length <= MAX_LENGTH:
        raise InvalidRequest(f"password policy: length must be {MIN_LENGTH} to {MAX_LENGTH}")
    raw_rules = doc.get("rule", {})
    if not isinstance(raw_rules, dict) or any(not key.startswith("charset") for key in raw_rules):
        raise InvalidRequest('password policy: only rule "charset" blocks are supported')
    blocks = [raw_rules[key] for key in sorted(raw_rules, key=_rule_index)]
    if blocks and isinstance(blocks[0], list):  # JSON: {"rule": {"charset": [...]}}
        blocks = blocks[0]
    rules = []
    for block in blocks:
        if not isinstance(block, dict):
            raise InvalidRequest('password policy: bad rule "charset" block')
        charset, min_chars = block.get("charset"), block.get("min-chars", 0)
        if not isinstance(charset, str) or not charset:
            raise InvalidRequest("password policy: every charset rule needs a charset")
        if isinstance(min_chars, bool) or not isinstance(min_chars, int) or min_chars < 0:
            raise InvalidRequest("password policy: min-chars must be a whole number")
        bad = {c for c in charset if c in _UNSAFE or not c.isprintable() or c.isspace()}
        if bad:
            raise InvalidRequest(
                f"password policy: charset may not contain {''.join(sorted(bad))!r} (quotes, "
                "backslashes and control characters would break statement templates)"
            )
        if len(set(charset)) > 256:
            raise InvalidRequest("password policy: a charset may hold at most 256 characters")
        rules.append(CharsetRule("".join(dict.fromkeys(charset)), min_chars))
    if not rules:
        raise InvalidRequest('password policy: at least one rule "charset" is required')
    if sum(r.min_chars for r in rules) > length:
        raise InvalidRequest("password policy: the min-chars add up to more than length")
    return PasswordPolicy(length, tuple(rules))


_RULE_BLOCK = re.compile(r'\brule\s+"charset"\s*\{')


def _label(text: str) -> str:
    """pyhcl merges repeated ``rule "charset"`` blocks into one (the later keys win), so
    each gets a label of its own before parsing: ``charset#0``, ``charset#1``..."""
    counter = iter(range(10_000))
    return _RULE_BLOCK.sub(lambda _: f'rule "charset#{next(counter)}" {{', text)


def _rule_index(key: str) -> int:
    _, _, index = key.partition("#")
    return int(index) if index.isascii() and index.isdigit() else 0


class PasswordPolicyStore:
    """Stored policies, parsed and cached per node for the issuance path (seconds)."""

    def __init__(self, store: CatalogStore) -> None:
        self._store = store
        self._cache: dict[str, tuple[float, PasswordPolicy]] = {}

    async def write(self, name: str, text: str) -> None:
        parse_password_policy(text)
        await self._store.upsert_password_policy(name, text)
        self._cache.pop(name, None)

    async def read(self, name: str) -> str:
        text = await self._store.get_password_policy(name)
        if text is None:
            raise NotFound()
        return text

    async def list(self) -> list[str]:
        return await self._store.list_password_policies()

    async def delete(self, name: str) -> None:
        await self._store.delete_password_policy(name)
        self._cache.pop(name, None)

    async def policy(self, name: str) -> PasswordPolicy:
        cached = self._cache.get(name)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        text = await self._store.get_password_policy(name)
        if text is None:
            raise InvalidRequest(f"password policy {name!r} does not exist")
        policy = parse_password_policy(text)
        self._cache[name] = (now + _CACHE_SECONDS, policy)
        return policy

    async def generate(self, name: str | None) -> str:
        """A password by the named policy, or the broker's default (32 base62)."""
        if not name:
            return generate_password()
        return (await self.policy(name)).generate()
