"""Access review fixtures: a policy with reviews, and a scenario of standing, recurring and
one-off access built through the API (never rows by hand), on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from accord.worker.job_runner import JobRunner
from tests.conftest import Env, make_env

START = datetime(2026, 9, 1, 9, 0, 0, 123456, tzinfo=UTC)

REVIEW_POLICY = """\
users: [alice, bob, carol, dave, erin, frank, gina]
groups:
  engineers: [alice, erin, gina]
  leads: [bob, gina]
  dba: [carol, erin]
  admins: [carol, frank]
  auditors: [dave]
accord: {admins: [admins], auditors: [auditors]}
resources:
  - {name: orders-db, kind: postgres, labels: {env: prod}, owners: [dba], roles: [read, write]}
  - {name: staging-db, kind: postgres, labels: {env: staging}, owners: [dba], roles: [read]}
  - {name: lab, kind: generic, owners: [frank], roles: [use]}
workflows:
  - name: all
    match: 'true'
    max_duration: 30d
    require_reason: false
    auto_approve: 'request.role != "write"'
    steps: [{approvers: [owners]}]
reviews:
  - name: prod-quarterly
    description: SOC 2 CC6.2 quarterly review of production access
    every: 90d
    match: 'resource.labels.env == "prod"'
    reviewers: [owners]
    duration: 14d
    remind_every: 2d
    recurring: {min_grants: 3}
  - name: lab-monthly
    every: 30d
    resources: [lab]
    reviewers: [owners]
    duration: 7d
    remind_every: null
"""


@pytest.fixture
def env(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Env]:
    """conftest's `env` with the reviews policy (also what `live` serves)."""
    e = make_env(sessions, tmp_path, REVIEW_POLICY)
    e.clock.value = START
    with e.client:
        yield e


def runner(env: Env) -> JobRunner:
    """A fresh job runner, as after a worker restart (everything it knows is in the DB)."""
    return JobRunner(env.st.sessions, env.st.policies, env.st.connectors, env.st.secrets,
                     env.clock)


@dataclass
class Scenario:
    """Who holds what on orders-db when the review starts."""

    alice: dict[str, Any]  # standing read, auto-approved
    carol: dict[str, Any]  # standing read: an owner, so she reviews others but not herself
    erin: dict[str, Any]  # standing write, approved by carol
    gina: list[dict[str, Any]]  # recurring: three short reads, all over
    bob: dict[str, Any]  # one short read, over: not under review
    frank: dict[str, Any]  # standing read on staging-db: another resource


def scenario(env: Env) -> Scenario:
    gina = []
    for _ in range(3):
        gina.append(env.ask("gina", duration="1h"))
        env.clock.advance(hours=2)
    bob = env.ask("bob", duration="1h")
    env.clock.advance(hours=2)
    alice = env.ask("alice", duration="30d")
    carol = env.ask("carol", duration="30d")
    frank = env.ask("frank", resource="staging-db", duration="30d")
    erin = env.ask("erin", role="write", duration="30d")
    assert erin["status"] == "pending"
    r = env.act("carol", erin["id"], "approve")
    assert r.status_code == 200, r.text
    erin = r.json()
    for req in (alice, carol, frank, erin, *gina, bob):
        assert req["status"] == "active", req
    env.clock.advance(minutes=5)
    return Scenario(alice, carol, erin, gina, bob, frank)


def start(env: Env, definition: str = "prod-quarterly", user: str = "frank") -> dict[str, Any]:
    r = env.post(user, "/api/v1/reviews", json={"definition": definition})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def entry(review: dict[str, Any], user: str, role: str = "read") -> dict[str, Any]:
    (found,) = [e for e in review["entries"] if e["user"] == user and e["role"] == role]
    return found


def decide(env: Env, user: str, review_id: int, entry_id: int, verb: str,
           note: str = "checked with the team lead") -> Any:
    return env.post(user, f"/api/v1/reviews/{review_id}/entries/{entry_id}/{verb}",
                    json={"note": note})


def review_events(env: Env, review_id: int) -> list[dict[str, Any]]:
    r = env.get("dave", "/api/v1/audit/events",
                params={"subject": f"review:{review_id}", "limit": 1000})
    assert r.status_code == 200, r.text
    return [{"index": i["index"], **i["event"]} for i in r.json()["items"]]
