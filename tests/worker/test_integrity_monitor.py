"""The integrity monitor: it finds an edited ledger by itself, raises one critical alert
naming the first bad index, tells the admins and auditors, and puts a banner on every page
they see until the alert is resolved."""

from __future__ import annotations

import json
import os
from datetime import timedelta

import pytest
from sqlalchemy import select

from accord.db import transaction
from accord.detect import service as detect
from accord.detect.models import Alert
from accord.ledger import checkpoints, integrity
from accord.ledger.models import LedgerEntry
from accord.ledger.service import LedgerCorruption
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


def _changed_leaf(env: Env) -> None:
    _set_leaf(env, 17, _leaf(env, 17).replace(b"alice", b"Alice"))


def _changed_node(env: Env) -> None:
    _tamper(env, "UPDATE ledger_nodes SET hash = :h WHERE level = 3 AND idx = 1",
            h=os.urandom(32))


def _deleted_row(env: Env) -> None:
    _tamper(env, "DELETE FROM ledger_entries WHERE idx = 5")


def _truncated_tail(env: Env) -> None:
    _tamper(env, "DELETE FROM ledger_entries WHERE idx >= :n", n=N - 2)


TAMPERS = {"changed leaf": (_changed_leaf, 17), "changed node": (_changed_node, 8),
           "deleted row": (_deleted_row, 5), "truncated tail": (_truncated_tail, N - 2)}


def _sign_now(env: Env) -> None:
    with transaction(env.st.sessions) as session:
        cp = checkpoints.sign(session, env.st.ledger, now=env.clock(), force=True)
    checkpoints.after_commit(env.st.ledger, cp)


@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_each_tamper_is_found_alerted_and_stops_the_signer(
        signed: tuple[Env, str], tamper: str) -> None:
    env, _ = signed
    make, index = TAMPERS[tamper]
    m = monitor(env)
    assert m.check() is None
    make(env)
    damage = m.check()
    assert damage is not None and damage.index == index, damage
    with env.st.sessions() as s:
        (alert,) = detect.unresolved(s, rule="ledger_integrity")
        assert f"index {index}" in alert.title and alert.evidence == [index]
        found = integrity.open_finding(s)
        assert found is not None and found.idx == index
    # New entries do not make a checkpoint over the damaged tree, nor does a report.
    _append(env, 3, start=N)
    with pytest.raises(LedgerCorruption, match=f"changed at index {index}"):
        _sign_now(env)
    r = env.get("dave", "/api/v1/reports/user/alice?format=json")
    assert r.status_code == 409, r.text
    assert f"changed at index {index}" in r.json()["detail"]
    assert env.get("dave", "/api/v1/audit/checkpoint?fresh=true").status_code == 409


def test_a_restored_ledger_closes_the_finding_and_signing_resumes(
        signed: tuple[Env, str]) -> None:
    env, _ = signed
    original = _leaf(env, 17)
    m = monitor(env)
    _changed_leaf(env)
    assert m.check() is not None
    with pytest.raises(LedgerCorruption):
        _sign_now(env)
    _set_leaf(env, 17, original)  # restored from a backup
    for _ in range(3):  # the walk from index 0 that began after the finding
        if m.check() is None:
            break
    with env.st.sessions() as s:
        assert integrity.open_finding(s) is None
        mended = s.execute(select(LedgerEntry.leaf).where(
            LedgerEntry.type == "ledger.mended")).scalar_one()
        assert json.loads(mended)["data"]["indices"] == [17]
    _append(env, 2, start=N)
    _sign_now(env)  # signing resumes
    with env.st.sessions() as s:
        assert checkpoints.latest(s).size == integrity.head_size(s) > N + 2  # type: ignore[union-attr]


def test_a_finding_made_during_a_whole_walk_is_not_closed_by_it(
        signed: tuple[Env, str]) -> None:
    env, _ = signed
    m = monitor(env)
    with env.st.sessions() as s:
        mark = integrity.last_finding_id(s)
    with transaction(env.st.sessions) as s:  # another process finds damage meanwhile
        integrity.record_finding(s, integrity.Damage(3, "seen elsewhere"), now=env.clock())
    with transaction(env.st.sessions) as s:
        assert integrity.clear_findings(s, upto=mark, now=env.clock()) == []
        assert integrity.open_finding(s) is not None
    assert m.check() is None  # its walk began after: it closes it
    with env.st.sessions() as s:
        assert integrity.open_finding(s) is None


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
    # The alert is for people; the finding stays until the monitor sees the ledger mended.
    audit = dave.get("/audit").text
    assert "found the ledger changed at index 3" in audit and "✔ verified" not in audit
