"""The dashboard in a real browser (Debian's Chromium, headless, driven by Playwright)
against a real `accord serve` process that signs people in through a real OIDC provider.

The newcomer's path, at desktop and at phone width: alice files a request (the form names
every wrong field and clears each as it is fixed), bob approves from his inbox and is told
who approves next, carol approves, alice's open page turns active without a reload (once
the worker has provisioned the access on a real PostgreSQL), alice gets a connection token
and connects through the gateway with the DSN and the psql line her page shows, dave
(auditor) sees the timeline verified, finds her statement in the audit log, and downloads a
report. That walk needs PostgreSQL (skipped without it, failed under
ACCORD_REQUIRE_POSTGRES=1); the other tests here run on SQLite alone.
Every page, for every role, at 390 px and at desktop width, has no horizontal scroll.
A form posted without its CSRF token is refused. Screenshots go to test-artifacts/ (each
named with its width). Every page runs under the server's Content-Security-Policy: a
violation, or a script error, reported by the browser in any test fails it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from accord.provisioning import postgres as pgconn
from tests.conftest import PG_ADMIN_URL, REQUIRE_PG, _pg_reachable
from tests.serverproc import ACCORD, Server, _free_port
from tests.web.oidc_provider import Provider

CHROMIUM = Path("/usr/bin/chromium")
REQUIRE = os.environ.get("ACCORD_REQUIRE_BROWSER") == "1"
ARTIFACTS = Path(os.environ.get("ACCORD_ARTIFACTS",
                                Path(__file__).resolve().parents[2] / "test-artifacts"))
# Flags for a sandboxed, offline machine: no first-run work, no calls home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
DESKTOP: dict[str, Any] = {"viewport": {"width": 1280, "height": 900}}
PHONE: dict[str, Any] = {"viewport": {"width": 390, "height": 844}, "is_mobile": True,
                         "has_touch": True, "device_scale_factor": 3}
WIDTHS = {"desktop": DESKTOP, "phone": PHONE}
LIVE = re.compile(r"/live(\?|$)")  # a page's live stream, whatever it says it saw

USERS = ["alice", "bob", "carol", "dave", "erin", "frank"]
POLICY = """\
users: [alice, bob, carol, dave, erin, frank]
groups:
  engineers: [alice]
  leads: [bob]
  dba: [carol, erin]
  admins: [carol, frank]
  auditors: [dave]
  oncall: [alice]
accord: {admins: [admins], auditors: [auditors]}
identity: {scim: true}
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
    steps: [{name: lead, approvers: [leads]}, {name: owner, approvers: [owners]}]
reviews:
  - {name: prod-quarterly, match: 'resource.labels.env == "prod"', every: 90d}
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


SCIM_USER = "urn:ietf:params:scim:schemas:core:2.0:User"
SCIM_MANAGER = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
SCIM_GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
LONG_GROUP = "Payments platform on-call rotation (EMEA weekends and public holidays)"


@pytest.fixture(scope="module")
def people(server: Server) -> str:
    """People the identity provider pushed over SCIM (a token from `accord scim token
    issue`, as an operator makes one): a person with a long name, her manager and a group
    with a long name. Returns her name."""
    issued = subprocess.run([ACCORD, "scim", "token", "issue", "okta", "--config",
                             str(server.config)], env=server.env, capture_output=True,
                            text=True, timeout=60, check=True)
    headers = {"Authorization": f"Bearer {issued.stdout.strip()}",
               "Content-Type": "application/scim+json"}

    def push(path: str, body: dict[str, Any]) -> str:
        r = httpx.post(f"{server.url}/scim/v2/{path}", json=body, headers=headers, timeout=10)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    boss = push("Users", {"schemas": [SCIM_USER], "userName": "grace",
                          "emails": [{"value": "grace@example.com", "primary": True}]})
    name = "margaret.hamilton-longsurname"
    her = push("Users", {"schemas": [SCIM_USER, SCIM_MANAGER], "userName": name,
                         "emails": [{"value": f"{name}@payments.example.com",
                                     "primary": True}],
                         SCIM_MANAGER: {"manager": {"value": boss}}})
    push("Groups", {"schemas": [SCIM_GROUP], "displayName": LONG_GROUP,
                    "members": [{"value": her}]})
    return name


