"""``broker role`` and ``broker connection`` for admins, as a user runs them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.conftest import PG_READONLY, RunningBroker
from tests.support import ISSUED_PASSWORDS, run_cli


async def test_role_and_connection_commands(broker: RunningBroker, tmp_path: Path) -> None:
    env = {"BROKER_ADDR": broker.address, "BROKER_TOKEN": broker.http.token}
    statements = tmp_path / "create.sql"
    statements.write_text(PG_READONLY + "\n")

    async def cli(*args: str, stdin: str = "") -> tuple[int, str, str]:
        done = await asyncio.to_thread(run_cli, *args, env=env, stdin=stdin)
        return done.returncode, done.stdout, done.stderr

    code, out, err = await cli(
        "role",
        "write",
        "brkt-cli-role",
        "db_name=pg",
        f"creation_statements=@{statements}",
        "default_ttl=10m",
    )
    assert code == 0, err
    code, out, err = await cli("role", "read", "brkt-cli-role", "--format", "json")
    assert code == 0, err
    role = json.loads(out)
    assert role["creation_statements"] == [PG_READONLY] and role["default_ttl"] == 600
    code, out, _ = await cli("role", "list")
    assert "brkt-cli-role" in out.split()
    code, out, _ = await cli("role", "read", "brkt-cli-role")
    assert code == 0 and "default_ttl" in out and "600" in out  # the table
    creds = await broker.http.creds("brkt-cli-role")
    ISSUED_PASSWORDS.add(creds.data["password"])
    await broker.http.write(f"sys/leases/revoke/{creds.body['lease_id']}")
    code, out, _ = await cli("role", "delete", "brkt-cli-role")
    assert code == 0
    code, _, err = await cli("role", "read", "brkt-cli-role")
    assert code == 1 and "no role" in err

    # A connection's secret comes from stdin, never argv; reads never show it.
    code, out, err = await cli(
        "connection",
        "write",
        "my",
        "allowed_roles=brkt-my-ro",
        "allowed_roles=brkt-my-short",
        "password=-",
        stdin="\n",
    )
    assert code == 0, err
    code, out, _ = await cli("connection", "read", "my", "--format", "json")
    connection = json.loads(out)
    assert connection["allowed_roles"] == ["brkt-my-ro", "brkt-my-short"]
    assert "password" not in connection["connection_details"]
    code, out, _ = await cli("connection", "list")
    assert {"my", "pg"} <= set(out.split())
    code, _, err = await cli("role", "write", "x", "not-a-pair")
    assert code == 2 and "key=value" in err
