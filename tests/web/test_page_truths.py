"""What the pages offer and say is true: each role sees the actions the server would accept
and no other; destructive ones ask why; after a form the page says what happens next;
numbers say what they number; time left is never rounded up; alerts of a kind read as one
line. Driven like a browser (tests/web/test_pages.py's `Browser`), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from accord.db import transaction
from accord.detect import service as detect
from accord.detect.rules import Finding
from tests.conftest import POLICY, Env, make_env
from tests.web.test_pages import WEB_POLICY, alert, is_html_page, login, snapshot, text_of

ALL = ("approve", "deny", "cancel", "extend", "relinquish", "revoke")
TIMES = "\u00d7"  # the multiplication sign the alerts page counts with


@pytest.fixture
def env(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Env]:
    """conftest's `env` (SQLite, then PostgreSQL) with the demo sign-in picker on."""
    e = make_env(sessions, tmp_path, WEB_POLICY)
    with e.client:
        yield e
FORM = re.compile(r'<form method="post" action="/requests/(\d+)/(\w+)"')


def pending(env: Env) -> int:
    """alice's orders-db read: two steps, leads (bob, gina) then owners (carol, erin)."""
    return int(env.ask("alice")["id"])


def active(env: Env) -> int:
    """alice's staging read, approved by policy (workflow staging: leads approve)."""
    req = env.ask("alice", resource="staging-db", role="read", reason="")
    assert req["status"] == "active", req
    return int(req["id"])


# Who may do what, per role: the rule of docs/architecture.md's state machine, written out.
# alice asks (requester); bob leads (approver of step 1, and of staging by its workflow);
# erin is in dba (owner of both databases); frank is an admin; dave audits.
EXPECTED: dict[str, dict[str, set[str]]] = {
    "pending": {"alice": {"cancel"}, "bob": {"approve", "deny"}, "erin": set(),
                "frank": set(), "dave": set()},
    "active": {"alice": {"extend", "relinquish"}, "bob": {"revoke"}, "erin": {"revoke"},
               "frank": {"revoke"}, "dave": set()},
}
SCENARIOS: dict[str, Callable[[Env], int]] = {"pending": pending, "active": active}
# Accepted though not offered: an admin's "deny" of approved access ends it like a revoke
# (the API keeps that for scripts); the page offers it once, as Revoke.
UNOFFERED = {("active", "frank"): {"deny"}}


def offered(html: str, rid: int) -> set[str]:
    """The actions a page offers on request `rid` (forms, and the extend form's link)."""
    found = {a for r, a in FORM.findall(html) if int(r) == rid and a in ALL}
    if f'href="/requests/{rid}#extend"' in html:
        found.add("extend")
    return found


def attempt(b: Any, rid: int, action: str) -> Any:
    data = {"reason": "checking what the server allows", "comment": "checking"}
    if action == "extend":
        data["duration"] = "30m"
    return b.post(f"/requests/{rid}/{action}", data)


@pytest.mark.parametrize("scenario", list(EXPECTED))
@pytest.mark.parametrize("user", ["alice", "bob", "erin", "frank", "dave"])
def test_each_role_is_offered_exactly_what_the_server_accepts(
        env: Env, scenario: str, user: str) -> None:
    make = SCENARIOS[scenario]
    b = login(env, user)
    rid = make(env)
    page = b.get(f"/requests/{rid}")
    is_html_page(page, 200)
    shown = offered(page.text, rid)
    assert shown == EXPECTED[scenario][user]
    if scenario == "active":  # the grants page offers the same
        assert offered(b.get("/grants").text, rid) == shown
    # Every action: the server accepts the ones shown (each on a fresh request) and refuses
    # the others, changing nothing and leaving the person on a page that says why.
    for action in ALL:
        fresh = make(env)
        before = snapshot(env)
        r = attempt(b, fresh, action)
        assert r.status_code == 303, (action, r.text)
        said = b.get(r.headers["location"])
        if action in shown or action in UNOFFERED.get((scenario, user), set()):
            assert snapshot(env) != before, action
            assert alert(said) == "", (action, alert(said))
        else:
            assert {**snapshot(env), "ledger": 0} == {**before, "ledger": 0}, action
            assert alert(said), action  # why it was refused


