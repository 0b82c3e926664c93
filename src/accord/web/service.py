"""Browser sessions: start (recorded), look up, end (recorded). Never commits."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.ledger import service as ledger
from accord.ledger.events import Actor, EventType, Via
from accord.web.models import WebSession

COOKIE = "accord_session"


def digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass(frozen=True)
class Started:
    cookie: str  # the random id for the browser; never stored
    row: WebSession


def start(session: Session, *, user: str, method: str, now: datetime, ttl: timedelta,
          details: dict[str, Any] | None = None) -> Started:
    """Open a session for `user` and record the login in the ledger."""
    sid = secrets.token_urlsafe(32)
    row = WebSession(digest=digest(sid), user=user, method=method,
                     csrf=secrets.token_urlsafe(32), created_at=now, expires_at=now + ttl)
    session.add(row)
    session.flush()
    ledger.record(session, type=EventType.WEB_LOGIN, actor=Actor.user(user, Via.WEB),
                  subject=f"user:{user}", time=now,
                  data={"method": method, "session": row.id, "expires_at": row.expires_at
                        .isoformat(), **(details or {})})
    return Started(sid, row)


def refuse(session: Session, *, user: str | None, method: str, reason: str, now: datetime,
           details: dict[str, Any] | None = None) -> None:
    """Record a refused login: who tried (as far as known), how, and why."""
    ledger.record(session, type=EventType.WEB_LOGIN_REFUSED,
                  actor=Actor("user" if user else "anonymous", user or "unknown", Via.WEB),
                  subject=f"user:{user or 'unknown'}", time=now,
                  data={"method": method, "reason": reason, **(details or {})})


def lookup(session: Session, *, cookie: str, now: datetime) -> WebSession | None:
    """The live session behind a cookie value, or None (unknown, expired or ended)."""
    row = session.execute(
        select(WebSession).where(WebSession.digest == digest(cookie))).scalar_one_or_none()
    if row is None or row.ended_at is not None or row.expires_at <= now:
        return None
    return row


def end(session: Session, *, row: WebSession, now: datetime, reason: str = "logout") -> None:
    """Close the session (logout) and record it."""
    if row.ended_at is not None:
        return
    row.ended_at = now
    ledger.record(session, type=EventType.WEB_LOGOUT, actor=Actor.user(row.user, Via.WEB),
                  subject=f"user:{row.user}", time=now,
                  data={"session": row.id, "reason": reason})
