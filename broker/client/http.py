"""A small synchronous client for the broker's (Vault's) HTTP API, used by the CLI.

Client side only: it imports nothing of the server (engines, storage, api), so it works
with nothing but a token and an address.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
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

    def creds(self, mount: str, role: str) -> dict[str, Any]:
        """A fresh login, asking the broker to say where the database is as well
        (``data.connection``, a broker extension): a token that may only read the creds
        path can then build a DSN or an environment without reading the connection."""
        return self.request("GET", f"{mount}/creds/{role}?connection=true")

    def revoke_unused(self, lease_id: str) -> None:
        """Revoke a lease that was issued but never handed over (the command failed after
        issuance), so the login does not live on for its whole TTL. Best effort: a
        failure is reported, not raised, so the original error is the one that shows."""
        try:
            self.request("PUT", "sys/leases/revoke", {"lease_id": lease_id})
        except ClientError as exc:
            print(f"warning: could not revoke {lease_id}: {exc}", file=sys.stderr)


async def issue_in_thread(client: BrokerClient, mount: str, role: str) -> dict[str, Any]:
    """``client.creds`` off the event loop, safe against cancellation: the blocking
    request runs on in its thread when the caller is cancelled (Ctrl-C), so whatever it
    issues then is revoked here instead of being lost."""
    request = asyncio.ensure_future(asyncio.to_thread(client.creds, mount, role))
    try:
        return await asyncio.shield(request)
    except asyncio.CancelledError:
        try:
            issued = await request
        except Exception:
            raise asyncio.CancelledError() from None
        if issued.get("lease_id"):
            await asyncio.to_thread(client.revoke_unused, str(issued["lease_id"]))
        raise


async def revoke_in_thread(client: BrokerClient, lease_id: str) -> None:
    """``client.revoke_unused`` off the event loop; completes even if the caller is
    cancelled while it runs (the revocation is what cancellation must not skip)."""
    await asyncio.shield(asyncio.to_thread(client.revoke_unused, lease_id))