def test_an_auditor_sees_no_revoke_and_a_forged_one_leaves_the_grant_alone(
        env: Env) -> None:
    rid = active(env)
    dave = login(env, "dave")
    grants = dave.get("/grants")
    assert 'id="grant-' in grants.text and "/revoke" not in grants.text
    r = dave.post(f"/requests/{rid}/revoke", {"reason": "just looking", "back": "/grants"})
    assert r.status_code == 303 and r.headers["location"] == "/grants"
    assert alert(dave.get("/grants")) == (
        "only admins, owners of staging-db and approvers of this request can revoke it")
    assert env.get("alice", f"/api/v1/requests/{rid}").json()["grant"]["status"] == "active"


@pytest.mark.parametrize("action, user, scenario", [
    ("deny", "bob", pending), ("cancel", "alice", pending),
    ("relinquish", "alice", active), ("revoke", "frank", active),
])
def test_destructive_actions_ask_to_confirm_with_a_reason(
        env: Env, action: str, user: str, scenario: Callable[[Env], int]) -> None:
    rid = scenario(env)
    b = login(env, user)
    page = b.get(f"/requests/{rid}").text
    # A <details> that opens to say what happens and ask why; only its own button posts.
    block = page.split(f'<details class="confirm" id="{action}-{rid}">', 1)[1].split(
        "</details>", 1)[0]
    assert f'action="/requests/{rid}/{action}"' in block
    assert re.search(r'<textarea id="[\w-]+" name="reason"[^>]* required', block)
    before = snapshot(env)
    r = b.post(f"/requests/{rid}/{action}", {"reason": "   "})
    assert r.status_code == 303 and r.headers["location"] == f"/requests/{rid}"
    assert "the reason is recorded in the audit ledger" in alert(b.get(r.headers["location"]))
    assert snapshot(env) == before
    r = b.post(f"/requests/{rid}/{action}", {"reason": "INC-9 is closed"})
    assert r.status_code == 303 and r.headers["location"] == f"/requests/{rid}?done={action}"
    assert snapshot(env) != before
    last = [e for e in env.events() if e["subject"] in (f"request:{rid}",)
            or e["type"].startswith("grant.")][-1]
    assert "INC-9 is closed" in str(last["data"])


def test_after_an_approval_the_page_says_who_must_approve_next(env: Env) -> None:
    rid = pending(env)
    bob = login(env, "bob")
    r = bob.post(f"/requests/{rid}/approve", {"comment": "fine", "back": "/inbox"})
    assert r.status_code == 303 and r.headers["location"] == "/inbox?done=approve"
    said = text_of(bob.get(r.headers["location"]))
    assert (f"Approved. Request #{rid} now waits for step 2 of 2 (owner): carol or erin must "
            "approve it.") in said
    # The request itself keeps saying it, for whoever opens it.
    assert f"Request #{rid} now waits for step 2 of 2 (owner): carol or erin must approve it." \
        in text_of(login(env, "alice").get(f"/requests/{rid}"))
    carol = login(env, "carol")
    r = carol.post(f"/requests/{rid}/approve", {})
    said = text_of(carol.get(r.headers["location"]))
    grant = env.get("alice", f"/api/v1/requests/{rid}").json()["grant"]
    assert "Approved. alice has read on orders-db until " in said
    assert f"(Grant #{grant['id']})" in said


def test_requests_and_grants_are_labelled_wherever_both_numbers_show(
        env: Env) -> None:
    for _ in range(2):
        pending(env)  # so the request and grant numbers differ
    rid = active(env)
    grant = env.get("alice", f"/api/v1/requests/{rid}").json()["grant"]["id"]
    assert grant != rid
    alice = login(env, "alice")
    detail = text_of(alice.get(f"/requests/{rid}"))
    assert f"Request #{rid}" in detail and f"Grant #{grant}:" in detail
    row = alice.get("/grants").text.split(f'<tr id="grant-{grant}">', 1)[1].split("</tr>")[0]
    assert f"Grant #{grant}" in row and f">Request #{rid}</a>" in row
    assert f">Request #{rid}</a>" in alice.get("/my").text


