"""Audit devices as a path to code execution (Vault's CVE-2025-6000, HCSEC-2025-14).

A token allowed to enable audit devices chooses where the broker appends lines, and every
line carries the request path, which anyone can choose without a token. Pointed at a shell
profile, ``/v1/sys/leases/revoke/$(touch x)`` would plant a command there. So a file device
writes only inside the ``audit_file_dirs`` setting, to a new file or an existing audit log
(regular, not executable), the check is made again whenever the file is opened, devices can
be kept from being enabled through the API at all, and no value breaks out of its JSON line.
"""

from __future__ import annotations

import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yarl

from broker.server.assembly import start_server
from broker.server.security.audit_chain import verify_lines
from broker.server.settings import Settings
from tests.conftest import TOKEN, PgCluster, own_broker_settings
from tests.support import VaultHTTP

PROFILE = "export PATH=/usr/local/bin:/usr/bin:/bin\n"
#: Request paths as an attacker spells them, percent-encoded on the wire: the issue's
#: command substitution, a quote that would end the JSON string, a line separator, and
#: newlines (aiohttp answers 404 to a path holding one, before the broker sees it; the body
#: below carries newlines into the entry instead, in a key, which is not hashed).
HOSTILE_PATHS = (
    "sys/leases/revoke/$(touch%20x)",
    "sys/policy/a%22,%22x%22:%22$(id)",
    "sys/policy/c%E2%80%A8$(id)",
    "sys/policy/b%0A$(touch%20y)%0A",
    "sys/leases/revoke/%0D%0Aecho%20pwned",
)
HOSTILE_KEY = 'x\n$(touch z)\n","y":"'


async def _enable(http: VaultHTTP, name: str, file_path: str) -> tuple[int, list[str]]:
    reply = await http.write(
        f"sys/audit/{name}", {"type": "file", "options": {"file_path": file_path}}
    )
    return reply.status, reply.body.get("errors", [])