# The newcomer's walk needs the gateway: the same policy, with orders-db a real PostgreSQL
# database that approved access is provisioned on and the gateway serves (as the demo's).
TARGET_DSN_ENV = "ACCORD_TEST_BROWSER_TARGET_DSN"
PROVISIONED = """\
  - name: RESOURCE
    kind: postgres
    description: Production orders
    labels: {env: prod}
    owners: [dba]
    roles: [read, write]
    provision:
      type: postgres
      dsn_env: DSN_ENV
      database: DATABASE
      roles:
        read: {privileges: ["SELECT ON ALL TABLES IN SCHEMA public"]}
        write: {privileges: ["SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public"]}
gateway: {listen: "127.0.0.1:PORT", token_ttl: 5m, flush_interval: 50ms}
"""


@dataclass
class Walk:
    """A server whose orders database is real and served by the gateway."""

    server: Server
    resource: str  # its name in Accord, and the database name clients give the gateway
    gateway_port: int


@pytest.fixture(scope="module")
def walk(provider: Provider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walk]:
    """`accord serve` (SQLite for Accord, its worker and its gateway thread) in front of a
    PostgreSQL database of this module's own, with an `orders` table. PostgreSQL roles are
    cluster-wide and named after the resource, so the resource's name is unique per run."""
    if not _pg_reachable():
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL is required (ACCORD_REQUIRE_POSTGRES=1) but "
                        f"{PG_ADMIN_URL} is unreachable", pytrace=False)
        pytest.skip("PostgreSQL is not reachable: the newcomer's walk connects through "
                    "the gateway")
    suffix = uuid.uuid4().hex[:6]
    resource, database = f"orders-{suffix}", f"accord_browser_{suffix}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    target = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, total int NOT NULL)")
        conn.execute("INSERT INTO orders SELECT g, g * 10 FROM generate_series(1, 100) g")
    tmp = tmp_path_factory.mktemp("walk")
    port = _free_port()
    resources = POLICY[POLICY.index("resources:\n"):POLICY.index("workflows:")]
    text = POLICY.replace("ISSUER", provider.url).replace(resources, "resources:\n" + (
        PROVISIONED.replace("RESOURCE", resource).replace("DSN_ENV", TARGET_DSN_ENV)
        .replace("DATABASE", database).replace("PORT", str(port))))
    config = tmp / "accord.yaml"
    config.write_text(text, encoding="utf-8")
    env = {**os.environ, "ACCORD_DATABASE_URL": f"sqlite:///{tmp / 'accord.db'}",
           "ACCORD_DATA_DIR": str(tmp), TARGET_DSN_ENV: target}
    s = Server(env, config, tmp / "server.log")
    try:
        s.start()
        yield Walk(s, resource, port)
    finally:
        s.stop()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(database)))
            roles = [pgconn.login_name(u, resource) for u in USERS] + [
                f(resource, r) for r in ("read", "write")
                for f in (pgconn.group_name, pgconn.gateway_login_name)]
            for role in roles:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


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
            **context: Any) -> Page:
    page = watch(browser.new_context(**context).new_page())
    page.set_default_timeout(15_000)
    provider.next_user = user
    page.goto(server.url + "/")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.get_by_role("link", name="Sign in with Test SSO").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.locator(".whoami")).to_contain_text(user)
    return page


def width_of(page: Page) -> int:
    return int(page.viewport_size["width"]) if page.viewport_size else 0


def fits(page: Page, what: str) -> None:
    """Nothing on the page is wider than the screen: no sideways scrolling."""
    scroll, inner = page.evaluate(
        "[document.documentElement.scrollWidth, window.innerWidth]")
    assert scroll <= inner and inner <= width_of(page), (what, scroll, inner)


def on_screen(page: Page, locator: Any, what: str) -> None:
    """`locator` is drawn wholly inside the screen's width (not cut, not off to the side)."""
    box = locator.bounding_box()
    if box is None:  # a live refresh swapped it between finding and measuring: once more
        expect(locator).to_be_visible()
        box = locator.bounding_box()
    assert box is not None, what
    assert box["x"] >= 0 and box["x"] + box["width"] <= width_of(page) + 0.5, (what, box)


