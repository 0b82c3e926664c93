"""The dashboard in a real browser (Debian's Chromium, headless, driven by Playwright)
against a real `accord serve` process that signs people in through a real OIDC provider.

alice files a request, bob approves it from his inbox, alice's open page turns active
without a reload, dave (auditor) sees the timeline with verified badges; a form posted
without its CSRF token is refused. Screenshots of the key pages go to test-artifacts/.
Every page runs under the server's Content-Security-Policy: a violation, or a script
error, reported by the browser in any test fails it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serverproc import Server
from tests.web.oidc_provider import Provider

CHROMIUM = Path("/usr/bin/chromium")
REQUIRE = os.environ.get("ACCORD_REQUIRE_BROWSER") == "1"
ARTIFACTS = Path(os.environ.get("ACCORD_ARTIFACTS",
                                Path(__file__).resolve().parents[2] / "test-artifacts"))
# Flags for a sandboxed, offline machine: no first-run work, no calls home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]

POLICY = """\
users: [alice, bob, carol, dave]
groups:
  engineers: [alice]
  leads: [bob]
  dba: [carol]
  admins: [carol]
  auditors: [dave]
  oncall: [alice]
accord: {admins: [admins], auditors: [auditors]}
break_glass: {groups: [oncall], reviewers: [admins], max_duration: 1h}
web:
  token_login: false
  oidc: {issuer: "ISSUER", client_id: accord, label: Test SSO}
ledger: {checkpoint_interval: 1s}
resources:
  - {name: orders-db, kind: postgres, description: Production orders, labels: {env: prod},
     owners: [dba], roles: [read, write]}
workflows:
  - name: prod
    match: 'resource.labels.env == "prod"'
    max_duration: 4h
    steps: [{name: lead, approvers: [leads]}]
