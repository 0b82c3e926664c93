"""Time in a review is kept by durable jobs: reminders at their times (across worker
restarts) until everything is decided, expiry at the deadline, and campaigns started
every period. The clock moves; nothing sleeps."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from tests.conftest import Env
from tests.reviews.conftest import decide, entry, review_events, runner, scenario, start


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_reminders_fire_at_their_times_across_restarts_and_stop_when_all_is_decided(
        env: Env) -> None:
    scenario(env)
    review = start(env)
    rid = review["id"]

    def reminded() -> list[dict[str, object]]:
        return [e["data"] for e in review_events(env, rid) if e["type"] == "review.reminded"]

    env.clock.advance(days=2, seconds=-1)
    runner(env).run_once()
    assert reminded() == []  # not yet
    env.clock.advance(seconds=2)
    runner(env).run_once()  # a new runner each time: as after a restart
    (first,) = reminded()
    assert first["round"] == 1 and first["reviewers"] == {"carol": 3, "erin": 3}

    # erin decides hers: the next round goes to carol alone, two days after the first
    for who in ("alice", "carol", "gina"):
        assert decide(env, "erin", rid, entry(review, who)["id"], "certify").status_code == 200
    env.clock.advance(days=2)
    runner(env).run_once()
    assert [r["round"] for r in reminded()] == [1, 2]
    assert reminded()[-1]["reviewers"] == {"carol": 1}

    # everything decided: the campaign completes and no reminder follows
    assert decide(env, "carol", rid, entry(review, "erin", "write")["id"],
                  "certify").status_code == 200
    for _ in range(3):
        env.clock.advance(days=2)
        runner(env).run_once()
    assert len(reminded()) == 2
    assert review_events(env, rid)[-1]["type"] == "review.completed"


def test_at_the_deadline_undecided_entries_expire_and_the_campaign_completes(
        env: Env) -> None:
    s = scenario(env)
    review = start(env)
    rid = review["id"]
    alice = entry(review, "alice")
    assert decide(env, "erin", rid, alice["id"], "certify").status_code == 200
    deadline = _when(review["deadline"])
    assert deadline - _when(review["started_at"]) == timedelta(days=14)

    env.clock.value = deadline + timedelta(seconds=1)
    # past the deadline no decision is taken, even before the worker has closed it
    r = decide(env, "erin", rid, entry(review, "gina")["id"], "certify")
    assert r.status_code == 409 and "closed at" in r.json()["detail"]
    runner(env).run_once()
    done = env.get("dave", f"/api/v1/reviews/{rid}").json()
    assert done["status"] == "completed"
    assert {e["user"]: e["status"] for e in done["entries"]} == {
        "alice": "certified", "carol": "expired", "erin": "expired", "gina": "expired"}
    completed = review_events(env, rid)[-1]
    assert completed["type"] == "review.completed"
    assert completed["actor"]["kind"] == "system"
    assert completed["data"]["reason"] == "deadline: undecided entries expired"
    assert completed["data"]["counts"] == {"pending": 0, "certified": 1, "revoked": 0,
                                           "expired": 3}
    assert sorted(completed["data"]["expired"]) == sorted(
        e["id"] for e in done["entries"] if e["status"] == "expired")
    # expiring is not revoking: access stays until its own end, and says so in the report
    assert env.get("carol", f"/api/v1/requests/{s.carol['id']}").json()["status"] == "active"
    r = decide(env, "erin", rid, entry(review, "gina")["id"], "certify")
    assert r.status_code == 409
    runner(env).run_once()
    assert len([e for e in review_events(env, rid) if e["type"] == "review.completed"]) == 1


def test_scheduled_campaigns_start_every_period_since_the_last_one(env: Env) -> None:
    scenario(env)
    t0 = env.clock()
    runner(env).run_once()  # the worker plans each review's first start
    defs = {d["name"]: d for d in env.get("dave", "/api/v1/reviews/definitions").json()}
    assert _when(defs["prod-quarterly"]["next_start"]) == t0 + timedelta(days=90)
    assert _when(defs["lab-monthly"]["next_start"]) == t0 + timedelta(days=30)

    env.clock.advance(days=10)  # gina keeps coming back in the new period
    for _ in range(3):
        env.ask("gina", duration="1h")
        env.clock.advance(days=1)
    env.clock.value = t0 + timedelta(days=90) - timedelta(seconds=1)
    runner(env).run_once()
    assert [c for c in env.get("dave", "/api/v1/reviews").json()["items"]
            if c["definition"] == "prod-quarterly"] == []
    env.clock.value = t0 + timedelta(days=90, seconds=1)
    runner(env).run_once()
    (first,) = env.get("dave", "/api/v1/reviews",
                       params={"definition": "prod-quarterly"}).json()["items"]
    assert first["trigger"] == "schedule" and first["started_by"] == "accord"
    assert _when(first["period_start"]) == _when(first["started_at"]) - timedelta(days=90)
    # only gina's recurring access: the 30-day grants ended in the period (held once each,
    # not recurring) and the scenario's earlier grants were before it
    users = [e["user"] for e in env.get("dave", f"/api/v1/reviews/{first['id']}")
             .json()["entries"]]
    assert users == ["gina"]

    # an admin starting one early moves the schedule: the next is `every` after it
    env.clock.advance(days=30)
    manual_at = env.clock()
    runner(env).run_once()  # closes the first at its deadline
    manual = start(env)
    env.clock.value = _when(first["started_at"]) + timedelta(days=90, seconds=1)
    runner(env).run_once()
    listed = env.get("dave", "/api/v1/reviews", params={"definition": "prod-quarterly"})
    assert [c["id"] for c in listed.json()["items"]] == [manual["id"], first["id"]]
    env.clock.value = manual_at + timedelta(days=90, seconds=1)
    runner(env).run_once()
    third, second, _ = env.get("dave", "/api/v1/reviews",
                               params={"definition": "prod-quarterly"}).json()["items"]
    assert second["id"] == manual["id"] and third["trigger"] == "schedule"
    assert third["period_start"] == second["period_end"]  # no gap, no overlap
    assert second["period_start"] == first["period_end"]


def test_on_expiry_revoke_takes_away_what_nobody_certified(
        sessions: Any, tmp_path: Any) -> None:
    from tests.conftest import make_env
    from tests.reviews.conftest import REVIEW_POLICY, START

    text = REVIEW_POLICY.replace("    recurring: {min_grants: 3}\n",
                                 "    recurring: {min_grants: 3}\n    on_expiry: revoke\n")
    env = make_env(sessions, tmp_path, text)
    env.clock.value = START
    with env.client:
        s = scenario(env)
        review = start(env)
        rid = review["id"]
        assert decide(env, "erin", rid, entry(review, "alice")["id"], "certify").status_code \
            == 200
        env.clock.value = _when(review["deadline"]) + timedelta(seconds=1)
        runner(env).run_once()
        done = env.get("dave", f"/api/v1/reviews/{rid}").json()
        assert done["status"] == "completed"
        # certified access stays; access nobody certified is revoked, through provisioning
        assert env.get("alice", f"/api/v1/requests/{s.alice['id']}").json()["status"] \
            == "active"
        assert env.get("carol", f"/api/v1/requests/{s.carol['id']}").json()["status"] \
            == "revoked"
        assert env.get("erin", f"/api/v1/requests/{s.erin['id']}").json()["status"] \
            == "revoked"
        completed = review_events(env, rid)[-1]
        assert completed["data"]["reason"].endswith("and their access was revoked")
        assert sorted(completed["data"]["revoked_grant_ids"]) == sorted(
            [s.carol["grant"]["id"], s.erin["grant"]["id"]])
        revoked = env.events(type="grant.revoked")
        assert {e["actor"]["kind"] for e in revoked} == {"system"}
