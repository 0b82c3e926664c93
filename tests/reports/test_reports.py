"""Reports, built from scenarios driven through the API, checked against the ledger.

Every number in the JSON report is recomputed here from `/api/v1/audit/events`; the PDF's
text is extracted with pypdf and read like an auditor would. Periods come from the
injectable clock: no sleeps.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from pypdf import PdfReader

from accord.ledger.events import format_time
from accord.ledger.note import parse_checkpoint
from tests.conftest import Env


def _t(value: datetime) -> str:
    return format_time(value)


def all_events(env: Env, **params: Any) -> list[tuple[int, dict[str, Any]]]:
    """Every event matching `params`, following the cursor."""
    out: list[tuple[int, dict[str, Any]]] = []
    cursor = None
    while True:
        q = {"limit": 1000, **params, **({"cursor": cursor} if cursor else {})}
        r = env.get("dave", "/api/v1/audit/events", params=q)
        assert r.status_code == 200, r.text
        body = r.json()
        out += [(item["index"], item["event"]) for item in body["items"]]
        cursor = body["next_cursor"]
        if not cursor:
            return out


def scenario(env: Env) -> tuple[datetime, datetime, dict[str, int]]:
    """Requests before, inside and after a period [start, end), through the API."""
    c = env.clock
    ids: dict[str, int] = {}
    # Before the period: an auto-approved 8h grant that carries over, and a denial.
    ids["carried"] = env.ask("alice", "staging-db", "read", "8h", "nightly check")["id"]
    ids["before_denied"] = env.ask("erin", "orders-db", "read", "1h", "short")["id"]
    start = c.advance(minutes=30)
    c.advance(minutes=5)
    # Inside: approved by two people, denied by policy, approved by policy, denied by a
    # person, denied by default (no workflow), cancelled, still pending.
    ids["approved"] = env.ask("alice", "orders-db", "read", "2h",
                              "INC-1 investigate orders")["id"]
    c.advance(minutes=7)
    assert env.act("bob", ids["approved"], "approve", comment="looks right").status_code == 200
    c.advance(minutes=3)
    assert env.act("carol", ids["approved"], "approve").status_code == 200
    ids["auto_denied"] = env.ask("erin", "orders-db", "read", "1h", "short")["id"]
    ids["auto_approved"] = env.ask("gina", "staging-db", "read", "1h", "")["id"]
    ids["denied"] = env.ask("alice", "orders-db", "write", "1h", "INC-2 fix the totals")["id"]
    c.advance(minutes=2)
    assert env.act("gina", ids["denied"], "deny", comment="use read").status_code == 200
    ids["default_denied"] = env.ask("erin", "lab", "use", "1h", "try the lab box")["id"]
    ids["cancelled"] = env.ask("erin", "orders-db", "read", "1h", "INC-3 maybe not")["id"]
    assert env.act("erin", ids["cancelled"], "cancel").status_code == 200
    ids["pending"] = env.ask("gina", "orders-db", "read", "1h", "INC-4 waiting on it")["id"]
    c.advance(minutes=20)
    assert env.act("alice", ids["approved"], "relinquish").status_code == 200
    end = c.advance(minutes=10)
    # After the period: not in the report.
    c.advance(minutes=1)
    ids["after"] = env.ask("erin", "staging-db", "read", "1h", "later")["id"]
    c.advance(minutes=1)
    return start, end, ids


def report(env: Env, path: str, fmt: str, **params: Any) -> Any:
    r = env.get("dave", path, params={"format": fmt, **params})
    assert r.status_code == 200, r.text
    assert hashlib.sha256(r.content).hexdigest() == r.headers["x-accord-report-sha256"]
    assert r.headers["content-disposition"].startswith("attachment; filename=")
    return r


def _outcome(env: Env, rid: int, created: dict[str, Any]) -> tuple[str, str | None]:
    """A request's outcome and who decided it, from its own ledger events."""
    outcome, kind = "pending", None
    names = {"request.approved": "approved", "request.denied": "denied",
             "request.cancelled": "cancelled", "request.expired": "expired"}
    for _i, e in all_events(env, subject=f"request:{rid}"):
        if e["type"] in names:
            outcome = names[e["type"]]
            # decided by a policy rule or by people; a withdrawal decides nothing
            kind = e["actor"]["kind"] if outcome in ("approved", "denied") else None
    if outcome == "pending" and created["data"]["pending_until"] and \
            created["data"]["pending_until"] <= _t(env.clock()):
        outcome = "expired"
    return outcome, kind


