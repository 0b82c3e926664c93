"""HTTP API for the caller's identity, the catalog, and API tokens."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends
from pydantic import BaseModel
from sqlalchemy.orm import Session

from accord.api.deps import AppState, Principal, db, known_id, principal, state
from accord.errors import Forbidden
from accord.identity import service
from accord.identity.models import ApiToken

router = APIRouter(prefix="/api/v1", tags=["identity"])


class MeOut(BaseModel):
    user: str
    groups: list[str]
    roles: list[str]


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

    @classmethod
    def of(cls, t: ApiToken) -> TokenOut:
        return cls(id=t.id, user=t.user, name=t.name, prefix=t.prefix, created_at=t.created_at,
                   created_by=t.created_by, expires_at=t.expires_at, revoked_at=t.revoked_at)


@router.get("/me", response_model=MeOut)
def me(who: Principal = Depends(principal)) -> MeOut:
    """Who the token belongs to, their groups and Accord roles."""
    groups = sorted(who.policy.groups_of.get(who.user, frozenset()))
    return MeOut(user=who.user, groups=groups, roles=who.policy.roles_of(who.user))


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
    if user is not None and user != who.user and not who.can_read_all:
        raise Forbidden("only admins and auditors list other users' tokens")
    target = user if user is not None else (None if who.can_read_all else who.user)
    return [TokenOut.of(t) for t in service.list_tokens(session, user=target)]


@router.delete("/tokens/{token_id}", response_model=TokenOut)
def revoke_token(
    token_id: int,
    who: Principal = Depends(principal),
    session: Session = Depends(db),
    st: AppState = Depends(state),
) -> TokenOut:
    """Revoke a token: your own, or anyone's as an admin."""
    row = service.revoke(session, token_id=known_id(token_id, "token"), actor=who.caller.actor,
                         now=st.now(),
                         admin=who.is_admin)
    out = TokenOut.of(row)
    session.commit()
    st.tokens.forget(row.id)
    return out
