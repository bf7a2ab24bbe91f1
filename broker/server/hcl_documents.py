"""Vault's policy documents, HCL or JSON, parsed into a dict (HCL by pyhcl)."""

from __future__ import annotations

import json
from typing import Any

import hcl

from broker.exceptions import InvalidRequest


def parse_document(text: str, what: str, allowed_keys: set[str]) -> dict[str, Any]:
    """A top-level object with only ``allowed_keys``; anything else is a 400 naming
    ``what`` (a policy, a password policy)."""
    if not text.strip():
        raise InvalidRequest(f"{what} is empty")
    try:
        document: Any = json.loads(text) if text.lstrip().startswith("{") else hcl.loads(text)
    except Exception as exc:  # pyhcl raises ValueError and its own lexer errors
        raise InvalidRequest(f"failed to parse {what}: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidRequest(f"failed to parse {what}: not an object")
    unknown = set(document) - allowed_keys
    if unknown:
        raise InvalidRequest(f"failed to parse {what}: unknown keys {sorted(unknown)}")
    return document
