"""The dashboard's pages, driven the way a browser drives them.

Each `Browser` is one person's browser: its own cookie jar over the `env` app, no
redirects followed, `Accept: text/html` like a navigation. Assertions look at what the
pages say and at what the database and the audit ledger hold afterwards, on SQLite and on
PostgreSQL (the `env` fixture below is conftest's, with the demo user picker turned on).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Iterator
from datetime import UTC, timedelta
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx2
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from accord.db import transaction
from accord.grants.models import Grant
from accord.identity.models import WebSession
from accord.ledger import checkpoints
from accord.ledger.models import LedgerCheckpoint, LedgerEntry
from accord.ledger.service import tree_size
from accord.policy.models import PolicyVersion
from accord.requests import service as request_service
from accord.requests.models import AccessRequest, Approval
from tests.conftest import POLICY, Env, make_env

WEB_POLICY = POLICY + "web: {local_login: true}\n"
HTML = {"Accept": "text/html,application/xhtml+xml"}
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]*)"')
LISTED = re.compile(r'<td data-label="Request"><a href="/requests/(\d+)">Request #\d+</a></td>')
EVENT = re.compile(r'<li class="event" data-index="(\d+)">(.*?)</li>', re.S)
EVIL = "https://evil.example"


@pytest.fixture
def env(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Env]:
    """conftest's `env` (one run on SQLite, one on PostgreSQL) with `web.local_login`."""
    e = make_env(sessions, tmp_path, WEB_POLICY)
    with e.client:
        yield e


@pytest.fixture
def plain(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Env]:
    """The same with the default `web` settings: no demo picker."""
    e = make_env(sessions, tmp_path, POLICY)
    with e.client:
        yield e


class Browser:
    """One person's browser: a cookie jar, the CSRF token its pages carry, no auto-redirects."""

    def __init__(self, env: Env, *, base_url: str = "http://testserver",
                 app: Any = None) -> None:
        self.http = TestClient(app or env.client.app, base_url=base_url,
                               raise_server_exceptions=False, follow_redirects=False)
        self.csrf = ""

    def get(self, path: str, **kw: Any) -> httpx2.Response:
        return self.http.get(path, headers={**HTML, **kw.pop("headers", {})}, **kw)

    def post(self, path: str, data: dict[str, str] | None = None, *, send_csrf: bool = True,
             **kw: Any) -> httpx2.Response:
        form = dict(data or {})
        if send_csrf:
            form.setdefault("csrf", self.csrf)
        return self.http.post(path, data=form, headers={**HTML, **kw.pop("headers", {})},
                              **kw)

    @property
    def session_cookie(self) -> str | None:
        return self.http.cookies.get("accord_session")


def csrf_of(html: str) -> str:
    found = CSRF_FIELD.search(html)
    assert found, "the page carries no CSRF field"
    return found.group(1)


BLOCK = re.compile(r"</?(?:address|article|br|dd|div|dl|dt|h\d|li|ol|p|section|td|th|tr|ul)\b"
                   r"[^>]*>")


def text_of(r: httpx2.Response) -> str:
    """The page's text as read: tags dropped, entities decoded, whitespace collapsed."""
    text = re.sub(r"<[^>]+>", "", BLOCK.sub(" ", r.text))
    return re.sub(r"\s+", " ", unescape(text)).strip()


def login_form(b: Browser, path: str = "/login") -> str:
    r = b.get(path)
    assert r.status_code == 200, r.text
    return csrf_of(r.text)


def login(env: Env, user: str) -> Browser:
    """A browser signed in as `user` through the demo picker, holding its page CSRF token."""
    b = Browser(env)
    r = b.post("/login/demo", {"user": user, "csrf": login_form(b)})
    assert r.status_code == 303, r.text
    assert b.session_cookie
    b.csrf = csrf_of(b.get("/requests/new").text)
    return b


def is_html_page(r: httpx2.Response, status: int) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert "<!doctype html>" in r.text
    assert "Traceback" not in r.text


def alert(r: httpx2.Response) -> str:
    found = re.findall(r'role="alert"[^>]*>(.*?)</(?:p|div|span)>', r.text, re.S)
    return " | ".join(unescape(re.sub(r"<[^>]+>", "", f)).strip() for f in found)


def snapshot(env: Env) -> dict[str, Any]:
    """Everything a form could change: requests, approvals, grants, sessions, the ledger."""
    with env.st.sessions() as s:
        return {
            "requests": s.execute(select(AccessRequest.id, AccessRequest.status,
                                         AccessRequest.current_step)
                                  .order_by(AccessRequest.id)).all(),
            "approvals": s.execute(select(func.count()).select_from(Approval)).scalar_one(),
            "grants": s.execute(select(Grant.id, Grant.status, Grant.ends_at)
                                .order_by(Grant.id)).all(),
            "sessions": s.execute(select(WebSession.id, WebSession.ended_at)
                                  .order_by(WebSession.id)).all(),
            "ledger": s.execute(select(func.count()).select_from(LedgerEntry)).scalar_one(),
        }


def session_rows(env: Env) -> list[WebSession]:
    with env.st.sessions() as s:
        rows = list(s.execute(select(WebSession).order_by(WebSession.id)).scalars())
        s.expunge_all()
        return rows


def indexed(env: Env, **params: Any) -> list[tuple[int, dict[str, Any]]]:
    """Ledger events with their indices, as the audit API lists them (oldest first)."""
    r = env.get("dave", "/api/v1/audit/events", params={"limit": 1000, **params})
    assert r.status_code == 200, r.text
    return sorted((item["index"], item["event"]) for item in r.json()["items"])


def sign_now(env: Env) -> LedgerCheckpoint:
    """Sign the current tree as the ledger worker does (commit, then after_commit)."""
    with transaction(env.st.sessions) as session:
        cp = checkpoints.sign(session, env.st.ledger, now=env.clock(), force=True)
    assert cp is not None
    checkpoints.after_commit(env.st.ledger, cp)
    return cp


def pending(env: Env) -> int:
    """alice's orders-db read: two steps, leads (bob, gina) then owners (carol, erin)."""
    req = env.ask("alice")
    assert req["status"] == "pending"
    return int(req["id"])


def active(env: Env, user: str = "alice") -> dict[str, Any]:
    """An engineer's staging read: approved by policy, a grant active at once."""
    req = env.ask(user, resource="staging-db", role="read", reason="")
    assert req["status"] == "active", req
    return req


def listed(r: httpx2.Response) -> list[int]:
    return [int(i) for i in LISTED.findall(r.text)]


# ---------------------------------------------------------------- no session


PAGES = ["/", "/requests/new", "/requests/preview?resource=lab", "/my", "/inbox",
         "/requests?status=pending", "/requests/1", "/grants", "/audit?type=web.login"]


def test_every_page_sends_a_visitor_without_a_session_to_login(env: Env) -> None:
    req = pending(env)
    b = Browser(env)
    for path in [*PAGES, f"/requests/{req}"]:
        r = b.get(path)
        assert r.status_code == 303, (path, r.text)
        assert r.headers["location"] == "/login?next=" + quote(path, safe=""), path
    # Forms too, before their CSRF token is even looked at; nothing is done.
    before = snapshot(env)
    for path in ("/requests/new", f"/requests/{req}/cancel", "/logout"):
        r = b.post(path, {"csrf": "x"})
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), path
    assert snapshot(env) == before
    # The live-update script asks with a header: it gets 401, not a login page.
    r = b.get("/my", headers={"x-accord-live": "1"})
    assert r.status_code == 401


