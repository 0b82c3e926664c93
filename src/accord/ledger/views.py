"""HTTP API over audit events (auditors and admins)."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel
from sqlalchemy.orm import Session

from accord.api.deps import Principal, db, require_reader
from accord.errors import Invalid
from accord.ledger import service

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


class EventOut(BaseModel):
    id: int
    event: dict[str, Any]
    leaf: str


class EventPage(BaseModel):
    items: list[EventOut]
    next_cursor: str | None


@router.get("/events", response_model=EventPage)
def events(
    who: Principal = Depends(require_reader),
    session: Session = Depends(db),
    type: str | None = None,
    subject: str | None = None,
    resource: str | None = None,
    actor: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> EventPage:
    """Audit events in append order, each with its exact leaf bytes (base64)."""
    if cursor and not cursor.isdigit():
        raise Invalid("not a cursor returned by this API", field="cursor")
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise Invalid("needs a timezone, e.g. 2026-01-01T00:00:00Z", field=name)
    q = service.query_events(
        type=type, subject=subject, resource=resource, actor=actor, since=since, until=until,
        after_id=int(cursor) if cursor else None,
    ).limit(limit + 1)
    rows = list(session.execute(q).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    return EventPage(
        items=[
            EventOut(id=r.id, event=service.decode(r), leaf=base64.b64encode(r.leaf).decode())
            for r in rows
        ],
        next_cursor=str(rows[-1].id) if more and rows else None,
    )
