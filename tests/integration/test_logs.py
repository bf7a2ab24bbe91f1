"""Request ids tie a response to its log lines; JSON logs are one object per line."""

from __future__ import annotations

import json

import aiohttp

from tests.conftest import TOKEN, RunningBroker, _LogCapture


async def test_request_id_in_header_body_and_log(
    broker: RunningBroker, no_password_in_logs: _LogCapture
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{broker.address}/v1/database/roles/brkt-pg-ro", headers={"X-Vault-Token": TOKEN}
        ) as resp,
    ):
        body = await resp.json()
        request_id = resp.headers["X-Request-Id"]
    assert body["request_id"] == request_id
    events = [json.loads(line) for line in no_password_in_logs.lines]
    access = [e for e in events if e.get("request_id") == request_id]
    assert access and access[-1]["logger"] == "broker.access"
    assert access[-1]["route"] == ":mount/roles/:name" and access[-1]["status"] == 200
    assert isinstance(access[-1]["duration_ms"], float)