def test_a_cookie_that_names_no_session_is_no_session(env: Env) -> None:
    real = login(env, "alice").session_cookie
    assert real
    b = Browser(env)
    b.http.cookies.set("accord_session", real[:-2] + ("AA" if real[-2:] != "AA" else "BB"))
    assert b.get("/").headers["location"] == "/login?next=%2F"
    b.http.cookies.set("accord_session", real)  # (the jar does send what is set in it)
    assert b.get("/").status_code == 200


def test_login_page_offers_the_demo_picker_only_when_local_login_is_on(
        env: Env, sessions: sessionmaker[Session], tmp_path: Path) -> None:
    page = Browser(env).get("/login?next=/inbox")
    is_html_page(page, 200)
    assert 'action="/login/demo"' in page.text
    options = re.findall(r'<option value="([^"]+)">', page.text)
    assert options == ["alice", "bob", "carol", "dave", "erin", "frank", "gina"]
    assert 'name="next" value="/inbox"' in page.text
    assert 'action="/login/token"' in page.text
    assert page.headers["cache-control"] == "no-store"
    # The pre-login CSRF cookie is the value the forms carry, scoped to /login, Strict.
    cookie = next(c for c in page.headers.get_list("set-cookie")
                  if c.startswith("accord_csrf="))
    assert cookie.startswith(f"accord_csrf={csrf_of(page.text)};")
    assert "Path=/login" in cookie and "samesite=strict" in cookie.lower()
    assert "httponly" in cookie.lower()

    (tmp_path / "plain").mkdir()
    other = make_env(sessions, tmp_path / "plain", POLICY)
    off = Browser(other).get("/login")
    is_html_page(off, 200)
    assert 'action="/login/demo"' not in off.text
    assert "Demo users" not in off.text
    assert 'action="/login/token"' in off.text  # token login stays on by default


def test_demo_login_is_refused_when_local_login_is_off(plain: Env) -> None:
    b = Browser(plain)
    r = b.post("/login/demo", {"user": "alice", "csrf": login_form(b)})
    is_html_page(r, 403)
    assert "demo login is turned off" in alert(r)
    assert b.session_cookie is None
    assert session_rows(plain) == []
    assert plain.events(type="web.login") == []


def test_demo_login_needs_a_listed_user(env: Env) -> None:
    b = Browser(env)
    r = b.post("/login/demo", {"user": "mallory", "csrf": login_form(b)})
    assert r.status_code == 303
    said = r.cookies.get("accord_flash")
    assert said
    # Said to this browser only: another one's sign-in page, given the cookie, stays quiet.
    other = Browser(env)
    login_form(other)
    other.http.cookies.set("accord_flash", said)
    assert alert(other.get("/login")) == ""
    assert "Pick one of the listed users." in alert(b.get(r.headers["location"]))
    assert b.session_cookie is None and session_rows(env) == []


def test_demo_login_records_the_login(env: Env) -> None:
    b = login(env, "bob")
    assert b.get("/").status_code == 200
    [event] = env.events(type="web.login")
    assert event["actor"] == {"kind": "user", "id": "bob", "via": "web"}
    assert event["subject"] == "user:bob"
    assert event["data"]["method"] == "local"


# ---------------------------------------------------------------- token login


def test_token_login_sets_a_lax_http_only_cookie_and_records_the_login(env: Env) -> None:
    b = Browser(env)
    token = env.tokens["carol"]
    r = b.post("/login/token", {"token": f"  {token}\n", "csrf": login_form(b),
                                "next": "/grants"})
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/grants"
    cookies = r.headers.get_list("set-cookie")
    [session_cookie] = [c for c in cookies if c.startswith("accord_session=")]
    value = session_cookie.split(";")[0].removeprefix("accord_session=")
    attrs = [a.strip().lower() for a in session_cookie.split(";")[1:]]
    assert "httponly" in attrs
    assert "samesite=lax" in attrs
    assert "path=/" in attrs
    assert "secure" not in attrs  # plain http: a Secure cookie would never come back
    assert f"max-age={12 * 3600}" in attrs  # web.session_ttl's default
    # The pre-login CSRF cookie is dropped once logged in.
    assert any(c.startswith("accord_csrf=") and "Max-Age=0" in c for c in cookies)

    page = b.get("/grants")
    is_html_page(page, 200)
    assert "carol <small>(admin, approver)</small>" in page.text

    [event] = env.events(type="web.login")
    assert event["actor"] == {"kind": "user", "id": "carol", "via": "web"}
    assert event["data"]["method"] == "token"
    assert token.startswith(event["data"]["token"])  # the prefix, never the secret
    assert token not in str(env.events())

    # Only a sha256 of the cookie is stored; no column holds the cookie itself.
    [row] = session_rows(env)
    assert row.digest == hashlib.sha256(value.encode()).hexdigest()
    assert row.user == "carol" and row.method == "token" and row.ended_at is None
    assert row.expires_at == env.clock() + timedelta(hours=12)
    assert event["data"]["session"] == row.id
    for column in WebSession.__table__.columns:
        assert value not in str(getattr(row, column.key)), column.key


def test_session_cookie_is_secure_over_https(env: Env) -> None:
    b = Browser(env, base_url="https://testserver")
    r = b.post("/login/token", {"token": env.tokens["alice"], "csrf": login_form(b)})
    assert r.status_code == 303, r.text
    [cookie] = [c for c in r.headers.get_list("set-cookie") if c.startswith("accord_session=")]
    assert "secure" in [a.strip().lower() for a in cookie.split(";")]


@pytest.mark.parametrize("token, reason", [
    ("acc_not-a-real-token", "invalid token"),
    ("x" * 300, "invalid token"),
])
def test_a_bad_token_is_refused_and_recorded(env: Env, token: str, reason: str) -> None:
    b = Browser(env)
    sent = b.post("/login/token", {"token": token, "csrf": login_form(b)})
    # Back to the sign-in form, which says why (never left on the post's URL).
    assert sent.status_code == 303 and sent.headers["location"] == "/login?next=%2F"
    r = b.get(sent.headers["location"])
    is_html_page(r, 200)
    assert "That token does not sign you in" in alert(r)
    assert b.session_cookie is None
    assert session_rows(env) == []
    assert env.events(type="web.login") == []
    [event] = env.events(type="web.login_refused")
    assert event["actor"] == {"kind": "anonymous", "id": "unknown", "via": "web"}
    assert event["data"]["method"] == "token"
    assert event["data"]["reason"] == reason
    assert token not in str(event)
    # The form is shown again, ready for another try.
    assert 'action="/login/token"' in r.text and csrf_of(r.text)


