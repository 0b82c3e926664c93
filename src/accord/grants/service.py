"""Grants: activation, extension, every way a grant ends, and who may see which. Never commits."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, false, or_, select, tuple_, update
from sqlalchemy.orm import Session

from accord.db import skip_locked
from accord.grants.models import Grant, GrantStatus
from accord.jobs import service as jobs
from accord.ledger import service as ledger
from accord.ledger.events import Actor, EventType, format_time
from accord.policy.engine import Policy
from accord.requests.models import AccessRequest, RequestApprover, Status

_END_EVENT = {
    GrantStatus.EXPIRED: EventType.GRANT_EXPIRED,
    GrantStatus.REVOKED: EventType.GRANT_REVOKED,
    GrantStatus.RELINQUISHED: EventType.GRANT_RELINQUISHED,
}


def resource_ref(grant_or_request: Grant | AccessRequest) -> dict[str, Any]:
    return {"name": grant_or_request.resource, "role": grant_or_request.role}


def effective_status(grant: Grant, now: datetime) -> str:
    """Expiry holds on every read, before the sweeper records it."""
    if grant.status == GrantStatus.ACTIVE and grant.ends_at <= now:
        return GrantStatus.EXPIRED
    return grant.status


def visible_clause(policy: Policy, user: str) -> Any:
    """Grants `user` may see, as SQL (None: all, for admins and auditors): their own and
    their agents', those on resources they own, and those of requests they could approve."""
    if user in policy.admins or user in policy.auditors:
        return None
    return or_(
        Grant.user.in_([user, *policy.agents_of(user)]),  # an agent's owner sees its grants
        Grant.resource.in_(policy.owned_by(user)),
        exists().where(
            AccessRequest.grant_id == Grant.id,
            RequestApprover.request_id == AccessRequest.id,
            RequestApprover.username == user,
        ),
        exists().where(AccessRequest.grant_id == Grant.id,
                       tuple_(AccessRequest.workflow, AccessRequest.resource).in_(pairs))
        if (pairs := policy.approver_pairs(user)) else false(),
    )


def activate(session: Session, *, request: AccessRequest, actor: Actor, now: datetime,
             provisioned: bool = False, warn_before: timedelta | None = None) -> Grant | None:
    """Turn an approved request into access: a new grant, or more time on the one it extends.

    With a provisioning target the grant waits in `provisioning` until the target
    confirms (a job does that); without one it is active at once.
    """
    duration = timedelta(seconds=request.duration_seconds)
    base = (session.get(Grant, request.extends_grant_id, with_for_update=True)
            if request.extends_grant_id else None)
    if base is not None and effective_status(base, now) != GrantStatus.ACTIVE:
        # Never a fresh grant in place of one that ended (revoked, expired) meanwhile.
        request.status = Status.DENIED
        request.decision_reason = f"grant {base.id} it would extend is {base.status}"
        ledger.record(
            session, type=EventType.REQUEST_DENIED, actor=Actor.system(),
            subject=f"request:{request.id}", resource=resource_ref(request),
            data={"request_id": request.id, "reason": request.decision_reason}, time=now)
        return None
    if base is not None:
        previous_end = base.ends_at
        base.ends_at = previous_end + duration
        request.grant_id = base.id
        request.status = Status.ACTIVE
        if provisioned or warn_before:
            _schedule(session, base, now, warn_before, expire=provisioned)
        ledger.record(
            session,
            type=EventType.GRANT_EXTENDED,
            actor=actor,
            subject=f"grant:{base.id}",
            resource=resource_ref(base),
            data={
                "grant_id": base.id,
                "request_id": request.id,
                "user": base.user,
                "previous_ends_at": format_time(previous_end),
                "ends_at": format_time(base.ends_at),
                "added_seconds": request.duration_seconds,
            },
            time=now,
        )
        return base
    grant = Grant(
        request_id=request.id,
        user=request.requester,
        resource=request.resource,
        role=request.role,
        status=GrantStatus.PROVISIONING if provisioned else GrantStatus.ACTIVE,
        starts_at=now,
        ends_at=now + duration,
    )
    # Linked through the relationship, one flush writes the grant and the request's new
    # status and grant_id in a single UPDATE.
    request.status = Status.APPROVED if provisioned else Status.ACTIVE
    request.grant = grant
    session.flush()
    if provisioned:
        jobs.enqueue(session, kind=PROVISION, key=f"grant:{grant.id}:provision", run_at=now,
                     now=now, payload={"grant_id": grant.id})
        ledger.record(
            session,
            type=EventType.GRANT_PROVISIONING,
            actor=actor,
            subject=f"grant:{grant.id}",
            resource=resource_ref(grant),
            data={"grant_id": grant.id, "request_id": request.id, "user": grant.user,
                  "duration_seconds": request.duration_seconds},
            time=now,
        )
        return grant
    ledger.record(
        session,
        type=EventType.GRANT_ACTIVATED,
        actor=actor,
        subject=f"grant:{grant.id}",
        resource=resource_ref(grant),
        data={
            "grant_id": grant.id,
            "request_id": request.id,
            "user": grant.user,
            "starts_at": format_time(grant.starts_at),
            "ends_at": format_time(grant.ends_at),
            "extends_grant_id": request.extends_grant_id,
        },
        time=now,
    )
    if warn_before:
        _schedule(session, grant, now, warn_before, expire=False)
    return grant


