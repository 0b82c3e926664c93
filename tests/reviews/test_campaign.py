"""A campaign puts exactly standing and recurring access under review, with its evidence
and reviewers, and decisions certify or revoke it once, never one's own."""

from __future__ import annotations

from sqlalchemy import select

from accord.jobs.models import Job
from accord.worker.job_runner import detect_all
from tests.conftest import Env
from tests.reviews.conftest import decide, entry, review_events, scenario, start


def _activated(env: Env) -> dict[int, int]:
    """grant id -> ledger index of its grant.activated event."""
    r = env.get("dave", "/api/v1/audit/events", params={"type": "grant.activated",
                                                         "limit": 1000})
    return {i["event"]["data"]["grant_id"]: i["index"] for i in r.json()["items"]}


def test_a_campaign_holds_exactly_the_standing_and_recurring_access(env: Env) -> None:
    s = scenario(env)
    review = start(env)
    assert review["status"] == "open" and review["trigger"] == "manual"
    assert review["resources"] == ["orders-db"]  # match: env == prod; staging-db is not
    keys = [(e["user"], e["role"], e["kind"], e["period_grants"]) for e in review["entries"]]
    # bob's one short grant ended: not standing, not recurring; frank's is on staging-db
    assert sorted(keys) == [("alice", "read", "standing", 1), ("carol", "read", "standing", 1),
                            ("erin", "write", "standing", 1), ("gina", "read", "recurring", 3)]
    activated = _activated(env)
    gina = entry(review, "gina")
    assert gina["grant_ids"] == sorted(r["grant"]["id"] for r in s.gina)
    assert gina["request_ids"] == sorted(r["id"] for r in s.gina)
    assert gina["evidence"] == sorted(activated[g] for g in gina["grant_ids"])
    erin = entry(review, "erin", "write")
    assert erin["request_ids"] == [s.erin["id"]]
    assert erin["evidence"] == [activated[s.erin["grant"]["id"]]]
    # reviewers: the resource's owners (carol, erin), never the entry's own user
    assert entry(review, "alice")["reviewers"] == ["carol", "erin"]
    assert entry(review, "carol")["reviewers"] == ["erin"]
    assert erin["reviewers"] == ["carol"]
    assert review["counts"] == {"total": 4, "pending": 4, "certified": 0, "revoked": 0,
                                "expired": 0, "mine": 0}

    (started,) = review_events(env, review["id"])
    assert started["type"] == "review.started" and started["actor"]["id"] == "frank"
    data = started["data"]
    assert (data["entries"], data["standing"], data["recurring"]) == (4, 3, 1)
    assert data["reviewers"] == {"carol": 3, "erin": 3}
    assert data["period"]["end"] == review["started_at"].replace("+00:00", "Z")
    # its close at the deadline and its first reminder are durable jobs
    with env.st.sessions() as session:
        keys_due = dict(session.execute(select(Job.key, Job.run_at).where(
            Job.key.like(f"review:{review['id']}:%"))).all())
    assert set(keys_due) == {f"review:{review['id']}:close", f"review:{review['id']}:remind:1"}


def test_who_sees_and_starts_reviews(env: Env) -> None:
    scenario(env)
    assert env.post("alice", "/api/v1/reviews",
                    json={"definition": "prod-quarterly"}).status_code == 403
    r = env.post("frank", "/api/v1/reviews", json={"definition": "nope"})
    assert r.status_code == 422 and "prod-quarterly" in r.json()["detail"]
    review = start(env)
    r = env.post("carol", "/api/v1/reviews", json={"definition": "prod-quarterly"})
    assert r.status_code == 409 and f"campaign {review['id']} open" in r.json()["detail"]

    # admins and auditors see all; a reviewer sees the campaign and the entries they review
    assert [c["id"] for c in env.get("dave", "/api/v1/reviews").json()["items"]] == \
        [review["id"]]
    mine = env.get("erin", "/api/v1/reviews").json()["items"]
    assert [(c["id"], c["counts"]["mine"]) for c in mine] == [(review["id"], 3)]
    seen = env.get("erin", f"/api/v1/reviews/{review['id']}").json()["entries"]
    assert sorted(e["user"] for e in seen) == ["alice", "carol", "gina"]
    assert all(e["can_decide"] for e in seen)
    assert len(env.get("dave", f"/api/v1/reviews/{review['id']}").json()["entries"]) == 4
    # others do not know it exists
    assert env.get("alice", "/api/v1/reviews").json()["items"] == []
    assert env.get("alice", f"/api/v1/reviews/{review['id']}").status_code == 404
    assert env.get("alice", "/api/v1/reviews/99999999999").status_code == 404
    defs = {d["name"]: d for d in env.get("dave", "/api/v1/reviews/definitions").json()}
    assert defs["prod-quarterly"]["open_campaign"] == review["id"]
    assert defs["lab-monthly"]["resources"] == ["lab"]
    assert env.get("alice", "/api/v1/reviews/definitions").status_code == 403


