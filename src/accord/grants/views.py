"""HTTP API for grants."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.api.deps import Principal, db, known_id, parse_cursor, principal, state
from accord.detect.service import alerts_about
from accord.errors import Conflict, NotFound
from accord.gateway.usage import usage_for
from accord.grants.models import Grant, GrantStatus
from accord.grants.service import effective_status, visible_clause
from accord.ledger import service as ledger
from accord.ledger.events import EventType
from accord.requests.schemas import GrantOut
from accord.state import AppState

router = APIRouter(prefix="/api/v1/grants", tags=["grants"])


class GrantUsage(BaseModel):
    """Use through the gateway (null when never used there)."""

    first_used_at: datetime
    last_used_at: datetime
    statement_count: int
    violation_count: int
    session_count: int


class GrantAlert(BaseModel):
    """An alert raised about this grant (its gateway sessions' violations and escalations)."""

    id: int
    rule: str
    severity: str
    status: str
    title: str
    evidence: list[int]


class GrantView(GrantOut):
    usage: GrantUsage | None = None
    alerts: list[GrantAlert] | None = None  # for admins and auditors (who read alerts)


def _with_usage(session: Session, grants: list[Grant], now: datetime) -> list[GrantView]:
    usage = usage_for(session, grant_ids=[g.id for g in grants])
    out = []
    for g in grants:
        u = usage.get(g.id)
        out.append(GrantView(
            **GrantOut.of(g, now).model_dump(),
            usage=GrantUsage(first_used_at=u.first_used_at, last_used_at=u.last_used_at,
                             statement_count=u.statement_count,
                             violation_count=u.violation_count,
                             session_count=u.session_count) if u is not None else None))
    return out


class GrantPage(BaseModel):
    items: list[GrantView]
    next_cursor: str | None


@router.get("", response_model=GrantPage)
def list_grants(
    who: Principal = Depends(principal),
    session: Session = Depends(db),
    st: AppState = Depends(state),
    status: GrantStatus | None = None,
    resource: str | None = None,
    user: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> GrantPage:
    """Grants you may see (your own; those of resources you approve; all for admins/auditors)."""
    now = st.now()
    q = select(Grant).order_by(Grant.id.desc()).limit(limit + 1)
    visible = visible_clause(who.policy, who.user)
    if visible is not None:
        q = q.where(visible)
    if status == GrantStatus.ACTIVE:
        q = q.where(Grant.status == GrantStatus.ACTIVE, Grant.ends_at > now)
    elif status == GrantStatus.EXPIRED:
        q = q.where((Grant.status == GrantStatus.EXPIRED)
                    | ((Grant.status == GrantStatus.ACTIVE) & (Grant.ends_at <= now)))
    elif status is not None:
        q = q.where(Grant.status == status)
    if resource:
        q = q.where(Grant.resource == resource)
    if user:
        q = q.where(Grant.user == user)
    before = parse_cursor(cursor)
    if before is not None:
        q = q.where(Grant.id < before)
    rows = list(session.execute(q).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    return GrantPage(items=_with_usage(session, rows, now),
                     next_cursor=str(rows[-1].id) if more and rows else None)


class RevealOut(BaseModel):
    grant_id: int
    login: str | None
    password: str
    connection: dict[str, Any] | None


@router.post("/{grant_id}/reveal", response_model=RevealOut)
def reveal(
    grant_id: int,
    who: Principal = Depends(principal),
    session: Session = Depends(db),
    st: AppState = Depends(state),
) -> RevealOut:
    """The grantee's one-time password for the target. It is shown once, then erased."""
    g = session.execute(
        select(Grant).where(Grant.id == known_id(grant_id, "grant")).with_for_update()
    ).scalar_one_or_none()
    if g is None or g.user != who.user:
        raise NotFound(f"grant {grant_id} does not exist or is not yours")
    if effective_status(g, st.now()) != GrantStatus.ACTIVE:
        raise Conflict(f"grant {grant_id} is {effective_status(g, st.now())}")
    if g.secret_box is None:
        raise Conflict("the password of this grant was already revealed, or it has none")
    password = st.secrets.open(g.secret_box)
    g.secret_box = None
    ledger.record(session, type=EventType.GRANT_SECRET_REVEALED, actor=who.caller.actor,
                  subject=f"grant:{g.id}", resource={"name": g.resource, "role": g.role},
                  data={"grant_id": g.id, "user": g.user, "login": g.login}, time=st.now())
    out = RevealOut(grant_id=g.id, login=g.login, password=password, connection=g.connection)
    session.commit()
    return out


@router.get("/{grant_id}", response_model=GrantView)
def get_grant(
    grant_id: int,
    who: Principal = Depends(principal),
    session: Session = Depends(db),
    st: AppState = Depends(state),
) -> GrantView:
    q = select(Grant).where(Grant.id == known_id(grant_id, "grant"))
    visible = visible_clause(who.policy, who.user)
    if visible is not None:
        q = q.where(visible)
    g = session.execute(q).scalar_one_or_none()
    if g is None:
        raise NotFound(f"grant {grant_id} does not exist or is not visible to you")
    view = _with_usage(session, [g], st.now())[0]
    if who.can_read_all:
        view.alerts = [GrantAlert(id=a.id, rule=a.rule, severity=a.severity, status=a.status,
                                  title=a.title, evidence=list(a.evidence))
                       for a in alerts_about(session, subject=f"grant:{g.id}")]
    return view