def test_a_revoked_token_no_longer_signs_in(env: Env) -> None:
    [item] = env.get("alice", "/api/v1/tokens").json()
    assert env.call("DELETE", "alice", f"/api/v1/tokens/{item['id']}").status_code == 200
    b = Browser(env)
    r = b.post("/login/token", {"token": env.tokens["alice"], "csrf": login_form(b)})
    assert r.status_code == 303 and b.session_cookie is None
    assert "revoked" in alert(b.get(r.headers["location"]))
    assert [e["data"]["reason"] for e in env.events(type="web.login_refused")] == [
        "token has been revoked"]


def test_an_empty_token_is_asked_for_again(env: Env) -> None:
    b = Browser(env)
    r = b.post("/login/token", {"token": "  ", "csrf": login_form(b)})
    assert r.status_code == 303
    assert "Paste an API token to sign in." in alert(b.get(r.headers["location"]))
    assert env.events(type="web.login_refused") == [] and session_rows(env) == []


def test_a_session_ends_with_its_ttl_and_when_the_user_leaves_accord_yaml(env: Env) -> None:
    alice, bob = login(env, "alice"), login(env, "bob")
    env.clock.advance(hours=11, minutes=59)
    assert alice.get("/my").status_code == 200
    env.clock.advance(minutes=1)
    assert alice.get("/my").headers["location"] == "/login?next=%2Fmy"
    env.clock.value -= timedelta(hours=1)  # back inside bob's 12 hours
    assert bob.get("/my").status_code == 200
    text = WEB_POLICY.replace("users: [alice, bob,", "users: [alice,") \
        .replace("leads: [bob, gina]", "leads: [gina]")
    env.write_policy(text)
    assert env.post("carol", "/api/v1/admin/reload").status_code == 200
    assert bob.get("/my").headers["location"] == "/login?next=%2Fmy"


# ---------------------------------------------------------------- CSRF


def _new_request(env: Env) -> tuple[str, dict[str, str]]:
    return "/requests/new", {"resource": "orders-db", "role": "read", "duration": "1h",
                             "reason": "INC-7 look at the orders"}


def _decide(verb: str) -> Any:
    return lambda env: (f"/requests/{pending(env)}/{verb}", {"comment": "fine"})


def _on_grant(verb: str, **form: str) -> Any:
    return lambda env: (f"/requests/{active(env)['id']}/{verb}", form)


FORMS: dict[str, tuple[str, Any]] = {
    "new": ("alice", _new_request),
    "approve": ("bob", _decide("approve")),
    "deny": ("bob", _decide("deny")),
    "cancel": ("alice", lambda env: (f"/requests/{pending(env)}/cancel",
                                     {"reason": "asked twice"})),
    "revoke": ("frank", _on_grant("revoke", reason="audit finding")),
    "relinquish": ("alice", _on_grant("relinquish", reason="done early")),
    "extend": ("alice", _on_grant("extend", duration="30m", reason="the migration overran")),
    "logout": ("alice", lambda env: ("/logout", {})),
    "end-session": ("carol", lambda env: (f"/sessions/{_signed_in(env, 'alice')}/end", {})),
}


def _signed_in(env: Env, user: str) -> int:
    login(env, user)
    return session_rows(env)[-1].id


@pytest.mark.parametrize("form", list(FORMS))
def test_every_form_is_refused_without_its_token_or_from_another_site(
        env: Env, form: str) -> None:
    user, setup = FORMS[form]
    b = login(env, user)
    path, data = setup(env)
    attempts: list[tuple[str, dict[str, str], dict[str, str]]] = [
        ("missing", {**data}, {}),
        ("wrong", {**data, "csrf": "forged-" + b.csrf[7:]}, {}),
        ("another user's", {**data, "csrf": login(env, "gina").csrf}, {}),
        ("cross-site", {**data, "csrf": b.csrf}, {"Origin": EVIL}),
        ("opaque origin", {**data, "csrf": b.csrf}, {"Origin": "null"}),
    ]
    before = snapshot(env)  # (gina's login above is the last change)
    for what, fields, headers in attempts:
        r = b.post(path, fields, send_csrf=False, headers=headers)
        is_html_page(r, 403)
        assert "Form refused" in r.text, what
        expected = ("posted from another site" if headers else "missing its security token")
        assert expected in alert(r), what
        assert snapshot(env) == before, f"{what} token on {path} changed something"
    # The same form with its token, from this site, goes through: the refusals were CSRF's.
    r = b.post(path, {**data, "csrf": b.csrf}, send_csrf=False,
               headers={"Origin": "http://testserver"})
    assert r.status_code == 303, r.text
    assert snapshot(env) != before


@pytest.mark.parametrize("form, fields", [
    ("/login/demo", {"user": "alice"}),
    ("/login/token", {"token": "from-env"}),
])
def test_login_forms_are_refused_without_their_token_or_from_another_site(
        env: Env, form: str, fields: dict[str, str]) -> None:
    if fields.get("token") == "from-env":
        fields = {"token": env.tokens["alice"]}
    b = Browser(env)
    pre = login_form(b)
    before = snapshot(env)
    for what, data, headers in [
        ("missing", fields, {}),
        ("wrong", {**fields, "csrf": pre[::-1]}, {}),
        ("cross-site", {**fields, "csrf": pre}, {"Origin": EVIL}),
    ]:
        r = b.post(form, data, send_csrf=False, headers=headers)
        is_html_page(r, 403)
        assert "Form refused" in r.text, what
        assert b.session_cookie is None, what
        assert snapshot(env) == before, what
    # A token copied from the page but without the cookie it pairs with is refused too.
    stranger = Browser(env)
    r = stranger.post(form, {**fields, "csrf": pre}, send_csrf=False)
    is_html_page(r, 403)
    assert snapshot(env) == before
    assert env.events(type="web.login") == [] and env.events(type="web.login_refused") == []
    r = b.post(form, {**fields, "csrf": pre}, send_csrf=False)
    assert r.status_code == 303 and b.session_cookie


def test_a_non_ascii_csrf_token_is_refused_not_a_crash(env: Env) -> None:
    b = login(env, "alice")
    path, data = _new_request(env)
    before = snapshot(env)
    r = b.post(path, {**data, "csrf": "é" * 10}, send_csrf=False)
    assert snapshot(env) == before
    is_html_page(r, 403)


# ---------------------------------------------------------------- new request


def test_new_request_form_files_a_request_through_the_web(env: Env) -> None:
    b = login(env, "alice")
    form = b.get("/requests/new?resource=orders-db&role=read&reason=INC-7+look+at+orders")
    is_html_page(form, 200)
    assert "lead: 1 of bob, gina" in text_of(form)  # the preview, server-rendered
    path, data = _new_request(env)
    r = b.post(path, data)
    assert r.status_code == 303, r.text
    location = r.headers["location"]
    found = re.fullmatch(r"/requests/(\d+)\?done=created", location)
    assert found, location
    rid = int(found.group(1))
    page = b.get(location)
    is_html_page(page, 200)
    assert "Request filed." in page.text
    assert "via web" in page.text
    [event] = env.events(type="request.created")
    assert event["subject"] == f"request:{rid}"
    assert event["actor"] == {"kind": "user", "id": "alice", "via": "web"}
    assert event["data"]["reason"] == "INC-7 look at the orders"
    assert event["data"]["duration"] == "1h"
    assert event["resource"] == {"name": "orders-db", "role": "read"}
    api = env.get("alice", f"/api/v1/requests/{rid}").json()
    assert api["status"] == "pending" and api["created_via"] == "web"


