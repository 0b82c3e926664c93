"""Break-glass: granted at once to the allowed group, alerted, reviewed afterwards; an
unreviewed use keeps its alert open and keeps reminding the reviewers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from accord.worker.job_runner import JobRunner
from tests.conftest import POLICY, Env, make_env
from tests.detect.test_detectors import WEDNESDAY_10, alerts, run

GLASS = POLICY.replace("  auditors: [dave]\n", "  auditors: [dave]\n  oncall: [erin]\n") + """\
break_glass: {groups: [oncall], reviewers: [admins], max_duration: 1h, remind_every: 4h}
"""


@pytest.fixture
def glass(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Env]:
    e = make_env(sessions, tmp_path, GLASS)
    e.clock.value = WEDNESDAY_10
    with e.client:
        yield e


def emergency(env: Env, user: str, **over: str) -> object:
    body = {"resource": "orders-db", "role": "admin", "duration": "30m",
            "reason": "SEV1: orders table locked, paging did not answer", "emergency": True}
    return env.post(user, "/api/v1/requests", json={**body, **over})


def test_break_glass_is_granted_at_once_and_alerted_until_reviewed(glass: Env) -> None:
    env = glass
    r = emergency(env, "erin")
    assert r.status_code == 201, r.text  # type: ignore[attr-defined]
    req = r.json()  # type: ignore[attr-defined]
    assert req["status"] == "active" and req["emergency"] is True
    assert req["workflow"]["rule"] == "break_glass"
    created = env.events(subject=f"request:{req['id']}", type="request.created")[0]
    assert created["data"]["emergency"] is True
    assert created["policy"]["rule"] == "break_glass"
    run(env)
    alert = alerts(env, rule="break_glass")[0]
    assert alert["severity"] == "high" and alert["status"] == "open"
    # an admin cannot wave it away: only a review closes it
    r2 = env.post("frank", f"/api/v1/alerts/{alert['id']}/resolve", json={"comment": "fine"})
    assert r2.status_code == 409 and "review" in r2.json()["detail"]

    # unreviewed, it keeps reminding, at its times, across worker restarts
    for expected in (1, 2):
        runner = JobRunner(env.st.sessions, env.st.policies, env.st.connectors,
                           env.st.secrets, env.clock)
        env.clock.advance(hours=4, seconds=1)
        runner.run_once()
        reminded = env.events(type="request.review_reminded")
        assert len(reminded) == expected
        assert reminded[-1]["data"]["reviewers"] == ["carol", "frank"]
    assert alerts(env, rule="break_glass")[0]["status"] == "open"

    # reviewers only, never the one who broke the glass; one review
    body = {"verdict": "justified", "note": "SEV1 ticket INC-77 confirms"}
    assert env.post("bob", f"/api/v1/requests/{req['id']}/review", json=body).status_code == 404
    assert env.post("erin", f"/api/v1/requests/{req['id']}/review",
                    json=body).status_code == 403
    assert env.post("carol", f"/api/v1/requests/{req['id']}/review",
                    json={**body, "verdict": "meh"}).status_code == 422
    r3 = env.post("carol", f"/api/v1/requests/{req['id']}/review", json=body)
    assert r3.status_code == 200, r3.text
    assert r3.json()["review"]["by"] == "carol" and r3.json()["status"] == "expired"
    assert env.post("frank", f"/api/v1/requests/{req['id']}/review",
                    json=body).status_code == 409
    closed = alerts(env, rule="break_glass")[0]
    assert closed["status"] == "resolved" and closed["resolved_by"] == "carol"
    # reviewed: the reminders stop
    env.clock.advance(hours=9)
    JobRunner(env.st.sessions, env.st.policies, env.st.connectors, env.st.secrets,
              env.clock).run_once()
    assert len(env.events(type="request.review_reminded")) == 2


def test_an_unjustified_break_glass_ends_the_access(glass: Env) -> None:
    env = glass
    rid = emergency(glass, "erin").json()["id"]  # type: ignore[attr-defined]
    # reviewed before the detectors ran: the alert is raised and closed together
    r = env.post("frank", f"/api/v1/requests/{rid}/review",
                 json={"verdict": "unjustified", "note": "no incident that night"})
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    run(env)
    found = alerts(env, rule="break_glass")
    assert len(found) == 1 and found[0]["status"] == "resolved"
    assert [e["type"] for e in env.events(subject=f"request:{rid}")][-1] == "request.reviewed"


def test_who_may_break_the_glass_and_for_how_long(glass: Env) -> None:
    r = emergency(glass, "alice")
    assert r.status_code == 403 and "oncall" in r.json()["detail"]  # type: ignore[attr-defined]
    r = emergency(glass, "erin", duration="2h")
    assert r.status_code == 422 and "1h" in r.json()["detail"]  # type: ignore[attr-defined]
    r = emergency(glass, "erin", reason="now")
    assert r.status_code == 422  # type: ignore[attr-defined]
    assert glass.events(type="request.created") == []


def test_break_glass_needs_configuring(env: Env) -> None:
    r = env.post("erin", "/api/v1/requests", json={
        "resource": "orders-db", "role": "read", "duration": "30m",
        "reason": "SEV1: orders table locked", "emergency": True})
    assert r.status_code == 422 and "not configured" in r.json()["detail"]


def test_alerts_and_review_reminders_go_out_by_email(
        sessions: sessionmaker[Session], tmp_path: Path) -> None:
    from tests.notify.test_email import Mailbox, smtp_server
    from tests.notify.test_outbox import EMAILS

    mailbox = Mailbox()
    with smtp_server(mailbox) as port:
        text = GLASS.replace("users: [alice, bob, carol, dave, erin, frank, gina]", EMAILS)
        text += ("notify: {base_url: 'https://accord.example.test', email: "
                 f"{{host: 127.0.0.1, port: {port}, sender: accord@example.test}}}}\n")
        env = make_env(sessions, tmp_path, text)
        env.clock.value = WEDNESDAY_10
        runner = JobRunner(env.st.sessions, env.st.policies, env.st.connectors,
                           env.st.secrets, env.clock)
        with env.client:
            rid = emergency(env, "erin").json()["id"]  # type: ignore[attr-defined]
            for _ in range(3):  # detectors raise; the outbox queues; deliveries go out
                runner.run_once()
            alert_mail = [m for _f, rcpts, m in mailbox.received if "HIGH alert" in m["Subject"]]
            # admins are carol (with an address) and frank (without one)
            assert [m["To"] for m in alert_mail] == ["carol@example.test"]
            assert "broke the glass" in alert_mail[0]["Subject"]
            mailbox.received.clear()
            env.clock.advance(hours=4, seconds=1)
            for _ in range(3):
                runner.run_once()
            review_mail = [m for _f, _r, m in mailbox.received if "needs a review" in m["Subject"]]
            assert [m["To"] for m in review_mail] == ["carol@example.test"]
            body = review_mail[0].get_body(("plain",)).get_content()  # type: ignore[union-attr]
            assert f"accord request review {rid}" in body
            assert f"https://accord.example.test/requests/{rid}" in body
