"""A small synchronous client for the broker's (Vault's) HTTP API, used by the CLI."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


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
        env = os.environ
        address = env.get("BROKER_ADDR") or env.get("VAULT_ADDR") or "http://127.0.0.1:8200"
        token = env.get("BROKER_TOKEN") or env.get("VAULT_TOKEN") or ""
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