@pytest.mark.parametrize("change, field, message", [
    ({"duration": "forever"}, "duration",
     "'forever' is not a duration; use a form like 45m, 1h30m or PT1H30M "
     "(for example 30m, 2h, 1h30m)."),
    ({"duration": "9h"}, "duration",
     "9h is over the maximum of 4h for workflow 'prod'; ask for a shorter time"),
    ({"role": "sudo"}, "role",
     'role "sudo" is not offered by orders-db (offered: read, write, admin)'),
    ({"role": ""}, "role", "Choose a role."),
    ({"resource": "nope"}, "resource",
     'unknown resource "nope" (known: lab, orders-db, staging-db)'),
    ({"reason": ""}, "reason", "workflow 'prod' requires a reason"),
    ({"reason": "bell\x07"}, "reason", "Keep the reason under 2000 characters of plain text."),
])
def test_new_request_form_refuses_bad_input_and_says_why(
        env: Env, change: dict[str, str], field: str, message: str) -> None:
    b = login(env, "alice")
    path, data = _new_request(env)
    before = snapshot(env)
    r = b.post(path, {**data, **change})
    is_html_page(r, 422)
    errors = dict(re.findall(r'<p class="field-error" id="(\w+)-error">([^<]*)</p>',
                             unescape(r.text)))
    assert errors == {field: message}
    assert snapshot(env) == before
    assert env.events(type="request.created") == []
    # What was typed is kept, so the person only fixes the one field.
    if field != "reason":
        assert ">INC-7 look at the orders</textarea>" in r.text


def test_preview_shows_the_workflow_and_its_approvers(env: Env) -> None:
    alice, gina, erin = login(env, "alice"), login(env, "gina"), login(env, "erin")
    before = snapshot(env)
    q = "/requests/preview?resource=orders-db&role={role}&duration=1h&reason=INC-1+orders"

    r = alice.get(q.format(role="read"))  # a fragment the form swaps in
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "Workflow prod routes it to:" in text_of(r)
    assert re.findall(r"<li>([^<]*)</li>", r.text) == ["lead: 1 of bob, gina",
                                                       "owner: 1 of carol, erin"]
    # The requester is never their own approver.
    assert "lead: 1 of bob</li>" in gina.get(q.format(role="read")).text
    elevated = text_of(alice.get(q.format(role="admin")))
    assert "admins elevated role: 2 of carol, frank" in elevated
    # erin is an owner: carol and frank cannot be the owner and both admins (issue 23).
    assert "workflow 'prod' cannot complete this request: steps 2 (owner) and 3 (admins) " \
        "need 3 approvals from distinct people but only carol and frank can give them" in \
        text_of(erin.get(q.format(role="admin")))
    assert "Approved at once by workflow staging (auto approve)." in text_of(
        alice.get("/requests/preview?resource=staging-db&role=read&duration=1h"))
    assert "Would be denied: denied by workflow 'prod': a reason of at least 10 characters " \
        "is required" in text_of(
        alice.get("/requests/preview?resource=orders-db&role=read&duration=1h&reason=x"))
    assert "duration: 'zz' is not a duration" in text_of(
        alice.get("/requests/preview?resource=orders-db&role=read&duration=zz"))
    assert "Choose a resource, a role and a duration" in alice.get(
        "/requests/preview?resource=orders-db").text
    assert snapshot(env) == before  # a preview files nothing


# ---------------------------------------------------------------- inbox and decisions


def test_inbox_shows_pending_requests_with_their_rule_and_the_requesters_history(
        env: Env) -> None:
    earlier = active(env)["id"]
    withdrawn = pending(env)
    assert env.act("alice", withdrawn, "cancel").status_code == 200
    rid = pending(env)
    bob = login(env, "bob")
    r = bob.get("/inbox")
    is_html_page(r, 200)
    assert re.findall(r'<article class="card request" id="inbox-(\d+)"', r.text) == [str(rid)]
    card = text_of(r)
    assert f"Request #{rid}: alice asks for read on orders-db for 1h" in card
    assert "“INC-1 investigate orders”" in card
    version = env.st.policies.current.version[:12]
    assert f"workflow prod (rule match, policy {version})" in card
    assert "Step 1 of 2 (lead): 0 of 1 approvals" in card
    assert f"Request #{withdrawn} read on orders-db: cancelled" in card
    assert f"Request #{earlier} read on staging-db: active" in card
    assert f'action="/requests/{rid}/approve"' in r.text

    # Owners come second: carol's inbox is empty until a lead approved.
    carol = login(env, "carol")
    assert "Nothing waits on your decision." in carol.get("/inbox").text
    overview = bob.get("/")
    is_html_page(overview, 200)
    assert "1 request waits on your decision" in overview.text


def test_approving_and_denying_through_the_forms_records_via_web(env: Env) -> None:
    rid = pending(env)
    bob = login(env, "bob")
    r = bob.post(f"/requests/{rid}/approve", {"comment": "looks right", "back": "/inbox"})
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/inbox?done=approve"
    assert "Approved." in bob.get(r.headers["location"]).text
    [event] = env.events(type="approval.recorded")
    assert event["actor"] == {"kind": "user", "id": "bob", "via": "web"}
    assert event["subject"] == f"request:{rid}"
    assert event["data"]["decision"] == "approve" and event["data"]["comment"] == "looks right"
    assert event["data"]["step"] == 0 and event["data"]["step_complete"] is True

    carol = login(env, "carol")
    assert f'id="inbox-{rid}"' in carol.get("/inbox").text
    r = carol.post(f"/requests/{rid}/deny", {"comment": "not during the freeze"})
    assert r.status_code == 303 and r.headers["location"] == f"/requests/{rid}?done=deny"
    detail = text_of(carol.get(r.headers["location"]))
    assert "Denied." in detail
    assert "bob approved via web: “looks right”" in detail
    assert "denied by carol: not during the freeze" in detail
    decisions = [(e["actor"]["id"], e["actor"]["via"], e["data"]["decision"])
                 for e in env.events(type="approval.recorded")]
    assert decisions == [("bob", "web", "approve"), ("carol", "web", "deny")]
    [denied] = env.events(type="request.denied")
    assert denied["actor"]["via"] == "web"


def test_a_denial_reads_denied_on_the_request_page(env: Env) -> None:
    rid = pending(env)
    bob = login(env, "bob")
    assert bob.post(f"/requests/{rid}/deny", {"comment": "no"}).status_code == 303
    [event] = env.events(type="approval.recorded")
    assert event["data"]["decision"] == "deny"
    detail = text_of(bob.get(f"/requests/{rid}"))
    assert "bob denied via web: “no”" in detail