def test_numbers_match_the_ledger(env: Env) -> None:
    start, end, ids = scenario(env)
    r = report(env, "/api/v1/reports/access", "json", **{"from": _t(start), "to": _t(end)})
    assert r.headers["content-type"] == "application/json"
    body = r.json()

    # Exactly the requests created in the period, as the ledger tells it.
    created = {e["data"]["request_id"]: e for _i, e in all_events(
        env, type="request.created", since=_t(start), until=_t(end))}
    in_period = {x["id"] for x in body["requests"] if x["in_period"]}
    assert in_period == set(created)
    assert ids["before_denied"] not in in_period and ids["after"] not in in_period
    assert ids["carried"] not in in_period
    assert body["totals"]["requests"] == len(created) == 7

    # Per resource: requests, outcomes, automatic and human decisions, approvals.
    approvals = Counter(e["data"]["request_id"] for _i, e in all_events(
        env, type="approval.recorded"))
    expected: dict[str, dict[str, Any]] = {}
    for rid, e in created.items():
        name = e["resource"]["name"]
        t = expected.setdefault(name, {"requests": 0, "outcomes": Counter(), "automatic": 0,
                                       "human": 0, "approvals": 0})
        outcome, kind = _outcome(env, rid, e)
        t["requests"] += 1
        t["outcomes"][outcome] += 1
        t["automatic"] += kind == "policy"
        t["human"] += kind == "user"
        t["approvals"] += approvals[rid]
    by_name = {t["name"]: t for t in body["resources"]}
    for name, t in expected.items():
        got = by_name[name]
        assert got["requests"] == t["requests"], name
        assert {k: v for k, v in got["outcomes"].items() if v} == dict(t["outcomes"]), name
        assert (got["automatic"], got["human"], got["approvals"]) == \
            (t["automatic"], t["human"], t["approvals"]), name
    assert by_name["orders-db"]["outcomes"] == {"approved": 1, "denied": 2, "cancelled": 1,
                                                "expired": 0, "pending": 1}
    assert by_name["lab"]["outcomes"]["denied"] == 1

    # Access: the grants that overlap the period, from grant events.
    ends = {e["data"]["grant_id"]: e["data"]["ended_at"] for _i, e in all_events(env)
            if e["type"] in ("grant.expired", "grant.revoked", "grant.relinquished")}
    overlapping = set()
    for _i, e in all_events(env, type="grant.activated", until=_t(end)):
        g = e["data"]
        if ends.get(g["grant_id"], g["ends_at"]) > _t(start):
            overlapping.add(g["grant_id"])
    reported = {x["grant"]["id"] for x in body["requests"]
                if x["grant"] and x["grant"]["in_period"]}
    assert reported == overlapping
    assert body["totals"]["grants"] == len(overlapping) == 3
    assert body["totals"]["carried_over"] == 1
    assert by_name["staging-db"]["users"] == ["alice", "gina"]
    relinquished = next(x for x in body["requests"] if x["id"] == ids["approved"])
    assert relinquished["grant"]["status"] == "relinquished"
    assert relinquished["grant"]["seconds_in_period"] == 22 * 60  # approved, then given up

    # Who approved and how.
    assert [(a["user"], a["decision"], a["step"]) for a in relinquished["approvals"]] == \
        [("bob", "approve", 1), ("carol", "approve", 2)]
    assert relinquished["decided_how"] == "people"
    auto = next(x for x in body["requests"] if x["id"] == ids["auto_denied"])
    assert auto["decided_how"] == "policy"
    assert auto["policy"]["workflow"] == "prod" and auto["policy"]["rule"] == "auto_deny"
    assert auto["policy"]["version"] == created[ids["auto_denied"]]["policy"]["version"]

    # The ledger's own count and the evidence.
    period = all_events(env, since=_t(start), until=_t(end))
    lf = body["ledger"]
    assert lf["events_in_period"] == len(period)
    assert (lf["first_index"], lf["last_index"]) == (period[0][0], period[-1][0])
    assert lf["by_type"] == dict(Counter(e["type"] for _i, e in period))
    assert all(c["ok"] for c in lf["checks"]), lf["checks"]
    ev = body["evidence"]
    key = env.get("dave", "/api/v1/audit/key").text.strip()
    assert ev["key"] == key
    cp = parse_checkpoint(ev["checkpoint"], [env.st.ledger.signer.verifier])
    assert cp.size == ev["checkpoint_size"] > lf["last_index"]
    assert base64.b64encode(cp.root).decode() == ev["checkpoint_root"]
    assert ev["covers_period"] is True
    assert f"accord audit verify --bundle ledger.bundle --key '{key}'" in ev["commands"][1]

    # Generating it is itself a ledger event, with the file's hash.
    generated = all_events(env, type="report.generated")
    assert len(generated) == 1
    data = generated[0][1]["data"]
    assert data["sha256"] == r.headers["x-accord-report-sha256"]
    assert (data["kind"], data["format"], data["requests"]) == ("access", "json", 7)
    assert data["from"] == start.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert generated[0][1]["actor"] == {"kind": "user", "id": "dave", "via": "api"}


