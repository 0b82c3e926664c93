"""Racing approvers on PostgreSQL, each on a real connection of its own."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from accord.db import make_sessionmaker, transaction
from accord.errors import AccordError
from accord.grants.models import Grant
from accord.ledger.models import LedgerEntry
from accord.requests import service
from accord.requests.models import Approval
from tests.conftest import POLICY, make_env

# orders-db's last step (owners = dba) has two eligible people: carol and erin.
RACES = 12


@pytest.mark.postgres
def test_two_approvers_racing_on_the_last_step_make_one_transition(
    fresh_pg: Engine, tmp_path: Path
) -> None:
    sessions = make_sessionmaker(fresh_pg)
    env = make_env(sessions, tmp_path, POLICY)
    policy = env.st.policies.current
    for _ in range(RACES):
        req = env.ask("alice")
        assert env.act("bob", req["id"], "approve").status_code == 200
        barrier = threading.Barrier(2)
        outcomes: dict[str, str] = {}

        def decide(user: str, rid: int = req["id"], barrier: threading.Barrier = barrier,
                   outcomes: dict[str, str] = outcomes) -> None:
            barrier.wait()
            try:
                with transaction(sessions) as session:
                    r = service.approve(session, policy=policy,
                                        caller=service.Caller(user, "api"), request_id=rid,
                                        comment="", now=env.clock())
                    outcomes[user] = r.status
            except AccordError as exc:  # pragma: no cover - reported by the assertion below
                outcomes[user] = f"error: {exc.detail}"

        threads = [threading.Thread(target=decide, args=(u,)) for u in ("carol", "erin")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert outcomes == {"carol": "active", "erin": "active"}, outcomes

        with sessions() as s:
            subject = f"request:{req['id']}"

            def count(kind: str, subject: str = subject) -> int:
                return s.execute(select(func.count()).where(
                    LedgerEntry.subject == subject, LedgerEntry.type == kind)).scalar_one()

            assert count("request.approved") == 1
            assert count("approval.recorded") == 3  # bob, carol, erin: one event each
            approvals = s.execute(select(Approval.approver).where(
                Approval.request_id == req["id"])).scalars().all()
            assert sorted(approvals) == ["bob", "carol", "erin"]
            grants = s.execute(select(Grant).where(Grant.request_id == req["id"])).scalars().all()
            assert len(grants) == 1
            assert count("grant.activated", f"grant:{grants[0].id}") == 1