def test_the_request_page_explains_the_decision_to_those_allowed(env: Env) -> None:
    rid = pending(env)
    page = login(env, "alice").get(f"/requests/{rid}")
    is_html_page(page, 200)
    assert re.search(r'<details class="card explain" id="explain">', page.text)  # closed
    said = text_of(page)
    assert "Why this decision ✔ reproduced" in said
    assert "pending (workflow prod, rule match): routed by workflow 'prod'." in said
    assert "staging no match match resource.labels.env == \"staging\" → false " \
           "resource.labels.env = \"prod\"" in said
    assert "auto_deny size(request.reason) < 10 → false request.reason = " \
           "\"INC-1 investigate orders\"" in said
    assert "lead: 1 of bob, gina (approvers: leads)" in said
    assert 'id="explain"' in login(env, "dave").get(f"/requests/{rid}").text  # an auditor
    assert 'id="explain"' not in login(env, "bob").get(f"/requests/{rid}").text  # approver

    with transaction(env.st.sessions) as s:  # the version that decided, changed since
        s.execute(update(PolicyVersion).values(text=WEB_POLICY.replace("leads: [bob, gina]",
                                                                       "leads: [gina]")))
    page = login(env, "alice").get(f"/requests/{rid}")
    assert '<details class="card explain" id="explain" open>' in page.text
    said = text_of(page)
    assert "Why this decision ✘ does not reproduce" in said
    assert "This decision does not reproduce from what the ledger recorded: the stored " \
           "text of policy version" in said
    assert "lead: 1 of gina (approvers: leads)" in said


@pytest.mark.parametrize("user, message", [
    ("erin", "you are not an approver of step 1 of request {rid} (approvers: leads)"),
    ("alice", "you cannot approve your own request"),
    ("dave", "you are not an approver of step 1 of request {rid} (approvers: leads)"),
    ("gina", "you already approved request {rid} (step 1); a person decides a request once"),
])
def test_a_person_who_may_not_approve_is_sent_back_to_the_request_with_why(
        env: Env, user: str, message: str) -> None:
    rid = pending(env)
    if user == "gina":
        assert env.act("gina", rid, "approve").status_code == 200
    b = login(env, user)
    before, events = snapshot(env), indexed(env)
    r = b.post(f"/requests/{rid}/approve", {"comment": "sneaky"})
    # Never left on the post's URL: back to the request, which says what went wrong.
    assert r.status_code == 303 and r.headers["location"] == f"/requests/{rid}"
    page = b.get(r.headers["location"])
    is_html_page(page, 200)
    assert alert(page) == message.format(rid=rid)
    assert f"<h1>Request #{rid}</h1>" in page.text
    assert alert(b.get(r.headers["location"])) == ""  # said once; a reload is quiet
    after = snapshot(env)
    assert {**after, "ledger": 0} == {**before, "ledger": 0}
    new = [e for e in indexed(env) if e not in events]
    if user == "alice":  # deciding one's own request is refused and recorded as such
        assert [(e["type"], e["actor"]["id"], e["actor"]["via"]) for _, e in new] in (
            [], [("approval.refused", "alice", "web")])
    else:
        assert new == []


def test_extending_through_the_form_files_an_extension(env: Env) -> None:
    rid = active(env)["id"]
    alice = login(env, "alice")
    bad = alice.post(f"/requests/{rid}/extend", {"duration": "soon", "reason": "x"})
    assert bad.status_code == 303 and bad.headers["location"] == f"/requests/{rid}"
    again = alice.get(bad.headers["location"])
    assert "duration: 'soon' is not a duration" in alert(again)
    # What was typed is filled in again, to fix the one field.
    assert 'name="duration" value="soon"' in again.text and 'value="x"' in again.text
    r = alice.post(f"/requests/{rid}/extend", {"duration": "30m",
                                               "reason": "the migration overran"})
    assert r.status_code == 303, r.text
    found = re.fullmatch(r"/requests/(\d+)\?done=extend", r.headers["location"])
    assert found and int(found.group(1)) != rid
    created = env.events(type="request.created")
    assert created[-1]["subject"] == f"request:{found.group(1)}"
    assert created[-1]["actor"]["via"] == "web"
    assert created[-1]["data"]["extends_grant_id"] is not None


# ---------------------------------------------------------------- one request


def test_request_timeline_shows_ledger_indices_and_verified_badges(env: Env) -> None:
    rid = pending(env)
    bob = login(env, "bob")
    assert bob.post(f"/requests/{rid}/approve", {}).status_code == 303
    alice = login(env, "alice")
    page = alice.get(f"/requests/{rid}")
    is_html_page(page, 200)
    assert "No checkpoint signed yet." in page.text
    assert "✔ verified" not in page.text

    cp = sign_now(env)
    assert env.act("carol", rid, "approve", comment="ok").status_code == 200
    grant = env.get("alice", f"/api/v1/requests/{rid}").json()["grant"]["id"]

    page = alice.get(f"/requests/{rid}")
    is_html_page(page, 200)
    assert f"Checked against the signed checkpoint of {cp.size} entries." in page.text
    shown = [(int(idx), re.search(r"<code>([^<]+)</code>", body).group(1),  # type: ignore[union-attr]
              "verified" if "✔ verified" in body else
              "pending" if "awaiting checkpoint" in body else "other")
             for idx, body in EVENT.findall(page.text)]
    expected = sorted([*indexed(env, subject=f"request:{rid}"),
                       *indexed(env, subject=f"grant:{grant}")], key=lambda p: p[0])
    assert [(i, t) for i, t, _ in shown] == [(i, e["type"]) for i, e in expected]
    assert [t for _, t, _ in shown][:3] == ["request.created", "approval.recorded",
                                            "approval.recorded"]
    assert "grant.activated" in [t for _, t, _ in shown]
    for idx, kind, badge in shown:
        assert badge == ("verified" if idx < cp.size else "pending"), (idx, kind)
    assert {b for _, _, b in shown} == {"verified", "pending"}
    # Each event says who did it and how.
    assert "<code>approval.recorded</code> by bob <small>(user via web)</small>" in page.text
    assert "<code>approval.recorded</code> by carol <small>(user via api)</small>" in page.text

    sign_now(env)
    again = alice.get(f"/requests/{rid}").text
    assert "awaiting checkpoint" not in again
    assert again.count("✔ verified") == len(shown)


def test_someone_elses_request_is_not_found_for_a_plain_requester(env: Env) -> None:
    theirs = env.ask("erin", resource="staging-db", role="write")["id"]
    alice = login(env, "alice")
    r = alice.get(f"/requests/{theirs}")
    is_html_page(r, 404)
    assert alert(r) == f"request {theirs} does not exist or is not visible to you"
    assert "staging-db" not in r.text
    before = snapshot(env)
    r = alice.post(f"/requests/{theirs}/cancel", {"reason": "not mine"})
    assert r.status_code == 303 and r.headers["location"] == "/my"
    assert alert(alice.get("/my")) == \
        f"request {theirs} does not exist or is not visible to you"
    assert snapshot(env) == before
    # Those who take part see it.
    assert login(env, "bob").get(f"/requests/{theirs}").status_code == 200
    for path in ("/requests/0", "/requests/abc", "/requests/99999999999", "/requests/-1"):
        is_html_page(alice.get(path), 404)
    is_html_page(alice.post(f"/requests/{theirs}/explode"), 404)


def test_an_id_of_unicode_digits_is_not_found_not_a_crash(env: Env) -> None:
    alice = login(env, "alice")
    assert alice.get("/requests?before=²").status_code == 200
    is_html_page(alice.get("/requests/²"), 404)


# ---------------------------------------------------------------- lists


