"""HTTP API for alerts: auditors and admins read them; admins acknowledge and resolve."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from accord.api.deps import (
    Principal,
    db,
    known_id,
    parse_cursor,
    require_admin,
    require_reader,
    state,
)
from accord.detect import service
from accord.detect.models import AlertStatus, Severity
from accord.requests.schemas import CommentIn
from accord.state import AppState

router = APIRouter(prefix="/api/v1/alerts", tags=["alerts"])


class AlertOut(BaseModel):
    id: int
    rule: str
    severity: str
    status: str
    title: str
    user: str | None
    resource: str | None
    subject: str | None
    evidence: list[int] = Field(description="ledger indices of the events behind it")
    data: dict[str, Any]
    opened_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    note: str


class AlertPage(BaseModel):
    items: list[AlertOut]
    next_cursor: str | None


@router.get("", response_model=AlertPage)
def list_alerts(
    who: Principal = Depends(require_reader),
    session: Session = Depends(db),
    status: AlertStatus | None = None,
    severity: Severity | None = None,
    rule: str | None = None,
    user: str | None = None,
    resource: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> AlertPage:
    """Alerts, newest first (auditors and admins)."""
    rows = service.list_alerts(session, status=status, severity=severity, rule=rule, user=user,
                               resource=resource, before_id=parse_cursor(cursor),
                               limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return AlertPage(items=[AlertOut(**service.as_dict(a)) for a in rows],
                     next_cursor=str(rows[-1].id) if more and rows else None)


class AlertGroupOut(BaseModel):
    rule: str
    user: str | None = Field(description="set when grouped by user")
    resource: str | None = Field(description="set when grouped by resource")
    subject: str | None = Field(description="set when grouped by subject")
    count: int = Field(description="alerts in the group")
    severity: str = Field(description="the most severe alert's severity")
    newest: AlertOut = Field(description="the group's newest alert")
    oldest_opened_at: datetime


class AlertGroups(BaseModel):
    by: str
    items: list[AlertGroupOut]


@router.get("/groups", response_model=AlertGroups)
def alert_groups(
    who: Principal = Depends(require_reader),
    session: Session = Depends(db),
    by: Annotated[Literal["rule", "user", "resource", "subject"], Query(
        description="group per rule, or per rule and user, resource or subject")] = "rule",
    status: AlertStatus | None = None,
    severity: Severity | None = None,
    rule: str | None = None,
    user: str | None = None,
    resource: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AlertGroups:
    """Alerts counted per rule (or per rule and `by`), the group with the newest alert
    first: many alerts of one kind read as one line (auditors and admins). The alerts
    themselves: `GET /api/v1/alerts?rule=...`."""
    groups = service.group_alerts(session, by=by, status=status, severity=severity, rule=rule,
                                  user=user, resource=resource, limit=limit)
    return AlertGroups(by=by, items=[
        AlertGroupOut(rule=g.rule, user=g.user, resource=g.resource, subject=g.subject,
                      count=g.count, severity=g.severity,
                      newest=AlertOut(**service.as_dict(g.newest)),
                      oldest_opened_at=g.oldest_opened_at) for g in groups])


@router.get("/{alert_id}", response_model=AlertOut)
def get_alert(alert_id: int, who: Principal = Depends(require_reader),
              session: Session = Depends(db)) -> AlertOut:
    return AlertOut(**service.as_dict(service.get(session,
                                                  alert_id=known_id(alert_id, "alert"))))


@router.post("/{alert_id}/acknowledge", response_model=AlertOut)
def acknowledge(alert_id: int, body: Annotated[CommentIn | None, Body()] = None,
                who: Principal = Depends(require_admin), session: Session = Depends(db),
                st: AppState = Depends(state)) -> AlertOut:
    """Say someone is on it (admins)."""
    alert = service.acknowledge(session, alert_id=known_id(alert_id, "alert"),
                                actor=who.caller.actor, note=body.comment if body else "",
                                now=st.now())
    out = AlertOut(**service.as_dict(alert))
    session.commit()
    return out


@router.post("/{alert_id}/resolve", response_model=AlertOut)
def resolve(alert_id: int, body: CommentIn, who: Principal = Depends(require_admin),
            session: Session = Depends(db), st: AppState = Depends(state)) -> AlertOut:
    """Close it with a note saying how (admins). Break-glass alerts close by review."""
    alert = service.resolve(session, alert_id=known_id(alert_id, "alert"),
                            actor=who.caller.actor, note=body.comment, now=st.now())
    out = AlertOut(**service.as_dict(alert))
    session.commit()
    return out
