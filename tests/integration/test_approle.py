"""AppRole through hvac: enable, configure a role, fetch its role ID and a secret ID, log
in, read credentials that really log in; use counts, CIDR bindings and bad logins."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from pathlib import Path
from typing import Any

import aiomysql
import hvac
import hvac.exceptions
import pytest

from tests.conftest import RunningBroker
from tests.support import ISSUED_PASSWORDS, run_cli

POLICY = 'path "database/creds/brkt-my-ro" { capabilities = ["read"] }'


@pytest.fixture(scope="module")
async def approle(broker: RunningBroker) -> str:
    """The AppRole method at auth/approle, and a policy for its tokens."""
    reply = await broker.http.write("sys/auth/approle", {"type": "approle"})
    assert reply.status in (204, 400), reply.body  # 400: enabled by an earlier module
    assert (await broker.http.write("sys/policy/brkt-app", {"policy": POLICY})).status == 204
    return "approle"


async def test_approle_login_then_creds(broker: RunningBroker, approle: str) -> None:
    role = "brkt-app-" + secrets.token_hex(3)

    def scenario() -> dict[str, Any]:
        admin = hvac.Client(url=broker.address, token=broker.http.token)
        admin.auth.approle.create_or_update_approle(
            role, token_policies=["brkt-app"], token_ttl="10m", secret_id_num_uses=1
        )
        role_id = admin.auth.approle.read_role_id(role)["data"]["role_id"]
        secret = admin.auth.approle.generate_secret_id(role)["data"]
        app = hvac.Client(url=broker.address)
        login = app.auth.approle.login(role_id=role_id, secret_id=secret["secret_id"])
        creds = app.secrets.database.generate_credentials("brkt-my-ro")
        ISSUED_PASSWORDS.add(creds["data"]["password"])
        with pytest.raises(hvac.exceptions.Forbidden):
            app.secrets.database.generate_credentials("brkt-pg-ro")
        # The secret ID had one use.
        with pytest.raises(hvac.exceptions.InvalidRequest):
            hvac.Client(url=broker.address).auth.approle.login(
                role_id=role_id, secret_id=secret["secret_id"]
            )
        return {"login": login, "creds": creds, "methods": admin.sys.list_auth_methods()}

    out = await asyncio.to_thread(scenario)
    auth = out["login"]["auth"]
    assert auth["policies"] == ["brkt-app", "default"]
    assert auth["metadata"] == {"role_name": role}
    assert 0 < auth["lease_duration"] <= 600
    assert "approle/" in out["methods"]["data"]
    username, password = out["creds"]["data"]["username"], out["creds"]["data"]["password"]
    assert username.startswith("v_brkt_")  # the AppRole role names the login
    conn = await aiomysql.connect(host="127.0.0.1", user=username, password=password)
    conn.close()
    await broker.http.write(f"sys/leases/revoke/{out['creds']['lease_id']}")


async def test_approle_refusals(broker: RunningBroker, approle: str) -> None:
    role = "brkt-cidr-" + secrets.token_hex(3)
    http = broker.http
    reply = await http.write(
        f"auth/approle/role/{role}",
        {"token_policies": "brkt-app", "secret_id_bound_cidrs": ["10.0.0.0/8"]},
    )
    assert reply.status == 204, reply.body
    role_id = (await http.read(f"auth/approle/role/{role}/role-id")).data["role_id"]
    secret = (await http.write(f"auth/approle/role/{role}/secret-id")).data
    # From 127.0.0.1, outside the bound block: refused, with nothing said about why.
    for body in (
        {"role_id": role_id, "secret_id": secret["secret_id"]},
        {"role_id": role_id, "secret_id": "wrong"},
        {"role_id": "wrong", "secret_id": secret["secret_id"]},
    ):
        reply = await http.call("POST", "auth/approle/login", body, token="")
        assert (reply.status, reply.body) == (400, {"errors": ["invalid role or secret ID"]})
    assert (await http.call("POST", "auth/approle/login", {}, token="")).status == 400

    # Secret IDs: looked up and destroyed by accessor; stored only hashed.
    accessors = (await http.list(f"auth/approle/role/{role}/secret-id")).data["keys"]
    assert secret["secret_id_accessor"] in accessors
    found = await http.write(
        f"auth/approle/role/{role}/secret-id-accessor/lookup",
        {"secret_id_accessor": secret["secret_id_accessor"]},
    )
    assert found.data["cidr_list"] == ["10.0.0.0/8"]
    gone = await http.write(
        f"auth/approle/role/{role}/secret-id-accessor/destroy",
        {"secret_id_accessor": secret["secret_id_accessor"]},
    )
    assert gone.status == 204
    assert (await http.list(f"auth/approle/role/{role}/secret-id")).status == 404

    bad = await http.write(f"auth/approle/role/{role}", {"secret_id_bound_cidrs": ["nope"]})
    assert bad.status == 400 and "CIDR" in bad.errors[0]
    bad = await http.write(f"auth/approle/role/{role}", {"token_num_uses": "many"})
    assert bad.status == 400
    assert (await http.write("sys/auth/x", {"type": "ldap"})).status == 400
    assert (await http.delete(f"auth/approle/role/{role}")).status == 204
    assert (await http.read(f"auth/approle/role/{role}")).status == 404


async def test_cli_login_with_approle_keeps_the_token(
    broker: RunningBroker, approle: str, tmp_path: Path
) -> None:
    role = "brkt-cli-" + secrets.token_hex(3)
    http = broker.http
    reply = await http.write(f"auth/approle/role/{role}", {"token_policies": "brkt-app"})
    assert reply.status == 204, reply.body
    role_id = (await http.read(f"auth/approle/role/{role}/role-id")).data["role_id"]
    secret_id = (await http.write(f"auth/approle/role/{role}/secret-id")).data["secret_id"]
    env = {"HOME": str(tmp_path), "VAULT_ADDR": broker.address, "BROKER_SECRET_ID": secret_id}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env=env)

    done = await asyncio.to_thread(run, "login", "--method", "approle", "--role-id", role_id)
    assert done.returncode == 0, done.stderr
    assert "brkt-app" in done.stdout and secret_id not in done.stdout + done.stderr
    token_file = tmp_path / ".broker-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    creds = await http.call("GET", "database/creds/brkt-my-ro", token=token)
    assert creds.status == 200
    ISSUED_PASSWORDS.add(creds.data["password"])
    await http.write(f"sys/leases/revoke/{creds.body['lease_id']}")
    refused = await asyncio.to_thread(run, "login", "--method", "approle", "--role-id", "nope")
    assert refused.returncode == 2 and "invalid role or secret ID" in refused.stderr