def test_all_requests_filters_by_status_resource_people_and_dates(env: Env) -> None:
    start = env.clock.value
    env.clock.value = start - timedelta(days=2)
    a = pending(env)  # approved by bob and carol: access, long over by now
    assert env.act("bob", a, "approve").status_code == 200
    assert env.act("carol", a, "approve").status_code == 200
    env.clock.value = start - timedelta(days=1)
    b = env.ask("erin", resource="staging-db", role="write")["id"]
    assert env.act("gina", b, "deny", comment="no").status_code == 200
    env.clock.value = start
    c = pending(env)
    d = env.ask("carol", resource="staging-db", role="write", reason="")["id"]
    day = [(start - timedelta(days=n)).date().isoformat() for n in (2, 1, 0)]

    dave = login(env, "dave")
    cases = {
        "": [d, c, b, a],
        "status=pending": [d, c],
        "status=denied": [b],
        "resource=staging-db": [d, b],
        "requester=erin": [b],
        "approver=bob": [a],
        "approver=gina": [b],
        "approver=dave": [],
        f"since={day[2]}": [d, c],
        f"until={day[0]}": [a],
        f"since={day[1]}&until={day[1]}": [b],
        f"since={day[1]}": [d, c, b],
        "status=pending&resource=orders-db": [c],
    }
    for query, ids in cases.items():
        r = dave.get("/requests?" + query)
        is_html_page(r, 200)
        assert listed(r) == ids, query
        if not ids:
            assert "No request matches these filters." in r.text
    # Filters keep their values in the form.
    r = dave.get("/requests?status=denied&requester=erin")
    assert '<option value="denied" selected>' in r.text
    assert 'name="requester" value="erin"' in r.text
    # A plain requester sees only what they may see.
    assert listed(login(env, "alice").get("/requests")) == [c, a]


def test_all_requests_pages_through_with_a_before_cursor(env: Env) -> None:
    caller = request_service.Caller("erin", "api")
    with transaction(env.st.sessions) as s:
        ids = [request_service.create(
            s, policy=env.st.policies.current, caller=caller, resource="staging-db",
            role="write", duration=timedelta(hours=1), reason=f"batch {i}",
            now=env.clock()).id for i in range(30)]
    other = pending(env)
    dave = login(env, "dave")

    first = dave.get("/requests?requester=erin")
    is_html_page(first, 200)
    newest = sorted(ids, reverse=True)
    assert listed(first) == newest[:25]
    more = re.search(r'<a href="([^"]+)">Older requests</a>', first.text)
    assert more, "no link to the next page"
    url = unescape(more.group(1))
    assert parse_qs(urlsplit(url).query) == {"requester": ["erin"],
                                             "before": [str(newest[24])]}
    second = dave.get(url)
    assert listed(second) == newest[25:]
    assert "Older requests" not in second.text
    # Unfiltered, the other request is first and the pages still cover everything once.
    seen, url = [], "/requests"
    while url:
        r = dave.get(url)
        seen += listed(r)
        found = re.search(r'<a href="([^"]+)">Older requests</a>', r.text)
        url = unescape(found.group(1)) if found else ""
    assert seen == [other, *newest]
    # My requests pages the same way.
    erin = login(env, "erin")
    mine = erin.get("/my")
    assert listed(mine) == newest[:25]
    assert listed(erin.get(f"/my?before={newest[24]}")) == newest[25:]


@pytest.mark.parametrize("query, message", [
    ("status=bogus", "status: unknown status"),
    ("since=yesterday", "since: use a date such as 2026-11-27"),
    ("until=2026-02-30", "until: use a date such as 2026-11-27"),
])
def test_bad_filters_are_refused_with_a_message(env: Env, query: str, message: str) -> None:
    pending(env)
    r = login(env, "dave").get("/requests?" + query)
    is_html_page(r, 422)
    assert alert(r) == message
    assert listed(r) == []


def test_the_last_representable_day_as_until_is_not_a_crash(env: Env) -> None:
    rid = pending(env)
    r = login(env, "dave").get("/requests?until=9999-12-31")
    assert r.status_code in (200, 422), r.status_code
    if r.status_code == 200:
        assert listed(r) == [rid]


# ---------------------------------------------------------------- audit


def test_audit_page_is_refused_to_a_plain_requester(env: Env) -> None:
    r = login(env, "alice").get("/audit")
    is_html_page(r, 403)
    assert alert(r) == "the audit log needs the Accord auditor or admin role"
    assert "<h1>Forbidden</h1>" in r.text
    assert "Audit log" not in r.text.split("<main")[0]  # nor offered in the menu


def test_audit_page_shows_the_signed_ledger_and_filters_by_type(env: Env) -> None:
    pending(env)
    dave = login(env, "dave")
    r = dave.get("/audit")
    is_html_page(r, 200)
    assert "none yet" in r.text and "nothing to verify yet" in r.text

    cp = sign_now(env)
    login(env, "bob")  # one more event after the checkpoint
    r = dave.get("/audit")
    is_html_page(r, 200)
    with env.st.sessions() as s:
        size = tree_size(s)
    assert size == cp.size + 1
    assert re.search(r'<dd id="ledger-size">(\d+)</dd>', r.text).group(1) == str(size)  # type: ignore[union-attr]
    signed = cp.signed_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    assert f"size {cp.size}, signed {signed} UTC" in r.text
    verdict = r.text.split('id="ledger-verdict">')[1].split("</dd>")[0]
    assert "✔ verified" in verdict
    assert f"all {size} stored entries re-hashed just now" in verdict
    assert f"the root signed for size {cp.size}" in verdict
    assert r.text.count("✔ verified</span></td>") == cp.size  # each row signed so far
    assert env.st.ledger.signer.verifier.encode() in r.text
    indices = [int(i) for i in re.findall(r'<tr><td data-label="Index">(\d+)</td>', r.text)]
    assert indices == sorted(indices, reverse=True) and indices[0] == size - 1

    r = dave.get("/audit?type=web.login")
    is_html_page(r, 200)
    types = re.findall(r'<td data-label="Type"><code>([^<]+)</code></td>', r.text)
    logins = indexed(env, type="web.login")
    assert types == ["web.login"] * len(logins) == ["web.login"] * 2
    rows = [int(i) for i in re.findall(r'<tr><td data-label="Index">(\d+)</td>', r.text)]
    assert rows == sorted((i for i, _ in logins), reverse=True)
    assert '<option selected>web.login</option>' in r.text

    r = dave.get("/audit?type=request.created&actor=alice")
    assert re.findall(r'<td data-label="Type"><code>([^<]+)</code></td>', r.text) == [
        "request.created"]
    assert "No event matches." in dave.get("/audit?actor=nobody").text


# ---------------------------------------------------------------- grants


