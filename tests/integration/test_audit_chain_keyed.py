"""The audit chain is keyed (issue 14, item 4).

Before, each entry carried the plain SHA-256 of the line before it, and the file device
re-read its head from the file: whoever could edit the file changed a line and recomputed
every hash after it, and ``broker audit verify`` passed; cutting the tail off was not
seen at all. Now every link is an HMAC-SHA256 under a chain key derived from the keyring,
naming its key term, and storage holds checkpoints of every chain. Each attack below
passed against the unfixed code (its verify only recomputed SHA-256 and had no
checkpoints); here each fails, through the server (``GET sys/audit-verify``) and through
the CLI (which opens storage with the auto-unseal key).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from broker.server.assembly import start_server
from broker.server.security.audit_chain import line_hash
from broker.server.settings import Settings
from tests.conftest import TOKEN, PgCluster, RunningBroker, own_broker_settings
from tests.support import VaultHTTP, run_cli

NODE = "brkt-audit-node"


def _cli_verify(
    settings: Settings, *files: Path, target: Path | None = None
) -> subprocess.CompletedProcess[str]:
    args = ["audit", "verify", "--node-id", NODE, *map(str, files)]
    if target is not None:
        args += ["--target", str(target)]
    return run_cli(*args, env={"BROKER_STORAGE_DSN": settings.storage_dsn})


async def _traffic(http: VaultHTTP, calls: int) -> None:
    for _ in range(calls):
        assert (await http.read("sys/mounts")).status == 200


async def _server_verify(http: VaultHTTP) -> dict[str, Any]:
    reply = await http.read("sys/audit-verify/brkt-file")
    assert reply.status == 200, reply.body
    report: dict[str, Any] = reply.data["file"]
    return report


async def _verify_tampered(
    http: VaultHTTP, log_path: Path, change: Callable[[list[str]], list[str]]
) -> dict[str, Any]:
    """The server's verdict on the live file changed by ``change``; then the file is put
    back as it was, plus the entries the verification request itself appended."""
    before, tampered = _tamper(log_path, change)
    report = await _server_verify(http)
    _restore(log_path, before, tampered)
    return report


def _tamper(log_path: Path, change: Callable[[list[str]], list[str]]) -> tuple[str, str]:
    before = log_path.read_text()
    tampered = "\n".join(change(before.splitlines())) + "\n"
    log_path.write_text(tampered)
    return before, tampered


def _restore(log_path: Path, before: str, tampered: str) -> None:
    appended = log_path.read_text()[len(tampered) :]
    log_path.write_text(before + appended)


def _rechained_with_sha256(lines: list[str], edit_at: int, prefix: str = "") -> list[str]:
    """The old attack: change one entry, then recompute every link after it the only way
    someone without the key can (a plain hash, optionally dressed as a MAC)."""
    forged = lines[:edit_at]
    entry = json.loads(lines[edit_at])
    entry["request"]["path"] = "sys/nothing-to-see"
    forged.append(json.dumps(entry, separators=(",", ":")))
    for line in lines[edit_at + 1 :]:
        entry = json.loads(line)
        entry["prev_hash"] = prefix + line_hash(forged[-1])
        forged.append(json.dumps(entry, separators=(",", ":")))
    return forged


async def test_the_keyed_chain_resists_rechaining_truncation_and_foreign_lines(
    pg_target: PgCluster,
    fresh_storage_db: str,
    http_session: aiohttp.ClientSession,
    broker: RunningBroker,
    tmp_path: Path,
) -> None:
    log_path = tmp_path / "audit.log"
    settings = own_broker_settings(
        pg_target.dsn(fresh_storage_db), audit_file_dirs=(str(tmp_path),), node_id=NODE
    )
    runner = await start_server(settings)
    try:
        http = VaultHTTP(http_session, f"http://{settings.listen_address}", TOKEN)
        reply = await http.write(
            "sys/audit/brkt-file", {"type": "file", "options": {"file_path": str(log_path)}}
        )
        assert reply.status == 204, reply.body
        await _traffic(http, 3)
        assert (await http.write("sys/rotate", {})).status == 204  # key term 2
        await _traffic(http, 3)
    finally:
        await runner.cleanup()  # records a checkpoint at shutdown

    # (3) Across a rotation and a restart, the untouched log verifies, both ways.
    runner = await start_server(settings)
    try:
        http = VaultHTTP(http_session, f"http://{settings.listen_address}", TOKEN)
        await _traffic(http, 2)
        report = await _server_verify(http)
        assert report["break"] is None and report["truncated"] is None, report
        assert report["keyed"] and report["checkpoints_checked"] >= 1, report
        lines = log_path.read_text().splitlines()
        links = [json.loads(line)["prev_hash"] for line in lines[1:]]
        assert any(p.startswith("hmac-sha256:v1:") for p in links)
        assert any(p.startswith("hmac-sha256:v2:") for p in links)
        assert len({json.loads(line)["chain"] for line in lines}) == 1  # continued
        result = _cli_verify(settings, log_path)
        assert result.returncode == 0, (result.stdout, result.stderr)
        assert "MACs and checkpoints verified" in result.stdout

        # (1) Edit a line, recompute every following link: the server finds the edit (at
        # the first link over the edited line 5, or at line 5 if a checkpoint falls there).
        for prefix in ("", "hmac-sha256:v2:"):

            def rechain(lines: list[str], prefix: str = prefix) -> list[str]:
                return _rechained_with_sha256(lines, 4, prefix)

            report = await _verify_tampered(http, log_path, rechain)
            assert report["break"] in (5, 6), report

        # (2) A tail cut off the live file: the server checkpoints what it wrote, then
        # finds the file short of it (or the entry it appended not following the cut end).
        report = await _verify_tampered(http, log_path, lambda lines: lines[:-3])
        assert report["break"] is not None or report["truncated"] is not None, report
        assert (await _server_verify(http))["break"] is None  # put back: intact again
    finally:
        await runner.cleanup()

    final = log_path.read_text().splitlines()
    copy = tmp_path / "copy.log"

    # (1) through the CLI, on the stopped server's file.
    copy.write_text("\n".join(_rechained_with_sha256(final, 3, "hmac-sha256:v2:")) + "\n")
    result = _cli_verify(settings, copy, target=log_path)
    assert result.returncode == 1, result.stdout
    assert "chain broken at line 5" in result.stdout or "line 4" in result.stdout
    # A keyless check, which is all the old verify could do, passes the forgery: it says so.
    structural = run_cli("audit", "verify", "--structure-only", str(copy))
    assert structural.returncode == 0 and "structure only" in structural.stdout

    # (2) Delete the last K lines: every line left chains, the checkpoint says it is short.
    for cut in (1, 5):
        copy.write_text("\n".join(final[:-cut]) + "\n")
        result = _cli_verify(settings, copy, target=log_path)
        assert result.returncode == 1 and "truncated" in result.stdout, result.stdout
        assert f"at least {cut} entries were removed" in result.stdout
    copy.write_text("")  # emptied altogether
    result = _cli_verify(settings, copy, target=log_path)
    assert result.returncode == 1 and "does not hold chain" in result.stdout, result.stdout
    result = _cli_verify(settings, log_path)
    assert result.returncode == 0, (result.stdout, result.stderr)

    # (4) Lines from another install's log (the suite's broker: another keyring).
    foreign_path = tmp_path / "foreign.log"
    other = broker.http
    reply = await other.write(
        "sys/audit/brkt-foreign", {"type": "file", "options": {"file_path": str(foreign_path)}}
    )
    assert reply.status == 204, reply.body
    try:
        await _traffic(other, 2)
    finally:
        assert (await other.delete("sys/audit/brkt-foreign")).status == 204
    foreign = foreign_path.read_text().splitlines()
    result = _cli_verify(settings, foreign_path, target=log_path)
    assert result.returncode == 1 and "chain broken at line 2" in result.stdout, result.stdout
    assert "another install" in result.stdout
    # One foreign line, fitted into this chain's position: its link is another key's MAC.
    spliced = json.loads(foreign[1])
    original = json.loads(final[6])
    spliced.update(chain=original["chain"], seq=original["seq"])
    copy.write_text(
        "\n".join([*final[:6], json.dumps(spliced, separators=(",", ":")), *final[7:]]) + "\n"
    )
    result = _cli_verify(settings, copy, target=log_path)
    assert result.returncode == 1 and "chain broken at line 7" in result.stdout, result.stdout
