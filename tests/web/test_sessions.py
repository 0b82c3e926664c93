"""Web sessions against the tokens that opened them, and admins ending sessions.

A session opened by pasting an API token lives no longer than the token: it expires
with it and ends (recorded) when the token is revoked, also when the session was cached
a moment before. Admins list and end sessions through the API, the CLI and the web.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from accord.db import transaction
from accord.identity import service as identity
from accord.identity.models import ApiToken, WebSession
from accord.ledger.events import Actor
from accord.web import auth
from tests.cli.test_request_cli import run as cli
from tests.conftest import Env, LiveServer, make_env
from tests.web.test_pages import (
    WEB_POLICY,
    Browser,
    alert,
    csrf_of,
    is_html_page,
    login,
    login_form,
    session_rows,
    snapshot,
    text_of,
)

NEW = {"resource": "orders-db", "role": "read", "duration": "1h",
       "reason": "INC-7 look at the orders"}


@pytest.fixture
def env(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Env]:
    """conftest's `env` with the demo picker on (OIDC-less sessions of their own)."""
    e = make_env(sessions, tmp_path, WEB_POLICY)
    with e.client:
        yield e


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """The web's 1 s session cache never ages by itself here: a session seen once stays
    cached, so each end below is proven to reach through the cache, not around it."""
    monkeypatch.setattr(auth.CACHE, "clock", lambda: 1000.0)


def issue(env: Env, user: str, seconds: int | None = None) -> tuple[int, str]:
    with transaction(env.st.sessions) as s:
        row, secret = identity.issue(
            s, policy=env.st.policies.current, user=user, actor=Actor.system("cli"),
            now=env.clock(), expires_in=timedelta(seconds=seconds) if seconds else None)
    return row.id, secret


def token_login(env: Env, secret: str) -> Browser:
    b = Browser(env)
    r = b.post("/login/token", {"token": secret, "csrf": login_form(b)})
    assert r.status_code == 303, r.text
    b.csrf = csrf_of(b.get("/requests/new").text)
    return b


def signed_out(b: Browser, path: str = "/my") -> bool:
    r = b.get(path)
    return r.status_code == 303 and r.headers["location"].startswith("/login")


# ---------------------------------------------------------------- token sessions


