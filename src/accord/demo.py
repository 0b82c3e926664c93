"""`accord serve --demo`: a policy, users and a handful of requests in several states."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select, update

from accord.api.deps import AppState
from accord.db import transaction
from accord.identity import service as identity
from accord.identity.models import ApiToken
from accord.ledger.events import Actor, Via
from accord.requests import service as requests
from accord.requests.models import AccessRequest

DEMO_USERS = ["alice", "bob", "carol", "dave", "erin", "frank"]

DEMO_POLICY = """\
# Accord demo policy. Edit it and run `kill -HUP <pid>` or
# `curl -X POST -H "Authorization: Bearer $ACCORD_TOKEN" $ACCORD_URL/api/v1/admin/reload`.
users:
  alice: {email: alice@example.com}
  bob: {email: bob@example.com}
  carol: {email: carol@example.com}
  dave: {email: dave@example.com}
  erin: {email: erin@example.com}
  frank: {email: frank@example.com}

groups:
  engineers: [alice, erin]
  leads: [bob]
  dba: [carol, erin]
  admins: [carol, frank]
  auditors: [dave]
  oncall: [erin]

accord:
  admins: [admins]
  auditors: [auditors]

# Emergency access for the on-call engineer: granted at once, alerted, reviewed by admins.
break_glass: {groups: [oncall], reviewers: [admins], max_duration: 1h}

# The demo's sign-in page lets you pick a user. Production uses web.oidc instead.
web:
  local_login: true

resources:
  - name: staging-db
    kind: postgres
    description: Staging orders database
    labels: {env: staging}
    owners: [dba]
    roles: [read, write]
  - name: orders-db
    kind: postgres
    description: Production orders database
    labels: {env: prod, data: pii}
    owners: [dba]
    roles: [read, write, admin]
  - name: billing-api
    kind: webhook
    description: Production billing service console
    labels: {env: prod}
    owners: [frank]
    roles: [viewer, operator]

workflows:
  # Staging: engineers get in without waiting, for up to 8 hours.
  - name: staging
    match: 'resource.labels.env == "staging"'
    max_duration: 8h
    auto_approve: '"engineers" in request.requester.groups'
    steps: [{approvers: [leads]}]

  # Production: a lead, then the resource's owners; admin adds two admins.
  - name: prod
    match: 'resource.labels.env == "prod"'
    max_duration: 4h
    auto_deny: 'size(request.reason) < 10'
    steps:
      - {name: lead, approvers: [leads]}
      - {name: owner, approvers: [owners]}
    elevated:
      roles: [admin, operator]
      steps: [{name: admins, approvers: [admins], min_approvals: 2}]
    escalation: {remind_after: 15m, escalate_after: 1h, to: [admins], expire_after: 24h}
"""


def write_policy(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "accord.yaml"
    if not path.exists():
        path.write_text(DEMO_POLICY, encoding="utf-8")
    return path


def seed(st: AppState) -> None:
    """Requests in several states, once per database."""
    policy = st.policies.current
    with transaction(st.sessions) as session:
        if session.execute(select(func.count()).select_from(AccessRequest)).scalar_one():
            return
        now = st.now()

        def ask(user: str, resource: str, role: str, hours: float, reason: str) -> int:
            req = requests.create(
                session, policy=policy, caller=requests.Caller(user, Via.WEB), resource=resource,
                role=role, duration=timedelta(hours=hours), reason=reason, now=now,
            )
            return req.id

        def decide(fn: requests.Command, user: str, rid: int, comment: str = "") -> None:
            fn(session, policy=policy, caller=requests.Caller(user, Via.WEB), request_id=rid,
               comment=comment, now=now)

        ask("alice", "staging-db", "read", 2, "debug flaky checkout test")  # auto-approved
        ask("erin", "staging-db", "write", 1, "backfill test fixtures")  # auto-approved
        ask("alice", "orders-db", "read", 1, "INC-4211: customers report missing orders")
        rid = ask("erin", "orders-db", "write", 2, "CHG-118: fix order totals for 3 rows")
        decide(requests.approve, "bob", rid, "change ticket reviewed")  # waits for dba
        rid = ask("alice", "orders-db", "read", 1, "INC-4190: reconcile refunds")
        decide(requests.approve, "bob", rid)
        decide(requests.approve, "carol", rid, "ok for an hour")  # active
        ask("alice", "orders-db", "write", 1, "oops")  # auto-denied: reason too short
        rid = ask("erin", "billing-api", "viewer", 1, "check invoice run for ACME")
        decide(requests.deny, "bob", rid, "ask billing on-call instead")
        rid = ask("alice", "orders-db", "read", 1, "exploring the schema for a report")
        decide(requests.cancel, "alice", rid)
        requests.create(  # break-glass: active at once, an open alert until an admin reviews
            session, policy=policy, caller=requests.Caller("erin", Via.CLI),
            resource="orders-db", role="write", duration=timedelta(minutes=30),
            reason="SEV2: checkout failing on row locks, lead unreachable", now=now,
            emergency=True)


def issue_tokens(st: AppState) -> dict[str, str]:
    """Fresh tokens for every demo user; earlier demo tokens are revoked."""
    tokens: dict[str, str] = {}
    with transaction(st.sessions) as session:
        now = st.now()
        session.execute(
            update(ApiToken)
            .where(ApiToken.name == "demo", ApiToken.revoked_at.is_(None))
            .values(revoked_at=now, revoked_by="demo-restart")
        )
        for user in DEMO_USERS:
            _row, secret = identity.issue(
                session, policy=st.policies.current, user=user, now=now, name="demo",
                actor=Actor("system", "accord-demo", Via.CLI),
            )
            tokens[user] = secret
    return tokens
