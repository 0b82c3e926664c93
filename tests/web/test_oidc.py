"""Single sign-on against tests/web/oidc_provider.py, a real provider on a loopback port.

The browser is a TestClient that follows no redirects: the test carries each hop, as a
browser would, from the app to the provider's /authorize (plain httpx) and back to the
app's callback. ID tokens are dated by the app's clock (`env.clock`), so expiry checks
are exact. Every refusal must show the login page with the reason, record
`web.login_refused` in the ledger and leave no session behind.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import httpx
import httpx2
import pytest
from cryptography.fernet import Fernet
from sqlalchemy.orm import Session, sessionmaker

from accord.api.app import create_app
from accord.provisioning.secrets import SecretBox
from accord.web.oidc import CLOCK_SKEW, FLOW_COOKIE
from tests.conftest import POLICY, Env, make_env
from tests.web.oidc_provider import Provider
from tests.web.test_pages import Browser, alert, is_html_page, session_rows

CALLBACK = "http://testserver/login/oidc/callback"
SECRET_ENV = "ACCORD_TEST_OIDC_CLIENT_SECRET"


@pytest.fixture(scope="module")
def idp() -> Iterator[Provider]:
    """One provider per module (its RSA keys are slow to make); reset for every test."""
    p = Provider().start()
    yield p
    p.stop()


@pytest.fixture
def provider(idp: Provider) -> Provider:
    idp.client_secret, idp.next_user, idp.groups = None, "alice", ["engineering"]
    idp.tamper.clear()
    idp.codes.clear()
    idp.token_requests.clear()
    idp.token_auth.clear()
    return idp


Build = Callable[..., Env]


@pytest.fixture
def build(sessions: sessionmaker[Session], tmp_path: Path, provider: Provider) -> Build:
    """An `env` (SQLite and PostgreSQL) whose accord.yaml points `web.oidc` at the provider."""
    made: list[Env] = []

    def make(**oidc: Any) -> Env:
        spec = {"issuer": provider.url, "client_id": "accord", **oidc}
        home = tmp_path / f"env{len(made)}"
        home.mkdir()
        e = make_env(sessions, home, POLICY + "web:\n  oidc: " + json.dumps(spec) + "\n")
        provider.now = lambda: e.clock().timestamp()  # tokens dated by the app's clock
        made.append(e)
        return e

    return make


@pytest.fixture
def env(build: Build) -> Env:
    return build()


def begin(b: Browser, provider: Provider, next_url: str = "/") -> str:
    """Press "Sign in with single sign-on": the app's redirect to the provider."""
    r = b.get("/login/oidc?next=" + quote(next_url, safe=""))
    assert r.status_code == 303, r.text
    location: str = r.headers["location"]
    assert location.startswith(provider.url + "/authorize?"), location
    return location


def authorize(location: str) -> str:
    """The provider's answer to the browser: a redirect back to the app."""
    r = httpx.get(location, follow_redirects=False, timeout=10)
    assert r.status_code == 302, r.text
    back: str = r.headers["location"]
    assert back.startswith(CALLBACK + "?"), back
    return back


def callback(b: Browser, location: str) -> httpx2.Response:
    parts = urlsplit(location)
    return b.get(f"{parts.path}?{parts.query}")


def sign_in(b: Browser, provider: Provider, next_url: str = "/") -> httpx2.Response:
    return callback(b, authorize(begin(b, provider, next_url)))