def test_a_token_session_ends_when_its_token_is_revoked(env: Env) -> None:
    """The probe: a 20 s token, a web login with it, the token revoked. The API said 401
    but the web session kept working for 12 h and could file requests."""
    token_id, secret = issue(env, "alice", seconds=20)
    alice = token_login(env, secret)
    assert alice.get("/my").status_code == 200  # verified and cached just now

    env.clock.advance(seconds=5)
    r = env.client.delete(f"/api/v1/tokens/{token_id}",
                          headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 200, r.text
    assert env.client.get("/api/v1/me",
                          headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    # The next page, a form and the live stream all see it at once (the cache too).
    assert signed_out(alice)
    before = snapshot(env)
    r = alice.post("/requests/new", NEW)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert alice.get("/live").status_code == 401
    assert snapshot(env) == before

    [row] = session_rows(env)
    assert (row.method, row.token_id) == ("token", token_id)
    assert row.ended_at == env.clock()
    assert row.expires_at == row.created_at + timedelta(seconds=20)  # never the 12 h TTL
    [revoked] = env.events(type="token.revoked")
    [ended] = env.events(type="web.logout")
    assert ended["actor"] == {"kind": "user", "id": "alice", "via": "api"}  # who revoked
    assert ended["subject"] == "user:alice"
    assert ended["data"] == {"session": row.id, "reason": "token_revoked",
                             "token_id": token_id}
    assert ended["time"] == revoked["time"]


def test_an_admin_revoking_the_token_ends_the_session_and_says_who(env: Env) -> None:
    token_id, secret = issue(env, "alice")
    alice = token_login(env, secret)
    assert env.call("DELETE", "carol", f"/api/v1/tokens/{token_id}").status_code == 200
    assert signed_out(alice)
    [ended] = env.events(type="web.logout")
    assert ended["actor"] == {"kind": "user", "id": "carol", "via": "api"}
    assert ended["data"]["reason"] == "token_revoked"


def test_a_token_session_expires_with_its_token(env: Env) -> None:
    _, secret = issue(env, "alice", seconds=20)
    b = Browser(env)
    r = b.post("/login/token", {"token": secret, "csrf": login_form(b)})
    [cookie] = [c for c in r.headers.get_list("set-cookie") if c.startswith("accord_session=")]
    assert "max-age=20" in [a.strip().lower() for a in cookie.split(";")]
    env.clock.advance(seconds=19)
    assert b.get("/my").status_code == 200
    env.clock.advance(seconds=1)
    assert signed_out(b)
    assert env.client.get("/api/v1/me",
                          headers={"Authorization": f"Bearer {secret}"}).status_code == 401


def test_a_revocation_elsewhere_is_seen_once_the_cache_entry_is_a_second_old(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another replica revokes: this process's cache never forgot the cookie, and it
    still stops serving it within the cache's 1 s."""
    ticks = [1000.0]
    monkeypatch.setattr(auth.CACHE, "clock", lambda: ticks[0])
    token_id, secret = issue(env, "alice")
    alice = token_login(env, secret)
    assert alice.get("/my").status_code == 200
    with transaction(env.st.sessions) as s:  # as another process would: no cache to forget
        identity.revoke(s, token_id=token_id, actor=Actor.system("cli"), now=env.clock(),
                        admin=True)
    ticks[0] += 1.01
    assert signed_out(alice)


def test_a_token_revoked_behind_the_services_back_ends_the_session_when_seen(
        env: Env) -> None:
    token_id, secret = issue(env, "alice")
    alice = token_login(env, secret)
    with transaction(env.st.sessions) as s:  # e.g. by hand in SQL: no session ended
        s.execute(update(ApiToken).where(ApiToken.id == token_id)
                  .values(revoked_at=env.clock(), revoked_by="dba"))
    auth.CACHE.forget(session_rows(env)[0].digest)
    assert signed_out(alice)
    [row] = session_rows(env)
    assert row.ended_at == env.clock()
    [ended] = env.events(type="web.logout")
    assert ended["actor"] == {"kind": "system", "id": "accord", "via": "web"}
    assert ended["data"] == {"session": row.id, "reason": "token_revoked", "token_id": token_id}


def test_a_token_session_from_before_sessions_knew_their_token_ends_when_seen(
        env: Env) -> None:
    alice = token_login(env, env.tokens["alice"])
    [row] = session_rows(env)
    with transaction(env.st.sessions) as s:  # what revision 0012 leaves of an older one
        s.execute(update(WebSession).where(WebSession.id == row.id).values(token_id=None))
    auth.CACHE.forget(row.digest)
    assert signed_out(alice)
    [ended] = env.events(type="web.logout")
    assert ended["data"] == {"session": row.id, "reason": "token_unknown"}


def test_demo_and_other_sessions_keep_their_own_lifetime(env: Env) -> None:
    demo = login(env, "alice")  # the demo picker: no token behind it
    [row] = session_rows(env)
    assert (row.method, row.token_id) == ("local", None)
    [item] = env.get("alice", "/api/v1/tokens").json()
    assert env.call("DELETE", "alice", f"/api/v1/tokens/{item['id']}").status_code == 200
    assert demo.get("/my").status_code == 200
    env.clock.advance(hours=11, minutes=59)
    assert demo.get("/my").status_code == 200
    assert env.events(type="web.logout") == []


# ---------------------------------------------------------------- admins end sessions


def test_admins_list_and_end_sessions_through_the_api(env: Env) -> None:
    alice, bob = login(env, "alice"), token_login(env, env.tokens["bob"])
    r = env.get("carol", "/api/v1/sessions")
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [(s["user"], s["method"], s["state"]) for s in items] == [
        ("bob", "token", "live"), ("alice", "local", "live")]
    assert set(items[0]) == {"id", "user", "method", "token_id", "created_at", "expires_at",
                             "ended_at", "state"}
    rows = {r.user: r for r in session_rows(env)}
    for row in rows.values():  # never the cookie's hash, nor the form token
        assert row.digest not in r.text and row.csrf not in r.text
    assert [s["user"] for s in env.get("carol", "/api/v1/sessions",
                                       params={"user": "alice"}).json()["items"]] == ["alice"]

    for user in ("alice", "dave"):  # a requester, an auditor
        for method, path in (("GET", "/api/v1/sessions"),
                             ("DELETE", f"/api/v1/sessions/{rows['alice'].id}")):
            r = env.call(method, user, path)
            assert r.status_code == 403, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            assert "admin role" in r.json()["detail"]

    env.clock.advance(minutes=3)
    r = env.call("DELETE", "carol", f"/api/v1/sessions/{rows['alice'].id}")
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["ended_at"] is not None) == ("ended", True)
    assert signed_out(alice) and not signed_out(bob)
    [ended] = env.events(type="web.logout")
    assert ended["actor"] == {"kind": "user", "id": "carol", "via": "api"}
    assert ended["subject"] == "user:alice"
    assert ended["data"] == {"session": rows["alice"].id, "reason": "ended_by_admin"}
    # Ending it again changes nothing; the live list no longer shows it.
    assert env.call("DELETE", "carol", f"/api/v1/sessions/{rows['alice'].id}").status_code == 200
    assert len(env.events(type="web.logout")) == 1
    assert [s["user"] for s in env.get("carol", "/api/v1/sessions").json()["items"]] == ["bob"]
    every = env.get("carol", "/api/v1/sessions", params={"include_ended": "true"}).json()
    assert [s["state"] for s in every["items"]] == ["live", "ended"]
    assert env.call("DELETE", "carol", "/api/v1/sessions/999999").status_code == 404
    assert env.call("DELETE", "carol", "/api/v1/sessions/99999999999").status_code == 404


def test_admins_end_sessions_on_the_sessions_page(env: Env) -> None:
    alice, carol = login(env, "alice"), login(env, "carol")
    alice_id = session_rows(env)[0].id
    page = carol.get("/sessions")
    is_html_page(page, 200)
    assert f'action="/sessions/{alice_id}/end"' in page.text
    assert "(this one)" in text_of(page)

    r = alice.get("/sessions")
    is_html_page(r, 403)
    assert 'href="/sessions"' not in alice.get("/my").text  # no link for non-admins
    before = snapshot(env)
    r = alice.post(f"/sessions/{alice_id}/end")  # with her own CSRF token: still no admin
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert alert(alice.get("/")) == "ending sessions needs the Accord admin role"
    r = carol.post(f"/sessions/{alice_id}/end", send_csrf=False)
    is_html_page(r, 403)
    assert "Form refused" in r.text
    assert snapshot(env) == before

    r = carol.post(f"/sessions/{alice_id}/end")
    assert r.status_code == 303 and r.headers["location"] == "/sessions?done=end"
    assert "Session ended." in carol.get(r.headers["location"]).text
    assert signed_out(alice)
    [ended] = env.events(type="web.logout")
    assert ended["actor"] == {"kind": "user", "id": "carol", "via": "web"}
    assert ended["data"] == {"session": alice_id, "reason": "ended_by_admin"}


def test_session_list_and_revoke_from_the_cli(live: LiveServer) -> None:
    env = live.env
    alice = token_login(env, env.tokens["alice"])
    code, out, err = cli(live, "carol", "session", "list", "--json")
    assert code == 0, err
    [item] = json.loads(out)["items"]
    assert (item["user"], item["method"], item["state"]) == ("alice", "token", "live")
    code, out, _ = cli(live, "carol", "session", "list")
    assert code == 0 and "alice" in out and "API token" in out

    code, out, err = cli(live, "alice", "session", "list")
    assert (code, out) == (1, "") and "admin role" in err
    code, out, err = cli(live, "alice", "session", "revoke", str(item["id"]))
    assert (code, out) == (1, "") and "admin role" in err
    assert not signed_out(alice)

    code, out, err = cli(live, "carol", "session", "revoke", str(item["id"]))
    assert code == 0, err
    assert out.strip() == f"session #{item['id']} of alice (token): ended"
    assert signed_out(alice)
    code, out, _ = cli(live, "carol", "session", "list", "--ended", "--json")
    assert [s["state"] for s in json.loads(out)["items"]] == ["ended"]
    code, _, err = cli(live, "carol", "session", "revoke", "424242")
    assert code == 1 and "session 424242 does not exist" in err


