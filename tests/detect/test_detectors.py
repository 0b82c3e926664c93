"""Detectors over the ledger, driven by scenarios through the API (never rows by hand)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from accord.db import transaction
from accord.detect import service as detect
from accord.detect.models import Alert
from accord.detect.rules import Finding
from accord.worker.job_runner import detect_all
from tests.conftest import POLICY, Env, make_env

WEDNESDAY_10 = datetime(2026, 11, 25, 10, 0, 0, 123456, tzinfo=UTC)


def run(env: Env) -> int:
    return detect_all(env.st.sessions, env.st.policies.current, env.st.now)


def alerts(env: Env, **params: Any) -> list[dict[str, Any]]:
    r = env.get("dave", "/api/v1/alerts", params=params)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def at_work(env: Env) -> None:
    env.clock.value = WEDNESDAY_10


def test_three_denials_in_ten_minutes_raise_one_alert(env: Env) -> None:
    at_work(env)
    for _ in range(3):
        assert env.ask("alice", reason="short")["status"] == "denied"  # auto_deny: reason < 10
        env.clock.advance(minutes=4)
    run(env)
    found = alerts(env, rule="repeated_denials")
    assert len(found) == 1
    alert = found[0]
    assert alert["user"] == "alice" and alert["severity"] == "medium"
    assert alert["status"] == "open"
    denied = [e for e in env.events(type="request.denied")]
    assert len(alert["evidence"]) == 3
    # the evidence points at the three denials, by ledger index
    items = env.get("dave", "/api/v1/audit/events", params={"type": "request.denied"}).json()
    assert sorted(alert["evidence"]) == sorted(i["index"] for i in items["items"])
    assert len(denied) == 3
    # nothing more on a re-run; a fourth denial alone does not raise another
    assert run(env) >= 0
    env.ask("alice", reason="short")
    run(env)
    assert len(alerts(env, rule="repeated_denials")) == 1
    raised = env.events(type="alert.raised")
    assert [e["data"]["rule"] for e in raised].count("repeated_denials") == 1


def test_denials_spread_over_more_than_the_window_raise_nothing(env: Env) -> None:
    at_work(env)
    for _ in range(3):
        env.ask("alice", reason="short")
        env.clock.advance(minutes=6)  # 0, 6, 12: never three within ten minutes
    run(env)
    assert alerts(env, rule="repeated_denials") == []


def test_an_approval_two_seconds_after_the_request_is_flagged(env: Env) -> None:
    at_work(env)
    rid = env.ask("alice")["id"]
    env.clock.advance(seconds=2)
    assert env.act("bob", rid, "approve").status_code == 200
    env.clock.advance(minutes=5)
    assert env.act("carol", rid, "approve").status_code == 200  # slow: not flagged
    run(env)
    found = alerts(env, rule="rubber_stamp")
    assert len(found) == 1
    assert found[0]["user"] == "bob" and found[0]["subject"] == f"request:{rid}"
    assert found[0]["data"]["seconds"] == 2


def test_a_self_approval_attempt_is_refused_recorded_and_alerted(env: Env) -> None:
    at_work(env)
    rid = env.ask("gina")["id"]  # gina leads too: eligible for step 1, but it is her own
    r = env.act("gina", rid, "approve")
    assert r.status_code == 403 and "own request" in r.json()["detail"]
    refused = env.events(type="approval.refused")
    assert len(refused) == 1 and refused[0]["actor"]["id"] == "gina"
    assert env.get("gina", f"/api/v1/requests/{rid}").json()["status"] == "pending"
    run(env)
    found = alerts(env, rule="self_approval")
    assert len(found) == 1 and found[0]["severity"] == "high" and found[0]["user"] == "gina"


def test_requests_outside_working_hours_are_flagged(env: Env) -> None:
    env.clock.value = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)  # a Saturday, 03:00
    env.ask("alice", resource="staging-db")
    at_work(env)
    env.ask("alice", resource="staging-db")
    run(env)
    found = alerts(env, rule="off_hours")
    assert len(found) == 1 and "Sat 03:00" in found[0]["title"]


def test_a_policy_change_is_an_alert(env: Env) -> None:
    at_work(env)
    env.write_policy(POLICY.replace("max_duration: 8h", "max_duration: 6h"))
    assert env.post("frank", "/api/v1/admin/reload").status_code == 200
    run(env)
    found = alerts(env, rule="policy_change")
    assert len(found) == 1 and found[0]["user"] == "frank"


def test_the_cursor_resumes_without_duplicates(env: Env) -> None:
    at_work(env)
    for _ in range(6):
        env.ask("alice", reason="nope")
    with transaction(env.st.sessions) as s:  # a worker that read only part, then stopped
        detect.pump(s, policy=env.st.policies.current, now=env.st.now(), batch=5)
    run(env)  # another worker (or the same after a restart) carries on from the cursor
    run(env)
    found = alerts(env, rule="repeated_denials")
    assert len(found) == 2  # six denials: two alerts of three, never the same one twice
    assert sorted(len(a["evidence"]) for a in found) == [3, 3]
    with env.st.sessions() as s:
        assert s.query(Alert).count() == len(alerts(env))


def test_alerts_are_acknowledged_and_resolved_with_who_and_when(env: Env) -> None:
    at_work(env)
    for _ in range(3):
        env.ask("alice", reason="short")
    run(env)
    alert = alerts(env)[0]
    aid = alert["id"]
    assert env.get("alice", "/api/v1/alerts").status_code == 403
    assert env.post("dave", f"/api/v1/alerts/{aid}/acknowledge").status_code == 403  # auditor
    r = env.post("frank", f"/api/v1/alerts/{aid}/acknowledge", json={"comment": "looking"})
    assert r.status_code == 200 and r.json()["acknowledged_by"] == "frank"
    assert env.post("frank", f"/api/v1/alerts/{aid}/acknowledge").status_code == 409
    r = env.post("frank", f"/api/v1/alerts/{aid}/resolve", json={"comment": ""})
    assert r.status_code == 422
    r = env.post("carol", f"/api/v1/alerts/{aid}/resolve",
                 json={"comment": "alice was testing the auto-deny rule"})
    body = r.json()
    assert r.status_code == 200 and body["status"] == "resolved" and body["resolved_by"] == "carol"
    types = [e["type"] for e in env.events(subject=f"alert:{aid}")]
    assert types == ["alert.raised", "alert.acknowledged", "alert.resolved"]
    assert alerts(env, status="open") == []
    assert env.get("dave", "/api/v1/alerts/999999").status_code == 404
    assert env.get("dave", "/api/v1/alerts", params={"status": "bogus"}).status_code == 422


GATEWAY = POLICY.replace(
    "  - {name: lab, kind: generic, labels: {env: lab}, owners: [frank], roles: [use]}\n",
    "  - {name: lab, kind: generic, labels: {env: lab}, owners: [frank], roles: [use]}\n"
    "  - {name: gw-db, kind: postgres, labels: {env: staging}, owners: [dba], roles: [read],\n"
    "     gateway: {dsn_env: ACCORD_TEST_UNUSED_DSN}}\n")


def test_an_unused_grant_is_flagged_when_it_ends(sessions: Any, tmp_path: Any) -> None:
    from accord.grants import service as grants

    env = make_env(sessions, tmp_path, GATEWAY)
    at_work(env)
    with env.client:
        gw = env.ask("alice", resource="gw-db", role="read", duration="1h")
        other = env.ask("alice", resource="staging-db", role="read", duration="1h")
        assert gw["status"] == other["status"] == "active"
        env.clock.advance(hours=1, seconds=1)
        with transaction(env.st.sessions) as s:
            assert grants.expire_due(s, now=env.st.now()) == 2
        run(env)
        found = alerts(env, rule="unused_grant")
        # only the grant on the resource the gateway serves: elsewhere use is invisible
        assert [a["subject"] for a in found] == [f"grant:{gw['grant']['id']}"]
        assert found[0]["resource"] == "gw-db" and found[0]["severity"] == "low"


def test_an_admin_never_closes_an_alert_about_themselves(env: Env) -> None:
    at_work(env)
    rid = env.ask("frank")["id"]  # frank is an admin
    assert env.act("frank", rid, "approve").status_code == 403
    run(env)
    [alert] = alerts(env, rule="self_approval")
    aid = alert["id"]
    assert alert["user"] == "frank"
    for verb, body in (("acknowledge", {"comment": "on it"}),
                       ("resolve", {"comment": "it was only me testing"})):
        r = env.post("frank", f"/api/v1/alerts/{aid}/{verb}", json=body)
        assert r.status_code == 403, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "about you (frank)" in r.json()["detail"]
        assert "another admin" in r.json()["detail"]
    assert alerts(env, rule="self_approval")[0]["status"] == "open"
    assert [e["type"] for e in env.events(subject=f"alert:{aid}")] == ["alert.raised"]
    # another admin still can
    r = env.post("carol", f"/api/v1/alerts/{aid}/acknowledge", json={"comment": "asking"})
    assert r.status_code == 200 and r.json()["acknowledged_by"] == "carol"
    assert env.post("frank", f"/api/v1/alerts/{aid}/resolve",
                    json={"comment": "carol is on it"}).status_code == 403
    r = env.post("carol", f"/api/v1/alerts/{aid}/resolve", json={"comment": "frank was testing"})
    assert r.status_code == 200 and r.json()["resolved_by"] == "carol"


def test_the_requester_a_fast_approval_favoured_does_not_close_its_alert(env: Env) -> None:
    at_work(env)
    rid = env.ask("carol", resource="staging-db", role="write")["id"]  # carol is an admin
    env.clock.advance(seconds=2)
    assert env.act("bob", rid, "approve").status_code == 200
    run(env)
    [alert] = alerts(env, rule="rubber_stamp")
    assert alert["user"] == "bob" and alert["data"]["requester"] == "carol"
    r = env.post("carol", f"/api/v1/alerts/{alert['id']}/resolve", json={"comment": "fine"})
    assert r.status_code == 403 and "about you (carol)" in r.json()["detail"]
    r = env.post("frank", f"/api/v1/alerts/{alert['id']}/resolve", json={"comment": "ok"})
    assert r.status_code == 200, r.text


SATURDAY_03 = datetime(2026, 11, 28, 3, 0, 0, 123456, tzinfo=UTC)  # every request is off hours


def pump_once(env: Env) -> int:
    with transaction(env.st.sessions) as s:
        return detect.pump(s, policy=env.st.policies.current, now=env.st.now())


def test_on_sqlite_a_pass_raises_a_few_alerts_and_the_next_carries_on(
        env: Env, backend: str, monkeypatch: Any) -> None:
    """SQLite has one writer: a pass stops after the event that raised its SQLITE_FINDINGS-th
    alert, so it holds the write lock briefly; the next pass carries on from there."""
    monkeypatch.setattr(detect, "SQLITE_FINDINGS", 2)
    env.clock.value = SATURDAY_03
    for _ in range(5):
        env.ask("alice", resource="staging-db")  # off hours: one alert each
    pump_once(env)
    assert len(alerts(env, rule="off_hours")) == (2 if backend == "sqlite" else 5)
    run(env)
    found = alerts(env, rule="off_hours")
    assert len(found) == 5 and len({a["evidence"][0] for a in found}) == 5
    assert len(env.events(type="alert.raised")) == 5
    assert pump_once(env) == 0


def test_on_sqlite_a_pass_reads_at_most_a_batch_of_events(
        env: Env, backend: str, monkeypatch: Any) -> None:
    monkeypatch.setattr(detect, "SQLITE_BATCH", 4)
    at_work(env)
    for _ in range(3):
        env.ask("alice", resource="staging-db")  # three events each, none alerting
    total = len(env.events())
    first = pump_once(env)
    assert first == (4 if backend == "sqlite" else total)
    rest = 0
    while n := pump_once(env):
        assert backend == "sqlite" and n <= 4
        rest += n
    assert first + rest == total and alerts(env) == []


def test_a_finding_raised_before_or_twice_in_a_batch_is_raised_once(env: Env) -> None:
    at_work(env)
    finding = Finding("drift", "high", "drift on lab", "drift:lab:1", [0],
                             resource="lab")
    other = Finding("drift", "high", "drift on lab", "drift:lab:2", [0],
                           resource="lab")
    now = env.st.now()
    with transaction(env.st.sessions) as s:
        assert detect.raise_alert(s, finding=finding, now=now) is not None
    with transaction(env.st.sessions) as s:
        raised = detect.raise_alerts(s, findings=[finding, other, other], now=now)
        assert [a.dedup_key for a in raised] == ["drift:lab:2"]
    assert sorted(e["data"]["alert_id"] for e in env.events(type="alert.raised")) == \
        sorted(a["id"] for a in alerts(env))
    assert len(alerts(env)) == 2
