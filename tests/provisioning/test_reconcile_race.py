"""Reconciliation against a grant that ends, and is taken away, while the target is being
read: the target's answer still lists it, and that is no drift (reconciling read what
Accord knows of only after the target, and reported it)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from accord.db import transaction
from accord.grants.models import Grant, GrantStatus
from accord.provisioning import service as provisioning
from tests.conftest import Env


class _Target:
    """A target whose listing is taken while the grant ends and is deprovisioned."""

    def __init__(self, session: Session, grant_id: int, env: Env) -> None:
        self.session, self.grant_id, self.env = session, grant_id, env

    def get(self, _resource: str) -> Any:
        return self

    def granted(self) -> set[tuple[str, str]]:
        now = self.env.clock()
        self.session.execute(update(Grant).where(Grant.id == self.grant_id).values(
            status=GrantStatus.EXPIRED, ended_at=now, provisioned_at=now,
            deprovisioned_at=now))
        return {("alice", "read")}  # read before the revoke reached it


def test_a_grant_taken_away_while_the_target_is_read_is_not_drift(env: Env) -> None:
    req = env.ask("alice", resource="staging-db", role="read")  # approved at once
    gid = req["grant"]["id"]
    with transaction(env.st.sessions) as session:
        drift = provisioning.reconcile(session, connectors=_Target(session, gid, env),  # type: ignore[arg-type]
                                       resource="staging-db", now=env.clock(), enforce=False)
    assert drift == []