def test_grants_page_lists_active_access_and_relinquish_ends_it(env: Env) -> None:
    mine = active(env)
    theirs = active(env, "erin")
    alice = login(env, "alice")
    r = alice.get("/grants")
    is_html_page(r, 200)
    rows = dict(re.findall(r'<tr id="grant-(\d+)">(.*?)</tr>', r.text, re.S))
    assert set(rows) == {str(mine["grant"]["id"])}  # erin's is not alice's business
    row = rows[str(mine["grant"]["id"])]
    assert f'action="/requests/{mine["id"]}/relinquish"' in row
    assert "/revoke" not in row

    frank = login(env, "frank")  # an admin may revoke either, and gives up neither
    rows = dict(re.findall(r'<tr id="grant-(\d+)">(.*?)</tr>', frank.get("/grants").text,
                           re.S))
    assert set(rows) == {str(mine["grant"]["id"]), str(theirs["grant"]["id"])}
    assert all("/revoke" in v and "/relinquish" not in v for v in rows.values())

    r = alice.post(f"/requests/{mine['id']}/relinquish")  # no reason: asked for one
    assert r.status_code == 303 and r.headers["location"] == f"/requests/{mine['id']}"
    assert "Say why you give it up" in alert(alice.get(r.headers["location"]))
    r = alice.post(f"/requests/{mine['id']}/relinquish", {"reason": "done early"})
    assert r.status_code == 303
    assert r.headers["location"] == f"/requests/{mine['id']}?done=relinquish"
    assert "Access given up." in alice.get(r.headers["location"]).text
    [event] = env.events(type="grant.relinquished")
    assert event["actor"] == {"kind": "user", "id": "alice", "via": "web"}
    grant = env.get("alice", f"/api/v1/requests/{mine['id']}").json()["grant"]
    assert grant["status"] != "active" and grant["ended_by"] == "alice"
    assert "No active access you can see." in alice.get("/grants").text

    r = frank.post(f"/requests/{theirs['id']}/revoke", {"comment": "audit finding"})
    assert r.status_code == 303
    [revoked] = env.events(type="grant.revoked")
    assert revoked["actor"] == {"kind": "user", "id": "frank", "via": "web"}
    assert "No active access you can see." in frank.get("/grants").text


def test_grants_page_drops_access_once_it_has_ended(env: Env) -> None:
    active(env)
    alice = login(env, "alice")
    assert 'id="grant-' in alice.get("/grants").text
    env.clock.advance(hours=1)
    assert "No active access you can see." in alice.get("/grants").text


# ---------------------------------------------------------------- logout


def test_logout_ends_the_session_and_the_old_cookie_stops_working(env: Env) -> None:
    alice = login(env, "alice")
    cookie = alice.session_cookie
    assert cookie
    replay = Browser(env)  # someone who kept a copy of the cookie
    replay.http.cookies.set("accord_session", cookie)
    assert replay.get("/my").status_code == 200
    env.clock.advance(minutes=5)
    r = alice.post("/logout")
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert any(c.startswith("accord_session=") and "Max-Age=0" in c
               for c in r.headers.get_list("set-cookie"))
    [row] = session_rows(env)
    assert row.ended_at == env.clock()
    [event] = env.events(type="web.logout")
    assert event["actor"] == {"kind": "user", "id": "alice", "via": "web"}
    assert event["data"] == {"session": row.id, "reason": "logout"}

    assert replay.get("/my").headers["location"] == "/login?next=%2Fmy"
    before = snapshot(env)
    r = replay.post("/requests/new", {**_new_request(env)[1], "csrf": alice.csrf})
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert snapshot(env) == before


# ---------------------------------------------------------------- redirects


OFFSITE = ["//evil.example", "https://evil.example", "/\\evil.example", "\\\\evil.example",
           "/\t/evil.example", "javascript:alert(1)", "http:/evil.example", "evil.example"]


def test_next_never_leaves_the_site(env: Env) -> None:
    for target in OFFSITE:
        b = Browser(env)
        if not any(ord(c) < 32 for c in target):  # (control characters never reach a page)
            page = b.get("/login?next=" + quote(target, safe=""))
            assert 'name="next" value="/"' in page.text, target
        r = b.post("/login/demo", {"user": "alice", "csrf": login_form(b), "next": target})
        assert r.status_code == 303, target
        assert r.headers["location"] == "/", target
    assert len(session_rows(env)) == len(OFFSITE)


def test_next_brings_the_person_back_to_the_page_they_asked_for(env: Env) -> None:
    b = Browser(env)
    r = b.get("/requests?status=pending&resource=orders-db")
    assert r.status_code == 303
    login_page = r.headers["location"]
    pre = login_form(b, login_page)
    sent = re.search(r'name="next" value="([^"]*)"', b.get(login_page).text)
    assert sent
    r = b.post("/login/demo", {"user": "dave", "csrf": pre, "next": unescape(sent.group(1))})
    assert r.headers["location"] == "/requests?status=pending&resource=orders-db"


def test_after_a_form_the_way_back_stays_on_the_site(env: Env) -> None:
    first, second = pending(env), pending(env)
    bob = login(env, "bob")
    r = bob.post(f"/requests/{first}/approve", {"back": "//evil.example/inbox"})
    assert r.status_code == 303 and r.headers["location"] == "/?done=approve"
    r = bob.post(f"/requests/{second}/deny", {"back": "/inbox?sort=old", "reason": "no"})
    assert r.headers["location"] == "/inbox?sort=old&done=deny"


def test_what_people_type_is_shown_as_text_not_markup(env: Env) -> None:
    markup = '<img src=x onerror="alert(1)"> INC-9 orders'
    rid = env.ask("alice", reason=markup)["id"]
    bob = login(env, "bob")
    for path in ("/inbox", f"/requests/{rid}"):
        r = bob.get(path)
        assert "<img src=x" not in r.text, path
        assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt; INC-9 orders" in r.text, path


# ---------------------------------------------------------------- errors


def test_an_unknown_page_is_an_html_404_and_the_api_keeps_problem_json(env: Env) -> None:
    b = Browser(env)
    r = b.get("/no/such/page")
    is_html_page(r, 404)
    assert alert(r) == "There is no page at /no/such/page."
    signed_in = login(env, "alice").get("/no/such/page")
    is_html_page(signed_in, 404)
    assert "alice" in signed_in.text  # the error page still knows who is looking

    for path in ("/api/v1/no-such-thing", "/api/v1/requests/999999"):
        r = b.get(path, headers=env.headers("alice"))
        assert r.status_code == 404, path
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == 404
    r = b.get("/api/v1/requests")  # no token: a 401 problem, not a login redirect
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"


# ---------------------------------------------------------------- live updates


def live_stream(app: Any, cookie: str | None, *, chunks: int = 1,
                last_event_id: str | None = None, query: str = "") -> list[dict[str, Any]]:
    """Run GET /live on the ASGI app until `chunks` body chunks were sent, then hang up.

    TestClient waits for a response to end and this one runs for a minute, so the test
    plays the server: the client disconnects as soon as it has what it came for.
    """
    async def run() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        enough = asyncio.Event()
        asked = False

        async def receive() -> dict[str, Any]:
            nonlocal asked
            if not asked:
                asked = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await enough.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            bodies = [m for m in sent if m["type"] == "http.response.body" and m.get("body")]
            if len(bodies) >= chunks or not message.get("more_body", True):
                enough.set()

        headers = [(b"host", b"testserver"), (b"accept", b"text/event-stream")]
        if cookie:
            headers.append((b"cookie", f"accord_session={cookie}".encode()))
        if last_event_id:
            headers.append((b"last-event-id", last_event_id.encode()))
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
                 "http_version": "1.1", "method": "GET", "scheme": "http", "path": "/live",
                 "raw_path": b"/live", "root_path": "", "query_string": query.encode(),
                 "headers": headers, "client": ("127.0.0.1", 50000),
                 "server": ("testserver", 80), "state": {}}
        await asyncio.wait_for(app(scope, receive, send), timeout=20)
        return sent

    return asyncio.run(run())


