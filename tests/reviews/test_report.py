"""The completion report lists every entry with its decision and matches the ledger."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta

from tests.conftest import Env
from tests.reviews.conftest import decide, entry, review_events, runner, scenario, start


def test_the_report_lists_every_entry_and_matches_the_ledger(env: Env) -> None:
    s = scenario(env)
    review = start(env)
    rid = review["id"]
    alice, carol = entry(review, "alice"), entry(review, "carol")
    assert decide(env, "erin", rid, alice["id"], "certify", note="needed").status_code == 200
    assert decide(env, "erin", rid, carol["id"], "revoke", note="left the team").status_code \
        == 200
    env.clock.value = datetime.fromisoformat(review["deadline"]) + timedelta(seconds=1)
    runner(env).run_once()

    r = env.get("dave", f"/api/v1/reviews/{rid}/report", params={"format": "json"})
    assert r.status_code == 200, r.text
    rep = r.json()
    events = review_events(env, rid)
    decided = {e["data"]["entry_id"]: e for e in events if e["type"] == "review.decided"}
    assert rep["summary"] == {"entries": 4, "pending": 0, "certified": 1, "revoked": 1,
                              "expired": 2}
    assert [e["id"] for e in rep["entries"]] == sorted(e["id"] for e in review["entries"])
    for e in rep["entries"]:
        if e["status"] in ("certified", "revoked"):
            ev = decided[e["id"]]
            assert e["decision_index"] == ev["index"]
            assert (e["decided_by"], e["note"]) == (ev["actor"]["id"], ev["data"]["note"])
            assert ev["data"]["decision"] == {"certified": "certify",
                                              "revoked": "revoke"}[e["status"]]
        else:
            assert e["status"] == "expired" and e["decision_index"] is None
            assert e["id"] not in decided
    assert sorted(rep["expired"]) == sorted(e["id"] for e in rep["entries"]
                                            if e["status"] == "expired")
    (revocation,) = rep["revocations"]
    (revoked_event,) = env.events(type="grant.revoked")
    assert revocation["grant_id"] == s.carol["grant"]["id"] == revoked_event["data"]["grant_id"]
    assert revocation["ledger_index"] == next(
        i["index"] for i in env.get("dave", "/api/v1/audit/events",
                                    params={"type": "grant.revoked"}).json()["items"])
    ledger = rep["ledger"]
    assert ledger["first_index"] == events[0]["index"]  # review.started
    assert ledger["last_index"] == events[-1]["index"]  # review.completed
    assert [x["type"] for x in ledger["events"]] == [e["type"] for e in events]
    assert ledger["entries_match"] is True and ledger["outcomes_match"] is True
    assert ledger["entries_sha256"] == events[0]["data"]["entries_sha256"]
    assert ledger["outcomes_sha256"] == events[-1]["data"]["outcomes_sha256"]

    r = env.get("frank", f"/api/v1/reviews/{rid}/report", params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert {(x["user"], x["status"], x["decided_by"]) for x in rows} == {
        ("alice", "certified", "erin"), ("carol", "revoked", "erin"), ("erin", "expired", ""),
        ("gina", "expired", "")}
    r = env.get("dave", f"/api/v1/reviews/{rid}/report", params={"format": "html"})
    assert r.status_code == 200 and "2 expired" in r.text and "left the team" in r.text
    assert "matches review.completed" in r.text

    assert env.get("erin", f"/api/v1/reviews/{rid}/report").status_code == 403
    assert env.get("dave", f"/api/v1/reviews/{rid}/report",
                   params={"format": "pdf"}).status_code == 422
    assert env.get("dave", "/api/v1/reviews/4242/report").status_code == 404


def test_notes_cannot_smuggle_formulas_or_markup_into_the_report(env: Env) -> None:
    scenario(env)
    review = start(env)
    rid = review["id"]
    note = "=HYPERLINK(\"https://evil.example\") <script>alert(1)</script>"
    assert decide(env, "erin", rid, entry(review, "alice")["id"], "revoke",
                  note=note).status_code == 200
    text = env.get("dave", f"/api/v1/reviews/{rid}/report", params={"format": "csv"}).text
    assert "'=HYPERLINK" in text
    html = env.get("dave", f"/api/v1/reviews/{rid}/report", params={"format": "html"}).text
    assert "<script>" not in html and "&lt;script&gt;" in html
    # an open campaign's report says the outcomes are not recorded yet
    assert "not recorded yet" in html