def params(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def challenge_of(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()) \
        .rstrip(b"=").decode()


def refused(env: Env, provider: Provider, b: Browser, r: httpx2.Response, reason: str, *,
            user: str | None = None, sessions: int = 0) -> dict[str, Any]:
    """The login page with `reason`, a `web.login_refused` event, and no new session."""
    is_html_page(r, 401)
    assert reason in alert(r), alert(r)
    assert 'href="/login/oidc?next=' in r.text  # ready to start again
    assert b.session_cookie is None
    assert len(session_rows(env)) == sessions
    assert len(env.events(type="web.login")) == sessions
    assert any(c.startswith(f"{FLOW_COOKIE}=") and "Max-Age=0" in c
               for c in r.headers.get_list("set-cookie")), "the flow cookie outlives it"
    [event] = env.events(type="web.login_refused")
    assert event["actor"] == {"kind": "user" if user else "anonymous",
                              "id": user or "unknown", "via": "web"}
    assert event["subject"] == f"user:{user or 'unknown'}"
    assert event["data"]["method"] == "oidc"
    assert event["data"]["issuer"] == provider.url
    assert reason in event["data"]["reason"]
    return event


# ---------------------------------------------------------------- the good path


def test_single_sign_on_with_pkce_logs_in_and_records_who(env: Env, provider: Provider) -> None:
    b = Browser(env)
    login_page = b.get("/login?next=/inbox")
    assert 'href="/login/oidc?next=/inbox">Sign in with single sign-on</a>' in login_page.text

    r = b.get("/login/oidc?next=/inbox")
    assert r.status_code == 303
    sent = params(r.headers["location"])
    assert sent["response_type"] == "code"
    assert sent["client_id"] == "accord"
    assert sent["redirect_uri"] == CALLBACK
    assert sent["scope"] == "openid profile email"
    assert sent["code_challenge_method"] == "S256"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", sent["code_challenge"])
    assert len(sent["state"]) >= 32 and len(sent["nonce"]) >= 32
    [flow] = [c for c in r.headers.get_list("set-cookie") if c.startswith(f"{FLOW_COOKIE}=")]
    attrs = [a.strip().lower() for a in flow.split(";")[1:]]
    assert {"httponly", "path=/login/oidc", "samesite=lax", "max-age=600"} <= set(attrs)
    sealed = flow.split(";")[0]
    assert sent["state"] not in sealed and sent["nonce"] not in sealed  # encrypted

    back = authorize(r.headers["location"])
    assert params(back)["state"] == sent["state"]
    done = callback(b, back)
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/inbox"
    cookies = done.headers.get_list("set-cookie")
    assert any(c.startswith(f"{FLOW_COOKIE}=") and "Max-Age=0" in c for c in cookies)
    [session_cookie] = [c for c in cookies if c.startswith("accord_session=")]
    assert "httponly" in session_cookie.lower() and "samesite=lax" in session_cookie.lower()

    # The code went back with the verifier whose hash the browser carried to the provider.
    [form] = provider.token_requests
    assert form["grant_type"] == "authorization_code"
    assert form["code"] == params(back)["code"]
    assert form["redirect_uri"] == CALLBACK
    assert challenge_of(form["code_verifier"]) == sent["code_challenge"]
    assert provider.token_auth == [None]  # a public client: PKCE alone, no secret

    page = b.get("/inbox")
    is_html_page(page, 200)
    assert "<span>alice" in page.text
    [event] = env.events(type="web.login")
    assert event["actor"] == {"kind": "user", "id": "alice", "via": "web"}
    assert event["data"]["method"] == "oidc"
    assert event["data"]["issuer"] == provider.url
    assert event["data"]["subject"] == "sub-alice"
    assert event["data"]["groups"] == ["engineering"]
    [row] = session_rows(env)
    assert (row.user, row.method, event["data"]["session"]) == ("alice", "oidc", row.id)
    assert env.events(type="web.login_refused") == []


@pytest.mark.parametrize("next_url, lands", [
    ("/requests?status=pending", "/requests?status=pending"),
    ("//evil.example", "/"),
    ("https://evil.example/", "/"),
    ("/\\evil.example", "/"),
])
def test_single_sign_on_returns_only_to_pages_of_this_site(
        env: Env, provider: Provider, next_url: str, lands: str) -> None:
    r = sign_in(Browser(env), provider, next_url)
    assert r.status_code == 303 and r.headers["location"] == lands


def test_a_token_dated_by_the_app_clock_expires_with_it(build: Build,
                                                         provider: Provider) -> None:
    env = build()
    issued = env.clock().timestamp()
    provider.now = lambda: issued  # issued now, valid 300 s, plus the allowed skew
    late, on_time = Browser(env), Browser(env)
    back_late = authorize(begin(late, provider))
    back_on_time = authorize(begin(on_time, provider))
    env.clock.advance(seconds=300 + CLOCK_SKEW - 1)
    assert callback(on_time, back_on_time).status_code == 303
    env.clock.advance(seconds=2)
    r = callback(late, back_late)
    refused(env, provider, late, r, "the ID token has expired; log in again", sessions=1)


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("knobs, reason", [
    ({"tamper": {"nonce": "someone-elses-nonce"}},
     "the ID token was not issued for this login (nonce)"),
    ({"tamper": {"aud": "another-app"}}, "the ID token was issued for another application"),
    ({"tamper": {"lifetime": -(CLOCK_SKEW + 1)}}, "the ID token has expired; log in again"),
    ({"tamper": {"iat_offset": CLOCK_SKEW + 30}},
     "the ID token is dated in the future; check the clocks"),
    ({"tamper": {"wrong_key": True}}, "the ID token's signature does not verify"),
    ({"tamper": {"iss": "http://impostor.example"}},
     "the ID token was issued by another provider"),
    ({"tamper": {"state": "not-the-state-we-sent"}},
     "the login response does not belong to this browser; start again"),
], ids=["nonce", "aud", "expired", "future", "key", "iss", "state"])
def test_a_bad_answer_from_the_provider_is_refused_and_recorded(
        env: Env, provider: Provider, knobs: dict[str, Any], reason: str) -> None:
    provider.tamper.update(knobs["tamper"])
    b = Browser(env)
    r = sign_in(b, provider)
    refused(env, provider, b, r, reason)


def test_a_person_missing_from_accord_yaml_is_refused(env: Env, provider: Provider) -> None:
    provider.next_user, provider.groups = "mallory", ["contractors"]
    b = Browser(env)
    event = refused(env, provider, b, sign_in(b, provider),
                    '"mallory" is not a user in accord.yaml; ask an admin to add you',
                    user="mallory")
    assert event["data"]["subject"] == "sub-mallory"
    assert event["data"]["groups"] == ["contractors"]


def test_allowed_groups_must_match_one_of_the_providers_groups(
        build: Build, provider: Provider) -> None:
    env = build(allowed_groups=["sre", "oncall"])
    b = Browser(env)
    event = refused(env, provider, b, sign_in(b, provider),
                    "your identity provider groups do not allow you to use Accord",
                    user="alice")
    assert event["data"]["groups"] == ["engineering"]

    provider.groups = ["engineering", "oncall"]
    ok = Browser(env)
    assert sign_in(ok, provider).status_code == 303
    [login] = env.events(type="web.login")
    assert login["data"]["groups"] == ["engineering", "oncall"]


def test_a_discovery_document_naming_another_issuer_is_refused(
        env: Env, provider: Provider) -> None:
    provider.tamper["discovery_issuer"] = "http://impostor.example"
    b = Browser(env)
    r = b.get("/login/oidc")
    is_html_page(r, 502)
    assert alert(r) == "the provider's discovery document names another issuer"
    assert not any(c.startswith(f"{FLOW_COOKIE}=") for c in r.headers.get_list("set-cookie"))
    assert session_rows(env) == [] and env.events(type="web.login") == []


def test_a_replica_that_reads_a_bad_discovery_document_refuses_the_callback(
        env: Env, provider: Provider) -> None:
    """The login began on one server; the callback lands on another (or on this one after
    a restart) that fetches discovery afresh, and it names another issuer."""
    b = Browser(env)
    back = authorize(begin(b, provider))
    provider.tamper["discovery_issuer"] = "http://impostor.example"
    replica = Browser(env, app=create_app(env.st))
    replica.http.cookies.set(FLOW_COOKIE, b.http.cookies[FLOW_COOKIE])
    r = callback(replica, back)
    refused(env, provider, replica, r, "the provider's discovery document names another issuer")
    assert provider.token_requests == []  # the code was never sent anywhere


@pytest.mark.parametrize("cookie", ["missing", "garbage", "sealed with another key"])
def test_a_missing_or_forged_flow_cookie_is_refused(
        env: Env, provider: Provider, cookie: str) -> None:
    b = Browser(env)
    back = authorize(begin(b, provider))
    b.http.cookies.clear()
    if cookie == "garbage":
        b.http.cookies.set(FLOW_COOKIE, "gAAAAABforged-" + "A" * 80)
    elif cookie == "sealed with another key":
        # Everything an attacker would need, sealed with a key that is not the server's.
        forged = json.dumps({"state": params(back)["state"], "nonce": "n", "verifier": "v" * 43,
                             "redirect_uri": CALLBACK, "next": "/"})
        b.http.cookies.set(FLOW_COOKIE, SecretBox(Fernet.generate_key()).seal(forged).decode())
    r = callback(b, back)
    reason = ("the login took too long or cookies are blocked; start again" if
              cookie == "missing" else
              "the login took too long or was tampered with; start again")
    refused(env, provider, b, r, reason)
    assert provider.token_requests == []


def test_an_error_from_the_provider_is_refused_and_shown_safely(
        env: Env, provider: Provider) -> None:
    b = Browser(env)
    back = authorize(begin(b, provider))
    r = b.get("/login/oidc/callback?" + urlencode(
        {"error": "access_denied<script>alert(1)</script>", "state": params(back)["state"]}))
    refused(env, provider, b, r,
            "the identity provider said: access_denied<script>alert(1)</script>")
    assert "<script>alert(1)</script>" not in r.text
    assert provider.token_requests == []


# ---------------------------------------------------------------- client secret


def test_a_confidential_client_authenticates_with_http_basic(
        build: Build, provider: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
    provider.client_secret = "s3cret:with/odd+chars"
    monkeypatch.setenv(SECRET_ENV, provider.client_secret)
    env = build(client_secret_env=SECRET_ENV)
    b = Browser(env)
    assert sign_in(b, provider).status_code == 303
    expected = base64.b64encode(f"accord:{provider.client_secret}".encode()).decode()
    assert provider.token_auth == [f"Basic {expected}"]
    assert len(session_rows(env)) == 1
    assert provider.client_secret not in str(env.events())


@pytest.mark.parametrize("secret", ["wrong", None])
def test_a_wrong_or_missing_client_secret_is_refused(
        build: Build, provider: Provider, monkeypatch: pytest.MonkeyPatch,
        secret: str | None) -> None:
    provider.client_secret = "s3cret"
    if secret is None:
        monkeypatch.delenv(SECRET_ENV, raising=False)
    else:
        monkeypatch.setenv(SECRET_ENV, secret)
    env = build(client_secret_env=SECRET_ENV)
    b = Browser(env)
    refused(env, provider, b, sign_in(b, provider),
            "the identity provider refused the login code (HTTP 401)")


# ---------------------------------------------------------------- PKCE and replays


def test_a_code_issued_for_another_browsers_challenge_is_refused(
        env: Env, provider: Provider) -> None:
    """Code injection: an attacker's code, delivered to the victim with the victim's state.
    The state matches, so only PKCE stands in the way: the victim's verifier does not
    hash to the attacker's challenge and the provider refuses the exchange."""
    attacker, victim = Browser(env), Browser(env)
    theirs = begin(attacker, provider)
    mine = params(begin(victim, provider))
    injected = theirs.replace("state=" + quote(params(theirs)["state"], safe=""),
                              "state=" + quote(mine["state"], safe=""))
    assert params(injected)["state"] == mine["state"]
    r = callback(victim, authorize(injected))
    refused(env, provider, victim, r, "the identity provider refused the login code (HTTP 400)")
    [form] = provider.token_requests
    assert challenge_of(form["code_verifier"]) == mine["code_challenge"]
    assert challenge_of(form["code_verifier"]) != params(theirs)["code_challenge"]


def test_a_replayed_callback_is_refused(env: Env, provider: Provider) -> None:
    b = Browser(env)
    start = b.get("/login/oidc")
    flow = b.http.cookies[FLOW_COOKIE]
    back = authorize(start.headers["location"])
    assert callback(b, back).status_code == 303
    # Someone who copied the whole answer, flow cookie included, tries it again.
    thief = Browser(env)
    thief.http.cookies.set(FLOW_COOKIE, flow)
    r = callback(thief, back)
    refused(env, provider, thief, r, "the identity provider refused the login code (HTTP 400)",
            sessions=1)
    assert [f["code"] for f in provider.token_requests] == [params(back)["code"]] * 2


# ---------------------------------------------------------------- not configured


def test_without_oidc_in_accord_yaml_there_is_no_single_sign_on(
        sessions: sessionmaker[Session], tmp_path: Path) -> None:
    env = make_env(sessions, tmp_path, POLICY)
    b = Browser(env)
    assert "/login/oidc" not in b.get("/login").text
    for path in ("/login/oidc", "/login/oidc/callback?code=x&state=y"):
        r = b.get(path)
        is_html_page(r, 404)
        assert alert(r) == "single sign-on is not configured (web.oidc in accord.yaml)"
    assert env.events(type="web.login_refused") == []


@pytest.mark.parametrize("where", ["state", "nonce"])
def test_a_non_ascii_state_or_nonce_is_refused_not_a_crash(
        env: Env, provider: Provider, where: str) -> None:
    b = Browser(env)
    back = authorize(begin(b, provider))
    if where == "nonce":  # a signed token whose nonce is not ours (nor ASCII)
        provider.tamper["nonce"] = "é"
        r = callback(b, back)
        reason = "the ID token was not issued for this login (nonce)"
    else:
        r = b.get("/login/oidc/callback?" + urlencode({"code": params(back)["code"],
                                                       "state": "é"}))
        reason = "the login response does not belong to this browser"
    refused(env, provider, b, r, reason)


# ---------------------------------------------------------------- identity.oidc_groups: sync


def test_oidc_groups_sync_sets_the_signers_provider_groups_as_events(
        sessions: sessionmaker[Session], tmp_path: Path, provider: Provider) -> None:
    """Each sign-in makes the person's OIDC-sourced groups the claim's: joined ones are
    created, dropped ones left; a claimed group named like a file group is skipped; someone
    only the provider knows becomes a directory user; approvals follow at once."""
    spec = {"issuer": provider.url, "client_id": "accord"}
    policy = POLICY.replace("accord: {admins: [admins], auditors: [auditors]}",
                            "accord: {admins: [admins], auditors: [auditors]}\n"
                            "identity: {oidc_groups: sync}") \
        + "web:\n  oidc: " + json.dumps(spec) + "\n"
    env = make_env(sessions, tmp_path, policy)
    provider.now = lambda: env.clock().timestamp()
    with env.client:
        # Names the directory cannot hold are skipped, not a reason to refuse the sign-in.
        provider.next_user = "alice"
        provider.groups = ["oncall", "sre", "leads", "owners", "bell\u0007", " ", "x" * 201]
        assert sign_in(Browser(env), provider).status_code == 303
        current = env.st.policies.current
        assert current.groups_of["alice"] >= {"oncall", "sre", "engineers"}
        assert "owners" not in current.groups and "bell\u0007" not in current.groups
        assert "alice" not in current.groups["leads"]  # the file's group: not the claim's
        added = env.events(type="directory.member_added")
        assert {e["data"]["group"] for e in added} == {"oncall", "sre"}
        assert all(e["actor"] == {"kind": "oidc", "id": provider.url, "via": "web"}
                   and e["data"]["source"] == "oidc" for e in added)

        provider.groups = ["oncall"]
        assert sign_in(Browser(env), provider).status_code == 303
        assert "sre" not in env.st.policies.current.groups_of["alice"]
        [removed] = env.events(type="directory.member_removed")
        assert removed["data"] == {"source": "oidc", "group": "sre",
                                   "group_id": removed["data"]["group_id"], "users": ["alice"]}

        provider.next_user, provider.groups = "Nora.K", ["oncall"]
        b = Browser(env)
        assert sign_in(b, provider).status_code == 303  # unknown to the file: now a user
        assert env.st.policies.current.is_user("nora.k")
        assert "nora.k" in env.st.policies.current.groups["oncall"]
        [login] = [e for e in env.events(type="web.login") if e["actor"]["id"] == "nora.k"]
        assert login["data"]["groups"] == ["oncall"]
