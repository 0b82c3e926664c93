"""HTTP API of the MCP gateway: a connection token for an active grant on an MCP resource."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.api.deps import Principal, db, principal, state
from accord.errors import Invalid, NotFound
from accord.gateway import tokens
from accord.gateway.mcp.proxy import PATH
from accord.gateway.views import ConnectIn
from accord.grants.models import Grant, GrantStatus
from accord.state import AppState

router = APIRouter(prefix="/api/v1/mcp", tags=["gateway"])


class McpConnectOut(BaseModel):
    url: str = Field(description="the gateway's MCP endpoint for the resource")
    token: str = Field(description="its bearer token, shown once; valid as long as the grant")
    expires_at: datetime
    grant_id: int
    user: str
    resource: str
    role: str


@router.post("/connect", response_model=McpConnectOut)
def connect(
    body: ConnectIn,  # the same question as a database's: which grant
    request: Request,
    who: Principal = Depends(principal),
    session: Session = Depends(db),
    st: AppState = Depends(state),
) -> McpConnectOut:
    """A connection token for your active grant on an MCP resource (kind `mcp`), and the
    URL to use it at. Each call through the gateway checks the grant again."""
    spec = who.policy.resources.get(body.resource)
    if spec is None or spec.mcp is None:
        raise NotFound(f"{body.resource} is not an MCP resource (kind mcp) in accord.yaml")
    now = st.now()
    q = select(Grant).where(Grant.user == who.user, Grant.resource == body.resource,
                            Grant.status == GrantStatus.ACTIVE, Grant.ends_at > now)
    if body.role:
        q = q.where(Grant.role == body.role)
    grants = list(session.execute(q.order_by(Grant.ends_at.desc())).scalars())
    if not grants:
        raise NotFound(f"you have no active grant on {body.resource}; ask for one first")
    if len({g.role for g in grants}) > 1:
        raise Invalid(f"you hold several roles on {body.resource}; name one", field="role")
    grant = grants[0]
    row, token = tokens.issue_token(session, grant=grant, actor=who.caller.actor, now=now,
                                    ttl=grant.ends_at - now)
    out = McpConnectOut(url=str(request.base_url).rstrip("/") + PATH.format(
        resource=grant.resource), token=token, expires_at=row.expires_at, grant_id=grant.id,
        user=grant.user, resource=grant.resource, role=grant.role)
    session.commit()
    return out