def file_request(alice: Page, server: Server, reason: str) -> int:
    alice.goto(server.url + "/requests/new")
    alice.get_by_label("orders-db").check()
    alice.get_by_label("Role", exact=True).select_option("read")
    alice.get_by_label("For how long").fill("1h")
    alice.get_by_label("Why").fill(reason)
    expect(alice.locator("#preview")).to_contain_text("owner: 1 of carol, erin")
    alice.get_by_role("button", name="File request").click()
    expect(alice.get_by_role("heading", name=re.compile(r"Request #\d+"))).to_be_visible()
    return int(alice.url.rsplit("/", 1)[1].split("?")[0])


def approve_in_inbox(page: Page, rid: int) -> None:
    page.get_by_role("link", name="Approvals").click()
    card = page.locator(f"#inbox-{rid}")
    card.get_by_role("button", name=f"Approve request #{rid}").click()


@pytest.mark.postgres
@pytest.mark.parametrize("width", list(WIDTHS))
def test_the_newcomers_path(browser: Browser, walk: Walk, provider: Provider,
                            width: str) -> None:
    ctx = WIDTHS[width]
    w = ctx["viewport"]["width"]
    server, db = walk.server, walk.resource

    # alice asks. The form names every wrong field at once, and each error goes as soon as
    # its field is fixed (the form's script asks the server as she types).
    alice = sign_in(browser, server, provider, "alice", **ctx)
    alice.get_by_role("link", name="New request").click()
    alice.get_by_label(db).check()
    alice.get_by_label("Role", exact=True).select_option("read")
    alice.get_by_label("For how long").fill("9h")
    alice.get_by_role("button", name="File request").click()
    expect(alice.locator("#duration-error")).to_contain_text("over the maximum of 4h")
    expect(alice.locator("#reason-error")).to_have_text("workflow 'prod' requires a reason")
    fits(alice, "new request with errors")
    shot(alice, f"new-request-errors-{w}")
    alice.get_by_label("For how long").fill("1h")
    expect(alice.locator("#duration-error")).to_have_count(0)
    expect(alice.locator("#reason-error")).to_be_visible()  # still empty: still said
    alice.get_by_label("Why").fill("INC-7: customers see stale order totals")
    expect(alice.locator("#reason-error")).to_have_count(0)
    expect(alice.locator("#preview")).to_contain_text("lead: 1 of bob")
    expect(alice.locator("#preview")).to_contain_text("owner: 1 of carol, erin")
    shot(alice, f"new-request-{w}")
    alice.get_by_role("button", name="File request").click()
    expect(alice.get_by_role("heading", name=re.compile(r"Request #\d+"))).to_be_visible()
    rid = int(alice.url.rsplit("/", 1)[1].split("?")[0])
    expect(alice.get_by_role("status")).to_have_text(
        f"Request filed. Request #{rid} now waits for step 1 of 2 (lead): bob must approve it.")
    expect(alice.locator(".summary .status")).to_have_text("pending")
    expect(alice.locator("html")).to_have_attribute("data-live", "on")
    fits(alice, "request filed")

    # bob approves from his inbox, with the context to decide, and is told what comes next
    bob = sign_in(browser, server, provider, "bob", **ctx)
    bob.get_by_role("link", name="Approvals").click()
    card = bob.locator(f"#inbox-{rid}")
    expect(card).to_contain_text(f"Request #{rid}: alice asks for read on {db}")
    expect(card).to_contain_text("workflow prod")
    fits(bob, "inbox")
    shot(bob, f"inbox-{w}")
    card.get_by_label("Comment (optional)").fill("checked INC-7")
    card.get_by_role("button", name=f"Approve request #{rid}").click()
    expect(bob.get_by_role("status")).to_have_text(
        f"Approved. Request #{rid} now waits for step 2 of 2 (owner): carol or erin must "
        "approve it.")
    expect(bob.locator(f"#inbox-{rid}")).to_have_count(0)

    # carol (an owner) approves the second step; the worker sets the access up on the
    # database, and then it is alice's
    carol = sign_in(browser, server, provider, "carol", **ctx)
    approve_in_inbox(carol, rid)
    expect(carol.get_by_role("status")).to_contain_text(re.compile(
        rf"^Approved\. (alice has read on {db} until |Request #{rid} is approved; Grant "
        rf"#\d+ is being set up on {db})"))

    # alice's open page turns active without a reload (server-sent events)
    expect(alice.locator(".summary .status")).to_have_text("active")
    expect(alice.locator("#grant-state")).to_contain_text(re.compile(r"Grant #\d+: active"))
    expect(alice.locator("#grant-state")).to_contain_text(re.compile(r"ends in (59m|1h)"))

    # her grant, with Connect, Give up and Extend on the screen (not off to the side)
    alice.get_by_role("link", name="Active access").click()
    row = alice.locator("tbody tr", has_text=f"Request #{rid}")
    expect(row).to_contain_text(db)
    grant = int(row.locator("td").first.inner_text().split("#")[1].split()[0])
    on_screen(alice, row.get_by_role("link", name="Connect"), "connect")
    on_screen(alice, row.get_by_text("Give up…"), "give up")
    on_screen(alice, row.get_by_role("link", name="Extend"), "extend")
    fits(alice, "grants")
    shot(alice, f"grants-{w}")

    # ---- alice connects through the gateway, with what her page shows -----------------
    row.get_by_role("link", name="Connect").click()
    section = alice.locator("#connect")
    expect(section).to_contain_text(f"Grant #{grant} lets you in as alice on database {db} "
                                     f"at 127.0.0.1:{walk.gateway_port}")
    alice.get_by_role("button", name="Get a connection token").click()
    expect(alice).to_have_url(re.compile(rf"/requests/{rid}#connect$"))
    expect(alice.locator("#connect-token")).to_contain_text("shown once")
    psql = alice.locator("#connect-psql").inner_text().strip()
    dsn = alice.locator("#connect-dsn").inner_text().strip()
    on_screen(alice, alice.locator("#connect-psql"), "psql line")
    on_screen(alice, alice.locator("#connect-dsn"), "DSN")
    fits(alice, "connection token")
    shot(alice, f"connect-{w}")
    # The DSN as shown, through the gateway; the statement is hers to find in the ledger.
    statement = f"select count(*) as at_{w}_px from orders"
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
        assert conn.execute(statement).fetchone() == (100,)
    # and the psql line as shown, pasted into a shell (with a query to run)
    assert psql.startswith("PGPASSWORD=") and f"port={walk.gateway_port} dbname={db} " \
        f"user=alice" in psql, psql
    ran = subprocess.run(["bash", "-c", f"{psql} -X -A -t -c {shlex.quote('select 42')}"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert (ran.returncode, ran.stdout.strip()) == (0, "42"), ran.stderr
    alice.reload()  # the token is shown once
    expect(alice.locator("#connect-psql")).to_have_count(0)
    alice.get_by_role("link", name="Overview").click()
    expect(alice.locator("#count-active")).not_to_have_text("0")
    fits(alice, "overview")
    shot(alice, f"overview-{w}")

    # dave, the auditor, sees every event of the request verified against a checkpoint,
    # her statements among them
    dave = sign_in(browser, server, provider, "dave", **ctx)
    dave.goto(f"{server.url}/requests/{rid}")
    events = dave.locator("#timeline .event code")
    expect(events.first).to_have_text("request.created")
    expect(dave.locator("#timeline .event", has_text="gateway.statement")).not_to_have_count(0)
    kinds = events.all_inner_texts()
    assert kinds[:6] == ["request.created", "approval.recorded", "approval.recorded",
                         "request.approved", "grant.provisioning", "grant.activated"], kinds
    assert {"gateway.token_issued", "gateway.session_opened", "gateway.statement",
            "gateway.session_closed"} <= set(kinds[6:]), kinds
    # Badges turn verified live, once the next checkpoint covers the events: the gateway's
    # shipper, the integrator and the signer each take their turn (seconds on a busy
    # 2-core machine), so wait for them rather than for Playwright's default 5 s.
    try:
        expect(dave.locator("#timeline .badge.verified")).to_have_count(len(kinds),
                                                                          timeout=45_000)
    except AssertionError as exc:  # say what the page and the server said instead
        hint = dave.locator("#timeline-title + p").inner_text()
        badges = dave.locator("#timeline .badge").all_inner_texts()
        raise AssertionError(f"{exc}\npage: {hint}\nbadges: {badges}\nserver log (end): "
                             f"{server.log.read_text(errors='replace')[-3000:]}") from None
    expect(dave.locator("#act")).to_have_count(0)  # an auditor acts on nothing
    fits(dave, "request detail")
    shot(dave, f"request-detail-{w}")
    # The audit log, filtered to her grant's statements: the one she ran, as she ran it.
    dave.get_by_role("link", name="Audit log").click()
    expect(dave.locator("#ledger-verdict")).to_contain_text("verified")
    dave.get_by_label("Type").select_option("gateway.statement")
    dave.get_by_label("Subject").fill(f"grant:{grant}")
    dave.get_by_role("button", name="Filter").click()
    ran_it = dave.locator("tbody tr", has_text="gateway.statement").filter(
        has=dave.locator("pre", has_text=statement))
    expect(ran_it).to_have_count(1)
    ran_it.get_by_text(re.compile(r"\d+ fields")).click()
    expect(ran_it.locator("pre")).to_be_visible()
    expect(ran_it).to_contain_text("alice")
    fits(dave, "audit")
    shot(dave, f"audit-{w}")

    # and downloads the period's access report as a PDF from the Reports page
    dave.get_by_role("link", name="Reports").click()
    dave.get_by_label("Format").select_option("pdf")
    with dave.expect_download() as download:
        dave.get_by_role("button", name="Download").click()
    saved = ARTIFACTS / f"access-report-{w}.pdf"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    download.value.save_as(saved)
    assert saved.read_bytes().startswith(b"%PDF")
    dave.reload()
    expect(dave.locator("tbody tr").first).to_contain_text("pdf")
    fits(dave, "reports")
    shot(dave, f"reports-{w}")


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
    fits(page, "form error at 375 px")  # nothing is wider than the screen
    shot(page, "phone-form-error-375")
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
    # The worker's detectors raise it within a round; the page shows it live, one line
    # per rule with its count.
    group = carol.locator("#group-break_glass")
    expect(group).to_contain_text("broke the glass")
    expect(group).to_contain_text(re.compile(r"break_glass \u00d7\d+"))
    shot(carol, "alerts-grouped-1280")
    group.get_by_role("link", name=re.compile(r"Show the")).click()
    card = carol.locator("article.alert", has_text="broke the glass").first
    expect(card).to_contain_text("high")
    expect(card).to_contain_text("Closes when the request is reviewed")
    shot(carol, "alerts-1280")
    carol.locator("article.alert", has_text=f"Request #{rid}").get_by_role(
        "link", name=f"Request #{rid}").click()
    carol.get_by_label("Justified", exact=True).check()
    carol.get_by_label("What you checked").fill("SEV1 INC-9 confirmed with on-call notes")
    carol.get_by_role("button", name="Record review").click()
    expect(carol.locator("#review-state")).to_contain_text("justified by carol")
    carol.goto(server.url + "/alerts?status=resolved&view=each")
    expect(carol.locator("article.alert", has_text=f"Request #{rid}")).to_contain_text(
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
    shot(carol, "api-docs-1280")
    assert elsewhere == [], elsewhere  # nothing loaded from another host
    assert REPORTED == [], REPORTED
    # another site that frames a page of ours gets nothing: the browser refuses
    framed = watch(browser.new_context().new_page())
    framed.set_content(f'<iframe src="{server.url}/login"></iframe>')
    expect(framed.frame_locator("iframe").get_by_role("heading")).to_have_count(0)
    assert any("frame-ancestors" in m for m in REPORTED), REPORTED
    REPORTED.clear()  # that refusal was the point


ROLES = ["alice", "bob", "erin", "frank", "dave"]  # requester, approver, owner, admin, auditor


def looks_right(page: Page, what: str) -> None:
    """No sideways scroll; status badges and code (keys, commands) wholly on screen; tables
    are tables on a desktop (cards only at phone width)."""
    w = width_of(page)
    fits(page, f"{what} at {w} px")
    for badge in page.locator("td .status").all()[:6]:  # never cut ("car", "act")
        on_screen(page, badge, f"{what}: status badge")
    for code in page.locator("main code").all()[:20]:  # keys and commands wrap
        on_screen(page, code, f"{what}: {code.inner_text()[:30]}")
    if w > 700:
        shown = page.locator("main table").evaluate_all(
            "ts => ts.map(t => getComputedStyle(t).display)")
        assert set(shown) <= {"table"}, (what, shown)


def visit(page: Page, url: str, what: str) -> None:
    response = page.goto(url)
    assert response is not None and response.status == 200, what
    expect(page.locator("main h1")).to_be_visible()
    looks_right(page, what)


@pytest.mark.parametrize("width", list(WIDTHS))
def test_no_page_scrolls_sideways_for_any_role(
        browser: Browser, server: Server, provider: Provider, people: str, width: str) -> None:
    ctx = WIDTHS[width]
    w = ctx["viewport"]["width"]
    # Something on every page: an active grant (two approvals) and a pending request.
    pages = {"alice": sign_in(browser, server, provider, "alice", **ctx)}
    granted = file_request(pages["alice"], server, "INC-11: reconcile yesterday's orders")
    for approver in ("bob", "erin"):
        pages[approver] = sign_in(browser, server, provider, approver, **ctx)
        approve_in_inbox(pages[approver], granted)
        expect(pages[approver].get_by_role("status")).to_contain_text("Approved.")
    waiting = file_request(pages["alice"], server, "INC-12: compare totals with billing")
    for user in ROLES:
        page = pages.get(user) or sign_in(browser, server, provider, user, **ctx)
        pages[user] = page
        page.goto(server.url + "/")
        menu = page.locator("nav[aria-label=Main] a").evaluate_all(
            "links => links.map(a => a.getAttribute('href'))")
        assert "/grants" in menu and ("/audit" in menu) == (user in ("frank", "dave"))
        extra = [f"/requests/{granted}", f"/requests/{waiting}"]
        if "/alerts" in menu:
            extra += ["/alerts?view=each", "/audit?type=request.created",
                      f"/directory/{people}", "/directory/alice"]
        for path in [*menu, *extra]:
            visit(page, server.url + path, f"{user} {path}")
        shot(page, f"{user}-request-{w}")

    # The sign-in page, before anyone signs in.
    stranger = watch(browser.new_context(**ctx).new_page())
    visit(stranger, server.url + "/login", "/login")
    shot(stranger, f"login-{w}")
    # A person the identity provider pushed, with their manager and a long group name.
    dave = pages["dave"]
    visit(dave, f"{server.url}/directory/{people}", f"/directory/{people}")
    expect(dave.locator("main")).to_contain_text(LONG_GROUP)
    shot(dave, f"directory-person-{w}")
    # An access review (frank, an admin, starts it) with alice's grant to certify, and its
    # report, which auditors read in the browser.
    frank = pages["frank"]
    frank.goto(server.url + "/reviews")
    if frank.get_by_role("button", name="Start").count():  # the first width starts it
        frank.get_by_role("button", name="Start").click()
        expect(frank.get_by_role("status")).to_have_text("Review started.")
    frank.goto(server.url + "/reviews")
    review = frank.get_by_role("link", name=re.compile(r"Review #\d+")).first.get_attribute(
        "href")
    assert review is not None
    for user in ("erin", "frank", "dave"):  # a reviewer (an owner), an admin, an auditor
        visit(pages[user], server.url + review, f"{user} {review}")
    expect(pages["erin"].get_by_role("button", name="Certify").first).to_be_visible()
    shot(pages["erin"], f"review-{w}")
    report = dave.goto(f"{server.url}{review}/report?format=html")
    assert report is not None and report.status == 200
    fits(dave, f"{review}/report")
    shot(dave, f"review-report-{w}")
    # Forms opened: alice's extend form, bob's deny and frank's revoke confirmations.
    alice = pages["alice"]
    visit(alice, f"{server.url}/requests/{granted}#extend", "extend")
    expect(alice.get_by_label(re.compile(r"Extend Grant #\d+ by"))).to_be_in_viewport()
    looks_right(alice, "extend form")
    shot(alice, f"extend-{w}")
    bob = pages["bob"]
    visit(bob, f"{server.url}/requests/{waiting}", "deny")
    bob.get_by_text("Deny…").click()
    expect(bob.get_by_role("button", name=f"Deny request #{waiting}")).to_be_visible()
    looks_right(bob, "deny form open")
    shot(bob, f"deny-confirm-{w}")
    visit(frank, f"{server.url}/requests/{granted}", "revoke")
    frank.get_by_text("Revoke access…").click()
    expect(frank.get_by_role("button", name=re.compile(r"Revoke Grant #\d+"))).to_be_visible()
    looks_right(frank, "revoke form open")
    shot(frank, f"revoke-request-confirm-{w}")

    # The overview's charts: labels in CSS pixels, readable at any width.
    alice.goto(server.url + "/")
    labels = alice.locator(".chart-label:not(.minor), .hbar-label")
    assert labels.count() > 0
    for label in labels.all():
        size = float(label.evaluate("e => parseFloat(getComputedStyle(e).fontSize)"))
        box = label.bounding_box()
        assert size >= 12 and box is not None and box["height"] >= 12, (size, box)
    # The day labels shown do not run into each other, nor out of their card (their
    # text's own box: a label may be wider than its bar's slot).
    spans = alice.locator(".chart-label").evaluate_all(
        "els => els.filter(e => getComputedStyle(e).visibility !== 'hidden').map(e => {"
        " const r = document.createRange(); r.selectNodeContents(e);"
        " const b = r.getBoundingClientRect(), c = e.closest('.card').getBoundingClientRect();"
        " return [b.left, b.right, c.left, c.right, e.textContent]; })")
    assert len(spans) >= 4, spans
    assert all(a[1] <= b[0] for a, b in pairwise(spans)), spans
    assert all(card_left <= left and right <= card_right
               for left, right, card_left, card_right, _ in spans), spans
    shot(alice, f"overview-charts-{w}")
    for user, path in (("dave", "/audit"), ("frank", "/grants"), ("bob", "/inbox"),
                       ("alice", "/my")):
        page = pages.get(user) or sign_in(browser, server, provider, user, **ctx)
        page.goto(server.url + path)
        shot(page, f"{user}{path.replace('/', '-')}-{w}")


@pytest.mark.parametrize("width", list(WIDTHS))
def test_a_request_explains_its_decision_at_any_width(
        browser: Browser, server: Server, provider: Provider, width: str) -> None:
    ctx = WIDTHS[width]
    alice = sign_in(browser, server, provider, "alice", **ctx)
    rid = file_request(alice, server, "INC-14: why does this wait for two people?")
    explanation = alice.locator("#explain")
    expect(explanation.locator("#explain-state")).to_have_text("✔ reproduced")
    expect(explanation.locator(".explain-workflows")).not_to_be_visible()  # collapsed
    looks_right(alice, "explanation closed")
    alice.get_by_text("Why this decision").click()
    workflow = explanation.locator(".explain-workflows > li").first
    expect(workflow).to_contain_text("prod matched")
    expect(workflow).to_contain_text('resource.labels.env = "prod"')
    expect(explanation).to_contain_text("owner: 1 of carol, erin (approvers: owners)")
    looks_right(alice, "explanation open")
    explanation.scroll_into_view_if_needed()
    shot(alice, f"request-explain-{ctx['viewport']['width']}")
    bob = sign_in(browser, server, provider, "bob", **ctx)  # an approver: not for him
    visit(bob, f"{server.url}/requests/{rid}", "bob's request page")
    expect(bob.locator("#explain")).to_have_count(0)


def test_revoking_asks_why_and_works_without_javascript(
        browser: Browser, server: Server, provider: Provider) -> None:
    alice = sign_in(browser, server, provider, "alice")
    rid = file_request(alice, server, "INC-13: one query on the orders table")
    for approver in ("bob", "carol"):
        page = sign_in(browser, server, provider, approver)
        approve_in_inbox(page, rid)
        expect(page.get_by_role("status")).to_contain_text("Approved.")
    # frank, an admin, on a phone with scripts off: the <details> opens on its own
    frank = sign_in(browser, server, provider, "frank", java_script_enabled=False, **PHONE)
    frank.get_by_role("link", name="Active access").click()
    row = frank.locator("tbody tr", has_text=f"Request #{rid}")
    expect(row.get_by_text("Give up…")).to_have_count(0)  # not his to give up
    row.get_by_text("Revoke…").click()
    why = row.get_by_label("Why (recorded in the audit ledger)")
    expect(why).to_be_visible()
    fits(frank, "revoke form open")
    shot(frank, "revoke-confirm-390")
    grant = row.locator("td").first.inner_text().split("#")[1].split()[0]
    confirm = row.get_by_role("button", name=f"Revoke Grant #{grant}")
    confirm.click()  # no reason yet: the browser asks for one and posts nothing
    expect(frank).to_have_url(re.compile(r"/grants$"))
    why.fill("INC-13 closed; access no longer needed")
    confirm.click()
    expect(frank).to_have_url(re.compile(r"/grants\?done=revoke$"))  # never a POST's URL
    expect(frank.get_by_role("status")).to_have_text(
        f"Access revoked. Grant #{grant} (alice, read on orders-db) has ended.")
    expect(frank.locator("tbody tr", has_text=f"Request #{rid}")).to_have_count(0)


def test_a_change_made_while_a_page_loads_is_shown(
        browser: Browser, server: Server, provider: Provider) -> None:
    """The page is rendered, then its script opens the live stream: a change in between
    (a checkpoint signed while a busy browser loaded the page) is shown once it connects."""
    alice = sign_in(browser, server, provider, "alice")
    rid = file_request(alice, server, "INC-15: a change while the page loads")
    held: list[Any] = []

    def hold(route: Any) -> None:  # the stream's first connect waits here
        held.append(route)

    alice.route(LIVE, hold)
    alice.goto(f"{server.url}/requests/{rid}")
    expect(alice.locator(".summary .status")).to_have_text("pending")
    bob = sign_in(browser, server, provider, "bob")
    approve_in_inbox(bob, rid)
    expect(bob.get_by_role("status")).to_contain_text("Approved.")
    # and a checkpoint covers it, as the worker would sign one: nothing changes after this
    subprocess.run([ACCORD, "audit", "checkpoint", "--config", str(server.config)],
                   env=server.env, capture_output=True, timeout=60, check=True)
    # The stream connects only now, after the change (whether or not it was held yet).
    for route in held:
        route.continue_()
    alice.unroute(LIVE)
    expect(alice.locator("#timeline .event code", has_text="approval.recorded")
           ).to_have_count(1, timeout=20_000)


def test_a_page_whose_live_stream_dropped_catches_up_when_it_is_back(
        browser: Browser, server: Server, provider: Provider) -> None:
    alice = sign_in(browser, server, provider, "alice")
    rid = file_request(alice, server, "INC-14: a change while the stream is down")
    down = {"on": True}

    def stream(route: Any) -> None:  # the live stream refused while `down`
        if down["on"]:
            route.abort()
        else:
            route.continue_()

    alice.route(LIVE, stream)
    alice.goto(f"{server.url}/requests/{rid}")
    expect(alice.locator(".summary .status")).to_have_text("pending")
    bob = sign_in(browser, server, provider, "bob")
    approve_in_inbox(bob, rid)  # a change no stream of alice's page was there to hear
    expect(bob.get_by_role("status")).to_contain_text("Approved.")
    down["on"] = False  # the browser's own retry gets through now
    expect(alice.locator("#timeline .event code", has_text="approval.recorded")
           ).to_have_count(1, timeout=20_000)