def test_pdf_reads_right(env: Env) -> None:
    start, end, ids = scenario(env)
    r = report(env, "/api/v1/reports/access", "pdf", **{"from": _t(start), "to": _t(end)})
    assert r.headers["content-type"] == "application/pdf"
    assert r.content.startswith(b"%PDF-")
    pdf = PdfReader(io.BytesIO(r.content))
    text = "\n".join(page.extract_text() for page in pdf.pages)
    flat = " ".join(text.split())
    assert "Access report" in flat
    assert "7 requests filed in the period" not in flat  # per resource, not in total
    assert "5 requests filed in the period: 1 approved, 2 denied, 1 cancelled, 0 expired, " \
        "1 pending" in flat  # orders-db
    for name in ("orders-db", "staging-db", "lab", "alice", "gina", "erin"):
        assert name in flat
    assert "INC-1 investigate orders" in flat
    assert "bob approved (step 1" in flat and "carol approved (step 2" in flat
    assert "policy: workflow prod" in flat and "rule auto_deny" in flat
    assert "rule default_deny" in flat
    assert f"{ids['carried']} *" in flat  # carried over into the period
    (_i, generated), = all_events(env, type="report.generated")
    size = generated["data"]["checkpoint_size"]
    assert f"Checkpoint of size {size} (ledger indices 0 to {size - 1})" in flat
    assert "It covers every event of the period." in flat
    key = env.st.ledger.signer.verifier.encode()
    assert key in text
    assert "accord audit export --out ledger.bundle" in flat
    first, last = generated["data"]["ledger_first_index"], generated["data"]["ledger_last_index"]
    assert f"indices {first} to {last}" in flat
    assert f"page 1 of {len(pdf.pages)}" in flat
    assert "MISMATCH" not in flat


def test_csv_and_html(env: Env) -> None:
    start, end, ids = scenario(env)
    period = {"from": _t(start), "to": _t(end)}
    rows = list(csv.DictReader(io.StringIO(
        report(env, "/api/v1/reports/access", "csv", **period).content.decode())))
    assert {int(x["request_id"]) for x in rows if x["in_period"] == "yes"} == \
        {v for k, v in ids.items() if k not in ("carried", "before_denied", "after")}
    carried = next(x for x in rows if int(x["request_id"]) == ids["carried"])
    assert carried["in_period"] == "carried over" and carried["outcome"] == "approved"
    approved = next(x for x in rows if int(x["request_id"]) == ids["approved"])
    assert "bob approve step 1" in approved["approvals"]
    assert approved["access_seconds_in_period"] == str(22 * 60)

    html = report(env, "/api/v1/reports/access", "html", resource="orders-db",
                  **period).text
    assert html.startswith("<!doctype html>")
    assert "<svg" in html and "<script" not in html and 'rel="stylesheet"' not in html
    assert "INC-1 investigate orders" in html and "staging-db</td>" not in html
    assert "Checkpoint of size" in html
    # Its charts are the dashboard's: at most ten period labels shown (the rest are minor,
    # hidden), and every resource named, in full in a tooltip.
    timeline, resources = html.split('class="chart-labels names"', 1)
    shown = re.findall(r'<span class="chart-label">([^<]*)</span>', timeline)
    assert 1 <= len(shown) <= 10 and ".chart-label.minor { visibility: hidden; }" in html
    assert '<span class="chart-label" title="orders-db">orders-db</span>' in resources