PROVISION = "grant.provision"
EXPIRE = "grant.expire"
DEPROVISION = "grant.deprovision"


WARN = "grant.warn"


def _schedule(session: Session, grant: Grant, now: datetime,
              warn_before: timedelta | None = None, *, expire: bool = True) -> None:
    """Expire exactly at the end, and warn the grantee before: jobs due then.

    A new pair each time the end moves (an extension); the old ones find nothing to do.
    """
    stamp = format_time(grant.ends_at)
    if expire:
        jobs.enqueue(session, kind=EXPIRE, key=f"grant:{grant.id}:expire:{stamp}",
                     run_at=grant.ends_at, now=now, payload={"grant_id": grant.id})
    if warn_before and grant.ends_at - warn_before > now:
        jobs.enqueue(session, kind=WARN, key=f"grant:{grant.id}:warn:{stamp}",
                     run_at=grant.ends_at - warn_before, now=now,
                     payload={"grant_id": grant.id, "ends_at": stamp})


def warn(session: Session, *, grant_id: int, ends_at: str, now: datetime) -> None:
    """Record that a grant ends soon (the outbox tells the grantee how to extend)."""
    grant = session.get(Grant, grant_id)
    if grant is None or effective_status(grant, now) != GrantStatus.ACTIVE \
            or format_time(grant.ends_at) != ends_at:
        return  # ended, or extended: a later warning covers the new end
    ledger.record(session, type=EventType.GRANT_EXPIRING, actor=Actor.system(),
                  subject=f"grant:{grant.id}", resource=resource_ref(grant),
                  data={"grant_id": grant.id, "request_id": grant.request_id,
                        "user": grant.user, "ends_at": ends_at}, time=now)


def confirm(session: Session, *, grant: Grant, now: datetime, login: str,
            connection: dict[str, Any], secret_box: bytes | None,
            warn_before: timedelta | None = None) -> None:
    """The target granted access: the grant and its requests become active from now."""
    duration = grant.ends_at - grant.starts_at
    grant.status = GrantStatus.ACTIVE
    grant.starts_at = now
    grant.ends_at = now + duration
    grant.login = login
    grant.connection = connection
    grant.secret_box = secret_box
    grant.provisioned_at = now
    session.execute(
        update(AccessRequest)
        .where(AccessRequest.grant_id == grant.id, AccessRequest.status == Status.APPROVED)
        .values(status=str(Status.ACTIVE))
    )
    _schedule(session, grant, now, warn_before)
    ledger.record(
        session,
        type=EventType.GRANT_ACTIVATED,
        actor=Actor.system(),
        subject=f"grant:{grant.id}",
        resource=resource_ref(grant),
        data={
            "grant_id": grant.id,
            "request_id": grant.request_id,
            "user": grant.user,
            "starts_at": format_time(grant.starts_at),
            "ends_at": format_time(grant.ends_at),
            "login": login,
            "connection": connection,
        },
        time=now,
    )


