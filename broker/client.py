"""A small synchronous client for the broker's (Vault's) HTTP API, used by the CLI."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOKEN_FILE = Path.home() / ".broker-token"


def _token_from_file() -> str:
    for path in (TOKEN_FILE, Path.home() / ".vault-token"):
        try:
            return path.read_text().strip()
        except OSError:
            continue
    return ""


def save_token(token: str) -> Path:
    """Write the token file readable by its owner only (created 0600, never wider)."""
    fd = os.open(TOKEN_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    TOKEN_FILE.chmod(0o600)
    return TOKEN_FILE


class ClientError(Exception):
    def __init__(self, status: int, errors: list[str]) -> None:
        super().__init__(f"HTTP {status}: {'; '.join(errors) or 'no details'}")
        self.status = status
        self.errors = errors


@dataclass(frozen=True)
class BrokerClient:
    address: str
    token: str

    @classmethod
    def from_env(cls) -> BrokerClient:
        """Address and token as the vault CLI finds them: variables first, then the token
        file ``broker login`` wrote (or the vault CLI's ``~/.vault-token``)."""
        env = os.environ
        address = env.get("BROKER_ADDR") or env.get("VAULT_ADDR") or "http://127.0.0.1:8200"
        token = env.get("BROKER_TOKEN") or env.get("VAULT_TOKEN") or _token_from_file()
        return cls(address.rstrip("/"), token)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"{self.address}/v1/{path.lstrip('/')}",
            data=data,
            method=method,
            headers={"X-Vault-Token": self.token, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            try:
                errors = json.loads(exc.read()).get("errors", [])
            except ValueError:
                errors = [exc.reason]
            raise ClientError(exc.code, [str(e) for e in errors]) from None
        except urllib.error.URLError as exc:
            raise ClientError(0, [f"cannot reach {self.address}: {exc.reason}"]) from None
        return json.loads(raw) if raw else {}
