"""The OpenAPI document at Vault's path describes every route the dispatcher serves, and
schemathesis, driven by it against a real broker, finds no 5xx and no answer outside it."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from broker.server.api.openapi import build_document
from broker.server.api.routes import APPROLE_ROUTES, DATABASE_ROUTES, SYS_ROUTES
from broker.server.api.routing import Operation
from broker.server.assembly import start_server
from tests.conftest import TOKEN, PgCluster, RunningBroker, own_broker_settings
from tests.support import VaultHTTP

_METHOD = {
    Operation.READ: "get",
    Operation.LIST: "get",
    Operation.UPDATE: "post",
    Operation.DELETE: "delete",
}


def test_every_route_and_operation_is_described() -> None:
    """Each route of the dispatcher's tables, with each operation it serves, is a
    documented path and method (a variable becomes ``x`` on both sides)."""
    document = build_document(SYS_ROUTES, DATABASE_ROUTES, ["db"], [("ar", APPROLE_ROUTES)])
    documented = {
        (method, re.sub(r"\{\w+\}", "x", path))
        for path, item in document["paths"].items()
        for method in item
    }
    tables = (("", SYS_ROUTES), ("db/", DATABASE_ROUTES), ("auth/ar/", APPROLE_ROUTES))
    for prefix, routes in tables:
        for route in routes:
            concrete = "/" + prefix + re.sub(r":\w+", "x", route.template)
            for operation in route.handlers:
                path = concrete + "/" if operation is Operation.LIST else concrete
                assert (_METHOD[operation], path.replace("//", "/")) in documented, (
                    route.template,
                    operation,
                )
    paths = document["paths"]
    op = paths["/db/creds/{name}"]["get"]
    assert "502" in op["responses"] and "500" not in op["responses"]
    assert paths["/sys/health"]["get"]["security"] == []
    assert "sudo" in paths["/sys/seal"]["post"]["description"]
    assert paths["/db/roles/"]["get"]["parameters"][-1]["name"] == "list"


async def test_document_is_served_at_vaults_path(broker: RunningBroker) -> None:
    reply = await broker.http.call("GET", "sys/internal/specs/openapi", token="")
    assert reply.status == 200
    assert reply.body["openapi"] == "3.1.0"
    assert "/database/creds/{name}" in reply.body["paths"]


# Everything but what would end the run early (sealing, revoking its own token) or reach
# outside the test (audit devices write files where they are told; Kubernetes and JWT
# methods call the hosts their config names, so no new auth method is enabled).
FUZZ_POLICY = """
path "*" { capabilities = ["create", "read", "update", "delete", "list", "sudo"] }
path "sys/seal" { capabilities = ["deny"] }
path "sys/audit/*" { capabilities = ["deny"] }
path "sys/auth/*" { capabilities = ["deny"] }
path "auth/token/revoke-self" { capabilities = ["deny"] }
"""


async def test_schemathesis_finds_no_server_error(
    pg_target: PgCluster, fresh_storage_db: str, http_session: object, tmp_path: Path
) -> None:
    settings = own_broker_settings(
        pg_target.dsn(fresh_storage_db),
        # Whatever connection URL the fuzzer invents, the broker connects to loopback only.
        allowed_target_hosts="127.0.0.1/32,::1/128,localhost",
        sweep_interval=0.5,
    )
    runner = await start_server(settings)
    address = f"http://{settings.listen_address}"
    try:
        import aiohttp

        assert isinstance(http_session, aiohttp.ClientSession)
        http = VaultHTTP(http_session, address, TOKEN)
        assert (await http.write("sys/mounts/database", {"type": "database"})).status == 204
        assert (await http.write("sys/auth/approle", {"type": "approle"})).status == 204
        assert (await http.write("sys/policy/fuzz", {"policy": FUZZ_POLICY})).status == 204
        made = await http.write("auth/token/create", {"policies": ["fuzz"], "ttl": "1h"})
        token = made.body["auth"]["client_token"]
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "st"),
            "run",
            f"{address}/v1/sys/internal/specs/openapi",
            "--url",
            f"{address}/v1",
            "--header",
            f"X-Vault-Token: {token}",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance",
            "--max-examples",
            "12",
            "--max-time",
            "40",
            "--phases",
            "examples,coverage,fuzzing",
            "--request-timeout",
            "15",
            "--seed",
            "20261129",
            # One worker: with several, hypothesis parses lambda sources in threads and
            # CPython 3.11's AST constructor can fail ("recursion depth mismatch"), seen here.
            "--workers",
            "1",
            "--generation-database",
            "none",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,
            env={**os.environ, "NO_COLOR": "1"},
        )
        out, _ = await proc.communicate()
        text = out.decode(errors="replace")
        assert proc.returncode == 0, text[-6000:]
        assert "passed" in text.lower()
        print(text[-1500:])  # the summary: shown with -s
    finally:
        await runner.cleanup()