def fail_provisioning(session: Session, *, grant: Grant, now: datetime, error: str) -> None:
    grant.status = GrantStatus.PROVISION_FAILED
    grant.ended_at = now
    grant.ended_by = "accord"
    session.execute(
        update(AccessRequest)
        .where(AccessRequest.grant_id == grant.id, AccessRequest.status == Status.APPROVED)
        .values(status=str(Status.PROVISION_FAILED))
    )
    ledger.record(
        session,
        type=EventType.GRANT_PROVISION_FAILED,
        actor=Actor.system(),
        subject=f"grant:{grant.id}",
        resource=resource_ref(grant),
        data={"grant_id": grant.id, "user": grant.user, "error": error[:1000]},
        time=now,
    )


def end(
    session: Session,
    *,
    grant: Grant,
    status: GrantStatus,
    actor: Actor,
    now: datetime,
    comment: str = "",
) -> None:
    """End a grant and every request riding on it, with one event.

    Access on a target is taken away by a job, which keeps trying until the target
    confirms; it is enqueued in this same transaction, so it cannot be lost.
    """
    if grant.provisioned_at is not None or grant.status == GrantStatus.PROVISIONING:
        jobs.enqueue(session, kind=DEPROVISION, key=f"grant:{grant.id}:deprovision",
                     run_at=now, now=now, payload={"grant_id": grant.id})
    # Pending extensions of this grant can no longer extend anything.
    extensions = session.execute(
        select(AccessRequest).where(AccessRequest.extends_grant_id == grant.id,
                                    AccessRequest.status == Status.PENDING).with_for_update()
    ).scalars().all()
    for ext in extensions:
        ext.status = Status.CANCELLED
        ext.decided_at = now
        ext.current_step = None
        ext.pending_until = None
        ext.decision_reason = f"grant {grant.id} it would extend was {status}"
        ledger.record(
            session, type=EventType.REQUEST_CANCELLED, actor=Actor.system(),
            subject=f"request:{ext.id}", resource=resource_ref(ext),
            data={"request_id": ext.id, "reason": ext.decision_reason}, time=now)
    grant.status = status
    grant.ended_at = min(now, grant.ends_at) if status == GrantStatus.EXPIRED else now
    grant.ended_by = actor.id
    riding = session.execute(
        update(AccessRequest)
        .where(AccessRequest.grant_id == grant.id,
               AccessRequest.status.in_([Status.ACTIVE, Status.APPROVED]))
        .values(status=str(status))
        .returning(AccessRequest.id)
    ).scalars().all()
    ledger.record(
        session,
        type=_END_EVENT[status],
        actor=actor,
        subject=f"grant:{grant.id}",
        resource=resource_ref(grant),
        data={
            "grant_id": grant.id,
            "user": grant.user,
            "request_ids": sorted(riding),
            "ends_at": format_time(grant.ends_at),
            "ended_at": format_time(grant.ended_at),
            "comment": comment,
        },
        time=now,
    )


def _due(now: datetime) -> ColumnElement[bool]:
    return and_(Grant.status == GrantStatus.ACTIVE, Grant.ends_at <= now)


def any_due(session: Session, *, now: datetime) -> bool:
    """Whether some active grant's end has passed (a read: `expire_due` records it)."""
    return session.execute(select(Grant.id).where(_due(now)).limit(1)).first() is not None


def expire_due(session: Session, *, now: datetime, limit: int = 500) -> int:
    """Record the expiry of grants whose end has passed. Returns how many ended."""
    q = (
        select(Grant)
        .where(_due(now))
        .order_by(Grant.ends_at)
        .limit(limit)
    )
    grants = session.execute(skip_locked(session, q)).scalars().all()
    for g in grants:
        end(session, grant=g, status=GrantStatus.EXPIRED, actor=Actor.system(), now=now)
    return len(grants)