def ledger_mark(env: Env) -> str:
    """What /live reports as the ledger's state: newest entry id, newest checkpoint size."""
    with env.st.sessions() as s:
        entries = s.execute(select(func.max(LedgerEntry.id))).scalar_one()
        signed = s.execute(select(func.max(LedgerCheckpoint.size))).scalar_one()
    return f"{entries or 0}.{signed or 0}"


def test_live_updates_need_a_session(env: Env) -> None:
    r = Browser(env).get("/live")
    assert r.status_code == 401
    [start, *_] = live_stream(env.client.app, None)
    assert start["status"] == 401


def test_live_updates_stream_server_sent_events(env: Env) -> None:
    alice = login(env, "alice")
    assert alice.session_cookie
    sent = live_stream(env.client.app, alice.session_cookie)
    start, first = sent[0], sent[1]
    assert start["type"] == "http.response.start" and start["status"] == 200
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-store"
    mark = ledger_mark(env)
    assert first["body"] == f"retry: 2000\nid: {mark}\n\n".encode()

    # A browser reconnecting with an older id hears at once that something changed.
    old = mark
    pending(env)
    sign_now(env)
    mark = ledger_mark(env)
    assert mark != old
    sent = live_stream(env.client.app, alice.session_cookie, chunks=2, last_event_id=old)
    bodies = [m["body"] for m in sent if m["type"] == "http.response.body" and m["body"]]
    assert bodies[:2] == [f"retry: 2000\nid: {mark}\n\n".encode(),
                          f"event: change\nid: {mark}\ndata: {mark}\n\n".encode()]


def test_a_page_tells_its_live_stream_what_it_showed(env: Env) -> None:
    """A change between the page's render and its stream's first connect (a checkpoint
    signed while a busy browser loaded the page) is reported as soon as the stream opens."""
    alice = login(env, "alice")
    assert alice.session_cookie
    mark = ledger_mark(env)
    shown = alice.get("/my")
    assert f'data-live-source="/live?seen={mark}"' in shown.text
    pending(env)
    sign_now(env)
    now = ledger_mark(env)
    assert now != mark
    sent = live_stream(env.client.app, alice.session_cookie, chunks=2, query=f"seen={mark}")
    bodies = [m["body"] for m in sent if m["type"] == "http.response.body" and m["body"]]
    assert bodies[:2] == [f"retry: 2000\nid: {now}\n\n".encode(),
                          f"event: change\nid: {now}\ndata: {now}\n\n".encode()]
    # Whatever a client says it saw is only compared, never echoed, and odd values are
    # taken as "what there is now": a stream, not an error.
    for odd in ("seen=" + "9" * 5000, "seen=%FF%FE", "seen=-1.2", "seen=1.2.3"):
        start, first = live_stream(env.client.app, alice.session_cookie, query=odd)[:2]
        assert start["status"] == 200 and first["body"] == f"retry: 2000\nid: {now}\n\n".encode()
    # A line break (an attempt to add an event of its own) is refused before, as in any URL.
    start = live_stream(env.client.app, alice.session_cookie,
                        query="seen=1.1%0Aevent:%20logout%0A")[0]
    assert start["status"] == 422


# ---------------------------------------------------------------- alerts


def test_an_admin_is_not_offered_and_cannot_close_an_alert_about_themselves(env: Env) -> None:
    from accord.worker.job_runner import detect_all

    rid = env.ask("frank")["id"]  # frank is an admin
    assert env.act("frank", rid, "approve").status_code == 403  # his own request
    detect_all(env.st.sessions, env.st.policies.current, env.st.now)
    [raised] = env.get("dave", "/api/v1/alerts", params={"rule": "self_approval"}).json()["items"]
    aid = raised["id"]
    frank, carol = login(env, "frank"), login(env, "carol")

    page = frank.get("/alerts?view=each")
    is_html_page(page, 200)
    assert f"Alert #{aid}" in page.text and "This alert is about you" in text_of(page)
    assert f'action="/alerts/{aid}/resolve"' not in page.text
    assert f'formaction="/alerts/{aid}/acknowledge"' not in page.text
    before = snapshot(env)
    for verb in ("acknowledge", "resolve"):
        r = frank.post(f"/alerts/{aid}/{verb}", {"note": "it was me testing"})
        assert r.status_code == 303 and r.headers["location"] == "/alerts"
        assert "is about you (frank)" in alert(frank.get("/alerts"))
    assert snapshot(env) == before

    page = carol.get("/alerts?view=each")
    assert f'action="/alerts/{aid}/resolve"' in page.text
    assert "This alert is about you" not in text_of(page)
    r = carol.post(f"/alerts/{aid}/resolve", {"note": "frank was testing the rule"})
    assert r.status_code == 303, r.text
    [resolved] = env.events(type="alert.resolved")
    assert resolved["actor"] == {"kind": "user", "id": "carol", "via": "web"}


def test_audit_page_turns_red_over_an_edited_ledger(env: Env) -> None:
    """The probe: drop the guard, change one stored leaf, restore it. The page re-hashes."""
    from sqlalchemy import text

    pending(env)
    cp = sign_now(env)
    dave = login(env, "dave")
    victim = cp.size - 3
    with transaction(env.st.sessions) as s:
        if s.get_bind().dialect.name == "postgresql":
            s.execute(text("SET LOCAL session_replication_role = replica"))
        else:
            s.execute(text("DROP TRIGGER IF EXISTS ledger_entries_no_update"))
        leaf = s.execute(text("SELECT leaf FROM ledger_entries WHERE idx = :i"),
                         {"i": victim}).scalar_one()
        changed = bytes(leaf).replace(b'"v":1', b'"v":2')
        assert changed != bytes(leaf)
        s.execute(text("UPDATE ledger_entries SET leaf = :l WHERE idx = :i"),
                  {"l": changed, "i": victim})
    r = dave.get("/audit")
    is_html_page(r, 200)
    verdict = r.text.split('id="ledger-verdict">')[1].split("</dd>")[0]
    assert "✘ failed" in verdict and "✔ verified" not in verdict
    assert f"ledger index {victim}" in verdict
    row = r.text.split(f'<tr class="tampered"><td data-label="Index">{victim}</td>', 1)
    assert len(row) == 2 and "✘ changed" in row[1].split("</tr>", 1)[0]


def test_audit_data_reads_as_written_and_reviews_say_how_to_start(env: Env) -> None:
    env.ask("alice", reason="alice's INC-4242 \"urgent\" <b>look</b>")
    dave = login(env, "dave")
    r = dave.get("/audit")
    is_html_page(r, 200)
    assert "\\u0027" not in r.text and "alice&#39;s INC-4242" in r.text
    assert "&lt;b&gt;look&lt;/b&gt;" in r.text  # still escaped for HTML
    page_ = login(env, "frank").get("/reviews")
    assert "No access reviews are configured" in text_of(page_)
    assert "accord review start" in page_.text
