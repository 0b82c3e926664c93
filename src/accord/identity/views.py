"""HTTP API for the caller's identity, the catalog, API tokens and web sessions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from accord.api.deps import Principal, db, known_id, parse_cursor, principal, require_admin, state
from accord.durations import DurationError, parse_duration
from accord.errors import Forbidden, Invalid
from accord.identity import service
from accord.identity import sessions as web_sessions
from accord.identity.models import ApiToken, WebSession
from accord.state import AppState
from accord.web.auth import CACHE as WEB_CACHE

router = APIRouter(prefix="/api/v1", tags=["identity"])


class MeOut(BaseModel):
    user: str
    kind: Literal["user", "agent"] = "user"
    owner: str | None = Field(default=None, description="an agent's: the person it acts for")
    groups: list[str]
    roles: list[str]


class AgentOut(BaseModel):
    name: str
    owner: str
    groups: list[str]
    description: str


class AgentTokenIn(BaseModel):
    name: str = Field(default="", max_length=200, description="a label to recognise it by")
    expires: str | None = Field(default=None, description="lifetime such as 30d; none: never",
                                examples=["30d"])


class ResourceOut(BaseModel):
    name: str
    kind: str
    description: str
    labels: dict[str, str]
    owners: list[str]
    roles: list[str]


class TokenOut(BaseModel):
    id: int
    user: str
    name: str
    prefix: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    kind: Literal["user", "agent"] = Field(default="user", description="issued to a user or "
                                           "to an agent (accord.yaml agents:)")

    @classmethod
    def of(cls, t: ApiToken) -> TokenOut:
        return cls(id=t.id, user=t.user, name=t.name, prefix=t.prefix, created_at=t.created_at,
                   created_by=t.created_by, expires_at=t.expires_at, revoked_at=t.revoked_at,
                   kind="agent" if t.kind == service.AGENT else "user")


class IssuedTokenOut(BaseModel):
    token: TokenOut
    secret: str = Field(description="shown only this once; only its sha256 is stored")


@router.get("/me", response_model=MeOut)
def me(who: Principal = Depends(principal)) -> MeOut:
    """Who the token belongs to, their groups and Accord roles."""
    groups = sorted(who.policy.requester_groups(who.user))
    return MeOut(user=who.user, kind="agent" if who.is_agent else "user", owner=who.owner,
                 groups=groups, roles=who.policy.roles_of(who.user))


@router.get("/agents", response_model=list[AgentOut], tags=["agents"])
def agents(who: Principal = Depends(principal)) -> list[AgentOut]:
    """The agents accord.yaml defines, with the person each acts for."""
    return [AgentOut(name=a.name, owner=a.owner, groups=list(a.groups),
                     description=a.description)
            for a in who.policy.agents.values() if who.policy.is_agent(a.name)]


@router.post("/agents/{agent}/tokens", status_code=201, response_model=IssuedTokenOut,
             tags=["agents"])
def issue_agent_token(
    agent: str,
    body: AgentTokenIn | None = None,
    who: Principal = Depends(principal),
    session: Session = Depends(db),
    st: AppState = Depends(state),
) -> IssuedTokenOut:
    """Issue a token for an agent: its owner or an admin. The secret is in this response
    only."""
    body = body or AgentTokenIn()
    try:
        lifetime = parse_duration(body.expires) if body.expires else None
    except DurationError as exc:
        raise Invalid(str(exc), field="expires") from None
    row, secret = service.issue_for_agent(
        session, policy=who.policy, agent=agent, issuer=who.user, actor=who.caller.actor,
        now=st.now(), expires_in=lifetime, name=body.name)
    out = IssuedTokenOut(token=TokenOut.of(row), secret=secret)
    session.commit()
    return out


@router.get("/resources", response_model=list[ResourceOut], tags=["catalog"])
def resources(who: Principal = Depends(principal)) -> list[ResourceOut]:
    """The catalog: every resource and the roles it offers."""
    return [
        ResourceOut(name=r.name, kind=r.kind, description=r.description, labels=dict(r.labels),
                    owners=list(r.owners), roles=list(r.roles))
        for r in who.policy.resources.values()
    ]


@router.get("/tokens", response_model=list[TokenOut])
def list_tokens(
    user: str | None = None,
    who: Principal = Depends(principal),
    session: Session = Depends(db),
) -> list[TokenOut]:
    """Your tokens (admins: anyone's, with ?user=). Secrets are never shown again."""
    mine = who.policy.agents_of(who.user)
    if user is not None and user != who.user and not who.can_read_all and user not in mine:
        raise Forbidden("only admins and auditors list other users' tokens")
    target = user if user is not None else (None if who.can_read_all else who.user)
    also = mine if user is None and target == who.user else []
    return [TokenOut.of(t) for t in service.list_tokens(session, user=target, also=also)]


@router.delete("/tokens/{token_id}", response_model=TokenOut)
def revoke_token(
    token_id: int,
    who: Principal = Depends(principal),
    session: Session = Depends(db),
    st: AppState = Depends(state),
) -> TokenOut:
    """Revoke a token: your own or your agents', or anyone's as an admin."""
    row = service.revoke(session, token_id=known_id(token_id, "token"), actor=who.caller.actor,
                         now=st.now(), admin=who.is_admin, owner_of=who.policy.owner_of)
    out = TokenOut.of(row)
    session.commit()
    st.tokens.forget(row.id)
    WEB_CACHE.forget_token(row.id)  # its browser sessions ended in that transaction
    return out


class SessionOut(BaseModel):
    """A browser session; never its cookie, nor the cookie's hash."""

    id: int
    user: str
    method: str = Field(description="how it signed in: token, oidc or local (demo)")
    token_id: int | None = Field(description="the API token a `token` session lives by")
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None
    state: Literal["live", "ended", "expired"]

    @classmethod
    def of(cls, row: WebSession, now: datetime) -> SessionOut:
        state: Literal["live", "ended", "expired"] = (
            "ended" if row.ended_at is not None else
            "expired" if row.expires_at <= now else "live")
        return cls(id=row.id, user=row.user, method=row.method, token_id=row.token_id,
                   created_at=row.created_at, expires_at=row.expires_at,
                   ended_at=row.ended_at, state=state)


class SessionPage(BaseModel):
    items: list[SessionOut]
    next_cursor: str | None


@router.get("/sessions", response_model=SessionPage, tags=["sessions"])
def list_sessions(
    user: str | None = None,
    include_ended: bool = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
    who: Principal = Depends(require_admin),
    session: Session = Depends(db),
    st: AppState = Depends(state),
) -> SessionPage:
    """Web sessions, newest first: live ones, or all with `include_ended` (admins)."""
    now = st.now()
    rows = web_sessions.list_sessions(session, now=now, user=user, include_ended=include_ended,
                                      before_id=parse_cursor(cursor), limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return SessionPage(items=[SessionOut.of(r, now) for r in rows],
                       next_cursor=str(rows[-1].id) if more and rows else None)


@router.delete("/sessions/{session_id}", response_model=SessionOut, tags=["sessions"])
def end_session(
    session_id: int,
    who: Principal = Depends(require_admin),
    session: Session = Depends(db),
    st: AppState = Depends(state),
) -> SessionOut:
    """End a web session now (admins); recorded as `web.logout`. Ending an ended or
    expired session changes nothing."""
    now = st.now()
    row = web_sessions.end_by_admin(session, session_id=known_id(session_id, "session"),
                                    actor=who.caller.actor, now=now)
    out = SessionOut.of(row, now)
    session.commit()
    WEB_CACHE.forget(row.digest)
    return out
