"""Browser sessions: start (recorded), look up, list, end (recorded). Never commits.

A session opened with an API token lives no longer than that token: it expires with it
and ends, recorded, when the token is revoked. OIDC and demo sessions keep their own
lifetime (`web.session_ttl`).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.errors import NotFound
from accord.identity.models import ApiToken, WebSession
from accord.ledger import service as ledger
from accord.ledger.events import Actor, EventType, Via

COOKIE = "accord_session"

# Why a session ended (`data.reason` of its `web.logout` event).
LOGOUT = "logout"
BY_ADMIN = "ended_by_admin"
TOKEN_REVOKED = "token_revoked"
TOKEN_EXPIRED = "token_expired"
TOKEN_UNKNOWN = "token_unknown"  # opened by token before sessions remembered which one


def digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass(frozen=True)
class Started:
    cookie: str  # the random id for the browser; never stored
    row: WebSession


def start(session: Session, *, user: str, method: str, now: datetime, ttl: timedelta,
          details: dict[str, Any] | None = None, token: ApiToken | None = None) -> Started:
    """Open a session for `user` and record the login in the ledger. A session opened
    with `token` expires no later than the token does."""
    sid = secrets.token_urlsafe(32)
    expires = now + ttl
    if token is not None and token.expires_at is not None:
        expires = min(expires, token.expires_at)
    row = WebSession(digest=digest(sid), user=user, method=method,
                     csrf=secrets.token_urlsafe(32), created_at=now, expires_at=expires,
                     token_id=token.id if token is not None else None)
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


def _token_gone(row: WebSession, token: ApiToken | None, now: datetime) -> str | None:
    """Why a token session may no longer be used, or None (also None for other methods)."""
    if row.method != "token":
        return None
    if token is None:
        return TOKEN_UNKNOWN
    if token.revoked_at is not None:
        return TOKEN_REVOKED
    if token.expires_at is not None and token.expires_at <= now:
        return TOKEN_EXPIRED
    return None


def lookup(session: Session, *, cookie: str, now: datetime) -> WebSession | None:
    """The live session behind a cookie value, or None (unknown, expired or ended).

    A token session whose token is gone is ended here, recorded: revocation normally ends
    it at once (`end_for_token`), this catches whatever did not. The caller commits."""
    found = session.execute(
        select(WebSession, ApiToken).outerjoin(ApiToken, ApiToken.id == WebSession.token_id)
        .where(WebSession.digest == digest(cookie))).first()
    if found is None:
        return None
    row, token = found
    if row.ended_at is not None or row.expires_at <= now:
        return None
    reason = _token_gone(row, token, now)
    if reason is not None:
        end(session, row=row, now=now, reason=reason, actor=Actor.system(Via.WEB))
        return None
    return row


def end(session: Session, *, row: WebSession, now: datetime, reason: str = LOGOUT,
        actor: Actor | None = None) -> bool:
    """Close the session and record it: by its user (logout, the default actor), an admin,
    or because its token is gone. False when it had already ended."""
    if row.ended_at is None:  # two requests may end it at once: the row lock decides
        session.refresh(row, with_for_update=True)
    if row.ended_at is not None:
        return False
    row.ended_at = now
    data: dict[str, Any] = {"session": row.id, "reason": reason}
    if row.token_id is not None and reason != LOGOUT:
        data["token_id"] = row.token_id
    ledger.record(session, type=EventType.WEB_LOGOUT,
                  actor=actor or Actor.user(row.user, Via.WEB),
                  subject=f"user:{row.user}", time=now, data=data)
    return True


def end_for_token(session: Session, *, token_id: int, actor: Actor,
                  now: datetime) -> list[WebSession]:
    """End every open session opened with a token being revoked (same transaction)."""
    rows = list(session.execute(
        select(WebSession).where(WebSession.token_id == token_id,
                                 WebSession.ended_at.is_(None), WebSession.expires_at > now)
        .order_by(WebSession.id).with_for_update()).scalars())
    for row in rows:
        end(session, row=row, now=now, reason=TOKEN_REVOKED, actor=actor)
    return rows


def get(session: Session, *, session_id: int, lock: bool = False) -> WebSession:
    q = select(WebSession).where(WebSession.id == session_id)
    if lock:
        q = q.with_for_update()
    row = session.execute(q).scalar_one_or_none()
    if row is None:
        raise NotFound(f"session {session_id} does not exist")
    return row


def list_sessions(session: Session, *, now: datetime, user: str | None = None,
                  include_ended: bool = False, before_id: int | None = None,
                  limit: int = 50) -> list[WebSession]:
    """Sessions, newest first: by default only the live ones."""
    q = select(WebSession).order_by(WebSession.id.desc()).limit(limit)
    if not include_ended:
        q = q.where(WebSession.ended_at.is_(None), WebSession.expires_at > now)
    if user is not None:
        q = q.where(WebSession.user == user)
    if before_id is not None:
        q = q.where(WebSession.id < before_id)
    return list(session.execute(q).scalars())


def end_by_admin(session: Session, *, session_id: int, actor: Actor,
                 now: datetime) -> WebSession:
    """An admin ends someone's session (or their own). Ending an ended one changes nothing."""
    row = get(session, session_id=session_id, lock=True)
    if row.expires_at > now:
        end(session, row=row, now=now, reason=BY_ADMIN, actor=actor)
    return row
