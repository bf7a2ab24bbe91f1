"""Auth method configs and roles (Kubernetes, JWT/OIDC) are sealed in storage: the reviewer
JWT they may hold is never in plain text there, and a storage writer can neither plant a
role of their own, nor move one role's body onto another, nor edit one (each is refused,
counted and alerted on, never used). Played at the store, with write access to the storage
database and no keyring, as docs/storage-threat-model.md describes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from broker.exceptions import RowIntegrityError
from broker.server.storage.connector import create_pool
from broker.server.storage.stores import Stores
from tests.conftest import PgCluster
from tests.support import unseal_for_test

Opened = tuple[Stores, asyncpg.Pool]
FAILED = r"storage integrity check failed \(broker_auth_entries\)"
REVIEWER = "eyJhbGciOiJSUzI1NiJ9.reviewer-secret-payload.sig"


@pytest.fixture
async def opened(
    pg_target: PgCluster, fresh_storage_db: str
) -> AsyncIterator[tuple[Stores, asyncpg.Pool]]:
    pool = await create_pool(pg_target.dsn(fresh_storage_db))
    try:
        stores = Stores.open(pool)
        await stores.migrate()
        await unseal_for_test(stores)
        for mount in ("k8s", "other"):
            assert await stores.auth.insert_auth_method(mount, "kubernetes", "", f"auth_{mount}")
        yield stores, pool
    finally:
        await pool.close()


async def test_bodies_are_sealed_and_round_trip(opened: Opened) -> None:
    stores, pool = opened
    config = {"kubernetes_host": "https://10.0.0.1", "token_reviewer_jwt": REVIEWER}
    await stores.auth.put_auth_entry("k8s", "config", "config", config)
    await stores.auth.put_auth_entry("k8s", "role", "app", {"policies": ["app"]})
    assert await stores.auth.get_auth_entry("k8s", "config", "config") == config
    assert await stores.auth.list_auth_entries("k8s", "role") == ["app"]
    dumped = await pool.fetchval("SELECT string_agg(body, ' ') FROM broker_auth_entries")
    assert REVIEWER not in dumped and "reviewer-secret" not in dumped
    assert "kubernetes_host" not in dumped  # the whole body is sealed, not only secrets
    # Rows go with their method.
    assert await stores.auth.delete_auth_method("k8s")
    assert await pool.fetchval("SELECT count(*) FROM broker_auth_entries") == 0


async def test_a_planted_plain_role_is_refused(opened: Opened) -> None:
    stores, pool = opened
    await pool.execute(
        "INSERT INTO broker_auth_entries (mount, kind, name, body) VALUES ($1, $2, $3, $4)",
        "k8s",
        "role",
        "planted",
        '{"policies": ["admin"], "bound_service_account_names": ["*"]}',
    )
    with pytest.raises(RowIntegrityError, match=FAILED):
        await stores.auth.get_auth_entry("k8s", "role", "planted")


async def test_a_body_moved_to_another_role_or_mount_is_refused(
    opened: tuple[Stores, asyncpg.Pool],
) -> None:
    stores, pool = opened
    await stores.auth.put_auth_entry("k8s", "role", "admin", {"policies": ["admin"]})
    await stores.auth.put_auth_entry("k8s", "role", "app", {"policies": ["app"]})
    await stores.auth.put_auth_entry("other", "role", "app", {"policies": ["app"]})
    admin_body = await pool.fetchval(
        "SELECT body FROM broker_auth_entries WHERE mount = 'k8s' AND name = 'admin'"
    )
    await pool.execute("UPDATE broker_auth_entries SET body = $1 WHERE name = 'app'", admin_body)
    for mount in ("k8s", "other"):
        with pytest.raises(RowIntegrityError, match=FAILED):
            await stores.auth.get_auth_entry(mount, "role", "app")


async def test_an_edited_body_is_refused(opened: Opened) -> None:
    stores, pool = opened
    await stores.auth.put_auth_entry("k8s", "role", "app", {"policies": ["app"]})
    body: str = await pool.fetchval("SELECT body FROM broker_auth_entries WHERE name = 'app'")
    prefix, sealed = body.rsplit(":", 1)
    flipped = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    await pool.execute(
        "UPDATE broker_auth_entries SET body = $1 WHERE name = 'app'", f"{prefix}:{flipped}"
    )
    with pytest.raises(RowIntegrityError, match=FAILED):
        await stores.auth.get_auth_entry("k8s", "role", "app")