def test_user_and_resource_reports(env: Env) -> None:
    start, end, ids = scenario(env)
    body = report(env, "/api/v1/reports/user/alice", "json").json()
    assert {x["requester"] for x in body["requests"]} == {"alice"}
    assert {x["id"] for x in body["requests"]} == {ids["carried"], ids["approved"],
                                                   ids["denied"]}
    assert body["parameters"]["from"] is None
    gina = report(env, "/api/v1/reports/user/gina", "json").json()
    assert [(d["request_id"], d["decision"]) for d in gina["decisions_by_user"]] == \
        [(ids["denied"], "deny")]
    res = report(env, "/api/v1/reports/resource/staging-db", "json",
                 **{"from": _t(start), "to": _t(end)}).json()
    assert {x["resource"] for x in res["requests"]} == {"staging-db"}
    assert res["totals"]["requests"] == 1 and res["totals"]["grants"] == 2
    pdf = report(env, "/api/v1/reports/resource/lab", "pdf")
    text = " ".join(" ".join(p.extract_text() for p in PdfReader(
        io.BytesIO(pdf.content)).pages).split())
    assert "Access report for resource lab" in text and "try the lab box" in text
    kinds = [e["data"]["kind"] for _i, e in all_events(env, type="report.generated")]
    assert kinds == ["user", "user", "resource", "resource"]


BAD = [
    ("/api/v1/reports/access", {"to": "2026-01-01"}, 422, "from"),
    ("/api/v1/reports/access", {"from": "2026-02-01", "to": "2026-01-01"}, 422, "later"),
    ("/api/v1/reports/access", {"from": "2026-01-01T00:00:00", "to": "2026-02-01"}, 422,
     "timezone"),
    ("/api/v1/reports/access", {"from": "yesterday", "to": "2026-02-01"}, 422, "2026-07-01"),
    ("/api/v1/reports/access", {"from": "2026-01-01", "to": "2026-02-01", "format": "docx"},
     422, "pdf"),
    ("/api/v1/reports/user/mallory", {}, 404, "mallory"),
    ("/api/v1/reports/resource/nope", {}, 404, "nope"),
]


def test_bad_parameters(env: Env) -> None:
    for path, params, status, needle in BAD:
        r = env.get("dave", path, params=params)
        assert r.status_code == status, (path, params, r.text)
        assert needle in r.json()["detail"], (path, params)
    assert all_events(env, type="report.generated") == []


def test_only_auditors_and_admins(env: Env) -> None:
    env.ask("alice")
    for user in ("alice", "bob"):
        r = env.get(user, "/api/v1/reports/access",
                    params={"from": "2020-01-01", "to": "2100-01-01"})
        assert r.status_code == 403
    assert env.get(None, "/api/v1/reports/user/alice").status_code == 401
    assert env.get("frank", "/api/v1/reports/user/alice",
                   params={"format": "csv"}).status_code == 200  # an admin
    assert len(all_events(env, type="report.generated")) == 1


def test_an_empty_period(env: Env) -> None:
    env.ask("alice")
    later = env.clock() + timedelta(days=30)
    body = report(env, "/api/v1/reports/access", "json",
                  **{"from": _t(later), "to": _t(later + timedelta(days=1))}).json()
    assert body["totals"]["requests"] == 0 and body["requests"] == []
    assert body["ledger"]["first_index"] is None
    assert body["evidence"]["covers_period"] is True
    pdf = report(env, "/api/v1/reports/access", "pdf",
                 **{"from": _t(later), "to": _t(later + timedelta(days=1))})
    assert b"%PDF" in pdf.content[:8]
