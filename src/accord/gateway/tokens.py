"""Who may connect through the gateway, whatever the protocol: connection tokens, the
grant each stands for, the grant checks of live sessions, and refused logins. Never commits."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from accord.gateway.models import GatewayToken
from accord.grants.models import Grant, GrantStatus
from accord.grants.service import effective_status
from accord.ledger import service as ledger
from accord.ledger.events import Actor, EventType, Via, format_time
from accord.policy.engine import Policy

if TYPE_CHECKING:
    pass


TOKEN_PREFIX = "acg_"


_VIA = str(Via.GATEWAY)  # a plain str: the ledger's fast canonical encoder takes only those


KEEP_EXPIRED = timedelta(days=1)  # expired tokens are pruned this long after expiry


class Refusal(Exception):
    """Why a client may not connect: a SQLSTATE and a message for its driver to show.

    `authenticated`: the client proved who it is (its token was issued to that user), so
    the refusal is recorded as that user's; otherwise as an anonymous client's, the name it
    claimed kept in the data. `escalation`: what the client tried beyond its grant
    (`identity`, `encoding`, `server`), for the detectors.
    """

    def __init__(self, code: str, message: str, hint: str = "", *,
                 authenticated: bool = False, escalation: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.authenticated = authenticated
        self.escalation = escalation


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(session: Session, *, grant: Grant, actor: Actor, now: datetime,
                ttl: timedelta) -> tuple[GatewayToken, str]:
    """A connection token for the grantee: returned once, stored as its sha256."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = GatewayToken(token_hash=hash_token(secret), user=grant.user, resource=grant.resource,
                       grant_id=grant.id, created_at=now, expires_at=min(now + ttl, grant.ends_at))
    session.execute(delete(GatewayToken).where(GatewayToken.expires_at < now - KEEP_EXPIRED))
    session.add(row)
    session.flush()
    ledger.record(session, type=EventType.GATEWAY_TOKEN_ISSUED, actor=actor,
                  subject=f"grant:{grant.id}",
                  resource={"name": grant.resource, "role": grant.role},
                  data={"grant_id": grant.id, "token_id": row.id, "user": grant.user,
                        "expires_at": format_time(row.expires_at)}, time=now)
    return row, secret


def authenticate(session: Session, *, policy: Policy, user: str, resource: str, token: str,
                 now: datetime, protocol: str = "postgres", mcp: bool = False) -> Grant:
    """The active grant a client's connection token stands for, or a Refusal saying why.
    `protocol`: the one the client speaks, which must be the resource's; `mcp`: for the MCP
    gateway, which serves the resources with an `mcp:` upstream."""
    spec = policy.resources.get(resource)
    if spec is None:
        raise Refusal("3D000", f'Accord gateway: resource "{resource}" does not exist',
                      "the database name is the Accord resource name")
    if not (spec.mcp is not None if mcp else spec.gateway_reachable):
        raise Refusal("3D000", f"Accord gateway: resource {resource} is not reachable "
                               f"through the gateway")
    if not mcp and spec.gateway_protocol != protocol:
        raise Refusal("3D000", f"Accord gateway: resource {resource} speaks the "
                               f"{spec.gateway_protocol} protocol, not {protocol}",
                      f"`accord connect {resource}` says where to connect")
    row = None
    if token.startswith(TOKEN_PREFIX) and len(token) < 200:
        row = session.execute(select(GatewayToken).where(
            GatewayToken.token_hash == hash_token(token))).scalar_one_or_none()
    if row is None or row.user != user or row.resource != resource:
        raise Refusal("28P01", f'password authentication failed for user "{user}": not a '
                               f"valid Accord connection token for {resource}",
                      f"get one with `accord connect {resource}` (needs an active grant)")
    # From here the client holds a token issued to `user`: it is who it says it is.
    if row.expires_at <= now:
        raise Refusal("28P01", f"Accord connection token expired at "
                               f"{format_time(row.expires_at)}",
                      f"get a new one with `accord connect {resource}`", authenticated=True)
    if not policy.is_principal(user):
        raise Refusal("28000", f'user "{user}" is no longer in accord.yaml', authenticated=True)
    grant = session.get(Grant, row.grant_id)
    status = effective_status(grant, now) if grant is not None else "missing"
    if grant is None or status != GrantStatus.ACTIVE:
        raise Refusal("28000", f"no active grant: grant {row.grant_id} of {user} on {resource} "
                               f"is {status}",
                      f"ask for access with `accord request create {resource} ROLE`",
                      authenticated=True)
    return grant


def record_refusal(session: Session, *, policy: Policy, user: str, resource: str,
                   refusal: Refusal, client: str, now: datetime,
                   grant: Grant | None = None) -> None:
    """A refused gateway login, as the ledger's `gateway.login_refused` (for the detectors).

    The user and database are what the client claimed, cut short. Unless the client proved
    who it is, the actor is anonymous: an unauthenticated client never writes events in a
    real user's name.
    """
    user, resource = user[:64], resource[:64]
    actor = policy.actor(user, _VIA) if refusal.authenticated and policy.is_principal(user) \
        else Actor("anonymous", "unauthenticated", _VIA)
    data: dict[str, Any] = {"user": user, "database": resource, "code": refusal.code,
                            "reason": refusal.message[:500], "client": client}
    if refusal.escalation is not None:
        data["escalation"] = refusal.escalation
    if grant is not None:
        data["grant_id"] = grant.id
    ledger.record(session, type=EventType.GATEWAY_LOGIN_REFUSED, actor=actor,
                  subject=f"grant:{grant.id}" if grant is not None else f"user:{user}",
                  resource={"name": resource, "role": grant.role if grant else None}
                  if resource in policy.resources else None,
                  data=data, time=now)


def record_suppressed(session: Session, *, client: str, count: int, since: datetime,
                      now: datetime) -> None:
    """Refused logins from one client address beyond the per-minute budget, in one event."""
    ledger.record(session, type=EventType.GATEWAY_LOGINS_SUPPRESSED,
                  actor=Actor("anonymous", "unauthenticated", _VIA),
                  subject=f"client:{client[:64]}", resource=None,
                  data={"client": client[:64], "count": count, "since": format_time(since)},
                  time=now)


def grant_states(session: Session, *, ids: Sequence[int]) -> dict[int, tuple[str, datetime]]:
    """Status and end of each grant (one query; the watcher's per-tick read)."""
    if not ids:
        return {}
    rows = session.execute(select(Grant.id, Grant.status, Grant.ends_at)
                           .where(Grant.id.in_(list(ids)))).all()
    return {gid: (status, ends) for gid, status, ends in rows}
