"""API tokens: issued once, stored as a sha256 hash, listable and revocable."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.errors import NotFound, Unauthorized
from accord.identity.models import ApiToken
from accord.ledger import service as ledger
from accord.ledger.events import Actor, EventType, format_time
from accord.policy.engine import Policy

TOKEN_PREFIX = "acc_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue(
    session: Session,
    *,
    policy: Policy,
    user: str,
    actor: Actor,
    now: datetime,
    expires_in: timedelta | None = None,
    name: str = "",
) -> tuple[ApiToken, str]:
    """Create a token for `user`; returns the row and the only copy of the secret."""
    if not policy.is_user(user):
        raise NotFound(f'unknown user "{user}"; users come from accord.yaml')
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        user=user,
        name=name,
        token_hash=hash_token(secret),
        prefix=secret[: len(TOKEN_PREFIX) + 6],
        created_at=now,
        created_by=actor.id,
        expires_at=now + expires_in if expires_in else None,
    )
    session.add(row)
    session.flush()
    ledger.record(
        session,
        type=EventType.TOKEN_ISSUED,
        actor=actor,
        subject=f"token:{row.id}",
        data={
            "token_id": row.id,
            "user": user,
            "name": name,
            "prefix": row.prefix,
            "expires_at": format_time(row.expires_at) if row.expires_at else None,
        },
        time=now,
    )
    return row, secret


def authenticate(session: Session, *, policy: Policy, token: str, now: datetime) -> ApiToken:
    """The live token behind a bearer secret, or Unauthorized saying why."""
    row = session.execute(
        select(ApiToken).where(ApiToken.token_hash == hash_token(token))
    ).scalar_one_or_none()
    if row is None:
        raise Unauthorized("invalid token")
    if row.revoked_at is not None:
        raise Unauthorized("token has been revoked")
    if row.expires_at is not None and row.expires_at <= now:
        raise Unauthorized("token has expired")
    if not policy.is_user(row.user):
        raise Unauthorized(f'user "{row.user}" is no longer in accord.yaml')
    return row


def list_tokens(session: Session, *, user: str | None) -> list[ApiToken]:
    q = select(ApiToken).order_by(ApiToken.id)
    if user is not None:
        q = q.where(ApiToken.user == user)
    return list(session.execute(q).scalars().all())


def revoke(
    session: Session, *, token_id: int, actor: Actor, now: datetime, admin: bool
) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None or (not admin and row.user != actor.id):
        raise NotFound(f"token {token_id} does not exist or is not yours")
    if row.revoked_at is not None:
        return row
    row.revoked_at = now
    row.revoked_by = actor.id
    ledger.record(
        session,
        type=EventType.TOKEN_REVOKED,
        actor=actor,
        subject=f"token:{row.id}",
        data={"token_id": row.id, "user": row.user, "prefix": row.prefix},
        time=now,
    )
    session.flush()
    return row