"""

if not CHROMIUM.exists():
    if REQUIRE:
        pytest.fail("ACCORD_REQUIRE_BROWSER=1 but /usr/bin/chromium is missing "
                    "(apt-get install chromium)", pytrace=False)
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    p = Provider().start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def server(provider: Provider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("browser")
    config = tmp / "accord.yaml"
    config.write_text(POLICY.replace("ISSUER", provider.url), encoding="utf-8")
    env = {**os.environ, "ACCORD_DATABASE_URL": f"sqlite:///{tmp / 'accord.db'}",
           "ACCORD_DATA_DIR": str(tmp)}
    s = Server(env, config, tmp / "server.log")
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


# What the browser reported in the current test: CSP violations and uncaught script errors.
REPORTED: list[str] = []


@pytest.fixture(autouse=True)
def nothing_refused() -> Iterator[None]:
    REPORTED.clear()
    yield
    assert REPORTED == [], REPORTED


def watch(page: Page) -> Page:
    page.on("console", lambda m: REPORTED.append(m.text)
            if "Content Security Policy" in m.text else None)
    page.on("pageerror", lambda e: REPORTED.append(f"script error: {e}"))
    return page


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(browser: Browser, server: Server, provider: Provider, user: str,
            **context: object) -> Page:
    page = watch(browser.new_context(**context).new_page())  # type: ignore[arg-type]
    page.set_default_timeout(15_000)
    provider.next_user = user
    page.goto(server.url + "/")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.get_by_role("link", name="Sign in with Test SSO").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.locator(".whoami")).to_contain_text(user)
    return page


def test_request_approve_and_audit_in_the_browser(
        browser: Browser, server: Server, provider: Provider) -> None:
    # alice asks; before filing, the form shows who will have to approve
    alice = sign_in(browser, server, provider, "alice")
    alice.get_by_role("link", name="New request").click()
    alice.get_by_label("orders-db").check()
    alice.get_by_label("Role", exact=True).select_option("read")
    alice.get_by_label("For how long").fill("1h")
    alice.get_by_label("Why").fill("INC-7: customers see stale order totals")
    expect(alice.locator("#preview")).to_contain_text("lead: 1 of bob")
    shot(alice, "new-request")
    alice.get_by_role("button", name="File request").click()
    expect(alice.get_by_role("heading", name=re.compile(r"Request #\d+"))).to_be_visible()
    rid = alice.url.rsplit("/", 1)[1].split("?")[0]
    expect(alice.locator(".summary .status")).to_have_text("pending")
    expect(alice.locator("html")).to_have_attribute("data-live", "on")

    # bob approves from his inbox, with the context to decide
    bob = sign_in(browser, server, provider, "bob")
    bob.get_by_role("link", name="Approvals").click()
    card = bob.locator(f"#inbox-{rid}")
    expect(card).to_contain_text("alice asks for read on orders-db")
    expect(card).to_contain_text("workflow prod")
    shot(bob, "inbox")
    card.get_by_label("Comment (optional)").fill("checked INC-7")
    card.get_by_role("button", name=f"Approve #{rid}").click()
    expect(bob.get_by_role("status")).to_have_text("Approved.")
    expect(bob.locator("#inbox-empty")).to_be_visible()

    # alice's open page turns active without a reload (server-sent events)
    expect(alice.locator(".summary .status")).to_have_text("active")

    # dave, the auditor, sees every event of the request verified against a checkpoint
    dave = sign_in(browser, server, provider, "dave")
    dave.goto(f"{server.url}/requests/{rid}")
    events = dave.locator("#timeline .event")
    expect(events.locator("code")).to_have_text(
        ["request.created", "approval.recorded", "request.approved", "grant.activated"])
    # Badges turn verified live, once the next checkpoint covers the events.
    expect(dave.locator("#timeline .badge.verified")).to_have_count(4)
    shot(dave, "request-detail")
    dave.get_by_role("link", name="Audit log").click()
    expect(dave.locator("#ledger-verdict")).to_contain_text("verified")
    shot(dave, "audit")

    # and downloads the period's access report as a PDF
    dave.get_by_role("link", name="Reports").click()
    dave.get_by_label("Format").select_option("pdf")
    with dave.expect_download() as download:
        dave.get_by_role("button", name="Download").click()
    saved = ARTIFACTS / "access-report.pdf"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    download.value.save_as(saved)
    assert saved.read_bytes().startswith(b"%PDF")
    dave.reload()
    shot(dave, "reports")

    # alice sees her access among the active grants
    alice.get_by_role("link", name="Active access").click()
    expect(alice.locator("tbody tr")).to_have_count(1)
    expect(alice.locator("tbody tr")).to_contain_text("orders-db")
    shot(alice, "grants")
    alice.get_by_role("link", name="Overview").click()
    expect(alice.locator("#count-active")).to_have_text("1")
    shot(alice, "overview")


def test_a_form_without_its_csrf_token_is_refused(
        browser: Browser, server: Server, provider: Provider) -> None:
    page = sign_in(browser, server, provider, "alice")
    page.goto(server.url + "/my")
    before = page.locator("tbody tr").count()
    # The same post the form makes, with the browser's session cookie but no token.
    response = page.request.post(server.url + "/requests/new", form={
        "resource": "orders-db", "role": "read", "duration": "1h",
        "reason": "INC-8: should never be filed"}, headers={"Accept": "text/html"})
    assert response.status == 403
    assert "security token" in response.text()
    assert "Traceback" not in response.text()
    page.reload()
    expect(page.locator("tbody tr")).to_have_count(before)


def test_form_errors_are_clear_and_the_layout_fits_a_phone(
        browser: Browser, server: Server, provider: Provider) -> None:
    page = sign_in(browser, server, provider, "alice",
                   viewport={"width": 375, "height": 740}, is_mobile=True)
    page.goto(server.url + "/requests/new")
    page.get_by_label("orders-db").check()
    page.get_by_label("Role", exact=True).select_option("write")
    page.get_by_label("For how long").fill("9h")
    page.get_by_label("Why").fill("INC-9: too long on purpose")
    page.get_by_role("button", name="File request").click()
    error = page.locator(".field-error").first
    expect(error).to_contain_text("over the maximum of 4h")
    # nothing is wider than the screen
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    shot(page, "phone-form-error")
    # keyboard: the skip link is the first stop and moves focus to the content
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()


def test_break_glass_alert_and_review_in_the_browser(
        browser: Browser, server: Server, provider: Provider) -> None:
    alice = sign_in(browser, server, provider, "alice")
    alice.goto(server.url + "/requests/new")
    alice.get_by_label("orders-db").check()
    alice.get_by_label("Role", exact=True).select_option("write")
    alice.get_by_label("For how long").fill("30m")
    alice.get_by_label("Why").fill("SEV1: order writes failing, lead unreachable")
    alice.get_by_label("Emergency (break-glass)").check()
    expect(alice.locator("#preview")).to_contain_text("Break-glass")
    alice.get_by_role("button", name="File request").click()
    expect(alice.locator(".summary")).to_contain_text("break-glass")
    expect(alice.locator(".summary .status").first).to_have_text("active")
    rid = alice.url.rsplit("/", 1)[1].split("?")[0]

    carol = sign_in(browser, server, provider, "carol")  # an admin, and a reviewer
    carol.get_by_role("link", name="Alerts").click()
    # The worker's detectors raise it within a round; the page shows it live.
    card = carol.locator("article.alert", has_text="broke the glass")
    expect(card).to_be_visible()
    expect(card).to_contain_text("high")
    expect(card).to_contain_text("Closes when the request is reviewed")
    shot(carol, "alerts")
    card.get_by_role("link", name=f"request:{rid}").click()
    carol.get_by_label("Justified", exact=True).check()
    carol.get_by_label("What you checked").fill("SEV1 INC-9 confirmed with on-call notes")
    carol.get_by_role("button", name="Record review").click()
    expect(carol.locator("#review-state")).to_contain_text("justified by carol")
    carol.goto(server.url + "/alerts?status=resolved")
    expect(carol.locator("article.alert", has_text="broke the glass")).to_contain_text(
        "resolved by carol")


def test_every_page_and_the_api_docs_work_under_the_content_security_policy(
        browser: Browser, server: Server, provider: Provider) -> None:
    carol = sign_in(browser, server, provider, "carol")  # an admin: every page is hers
    elsewhere: list[str] = []
    carol.on("request", lambda r: elsewhere.append(r.url)
             if not r.url.startswith(server.url) else None)
    for path in ["/", "/requests/new", "/my", "/inbox", "/requests", "/grants", "/reviews",
                 "/alerts", "/reports", "/audit"]:
        response = carol.goto(server.url + path)
        assert response is not None and response.status == 200, path
        csp = response.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp, path
        expect(carol.locator("main h1")).to_be_visible()
    # the script still works: the form previews the workflow as you type
    carol.goto(server.url + "/requests/new")
    carol.get_by_label("orders-db").check()
    carol.get_by_label("Role", exact=True).select_option("read")
    carol.get_by_label("For how long").fill("1h")
    carol.get_by_label("Why").fill("INC-10: check the preview under the CSP")
    expect(carol.locator("#preview")).to_contain_text("lead: 1 of bob")
    # Swagger UI, from the server's own files, renders the API and can call it
    carol.goto(server.url + "/docs")
    expect(carol.locator(".swagger-ui .info .title")).to_contain_text("Accord")
    operation = carol.locator(".opblock-summary-path", has_text="/api/v1/resources").first
    expect(operation).to_be_visible()
    operation.click()
    carol.get_by_role("button", name="Try it out").click()
    carol.get_by_role("button", name="Execute").click()
    # the call went out from the page (no token: a 401 problem), rendered by Swagger UI
    expect(carol.locator(".live-responses-table tbody .response-col_status").first).to_contain_text(
        "401")
    shot(carol, "api-docs")
    assert elsewhere == [], elsewhere  # nothing loaded from another host
    assert REPORTED == [], REPORTED
    # another site that frames a page of ours gets nothing: the browser refuses
    framed = watch(browser.new_context().new_page())
    framed.set_content(f'<iframe src="{server.url}/login"></iframe>')
    expect(framed.frame_locator("iframe").get_by_role("heading")).to_have_count(0)
    assert any("frame-ancestors" in m for m in REPORTED), REPORTED
    REPORTED.clear()  # that refusal was the point
