"""Racing admins and reviewers on PostgreSQL, each on a real connection of its own: one
campaign per review at a time, one decision per entry."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from accord.db import make_sessionmaker, transaction
from accord.errors import AccordError
from accord.ledger.events import Actor
from accord.ledger.models import LedgerEntry
from accord.requests.service import Caller
from accord.reviews import service
from accord.reviews.models import ReviewCampaign, ReviewEntry
from tests.conftest import make_env
from tests.reviews.conftest import REVIEW_POLICY, START, scenario

ROUNDS = 4


def race(*calls: Callable[[], str]) -> list[str]:
    barrier = threading.Barrier(len(calls))
    out: list[str] = [""] * len(calls)

    def go(i: int) -> None:
        barrier.wait()
        try:
            out[i] = calls[i]()
        except AccordError as exc:
            out[i] = f"{exc.status}"

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return sorted(out)


@pytest.mark.postgres
def test_racing_starts_and_decisions(fresh_pg: Engine, tmp_path: Path) -> None:
    sessions = make_sessionmaker(fresh_pg)
    env = make_env(sessions, tmp_path, REVIEW_POLICY)
    env.clock.value = START
    policy = env.st.policies.current
    scenario(env)
    for _ in range(ROUNDS):
        def begin(user: str) -> Callable[[], str]:
            def call() -> str:
                with transaction(sessions) as s:
                    service.start(s, policy=policy, name="prod-quarterly",
                                  actor=Actor.user(user, "api"), now=env.clock())
                return "started"
            return call

        assert race(begin("carol"), begin("frank")) == ["409", "started"]
        with sessions() as s:
            camp = s.execute(select(ReviewCampaign).where(
                ReviewCampaign.status == "open")).scalar_one()
            rows = {e.user: e.id for e in s.execute(select(ReviewEntry).where(
                ReviewEntry.campaign_id == camp.id)).scalars()}

        def decide(user: str, entry: int, verb: str, cid: int = camp.id) -> Callable[[], str]:
            def call() -> str:
                with transaction(sessions) as s:
                    e = service.decide(s, policy=policy, caller=Caller(user, "api"),
                                       campaign_id=cid, entry_id=entry, decision=verb,
                                       note="raced", now=env.clock())
                    return e.status
            return call

        # alice's entry: carol and erin both review it; one decision wins
        outcome = race(decide("carol", rows["alice"], "certify"),
                       decide("erin", rows["alice"], "certify"))
        assert outcome == ["409", "certified"]
        # the last decisions race to complete the campaign (gina's recurring access is in
        # the first period only): it completes once
        rest = [decide("carol" if user == "erin" else "erin", entry, "certify")
                for user, entry in rows.items() if user != "alice"]
        assert race(*rest) == ["certified"] * len(rest)
        with sessions() as s:
            def count(kind: str, cid: int = camp.id) -> int:
                return int(s.execute(select(func.count()).where(
                    LedgerEntry.subject == f"review:{cid}",
                    LedgerEntry.type == kind)).scalar_one())

            assert count("review.decided") == len(rows) and count("review.completed") == 1
            assert s.get(ReviewCampaign, camp.id).status == "completed"  # type: ignore[union-attr]
        env.clock.advance(days=1)
