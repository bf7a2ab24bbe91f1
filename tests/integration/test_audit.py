"""Audit devices: every call leaves a request and a response entry with secrets hashed,
the keyed chain catches an edited or deleted line (``broker audit verify``, which opens
storage with the auto-unseal key), and when no device can record, the request fails
instead of going unaudited."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import hvac

from tests.conftest import RunningBroker
from tests.support import run_cli


def _verify(broker: RunningBroker, path: Path) -> subprocess.CompletedProcess[str]:
    """The keyed check: storage (and the suite's auto-unseal key) from the environment."""
    env = {"BROKER_STORAGE_DSN": broker.settings.storage_dsn}
    return run_cli("audit", "verify", str(path), env=env)


async def test_file_audit_hashes_secrets_and_chains_entries(
    broker: RunningBroker, tmp_path: Path
) -> None:
    log_path = tmp_path / "audit.log"
    http = broker.http
    try:
        reply = await http.write(
            "sys/audit/brkt-file", {"type": "file", "options": {"file_path": str(log_path)}}
        )
        assert reply.status == 204, reply.body
        listed = (await http.read("sys/audit")).data
        assert listed["brkt-file/"]["type"] == "file"

        creds = await http.creds("brkt-pg-ro")
        made = await http.write("auth/token/create", {"ttl": "5m", "policies": ["default"]})
        token = made.body["auth"]
        denied = await http.call("GET", "sys/mounts", token=token["client_token"])
        assert denied.status == 403

        text = log_path.read_text()
        lines = text.splitlines()
        assert len(lines) >= 6  # a request and a response entry per call
        password = creds.data["password"]
        for secret in (password, token["client_token"], http.token):
            assert secret not in text
        # An operator finds a known value by hashing it the same way.
        hashed = await http.write("sys/audit-hash/brkt-file", {"input": password})
        assert hashed.data["hash"].startswith("hmac-sha256:")
        assert hashed.data["hash"] in text

        entries = [json.loads(line) for line in lines]
        issued = [
            e
            for e in entries
            if e["type"] == "response" and e["request"]["path"] == "database/creds/brkt-pg-ro"
        ]
        assert issued and issued[0]["response"]["secret"]["lease_id"] == creds.body["lease_id"]
        assert issued[0]["auth"]["policies"] == ["root"]
        assert issued[0]["request"]["remote_address"] == "127.0.0.1"
        refusal = [e for e in entries if e["type"] == "response" and e["error"]]
        # The error and the accessor are HMAC'd (hmac_accessor defaults to true); the
        # error's kind stays readable.
        for value, field in (("permission denied", "error"), (token["accessor"], "accessor")):
            hashed = await http.write("sys/audit-hash/brkt-file", {"input": value})
            where = refusal[-1]["auth"] if field == "accessor" else refusal[-1]
            assert where[field] == hashed.data["hash"]
        assert refusal[-1]["error_kind"] == "PermissionDenied"
        assert token["accessor"] not in text
    finally:
        assert (await http.delete("sys/audit/brkt-file")).status == 204
        await http.write("sys/leases/revoke-prefix/database/creds/brkt-pg-ro/")

    result = _verify(broker, log_path)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "chain intact (MACs and checkpoints verified" in result.stdout
    # Without settings the CLI has no key: it refuses, unless only the structure is asked for.
    bare = run_cli("audit", "verify", str(log_path), env={"BROKER_STORAGE_DSN": ""})
    assert bare.returncode == 2 and "--structure-only" in bare.stderr
    structural = run_cli("audit", "verify", "--structure-only", str(log_path))
    assert structural.returncode == 0 and "structure only" in structural.stdout

    # Edit one line: the chain breaks at the next one.
    edited = lines.copy()
    target = 2
    edited[target] = (
        edited[target].replace('"read"', '"list"', 1).replace('"update"', '"delete"', 1)
    )
    assert edited[target] != lines[target]
    log_path.write_text("\n".join(edited) + "\n")
    result = _verify(broker, log_path)
    assert result.returncode == 1
    assert f"line {target + 2}" in result.stdout

    # Delete one line: also caught.
    log_path.write_text("\n".join(lines[:3] + lines[4:]) + "\n")
    result = _verify(broker, log_path)
    assert result.returncode == 1 and "line 4" in result.stdout


async def test_table_device_and_no_unaudited_access(broker: RunningBroker, tmp_path: Path) -> None:
    http = broker.http
    client = hvac.Client(url=broker.address, token=http.token)
    await asyncio.to_thread(
        client.sys.enable_audit_device, "table", path="brkt-table", description="rows"
    )
    try:
        assert (await http.read("sys/mounts")).status == 200
        report = (await http.read("sys/audit-verify/brkt-table")).data["nodes"]
        (node,) = report.values()
        assert node["entries"] >= 2 and node["break"] is None and node["keyed"]
        assert node["truncated"] is None
    finally:
        await asyncio.to_thread(client.sys.disable_audit_device, "brkt-table")

    # A file device whose file can no longer be written (a directory took its place): the
    # only device fails, so the request is refused (Vault's rule) and nothing is done.
    log_path = tmp_path / "audit.log"
    reply = await http.write(
        "sys/audit/brkt-broken", {"type": "file", "options": {"file_path": str(log_path)}}
    )
    assert reply.status == 204, reply.body
    try:
        log_path.unlink()
        log_path.mkdir()
        refused = await http.call("PUT", "sys/mounts/brkt-unaudited", {"type": "database"})
        assert refused.status == 503
        assert refused.errors == ["no audit device could record the request; it was not served"]
    finally:
        log_path.rmdir()
        assert (await http.delete("sys/audit/brkt-broken")).status == 204
    assert (await http.read("sys/mounts/brkt-unaudited")).status == 404
