"""What the pages say over a tampered ledger, once the worker's integrity monitor has looked.

Each way someone with database access could change the stored ledger (a changed leaf, a
changed tree node, a deleted row, a truncated tail; made as tests/ledger/test_integrity.py
makes them, switching the append-only triggers off first), on SQLite and PostgreSQL: the
monitor raises a critical `ledger_integrity` alert; admins and auditors see the red banner
on every page they open (plain users do not); the audit page's verdict is red; and the
timeline of a request whose events were touched shows no green "verified" badge.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from accord.detect import service as detect
from accord.ledger.models import LedgerEntry
from tests.conftest import Env, make_env
from tests.ledger.test_tamper import _leaf, _set_leaf, _tamper
from tests.web.test_pages import WEB_POLICY, Browser, is_html_page, login, sign_now
from tests.worker.test_integrity_monitor import monitor

BANNER = "The audit ledger was changed"
BADGE = re.compile(r'<span class="badge (\w+)"')


@pytest.fixture
def env(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Env]:
    e = make_env(sessions, tmp_path, WEB_POLICY)
    with e.client:
        yield e


@dataclass
class Ledger:
    """Two approved requests (alice's, then erin's) and their events' ledger indexes."""

    env: Env
    first: int  # request ids
    second: int
    events: dict[int, dict[str, int]]  # request id -> event type -> index (first of a type)
    size: int  # entries covered by the signed checkpoint


def _approved(env: Env, user: str, reason: str) -> int:
    rid = int(env.ask(user, reason=reason)["id"])
    for approver in ("bob", "carol"):
        assert env.act(approver, rid, "approve").status_code == 200, env.last.text
    return rid


@pytest.fixture
def ledger(env: Env) -> Ledger:
    first = _approved(env, "alice", "INC-1 investigate orders")
    second = _approved(env, "erin", "INC-2 reconcile refunds")
    cp = sign_now(env)
    events: dict[int, dict[str, int]] = {}
    with env.st.sessions() as s:
        for rid in (first, second):
            grant = env.get("dave", f"/api/v1/requests/{rid}").json()["grant"]["id"]
            rows = s.execute(select(LedgerEntry.idx, LedgerEntry.type).where(
                LedgerEntry.subject.in_([f"request:{rid}", f"grant:{grant}"])).order_by(
                LedgerEntry.idx)).all()
            events[rid] = {}
            for idx, type_ in rows:
                events[rid].setdefault(type_, int(idx))
    assert cp.size == max(i for e in events.values() for i in e.values()) + 1
    return Ledger(env, first, second, events, cp.size)


# Each tamper changes the ledger and returns (the request it touched, the first bad index,
# the ledger index of that request's event whose own proof now fails, if one does).
Tamper = Callable[[Ledger], tuple[int, int, int | None]]


def changed_leaf(lg: Ledger) -> tuple[int, int, int | None]:
    victim = lg.events[lg.first]["request.created"]
    leaf = _leaf(lg.env, victim)
    assert b"INC-1 investigate" in leaf
    _set_leaf(lg.env, victim, leaf.replace(b"INC-1 investigate", b"INC-9 investigate"))
    return lg.first, victim, victim


def changed_node(lg: Ledger) -> tuple[int, int, int | None]:
    # The level-1 node beside the request's first event: a hash its inclusion proof uses.
    victim = lg.events[lg.first]["request.created"]
    sibling = (victim >> 1) ^ 1
    assert 2 * sibling + 2 <= lg.size
    _tamper(lg.env, "UPDATE ledger_nodes SET hash = :h WHERE level = 1 AND idx = :i",
            h=os.urandom(32), i=sibling)
    return lg.first, 2 * sibling, victim


def deleted_row(lg: Ledger) -> tuple[int, int, int | None]:
    victim = lg.events[lg.first]["approval.recorded"]
    _tamper(lg.env, "DELETE FROM ledger_entries WHERE idx = :i", i=victim)
    return lg.first, victim, None


def truncated_tail(lg: Ledger) -> tuple[int, int, int | None]:
    cut = lg.events[lg.second]["request.approved"]  # erin's request keeps its first events
    _tamper(lg.env, "DELETE FROM ledger_entries WHERE idx >= :n", n=cut)
    return lg.second, cut, None


TAMPERS: dict[str, Tamper] = {"changed leaf": changed_leaf, "changed node": changed_node,
                              "deleted row": deleted_row, "truncated tail": truncated_tail}
READERS = ("carol", "frank", "dave")  # two admins, an auditor
PLAIN = ("alice", "bob")  # a requester, an approver


def menu(page: Browser) -> list[str]:
    html = page.get("/").text
    nav = html.split('aria-label="Main"', 1)[1].split("</nav>", 1)[0]
    return re.findall(r'<a href="([^"]+)"', nav)


@pytest.mark.parametrize("how", list(TAMPERS))
def test_every_page_turns_red_over_a_tampered_ledger(ledger: Ledger, how: str) -> None:
    env = ledger.env
    browsers = {user: login(env, user) for user in READERS + PLAIN}
    # Before: all green, no banner.
    before = browsers["dave"].get(f"/requests/{ledger.first}")
    assert BADGE.findall(before.text) and set(BADGE.findall(before.text)) == {"verified"}
    assert BANNER not in before.text

    rid, first_bad, failed = TAMPERS[how](ledger)
    damage = monitor(env).check()
    assert damage is not None and damage.index == first_bad, damage

    # The critical alert, naming the first bad index.
    with env.st.sessions() as s:
        (alarm,) = detect.unresolved(s, rule="ledger_integrity")
        assert alarm.severity == "critical" and f"index {first_bad}" in alarm.title

    # The banner on every page admins and auditors open; never for plain users.
    for user, page in browsers.items():
        mine = user != "alice" or rid == ledger.first  # alice sees only her own request
        paths = [*menu(page), *([f"/requests/{rid}"] if mine else [])]
        if user in READERS:
            assert "/audit" in paths and "/alerts" in paths
        for path in paths:
            r = page.get(path)
            is_html_page(r, 200)
            assert (BANNER in r.text) == (user in READERS), (user, path)

    # The audit page's verdict is red, and none of its rows says verified.
    r = browsers["dave"].get("/audit")
    verdict = r.text.split('id="ledger-verdict">')[1].split("</dd>")[0]
    assert "✘ failed" in verdict and "✔ verified" not in verdict, verdict
    assert f"index {first_bad}" in verdict
    assert "verified" not in BADGE.findall(r.text.split('id="ledger-verdict">')[1])

    # The touched request's timeline: no green badge, and the event whose own proof
    # fails says so.
    for user in ("dave", "alice" if rid == ledger.first else "erin"):
        page = browsers.get(user) or login(env, user)
        r = page.get(f"/requests/{rid}")
        is_html_page(r, 200)
        timeline = r.text.split('id="timeline"', 1)[1]
        badges = BADGE.findall(timeline)
        assert badges and "verified" not in badges, (user, badges)
        assert "Ledger check failed" in r.text
        if failed is not None:
            event = timeline.split(f'data-index="{failed}"', 1)[1].split("</li>", 1)[0]
            assert "✘ proof failed" in event, event