def test_time_left_has_two_units_and_is_never_rounded_up(env: Env) -> None:
    rid = int(env.ask("alice", resource="staging-db", role="read", duration="1h30m",
                      reason="")["id"])
    env.clock.advance(seconds=1)  # 1h29m59s left
    alice = login(env, "alice")
    assert "(ends in 1h29m)" in text_of(alice.get(f"/requests/{rid}"))
    assert "in 1h29m" in text_of(alice.get("/grants"))
    env.clock.advance(hours=1, minutes=29)  # 59 s left
    assert "(ends in 59s)" in text_of(alice.get(f"/requests/{rid}"))


def test_the_favicon_is_served_and_linked(env: Env) -> None:
    alice = login(env, "alice")
    assert '<link rel="icon" href="/static/favicon.svg"' in alice.get("/").text
    for path in ("/static/favicon.svg", "/favicon.ico"):
        r = env.client.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith("image/svg+xml")
        assert r.text.startswith("<svg")


# ---------------------------------------------------------------- the new-request form


def field_errors(html: str) -> dict[str, str]:
    from html import unescape

    return dict(re.findall(r'<p class="field-error" id="(\w+)-error">([^<]*)</p>',
                           unescape(html)))


def test_every_wrong_field_is_named_at_once_an_empty_reason_too(
        env: Env) -> None:
    alice = login(env, "alice")
    r = alice.post("/requests/new", {"resource": "orders-db", "role": "read",
                                     "duration": "9h", "reason": ""})
    is_html_page(r, 422)
    assert field_errors(r.text) == {
        "duration": "9h is over the maximum of 4h for workflow 'prod'; ask for a shorter time",
        "reason": "workflow 'prod' requires a reason"}
    # Fixing the duration alone leaves only the reason's error (nothing stale).
    r = alice.post("/requests/new", {"resource": "orders-db", "role": "read",
                                     "duration": "1h", "reason": ""})
    assert field_errors(r.text) == {"reason": "workflow 'prod' requires a reason"}
    r = alice.post("/requests/new", {"resource": "orders-db", "role": "read",
                                     "duration": "soon", "reason": ""})
    assert set(field_errors(r.text)) == {"duration", "reason"}


def test_the_preview_names_each_fields_problem_for_the_script(env: Env) -> None:
    alice = login(env, "alice")
    q = "/requests/preview?resource=orders-db&role=read&duration={d}&reason={r}"
    listed = re.compile(r'<li data-field="(\w+)">([^<]*)</li>')
    assert dict(listed.findall(alice.get(q.format(d="9h", r="")).text)) == {
        "duration": "9h is over the maximum of 4h for workflow &#39;prod&#39;; ask for a "
                    "shorter time",
        "reason": "workflow &#39;prod&#39; requires a reason"}
    assert listed.findall(alice.get(q.format(d="1h", r="INC-7+look+at+orders")).text) == []


# ---------------------------------------------------------------- alerts


def raise_many(env: Env, rule: str, users: list[str], severity: str = "low") -> None:
    with transaction(env.st.sessions) as s:
        detect.raise_alerts(s, findings=[
            Finding(rule, severity, f"{u} asked outside working hours", f"{rule}:t{i}", [i],
                    user=u, subject=f"request:{100 + i}")
            for i, u in enumerate(users)], now=env.clock())


