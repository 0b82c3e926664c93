"""Grants: activation, extension and every way a grant ends. Never commits."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from accord.grants.models import Grant, GrantStatus
from accord.ledger import service as ledger
from accord.ledger.events import Actor, EventType, format_time
from accord.requests.models import AccessRequest, Status

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


def activate(session: Session, *, request: AccessRequest, actor: Actor, now: datetime) -> Grant:
    """Turn an approved request into access: a new grant, or more time on the one it extends."""
    duration = timedelta(seconds=request.duration_seconds)
    base = session.get(Grant, request.extends_grant_id) if request.extends_grant_id else None
    if base is not None and effective_status(base, now) == GrantStatus.ACTIVE:
        previous_end = base.ends_at
        base.ends_at = previous_end + duration
        request.grant_id = base.id
        request.status = Status.ACTIVE
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
        status=GrantStatus.ACTIVE,
        starts_at=now,
        ends_at=now + duration,
    )
    # Linked through the relationship, one flush writes the grant and the request's new
    # status and grant_id in a single UPDATE.
    request.status = Status.ACTIVE
    request.grant = grant
    session.flush()
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
    return grant


def end(
    session: Session,
    *,
    grant: Grant,
    status: GrantStatus,
    actor: Actor,
    now: datetime,
    comment: str = "",
) -> None:
    """End a grant and every request riding on it, with one event."""
    grant.status = status
    grant.ended_at = min(now, grant.ends_at) if status == GrantStatus.EXPIRED else now
    grant.ended_by = actor.id
    riding = session.execute(
        update(AccessRequest)
        .where(AccessRequest.grant_id == grant.id, AccessRequest.status == Status.ACTIVE)
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


def expire_due(session: Session, *, now: datetime, limit: int = 500) -> int:
    """Record the expiry of grants whose end has passed. Returns how many ended."""
    q = (
        select(Grant)
        .where(Grant.status == GrantStatus.ACTIVE, Grant.ends_at <= now)
        .order_by(Grant.ends_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    grants = session.execute(q).scalars().all()
    for g in grants:
        end(session, grant=g, status=GrantStatus.EXPIRED, actor=Actor.system(), now=now)
    return len(grants)
