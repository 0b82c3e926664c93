"""What a directory change does to access, in the same transaction as the change.

* Someone who is no longer a user (deactivated, deleted, renamed away from a name): their
  API tokens are revoked (and the web sessions opened with them end), their other web
  sessions end, their pending requests are cancelled, their live grants are revoked through
  provisioning (the gateway ends live sessions when their grant ends), and they stop being
  an approver of anything pending.
* Someone who joins or leaves a group the policy refers to, or whose manager changed: who
  may decide pending requests is recomputed at once. A pending request nobody can complete
  any more (its steps cannot be filled by distinct people) is escalated to its workflow's
  escalation group or denied at once, with the reason (`requests.service.settle`).
* A workflow with `revoke_on_group_loss: true`: a grant it routed ends when its holder left
  a group and the workflow, asked again, would no longer route the request to itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from accord.grants import service as grants
from accord.grants.models import Grant, GrantStatus
from accord.identity import service as tokens
from accord.identity import sessions as web_sessions
from accord.identity.models import ApiToken, WebSession
from accord.ledger.events import Actor
from accord.policy.engine import Policy, PolicyRefusal
from accord.requests import service as requests
from accord.requests.models import AccessRequest, RequestApprover, Status

LIVE = (GrantStatus.ACTIVE, GrantStatus.PROVISIONING)


@dataclass
class Effects:
    """What one unit of directory writes did to people, as the consequences need it."""

    actor: Actor
    now: datetime
    left: dict[str, str] = field(default_factory=dict)  # name -> why they are no longer a user
    lost: dict[str, set[str]] = field(default_factory=dict)  # name -> groups they left
    joined: set[str] = field(default_factory=set)  # people who joined a group
    managed: set[str] = field(default_factory=set)  # people whose manager changed
    # Filled by `apply`, for the entry point's caches once committed.
    revoked_tokens: list[int] = field(default_factory=list)
    ended_sessions: list[str] = field(default_factory=list)


def apply(session: Session, *, policy: Policy, change: Effects) -> None:
    gone = sorted(n for n in change.left if not policy.is_user(n))
    # Pending requests someone who left could decide: with one approver fewer, a step may
    # no longer be fillable.
    waiting = set(session.execute(select(RequestApprover.request_id).where(
        RequestApprover.username.in_(gone))).scalars()) if gone else set()
    for name in gone:
        tokens_gone, sessions_gone = person_left(session, name=name, why=change.left[name],
                                                 actor=change.actor, now=change.now)
        change.revoked_tokens += tokens_gone
        change.ended_sessions += sessions_gone
    touched = set(change.lost) | change.joined
    groups = {g for gs in change.lost.values() for g in gs} | {
        g for n in change.joined for g in policy.groups_of.get(n, frozenset())}
    actor, now = change.actor, change.now
    if touched and groups & policy.referenced_groups:
        requests.refresh_approvers(session, policy=policy, actor=actor, now=now)
    else:
        if change.managed:
            requests.refresh_approvers(session, policy=policy, actor=actor, now=now,
                                       requesters=change.managed)
        if waiting:
            requests.refresh_approvers(session, policy=policy, actor=actor, now=now,
                                       request_ids=waiting)
    for name, lost in sorted(change.lost.items()):
        if policy.is_user(name):
            revoke_on_group_loss(session, policy=policy, user=name, lost=lost,
                                 actor=change.actor, now=change.now)


def person_left(session: Session, *, name: str, why: str, actor: Actor,
                now: datetime) -> tuple[list[int], list[str]]:
    """End everything `name` holds or waits for; `why` goes into each record. Returns the
    tokens revoked and the web sessions' digests ended, for the caller's caches."""
    revoked = list(session.execute(select(ApiToken.id).where(
        ApiToken.user == name, ApiToken.revoked_at.is_(None))).scalars())
    for token_id in revoked:
        tokens.revoke(session, token_id=token_id, actor=actor, now=now, admin=True)
    ended: list[str] = []
    for row in session.execute(select(WebSession).where(
            WebSession.user == name, WebSession.ended_at.is_(None),
            WebSession.expires_at > now)).scalars():
        web_sessions.end(session, row=row, now=now, reason=why, actor=actor)
        ended.append(row.digest)
    for req in session.execute(select(AccessRequest).where(
            AccessRequest.requester == name, AccessRequest.status == Status.PENDING)
            .with_for_update()).scalars():
        requests.cancel_for(session, req=req, actor=actor, now=now,
                            why=f"its requester was {why}")
    for grant in session.execute(select(Grant).where(
            Grant.user == name, Grant.status.in_(LIVE)).with_for_update()).scalars():
        grants.end(session, grant=grant, status=GrantStatus.REVOKED, actor=actor,
                   now=now, comment=f'"{name}" was {why}')
    pending = select(AccessRequest.id).where(AccessRequest.status == Status.PENDING)
    session.execute(delete(RequestApprover).where(
        RequestApprover.username == name, RequestApprover.request_id.in_(pending)))
    session.flush()
    return revoked, ended


def revoke_on_group_loss(session: Session, *, policy: Policy, user: str, lost: set[str],
                         actor: Actor, now: datetime) -> list[int]:
    """End `user`'s grants whose workflow asks for it and no longer routes them."""
    flagged = {w.spec.name for w in policy.workflows if w.spec.revoke_on_group_loss}
    if not flagged:
        return []
    ended: list[int] = []
    rows = session.execute(
        select(Grant, AccessRequest).join(AccessRequest, AccessRequest.id == Grant.request_id)
        .where(Grant.user == user, Grant.status.in_(LIVE),
               AccessRequest.workflow.in_(sorted(flagged)))).all()
    for grant, req in rows:
        spec = policy.resources.get(grant.resource)
        if spec is None:
            continue
        try:
            decision = policy.decide(requester=user, resource=spec, role=grant.role,
                                     duration=timedelta(seconds=req.duration_seconds),
                                     reason=req.reason, now=now)
            still = decision.workflow == req.workflow and decision.outcome != "deny"
        except PolicyRefusal:
            still = False
        if still:
            continue
        grants.end(session, grant=grant, status=GrantStatus.REVOKED, actor=actor,
                   now=now,
                   comment=f"{user} left {', '.join(sorted(lost))}: workflow "
                   f"{req.workflow} (revoke_on_group_loss) no longer routes them")
        ended.append(grant.id)
    return ended