def test_alerts_of_a_rule_read_as_one_line_with_a_count(env: Env) -> None:
    raise_many(env, "off_hours", ["alice"] * 6 + ["erin"] * 5)
    raise_many(env, "self_approval", ["gina"], severity="high")
    r = env.get("dave", "/api/v1/alerts/groups")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["by"] == "rule"
    assert [(g["rule"], g["count"], g["severity"]) for g in body["items"]] == [
        ("self_approval", 1, "high"), ("off_hours", 11, "low")]
    assert body["items"][1]["newest"]["title"] == "erin asked outside working hours"
    by_user = env.get("dave", "/api/v1/alerts/groups",
                      params={"by": "user", "rule": "off_hours"}).json()["items"]
    assert sorted((g["user"], g["count"]) for g in by_user) == [("alice", 6), ("erin", 5)]
    assert env.get("dave", "/api/v1/alerts/groups", params={"by": "nope"}).status_code == 422
    assert env.get("alice", "/api/v1/alerts/groups").status_code == 403

    dave = login(env, "dave")
    page = text_of(dave.get("/alerts"))
    assert f"off_hours {TIMES}11" in page and f"alice {TIMES}6, erin {TIMES}5" in page
    assert "Show the 11 alerts" in page
    each = dave.get("/alerts?view=each&rule=off_hours")
    assert len(re.findall(r'<article class="card alert', each.text)) == 11
    assert "self_approval" not in text_of(each).split("each alert", 1)[1]


# ---------------------------------------------------------------- connecting


GATEWAY_POLICY = POLICY.replace(
    "  - {name: lab, kind: generic,",
    "  - {name: pg-lab, kind: postgres, labels: {env: lab}, owners: [frank], roles: [read],\n"
    "     gateway: {dsn_env: PG_LAB_DSN}}\n"
    "  - {name: lab, kind: generic,") + (
    "  - name: pglab\n    match: 'resource.name == \"pg-lab\"'\n    require_reason: false\n"
    "    auto_approve: 'true'\n    steps: []\n"
    "web: {local_login: true}\n"
    "gateway: {listen: '0.0.0.0:6432', public_host: gw.example.com, token_ttl: 5m}\n")


@pytest.fixture
def gw_env(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Env]:
    e = make_env(sessions, tmp_path, GATEWAY_POLICY)
    with e.client:
        yield e


def test_the_grantee_gets_a_connection_token_on_the_request_page(gw_env: Env) -> None:
    env = gw_env
    rid = int(env.ask("alice", resource="pg-lab", role="read", reason="")["id"])
    grant = env.get("alice", f"/api/v1/requests/{rid}").json()["grant"]["id"]
    alice, frank = login(env, "alice"), login(env, "frank")  # frank owns pg-lab
    page = alice.get(f"/requests/{rid}")
    said = text_of(page)
    assert f"Grant #{grant} lets you in as alice on database pg-lab at gw.example.com:6432" \
        in said
    assert "accord connect pg-lab" in said
    assert f'href="/requests/{rid}#connect">Connect</a>' in alice.get("/grants").text
    assert 'id="connect"' not in frank.get(f"/requests/{rid}").text  # not his grant

    r = alice.post(f"/requests/{rid}/connect")
    assert r.status_code == 303 and r.headers["location"] == f"/requests/{rid}#connect"
    shown = alice.get(r.headers["location"]).text
    psql = re.search(r'<pre class="wrap" id="connect-psql">([^<]*)</pre>', shown)
    assert psql and "host=gw.example.com port=6432 dbname=pg-lab user=alice" in psql.group(1)
    token = re.search(r"PGPASSWORD=&#39;(acg_[^&]+)&#39;", psql.group(1))
    assert token, psql.group(1)
    [issued] = env.events(type="gateway.token_issued")
    assert issued["actor"] == {"kind": "user", "id": "alice", "via": "web"}
    assert token.group(1) not in str(issued)  # the ledger never holds the secret
    assert 'id="connect-psql"' not in alice.get(f"/requests/{rid}").text  # shown once

    # Someone else's grant: refused, back on a page saying so.
    r = frank.post(f"/requests/{rid}/connect")
    assert r.status_code == 303
    assert "has no grant of yours" in alert(frank.get(r.headers["location"]))


def test_no_connect_section_without_a_gateway(env: Env) -> None:
    rid = active(env)
    assert 'id="connect"' not in login(env, "alice").get(f"/requests/{rid}").text
    assert WEB_POLICY  # (the default test policy has no gateway section)
