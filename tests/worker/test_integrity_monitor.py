"""The integrity monitor: it finds an edited ledger by itself, raises one critical alert
naming the first bad index, tells the admins and auditors, and puts a banner on every page
they see until the alert is resolved."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import select

from accord.detect import service as detect
from accord.detect.models import Alert
from accord.ledger.models import LedgerEntry
from accord.notify.outbox import recipients
from accord.worker.integrity import IntegrityMonitor, Pace
from tests.conftest import Env
from tests.ledger.test_tamper import N, _append, _leaf, _set_leaf, _tamper, signed
from tests.web.test_pages import Browser, login_form

__all__ = ["signed"]

def login(env: Env, user: str) -> Browser:
    b = Browser(env)
    r = b.post("/login/token", {"token": env.tokens[user], "csrf": login_form(b)})
    assert r.status_code == 303, r.text
    return b


EVERY_TIME = Pace(check_interval=timedelta(0), full_interval=timedelta(0))


def monitor(env: Env) -> IntegrityMonitor:
    return IntegrityMonitor(env.st.sessions, env.st.ledger, env.clock, EVERY_TIME)


def test_an_untouched_ledger_raises_nothing(signed: tuple[Env, str]) -> None:
    env, _ = signed
    m = monitor(env)
    assert m.check() is None
    _append(env, 5, start=N)
    assert m.check() is None
    assert m.incremental.position >= N + 5 and m.hashed >= N


def test_a_changed_old_leaf_is_found_by_the_full_pass(signed: tuple[Env, str]) -> None:
    env, _ = signed
    m = monitor(env)
    assert m.check() is None  # the incremental walk is past index 17 now
    _set_leaf(env, 17, _leaf(env, 17).replace(b"alice", b"Alice"))
    damage = m.check()  # the full pass, every time here
    assert damage is not None and damage.index == 17
    with env.st.sessions() as s:
        (alert,) = detect.unresolved(s, rule="ledger_integrity")
        assert alert.severity == "critical" and "index 17" in alert.title
        assert alert.evidence == [17]
        raised = s.execute(select(LedgerEntry.leaf).where(
            LedgerEntry.type == "alert.raised").order_by(LedgerEntry.id.desc())).scalars()
        event = json.loads(next(iter(raised)))
    assert m.check() is not None  # still there, and not raised twice
    with env.st.sessions() as s:
        assert len(detect.unresolved(s, rule="ledger_integrity")) == 1
        # admins and auditors hear of it, whatever detect.notify says
        told = {u for u, _ in recipients(s, env.st.policies.current, event)}
    policy = env.st.policies.current
    assert told == set(policy.admins) | set(policy.auditors)


def test_a_changed_node_a_deleted_row_and_a_truncated_tail(signed: tuple[Env, str]) -> None:
    env, _ = signed
    import os

    _tamper(env, "UPDATE ledger_nodes SET hash = :h WHERE level = 3 AND idx = 1",
            h=os.urandom(32))
    assert monitor(env).check().index == 8  # type: ignore[union-attr]
    _tamper(env, "DELETE FROM ledger_entries WHERE idx = 5")
    assert monitor(env).check().index == 5  # type: ignore[union-attr]
    _tamper(env, "DELETE FROM ledger_entries WHERE idx >= :n", n=N - 2)
    with env.st.sessions() as s:
        titles = [a.title for a in detect.unresolved(s, rule="ledger_integrity")]
    assert len(titles) == 2 and "index 5" in titles[0] and "index 8" in titles[1]


def test_the_banner_shows_to_readers_on_every_page_until_resolved(
        signed: tuple[Env, str]) -> None:
    env, _ = signed
    _set_leaf(env, 3, _leaf(env, 3).replace(b'"v":1', b'"v":2'))
    assert monitor(env).check() is not None
    carol, dave, alice = login(env, "carol"), login(env, "dave"), login(env, "alice")
    for page in ("/", "/requests", "/grants", "/audit", "/reviews"):
        assert "The audit ledger was changed" in dave.get(page).text, page
        assert "The audit ledger was changed" in carol.get(page).text, page
        assert "The audit ledger was changed" not in alice.get(page).text, page
    with env.st.sessions() as s:
        alert_id = s.execute(select(Alert.id).where(Alert.rule == "ledger_integrity")
                             ).scalar_one()
    r = env.post("frank", f"/api/v1/alerts/{alert_id}/resolve",
                 json={"comment": "restored from backup, index 3 checked"})
    assert r.status_code == 200, r.text
    assert "The audit ledger was changed" not in dave.get("/").text
