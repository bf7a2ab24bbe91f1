"""The declarative configuration against real storage and a real PostgreSQL target: an
empty storage set up at start (and what it declares works: the declared connection issues
logins that log in, an AppRole login gets the declared policy), changes to the file
applied, drift reported and set back, pruning limited to what the file manages, dry runs
that change nothing, two nodes starting together, inline passwords refused, and API audit
creation refused while the file's devices are created."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess

import aiohttp
import asyncpg
import pytest

from broker.server.assembly import start_server
from broker.server.bootstrap import DeclarativeConfigError
from tests.conftest import (
    PG_READONLY,
    TOKEN,
    PgCluster,
    own_broker_settings,
    pg_admin_database_grants,
    pg_admin_grants,
)
from tests.support import ISSUED_PASSWORDS, VaultHTTP, pg_logs_in, run_cli

APP_POLICY = 'path "db/creds/ro" {\n  capabilities = ["read"]\n}\n'


@dataclass(frozen=True)
class Target:
    """A target admin of this module's own (production's shape: CREATEROLE, no
    superuser), so its password can be changed and rotated without touching the suite's,
    and an account for a static role that it administers."""

    admin: str
    password_file: Path
    account: str


async def _superuser(pg: PgCluster, database: str = "postgres") -> asyncpg.Connection:
    return await asyncpg.connect(pg.dsn(database))


@pytest.fixture
async def target(pg_target: PgCluster, tmp_path: Path) -> AsyncIterator[Target]:
    tag = secrets.token_hex(3)
    admin, account = f"brkt_decl_admin_{tag}", f"brkt_decl_owner_{tag}"
    password = "adm-" + secrets.token_hex(12)
    ISSUED_PASSWORDS.add(password)  # the session checks no log line ever held one
    conn = await _superuser(pg_target)
    try:
        for statement in pg_admin_grants(admin, password):
            await conn.execute(statement)
        await conn.execute(f"CREATE ROLE {account} LOGIN PASSWORD 'initial-pw'")
        await conn.execute(f"GRANT {account} TO {admin} WITH ADMIN OPTION")
    finally:
        await conn.close()
    app = await _superuser(pg_target, "app")
    try:
        for statement in pg_admin_database_grants(admin, "app"):
            await app.execute(statement)
    finally:
        await app.close()
    password_file = tmp_path / "secrets" / "pg-admin"
    password_file.parent.mkdir()
    password_file.write_text(password + "\n")
    yield Target(admin, password_file, account)
    for database in ("app", "postgres"):
        conn = await _superuser(pg_target, database)
        try:
            await conn.execute(f"DROP OWNED BY {admin}")
            if database == "postgres":
                await conn.execute(f"DROP ROLE IF EXISTS {account}")
                await conn.execute(f"DROP ROLE IF EXISTS {admin}")
        finally:
            await conn.close()


def _config(
    storage_dsn: str,
    pg: PgCluster,
    target: Target,
    audit_dir: Path,
    *,
    role_max_ttl: str = "24h",
    policies: tuple[str, ...] = ("app-read",),
    roles: tuple[str, ...] = ("ro",),
    prune: str = '["policies", "auth_roles"]',
    serial: int = 1,
) -> str:
    """A configuration file: settings for ``broker apply`` and the declarative section."""
    lines = [
        f'storage_dsn = "{storage_dsn}"',
        f'audit_file_dirs = ["{audit_dir}"]',
        "",
        "[declarative]",
        f"serial = {serial}",
        f"prune = {prune}",
        "",
        "[declarative.password_policies.brkt-strong]",
        "policy = '''",
        "length = 24",
        'rule "charset" { charset = "abcdefghijklmnopqrstuvwxyz0123456789" }',
        "'''",
        "",
        "[declarative.audit.trail]",
        'type = "file"',
        f'options = {{ file_path = "{audit_dir / "audit.log"}" }}',
        "",
        "[declarative.mounts.db]",
        'description = "declared"',
        "",
        "[declarative.mounts.db.connections.pg]",
        'plugin_name = "postgresql-database-plugin"',
        f'connection_url = "{pg.url_template}"',
        f'username = "{target.admin}"',
        'password_file = "secrets/pg-admin"',
        f"allowed_roles = {list((*roles, 'owner'))!r}".replace("'", '"'),
        'password_policy = "brkt-strong"',
        "",
        "[declarative.mounts.db.static_roles.owner]",
        'db_name = "pg"',
        f'username = "{target.account}"',
        'rotation_period = "24h"',
        "",
        "[declarative.auth.apps]",
        'type = "approle"',
        "",
        "[declarative.auth.apps.roles.billing]",
        'token_policies = ["app-read"]',
        'token_ttl = "15m"',
        'secret_id_ttl = "1h"',
    ]
    for name in policies:
        lines += ["", f"[declarative.policies.{name}]", f"policy = '''\n{APP_POLICY}'''"]
    for name in roles:
        lines += [
            "",
            f"[declarative.mounts.db.roles.{name}]",
            'db_name = "pg"',
            f"creation_statements = '''{PG_READONLY}'''",
            'default_ttl = "1h"',
            f'max_ttl = "{role_max_ttl}"',
        ]
    return "\n".join(lines) + "\n"


async def _apply_cli(path: Path, *flags: str) -> CompletedProcess[str]:
    return await asyncio.to_thread(run_cli, "apply", "--config", str(path), *flags)


def _lines(result: CompletedProcess[str], action: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith(action)]


async def _creds_log_in(http: VaultHTTP, pg: PgCluster, token: str | None = None) -> None:
    reply = await http.call("GET", "db/creds/ro", token=token)
    assert reply.status == 200, reply.body
    ISSUED_PASSWORDS.add(reply.data["password"])
    assert await pg_logs_in(pg.server.port, reply.data["username"], reply.data["password"])


def _summaries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("declarative configuration from ")
    ]


async def test_empty_storage_is_set_up_at_start_and_a_restart_changes_nothing(
    pg_target: PgCluster,
    fresh_storage_db: str,
    target: Target,
    http_session: aiohttp.ClientSession,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="broker.server.bootstrap")
    dsn = pg_target.dsn(fresh_storage_db)
    path = tmp_path / "broker.toml"
    path.write_text(_config(dsn, pg_target, target, tmp_path))
    settings = own_broker_settings(
        dsn,
        declarative_file=str(path),
        audit_file_dirs=(str(tmp_path),),
        allow_api_audit_creation=False,
    )
    runner = await start_server(settings)
    http = VaultHTTP(http_session, f"http://{settings.listen_address}", TOKEN)
    try:
        assert (await http.read("sys/mounts")).body["db/"]["description"] == "declared"
        connection = (await http.read("db/config/pg")).data
        assert connection["connection_details"]["username"] == target.admin
        assert connection["password_policy"] == "brkt-strong"
        assert (await http.read("db/roles/ro")).data["max_ttl"] == 86400
        policy = (await http.read("sys/policies/acl/app-read")).data
        assert policy["policy"] == APP_POLICY
        assert (await http.read("sys/policies/password/brkt-strong")).status == 200
        # The file's audit device exists although the API may not create one...
        devices = (await http.read("sys/audit")).body
        assert devices["trail/"]["options"]["file_path"] == str(tmp_path / "audit.log")
        # ...and the API may not.
        refused = await http.write("sys/audit/other", {"type": "table"})
        assert refused.status == 403
        assert "allow_api_audit_creation" in refused.errors[0]
        # The declared connection works: logins issued through it log in.
        await _creds_log_in(http, pg_target)
        static = (await http.read("db/static-creds/owner")).data
        ISSUED_PASSWORDS.add(static["password"])
        assert static["password"] != "initial-pw"
        assert await pg_logs_in(pg_target.server.port, target.account, static["password"])
        # An AppRole login gets the declared policy, which reaches the declared role.
        role_id = (await http.read("auth/apps/role/billing/role-id")).data["role_id"]
        secret_id = (await http.write("auth/apps/role/billing/secret-id")).data["secret_id"]
        login = await http.call(
            "POST", "auth/apps/login", {"role_id": role_id, "secret_id": secret_id}, token=""
        )
        assert login.status == 200, login.body
        assert login.body["auth"]["policies"] == ["app-read", "default"]
        await _creds_log_in(http, pg_target, token=login.body["auth"]["client_token"])
        assert (await http.read("sys/audit")).status == 200
        assert (tmp_path / "audit.log").stat().st_size > 0
    finally:
        await http.write("sys/leases/revoke-prefix/db/")
        await runner.cleanup()

    runner = await start_server(settings)  # a restart: the same file, nothing to do
    try:
        first, second = _summaries(caplog)
        assert "to create" in first and "failed" not in first
        assert second.endswith("applied: 9 unchanged"), second
        again = (await http.read("auth/apps/role/billing/role-id")).data["role_id"]
        assert again == role_id  # kept, not regenerated
    finally:
        await runner.cleanup()
    dry = await _apply_cli(path, "--dry-run", "--detailed-exitcode")
    assert dry.returncode == 0, dry.stderr
    assert len(_lines(dry, "unchanged")) == 9 and "9 unchanged" in dry.stderr


async def test_changes_drift_and_pruning(
    pg_target: PgCluster,
    fresh_storage_db: str,
    target: Target,
    http_session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """``broker apply`` beside a running node: the file changes, objects are changed
    through the API, a dry run reports both and changes nothing, the apply fixes them and
    deletes only what the file manages and prunes."""
    dsn = pg_target.dsn(fresh_storage_db)
    path = tmp_path / "broker.toml"
    v1 = {"policies": ("app-read", "old-policy"), "roles": ("ro", "legacy")}
    path.write_text(_config(dsn, pg_target, target, tmp_path, **v1))  # type: ignore[arg-type]
    settings = own_broker_settings(dsn, audit_file_dirs=(str(tmp_path),))
    runner = await start_server(settings)
    http = VaultHTTP(http_session, f"http://{settings.listen_address}", TOKEN)
    try:
        first = await _apply_cli(path)
        assert first.returncode == 0, first.stdout + first.stderr
        assert len(_lines(first, "create")) == 11
        await _creds_log_in(http, pg_target)

        # Outside the file: a policy of the API's own, and a role's TTL changed (drift).
        made = await http.write("sys/policies/acl/api-made", {"policy": APP_POLICY})
        assert made.status == 204
        assert (await http.write("db/roles/ro", {"default_ttl": "2m"})).status == 204
        # The file: a role's max_ttl changed, a pruned kind's object and an unpruned
        # kind's object removed, a policy added.
        v2 = {
            "serial": 2,
            "role_max_ttl": "2h",
            "policies": ("app-read", "new-policy"),
            "roles": ("ro",),
        }
        path.write_text(_config(dsn, pg_target, target, tmp_path, **v2))  # type: ignore[arg-type]

        dry = await _apply_cli(path, "--dry-run", "--detailed-exitcode")
        assert dry.returncode == 2, dry.stdout + dry.stderr
        update = _lines(dry, "update")
        assert len(update) == 2, dry.stdout
        role_line = next(line for line in update if "db/roles/ro" in line)
        assert "[default_ttl, max_ttl]" in role_line
        assert "drift: default_ttl changed outside the file" in role_line
        # allowed_roles no longer names 'legacy': the connection is updated too.
        assert any("db/config/pg" in line and "[allowed_roles]" in line for line in update)
        assert _lines(dry, "create") == ["create     policy           sys/policies/acl/new-policy"]
        assert [line.split()[2] for line in _lines(dry, "delete")] == [
            "sys/policies/acl/old-policy"
        ]
        released = _lines(dry, "release")
        assert len(released) == 1 and "db/roles/legacy" in released[0]
        assert "'roles' is not in prune" in released[0]
        assert "api-made" not in dry.stdout
        assert "1 drifted" in dry.stderr
        # The dry run changed nothing.
        assert (await http.read("db/roles/ro")).data["default_ttl"] == 120
        assert (await http.read("sys/policies/acl/old-policy")).status == 200
        assert (await http.read("sys/policies/acl/new-policy")).status == 404

        applied = await _apply_cli(path)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        ro = (await http.read("db/roles/ro")).data
        assert (ro["default_ttl"], ro["max_ttl"]) == (3600, 7200)
        assert (await http.read("sys/policies/acl/old-policy")).status == 404
        assert (await http.read("sys/policies/acl/new-policy")).status == 200
        assert (await http.read("sys/policies/acl/api-made")).status == 200
        assert (await http.read("db/roles/legacy")).status == 200  # released, kept
        await _creds_log_in(http, pg_target)

        # Idempotent: nothing left to do, and a released object stays unmanaged.
        again = await _apply_cli(path, "--dry-run", "--detailed-exitcode")
        assert again.returncode == 0, again.stdout
        assert {line.split()[0] for line in again.stdout.splitlines()} == {"unchanged"}

        # rotate-root: only the broker knows the admin's password now. The file's (old)
        # password is not written back, so the connection keeps working.
        assert (await http.write("db/rotate-root/pg")).status == 204
        after_rotation = await _apply_cli(path, "--detailed-exitcode", "--dry-run")
        assert after_rotation.returncode == 0, after_rotation.stdout
        await _creds_log_in(http, pg_target)

        # A new password in the file (the operator changed it on the target) is written.
        password = "adm-" + secrets.token_hex(12)
        ISSUED_PASSWORDS.add(password)
        conn = await _superuser(pg_target)
        try:
            await conn.execute(f"ALTER ROLE {target.admin} PASSWORD '{password}'")
        finally:
            await conn.close()
        target.password_file.write_text(password)
        changed = await _apply_cli(path)
        assert changed.returncode == 0, changed.stdout + changed.stderr
        assert [line.split()[-1] for line in _lines(changed, "update")] == ["[password]"]
        assert password not in changed.stdout + changed.stderr
        await _creds_log_in(http, pg_target)  # the running node picked it up by itself

        # The previous file again (a node restarted mid-roll with the old ConfigMap): its
        # serial is older than the one applied, so nothing of it is applied.
        path.write_text(_config(dsn, pg_target, target, tmp_path, **v1))  # type: ignore[arg-type]
        stale = await _apply_cli(path)
        assert stale.returncode == 1
        assert "serial 1 is older than the one applied last (2)" in stale.stdout
        assert (await http.read("sys/policies/acl/old-policy")).status == 404

        # A record planted in storage (the policies are pruned: believed, it would have the
        # apply delete the API's policy) is refused, and nothing is applied.
        path.write_text(_config(dsn, pg_target, target, tmp_path, **v2))  # type: ignore[arg-type]
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "INSERT INTO broker_declared (kind, path, applied) VALUES ($1, $2, $3)",
                "policy",
                "sys/policies/acl/api-made",
                '{"key": ["api-made"], "values": {}}',
            )
        finally:
            await conn.close()
        planted = await _apply_cli(path)
        assert planted.returncode == 1 and "integrity" in planted.stderr, planted.stderr
        assert (await http.read("sys/policies/acl/api-made")).status == 200
    finally:
        await http.write("sys/leases/revoke-prefix/db/")
        await runner.cleanup()


async def test_two_nodes_starting_together_apply_once(
    pg_target: PgCluster,
    fresh_storage_db: str,
    target: Target,
    http_session: aiohttp.ClientSession,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="broker.server.bootstrap")
    dsn = pg_target.dsn(fresh_storage_db)
    path = tmp_path / "broker.toml"
    path.write_text(_config(dsn, pg_target, target, tmp_path))
    nodes = [
        own_broker_settings(
            dsn,
            declarative_file=str(path),
            audit_file_dirs=(str(tmp_path),),
            node_id=f"brkt-node-{i}",
        )
        for i in range(2)
    ]
    runners = await asyncio.gather(*(start_server(s) for s in nodes))
    try:
        summaries = _summaries(caplog)
        assert len(summaries) == 2 and not any("failed" in s for s in summaries), summaries
        assert sum(s.endswith("applied: 9 to create") for s in summaries) == 1, summaries
        assert sum(s.endswith("applied: 9 unchanged") for s in summaries) == 1, summaries
        role_ids = set()
        for settings in nodes:
            http = VaultHTTP(http_session, f"http://{settings.listen_address}", TOKEN)
            assert list((await http.read("sys/audit")).data) == ["trail/"]
            mounts = [m for m in (await http.read("sys/mounts")).data if m.startswith("db")]
            assert mounts == ["db/"]
            role = await http.read("auth/apps/role/billing/role-id")
            role_ids.add(role.data["role_id"])
            await _creds_log_in(http, pg_target)
        assert len(role_ids) == 1
    finally:
        http = VaultHTTP(http_session, f"http://{nodes[0].listen_address}", TOKEN)
        await http.write("sys/leases/revoke-prefix/db/")
        for runner in runners:
            await runner.cleanup()


async def test_an_inline_password_is_refused(tmp_path: Path, pg_target: PgCluster) -> None:
    path = tmp_path / "broker.toml"
    path.write_text(
        'storage_dsn = "postgresql://127.0.0.1:1/none"\n'
        "[declarative.mounts.db.connections.pg]\n"
        'plugin_name = "postgresql-database-plugin"\n'
        f'connection_url = "{pg_target.url_template}"\n'
        'username = "admin"\n'
        'password = "hunter2-inline"\n'
    )
    settings = own_broker_settings("postgresql://127.0.0.1:1/none", declarative_file=str(path))
    with pytest.raises(DeclarativeConfigError, match="an inline password is refused"):
        await start_server(settings)  # before storage is touched
    result = await _apply_cli(path, "--dry-run")
    assert result.returncode == 1
    assert "inline password is refused" in result.stderr
    assert "password_env" in result.stderr and "hunter2" not in result.stderr