@pytest.fixture
async def confined(
    pg_target: PgCluster,
    fresh_storage_db: str,
    http_session: aiohttp.ClientSession,
    tmp_path: Path,
) -> AsyncIterator[tuple[VaultHTTP, Path]]:
    """A broker whose file devices may write only in ``tmp_path/allowed``."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    settings = own_broker_settings(pg_target.dsn(fresh_storage_db), audit_file_dirs=(str(allowed),))
    runner = await start_server(settings)
    try:
        yield VaultHTTP(http_session, f"http://{settings.listen_address}", TOKEN), allowed
    finally:
        await runner.cleanup()


async def test_a_file_device_cannot_point_outside_the_allowed_directories(
    confined: tuple[VaultHTTP, Path], tmp_path: Path, http_session: aiohttp.ClientSession
) -> None:
    """Fails on the unfixed code: every refused target below was enabled (204) there, and
    the first request appended an entry to the fake profile."""
    http, allowed = confined
    home = tmp_path / "home"
    home.mkdir()
    profile = home / ".profile"
    profile.write_text(PROFILE)
    (allowed / "outside-link").symlink_to(home)
    (allowed / "profile-link").symlink_to(profile)
    (allowed / "dangling-link").symlink_to(home / ".bashrc")
    (allowed / "inside-link").symlink_to(allowed / "real.log")  # the last step: never followed
    script = allowed / "notes.sh"
    script.write_text("echo not an audit log\n")
    executable = allowed / "run.log"
    executable.touch(mode=0o755)
    executable.chmod(0o755)

    refused = {
        str(profile): "outside the directories",
        str(home / ".bash_login"): "outside the directories",
        f"{allowed}/../home/.profile": "outside the directories",
        f"{allowed}/../home/new.log": "outside the directories",
        f"{allowed}/outside-link/.profile": "outside the directories",
        str(allowed / "profile-link"): "outside the directories",
        str(allowed / "dangling-link"): "outside the directories",
        str(allowed / "inside-link"): "symbolic link",
        str(script): "not a broker audit log",
        str(executable): "executable",
        str(allowed): "outside the directories",  # the directory itself is no file
        "audit.log": "absolute path",
        "../allowed/audit.log": "absolute path",
    }
    for target, reason in refused.items():
        status, errors = await _enable(http, "brkt-evil", target)
        assert status == 400, (target, errors)
        assert reason in errors[0], (target, errors)
    assert (await http.read("sys/audit")).data == {}
    assert profile.read_text() == PROFILE
    assert script.read_text() == "echo not an audit log\n"
    assert executable.stat().st_size == 0
    assert sorted(p.name for p in home.iterdir()) == [".profile"]
    assert not (allowed / "real.log").exists()

    # The attack, against a device where one is allowed: nothing leaves its JSON string.
    log_path = allowed / "audit.log"
    status, errors = await _enable(http, "brkt-ok", str(log_path))
    assert status == 204, errors
    assert stat.S_IMODE(log_path.stat().st_mode) & 0o177 == 0  # 0600 at most, never x
    for raw in HOSTILE_PATHS:
        url = yarl.URL(f"{http.address}/v1/{raw}", encoded=True)
        async with http_session.put(url, json={HOSTILE_KEY: "\n"}) as resp:
            assert resp.status in (403, 404), await resp.text()
    # Without a token those are refused before their bodies are read (403 before
    # routing); with one, the hostile key reaches the entry's data.
    for raw in HOSTILE_PATHS[:3]:
        url = yarl.URL(f"{http.address}/v1/{raw}", encoded=True)
        headers = {"X-Vault-Token": http.token}
        async with http_session.put(url, json={HOSTILE_KEY: "\n"}, headers=headers) as resp:
            assert resp.status in (204, 400, 404), await resp.text()
    lines = log_path.read_text().split("\n")
    assert lines.pop() == ""  # the file ends with a newline, after the last entry
    entries = [json.loads(line) for line in lines]  # every line is one JSON document
    assert all(isinstance(e, dict) and "prev_hash" in e for e in entries)
    paths = [e["request"]["path"] for e in entries if e["type"] == "request"]
    assert "sys/leases/revoke/$(touch x)" in paths
    assert 'sys/policy/a","x":"$(id)' in paths
    assert "sys/policy/c\u2028$(id)" in paths
    assert sum(HOSTILE_KEY in (e["request"]["data"] or {}) for e in entries) >= 3
    report = verify_lines(iter(lines))
    assert (report.entries, report.broken) == (len(lines), None)
    assert all(e["prev_hash"].startswith("hmac-sha256:v1:") for e in entries[1:])
    keyed = (await http.read("sys/audit-verify/brkt-ok")).data["file"]
    assert keyed["entries"] >= len(lines) and keyed["break"] is None, keyed
    assert profile.read_text() == PROFILE

    # An existing audit log is continued: disabled and enabled again at the same file.
    assert (await http.delete("sys/audit/brkt-ok")).status == 204
    status, errors = await _enable(http, "brkt-again", str(log_path))
    assert status == 204, errors
    assert (await http.read("sys/mounts")).status == 200
    assert verify_lines(iter(log_path.read_text().splitlines())).broken is None
    keyed = (await http.read("sys/audit-verify/brkt-again")).data["file"]
    assert keyed["break"] is None and keyed["truncated"] is None, keyed
    assert keyed["entries"] > len(lines)  # one chain, continued
    assert (await http.delete("sys/audit/brkt-again")).status == 204


async def test_a_stored_device_outside_the_allowed_directories_is_not_opened(
    pg_target: PgCluster,
    fresh_storage_db: str,
    http_session: aiohttp.ClientSession,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A device enabled by an older version (or a row edited in storage) is checked against
    this server's settings when it is opened: refused and logged, and since it was the only
    device, requests fail (503) rather than go unaudited."""
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    old_dir.mkdir()
    new_dir.mkdir()
    dsn = pg_target.dsn(fresh_storage_db)
    log_path = old_dir / "audit.log"
    before = own_broker_settings(dsn, audit_file_dirs=(str(old_dir),))
    runner = await start_server(before)
    try:
        http = VaultHTTP(http_session, f"http://{before.listen_address}", TOKEN)
        status, errors = await _enable(http, "brkt-old", str(log_path))
        assert status == 204, errors
        assert (await http.read("sys/mounts")).status == 200
    finally:
        await runner.cleanup()
    written = log_path.read_text()
    assert written

    after = own_broker_settings(dsn, audit_file_dirs=(str(new_dir),))
    runner = await start_server(after)
    try:
        http = VaultHTTP(http_session, f"http://{after.listen_address}", TOKEN)
        refused = await http.call("PUT", "sys/mounts/brkt-unaudited", {"type": "database"})
        assert refused.status == 503, refused.body
        assert log_path.read_text() == written
        assert any(
            "refused" in r.getMessage() and "audit_file_dirs" in r.getMessage()
            for r in caplog.records
        )
    finally:
        await runner.cleanup()


async def test_audit_devices_cannot_be_enabled_through_the_api_when_disallowed(
    pg_target: PgCluster,
    fresh_storage_db: str,
    http_session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    settings = own_broker_settings(
        pg_target.dsn(fresh_storage_db),
        audit_file_dirs=(str(tmp_path),),
        allow_api_audit_creation=False,
    )
    runner = await start_server(settings)
    try:
        http = VaultHTTP(http_session, f"http://{settings.listen_address}", TOKEN)
        status, errors = await _enable(http, "brkt-file", str(tmp_path / "audit.log"))
        assert status == 403
        assert errors == [
            "audit devices cannot be enabled through the API: the server setting "
            "allow_api_audit_creation is false"
        ]
        table = await http.write("sys/audit/brkt-table", {"type": "table"})
        assert table.status == 403
        assert (await http.read("sys/audit")).data == {}
        assert not (tmp_path / "audit.log").exists()
    finally:
        await runner.cleanup()


def test_settings_read_the_allowed_directories(tmp_path: Path) -> None:
    env = {"BROKER_AUDIT_FILE_DIRS": "/var/log/broker, /srv/audit ,"}
    assert Settings.load(environ=env).audit_file_dirs == ("/var/log/broker", "/srv/audit")
    config = tmp_path / "broker.toml"
    config.write_text('audit_file_dirs = ["/var/log/broker"]\nallow_api_audit_creation = false\n')
    loaded = Settings.load(config, environ={})
    assert loaded.audit_file_dirs == ("/var/log/broker",)
    assert loaded.allow_api_audit_creation is False
    assert Settings.load(environ={}).audit_file_dirs == ()
    with pytest.raises(ValueError, match="not absolute"):
        Settings.load(environ={"BROKER_AUDIT_FILE_DIRS": "logs"})
