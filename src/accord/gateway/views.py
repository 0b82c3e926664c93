"""HTTP API: connection tokens for the gateway (returned once)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.api.deps import Principal, db, known_id, principal, state
from accord.errors import Conflict, Invalid, NotFound
from accord.gateway import tokens
from accord.gateway.protocols import connection_info
from accord.grants.models import Grant, GrantStatus
from accord.grants.service import effective_status
from accord.ledger.events import Actor
from accord.state import AppState

router = APIRouter(prefix="/api/v1", tags=["gateway"])


class ConnectIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    resource: str = Field(min_length=1, max_length=64, examples=["orders-db"])
    role: str | None = Field(default=None, max_length=64,
                             description="which grant, when you hold several on the resource")


class ConnectOut(BaseModel):
    token: str = Field(description="the password for the gateway; shown once")
    expires_at: datetime = Field(description="connect before this; sessions then last as "
                                             "long as the grant")
    grant_id: int
    user: str
    resource: str
    role: str
    host: str
    port: int
    database: str
    sslmode: str
    protocol: str = Field(description="postgres or mysql: what the resource speaks")
    dsn: str
    command: str = Field(description="a ready command line (psql or mariadb)")
    psql: str = Field(description="the psql command line (empty for a MySQL resource)")


def issue(session: Session, st: AppState, actor: Actor, grant: Grant) -> ConnectOut:
    """A connection token for `grant` (the caller checked it is the actor's own), with the
    DSN and a psql or mariadb line; the API and the web page both hand it out this way.
    Never commits."""
    spec = st.policies.current.loaded.spec.gateway
    if spec is None:
        raise Conflict("the gateway is not configured (no `gateway:` in accord.yaml)")
    resource = st.policies.current.resources.get(grant.resource)
    if resource is None or not resource.gateway_reachable:
        raise Conflict(f"resource {grant.resource} is not reachable through the gateway")
    now = st.now()
    status = effective_status(grant, now)
    if status != GrantStatus.ACTIVE:
        raise Conflict(f"grant {grant.id} is {status}")
    protocol = resource.gateway_protocol
    info = connection_info(spec, user=grant.user, resource=grant.resource, protocol=protocol)
    if info is None:
        raise Conflict(f"resource {grant.resource} speaks the {protocol} protocol, which the "
                       f"gateway does not serve (no `gateway.{protocol}` in accord.yaml)")
    row, token = tokens.issue_token(session, grant=grant, actor=actor, now=now,
                                     ttl=spec.token_ttl)
    command = info.command(token)
    out = ConnectOut(token=token, expires_at=row.expires_at, grant_id=grant.id,
                     user=grant.user, resource=grant.resource, role=grant.role, host=info.host,
                     port=info.port, database=info.database, sslmode=info.sslmode,
                     protocol=protocol, dsn=info.dsn(token), command=command,
                     psql=command if info.client == "psql" else "")
    return out


@router.post("/grants/{grant_id}/connect", response_model=ConnectOut)
def connect_grant(
    grant_id: int,
    who: Principal = Depends(principal),
    session: Session = Depends(db),
    st: AppState = Depends(state),
) -> ConnectOut:
    """A short-lived connection token for one of your active grants, with a ready DSN."""
    grant = session.get(Grant, known_id(grant_id, "grant"))
    if grant is None or grant.user != who.user:
        raise NotFound(f"grant {grant_id} does not exist or is not yours")
    out = issue(session, st, who.caller.actor, grant)
    session.commit()
    return out


@router.post("/connect", response_model=ConnectOut)
def connect(
    body: ConnectIn,
    who: Principal = Depends(principal),
    session: Session = Depends(db),
    st: AppState = Depends(state),
) -> ConnectOut:
    """A connection token for your active grant on a resource (name the role if you hold
    several)."""
    now = st.now()
    q = select(Grant).where(Grant.user == who.user, Grant.resource == body.resource,
                            Grant.status == GrantStatus.ACTIVE, Grant.ends_at > now)
    if body.role:
        q = q.where(Grant.role == body.role)
    grants = list(session.execute(q.order_by(Grant.ends_at.desc())).scalars())
    if not grants:
        what = f"{body.resource} as {body.role}" if body.role else body.resource
        raise NotFound(f"you have no active grant on {what}; ask with "
                       f"`accord request create {body.resource} ROLE`")
    roles = sorted({g.role for g in grants})
    if len(roles) > 1:
        raise Invalid(f"you hold several roles on {body.resource} ({', '.join(roles)}); "
                      f"name one", field="role")
    out = issue(session, st, who.caller.actor, grants[0])
    session.commit()
    return out
