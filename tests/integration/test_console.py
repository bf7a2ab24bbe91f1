"""The web console end to end, in a real headless Chromium (Debian's): log in with a
token, see a credential issued through the API in the lease list, revoke it from the page,
and see the login stop working."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PgCluster, RunningBroker
from tests.support import eventually, pg_logs_in

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run does)"
)
# Loopback only, nothing fetched from anywhere: the console must need no network.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
    "--metrics-recording-only",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


@pytest.fixture
async def page() -> AsyncIterator[object]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            yield page
        finally:
            await browser.close()


def _lease_row(page: Any, lease_id: str) -> Any:
    return page.locator(f'#leases tr[data-lease-id="{lease_id}"]')


async def test_console_login_list_and_revoke(
    broker: RunningBroker, pg_target: PgCluster, page: object, tmp_path: Path
) -> None:
    from playwright.async_api import Page, expect

    assert isinstance(page, Page)
    failed_requests: list[str] = []
    page.on("requestfailed", lambda r: failed_requests.append(r.url))
    response = await page.goto(f"{broker.address}/ui")
    assert response is not None and response.status == 200
    assert "default-src 'none'" in response.headers["content-security-policy"]

    # A wrong token is refused on the page.
    await page.fill("#token", "not-a-token")
    await page.click("#login")
    await expect(page.locator("#login-error")).to_have_text("permission denied")

    await page.fill("#token", broker.http.token)
    await page.click("#login")
    await expect(page.locator("#mounts")).to_contain_text("database/")
    await expect(page.locator("#mounts")).to_contain_text("brkt-pg-ro")

    # A credential issued through the API appears with its time left.
    creds = await broker.http.creds("brkt-pg-ro")
    lease_id = creds.body["lease_id"]
    user, password = creds.data["username"], creds.data["password"]
    assert await pg_logs_in(pg_target.server.port, user, password)
    await page.click("#refresh")
    row = _lease_row(page, lease_id)
    await expect(row).to_be_visible()
    await expect(row).to_contain_text("59m")
    if os.environ.get("BROKER_CONSOLE_SCREENSHOT"):
        await page.screenshot(path=os.environ["BROKER_CONSOLE_SCREENSHOT"], full_page=True)
    await page.screenshot(path=str(tmp_path / "console.png"))

    # Revoked from the page: the row goes, and so does the login.
    await row.locator("button.revoke").click()
    await expect(row).to_have_count(0)

    async def gone() -> bool:
        return not await pg_logs_in(pg_target.server.port, user, password)

    await eventually(gone, within=10)
    lookup = await broker.http.read(f"sys/leases/history/{lease_id}")
    assert lookup.data["revoke_time"] is not None

    # Prefix revocation through the form (with its confirmation).
    more = [await broker.http.creds("brkt-pg-ro") for _ in range(2)]
    await page.click("#refresh")
    for c in more:
        await expect(
            page.locator(f'#leases tr[data-lease-id="{c.body["lease_id"]}"]')
        ).to_be_visible()
    page.once("dialog", lambda dialog: dialog.accept())
    await page.fill("#prefix", "database/creds/brkt-pg-ro/")
    await page.click("#revoke-prefix")
    for c in more:
        await expect(
            page.locator(f'#leases tr[data-lease-id="{c.body["lease_id"]}"]')
        ).to_have_count(0)
    assert not failed_requests, failed_requests