def test_decisions_once_each_by_reviewers_never_on_their_own_access(env: Env) -> None:
    s = scenario(env)
    review = start(env)
    rid = review["id"]
    alice, carol = entry(review, "alice"), entry(review, "carol")
    erin, gina = entry(review, "erin", "write"), entry(review, "gina")

    r = decide(env, "carol", rid, carol["id"], "certify")
    assert r.status_code == 403 and "your own access" in r.json()["detail"]
    # The attempt is a fact of its own, and the self-approval detector raises it.
    refused = env.events(type="review.refused")
    assert [(e["actor"]["id"], e["data"]["entry_id"], e["data"]["reason"]) for e in refused] \
        == [("carol", carol["id"], "self_review")]
    assert env.get("carol", f"/api/v1/reviews/{rid}").json()["counts"]["pending"] == 4
    detect_all(env.st.sessions, env.st.policies.current, env.st.now)
    alerts = env.get("dave", "/api/v1/alerts", params={"rule": "self_approval"}).json()["items"]
    index = env.get("dave", "/api/v1/audit/events",
                    params={"type": "review.refused"}).json()["items"][0]["index"]
    assert [(a["user"], a["evidence"]) for a in alerts] == [("carol", [index])]
    r = decide(env, "frank", rid, alice["id"], "certify")  # an admin, not a reviewer of it
    assert r.status_code == 403 and "carol, erin" in r.json()["detail"]
    assert decide(env, "bob", rid, alice["id"], "certify").status_code == 404
    assert decide(env, "erin", rid, 99999, "certify").status_code == 404
    r = decide(env, "erin", rid, alice["id"], "revoke", note=" ")
    assert r.status_code == 422 and r.json()["detail"] == "note: say why the access should go"

    r = decide(env, "erin", rid, alice["id"], "certify", note="on call this quarter")
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["decided_by"]) == ("certified", "erin")
    r = decide(env, "carol", rid, alice["id"], "revoke", note="too late")
    assert r.status_code == 409 and "already certified by erin" in r.json()["detail"]

    # revoke ends the live grant through grants.end: grant.revoked, the request shows it
    r = decide(env, "erin", rid, carol["id"], "revoke", note="moved to the web team")
    assert r.status_code == 200, r.text
    assert r.json()["revoked_grant_ids"] == [s.carol["grant"]["id"]]
    req = env.get("carol", f"/api/v1/requests/{s.carol['id']}").json()
    assert req["status"] == "revoked" and req["grant"]["status"] == "revoked"
    (ended,) = env.events(subject=f"grant:{s.carol['grant']['id']}", type="grant.revoked")
    assert ended["actor"] == {"kind": "user", "id": "erin", "via": "api"}
    assert "moved to the web team" in ended["data"]["comment"]
    assert f"prod-quarterly #{rid}" in ended["data"]["comment"]
    # recurring access without a live grant: the decision stands, nothing to end
    r = decide(env, "carol", rid, gina["id"], "revoke", note="no longer on call")
    assert r.status_code == 200 and r.json()["revoked_grant_ids"] == []
    assert env.get("dave", f"/api/v1/reviews/{rid}").json()["status"] == "open"

    # the last decision completes the campaign
    assert decide(env, "carol", rid, erin["id"], "certify").status_code == 200
    done = env.get("dave", f"/api/v1/reviews/{rid}").json()
    assert done["status"] == "completed"
    assert done["counts"] | {"mine": 0} == {"total": 4, "pending": 0, "certified": 2,
                                            "revoked": 2, "expired": 0, "mine": 0}
    events = review_events(env, rid)
    assert [e["type"] for e in events] == ["review.started", "review.refused"] + \
        ["review.decided"] * 4 + ["review.completed"]
    decided = [(e["actor"]["id"], e["data"]["entry_id"], e["data"]["decision"])
               for e in events if e["type"] == "review.decided"]
    assert decided == [("erin", alice["id"], "certify"), ("erin", carol["id"], "revoke"),
                       ("carol", gina["id"], "revoke"), ("carol", erin["id"], "certify")]
    completed = events[-1]["data"]
    assert completed["reason"] == "every entry decided"
    assert completed["revoked_grant_ids"] == [s.carol["grant"]["id"]]
    assert completed["started_index"] == events[0]["index"]
    r = decide(env, "erin", rid, alice["id"], "certify")
    assert r.status_code == 409


def test_a_campaign_with_nothing_to_review_completes_at_once(env: Env) -> None:
    review = start(env, "lab-monthly")
    assert review["status"] == "completed" and review["entries"] == []
    events = review_events(env, review["id"])
    assert [e["type"] for e in events] == ["review.started", "review.completed"]
    assert events[1]["data"]["reason"] == "nothing to review"
    # a new one may start right away: one open campaign at a time, not one per period
    assert start(env, "lab-monthly")["id"] == review["id"] + 1
