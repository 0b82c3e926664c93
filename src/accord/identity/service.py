"""API tokens: issued once, stored as a sha256 hash, listable and revocable."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.errors import Forbidden, NotFound, Unauthorized
from accord.identity import sessions as web_sessions
from accord.identity.models import ApiToken
from accord.ledger import service as ledger
from accord.ledger.events import Actor, EventType, format_time
from accord.policy.engine import Policy

TOKEN_PREFIX = "acc_"
USER, AGENT = "user", "agent"  # ApiToken.kind: whom a token was issued to


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
    return _issue(session, user=user, kind=USER, actor=actor, now=now, expires_in=expires_in,
                  name=name)



def may_issue_for_agent(policy: Policy, *, agent: str, issuer: str) -> None:
    """Tokens of an agent are issued by its owner or an admin; raises why not."""
    if not policy.is_agent(agent):
        raise NotFound(f'unknown agent "{agent}"; agents come from accord.yaml (agents:)')
    if issuer != policy.owner_of(agent) and issuer not in policy.admins:
        raise Forbidden(f'only {policy.owner_of(agent)} (the owner of agent "{agent}") and '
                        "admins issue its tokens")


def issue_for_agent(
    session: Session,
    *,
    policy: Policy,
    agent: str,
    issuer: str,
    actor: Actor,
    now: datetime,
    expires_in: timedelta | None = None,
    name: str = "",
) -> tuple[ApiToken, str]:
    """A token for `agent`, issued by `issuer` (its owner or an admin); the row and the only
    copy of the secret. The event names the agent and its owner."""
    may_issue_for_agent(policy, agent=agent, issuer=issuer)
    return _issue(session, user=agent, kind=AGENT, actor=actor, now=now,
                  expires_in=expires_in, name=name, owner=policy.owner_of(agent))


def _issue(session: Session, *, user: str, kind: str, actor: Actor, now: datetime,
           expires_in: timedelta | None, name: str, owner: str | None = None,
           ) -> tuple[ApiToken, str]:
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        user=user,
        kind=kind,
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
            **({"agent": user, "owner": owner} if kind == AGENT else {}),
        },
        time=now,
    )
    return row, secret


@dataclass(frozen=True)
class Verified:
    token_id: int
    user: str
    expires_at: datetime | None
    checked: float  # time.monotonic() of the database check
    kind: str = USER


class TokenCache:
    """Tokens verified against the database in the last `ttl` seconds, by hash.

    Saves a query per API call. Expiry and the user's presence in the policy are still
    checked on every call; a revocation is applied at once in the process that made
    it and within `ttl` in every other replica.
    """

    def __init__(self, ttl: float = 1.0, size: int = 10_000) -> None:
        self.ttl = ttl
        self.size = size
        self._items: dict[str, Verified] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> Verified | None:
        hit = self._items.get(digest)
        if hit is None or time.monotonic() - hit.checked > self.ttl:
            return None
        return hit

    def put(self, digest: str, row: ApiToken) -> None:
        with self._lock:
            if len(self._items) >= self.size:
                self._items.clear()
            self._items[digest] = Verified(row.id, row.user, row.expires_at, time.monotonic(),
                                           row.kind)

    def forget(self, token_id: int) -> None:
        with self._lock:
            for digest in [d for d, v in self._items.items() if v.token_id == token_id]:
                del self._items[digest]


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
    if why := gone(policy, row.user, row.kind):
        raise Unauthorized(why)
    return row


def gone(policy: Policy, name: str, kind: str) -> str | None:
    """Why a token's holder may no longer act (left accord.yaml), or None."""
    if kind == AGENT:
        if not policy.is_agent(name):
            return f'agent "{name}" (or its owner) is no longer in accord.yaml'
    elif not policy.is_user(name):
        return f'user "{name}" is no longer in accord.yaml'
    return None


def list_tokens(session: Session, *, user: str | None,
                also: list[str] | None = None) -> list[ApiToken]:
    """Tokens of `user` (None: everyone's) and of the agents `also` names."""
    q = select(ApiToken).order_by(ApiToken.id)
    if user is not None:
        q = q.where(ApiToken.user.in_([user, *(also or [])]))
    return list(session.execute(q).scalars().all())


def revoke(
    session: Session, *, token_id: int, actor: Actor, now: datetime, admin: bool,
    owner_of: Callable[[str], str | None] | None = None,
) -> ApiToken:
    """Revoke a token (its holder's, an admin's, or for an agent's token, its owner's
    doing: `owner_of` says whose agent is whose), and end the web sessions opened with it.
    The caller commits, then forgets the token in `TokenCache` and its sessions in the
    web's session cache."""
    row = session.get(ApiToken, token_id)
    if row is None or (not admin and row.user != actor.id and not (
            row.kind == AGENT and owner_of is not None and owner_of(row.user) == actor.id)):
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
    # A browser session opened with this token ends with it, in the same transaction.
    web_sessions.end_for_token(session, token_id=row.id, actor=actor, now=now)
    session.flush()
    return row
