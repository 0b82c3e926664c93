"""The newcomer's "alice connects through the gateway" step, in a real browser.

alice signs in (with her API token), opens her grant's request page, gets a connection
token from the Connect section, connects through the real gateway with exactly the
DSN the page showed her and runs a query; dave, the auditor, then finds the statement
on the audit page. Playwright drives Debian's Chromium; the world (a real gateway in
front of a real PostgreSQL) is tests/gateway/conftest.py's.
"""

from __future__ import annotations

import re

import psycopg
import pytest

from accord.ledger.upkeep import integrate_all
from tests.gateway.conftest import World

pytestmark = pytest.mark.postgres

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

# The browser test module's Chromium, flags and CSP watch (importing it skips this module,
# or fails it under ACCORD_REQUIRE_BROWSER=1, when Debian's chromium is missing).
from tests.web.test_browser import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    PHONE,
    REPORTED,
    fits,
    shot,
    watch,
)


def token_sign_in(browser: Browser, url: str, token: str, **context: object) -> Page:
    page = watch(browser.new_context(**context).new_page())  # type: ignore[arg-type]
    page.set_default_timeout(15_000)
    page.goto(url + "/login")
    page.get_by_label("Token from accord token issue").fill(token)
    page.get_by_role("button", name="Sign in with token").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    return page


def test_alice_connects_with_what_her_grant_page_shows(world: World, live_url: str) -> None:
    grant = world.grant("alice", "read")
    rid = grant["request_id"]
    REPORTED.clear()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=CHROMIUM_ARGS)
        try:
            alice = token_sign_in(browser, live_url, world.env.tokens["alice"], **PHONE)
            alice.get_by_role("link", name="Active access").click()
            alice.locator("tbody tr", has_text=f"Request #{rid}").get_by_role(
                "link", name="Connect").click()
            section = alice.locator("#connect")
            expect(section).to_contain_text(f"Grant #{grant['id']} lets you in as alice")
            alice.get_by_role("button", name="Get a connection token").click()
            expect(alice).to_have_url(re.compile(rf"/requests/{rid}#connect$"))
            psql = alice.locator("#connect-psql").inner_text()
            dsn = alice.locator("#connect-dsn").inner_text()
            assert f"port={world.port} dbname={world.resource} user=alice" in psql
            fits(alice, "connect token")
            shot(alice, "connect-390")
            # What she copies works: the DSN, as shown, through the gateway.
            with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
                assert conn.execute("select count(*) from orders").fetchone() == (100,)
            alice.reload()  # shown once
            expect(alice.locator("#connect-psql")).to_have_count(0)

            world.flush()
            integrate_all(world.env.st.sessions)  # the ledger worker's job (no worker here)
            dave = token_sign_in(browser, live_url, world.env.tokens["dave"])
            dave.goto(live_url + "/audit?type=gateway.statement")
            row = dave.locator("tbody tr").first
            expect(row).to_contain_text("gateway.statement")
            row.get_by_text(re.compile(r"\d+ fields")).click()
            expect(row).to_contain_text("select count(*) from orders")
            shot(dave, "audit-gateway-statement-1280")
        finally:
            browser.close()
    assert REPORTED == [], REPORTED
