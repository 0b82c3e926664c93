"""HTTP API over the directory (auditors and admins): people and groups from accord.yaml and
the identity provider, each membership with its source."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel
from sqlalchemy.orm import Session

from accord.api.deps import Principal, db, require_reader, state
from accord.directory import queries
from accord.state import AppState

router = APIRouter(prefix="/api/v1/directory", tags=["directory"])

Source = Literal["file", "scim", "oidc"]


class MembershipOut(BaseModel):
    group: str
    source: str


class GrantBrief(BaseModel):
    id: int
    resource: str
    role: str
    status: str
    ends_at: datetime


class PersonOut(BaseModel):
    name: str
    source: str
    active: bool
    user_name: str | None
    display_name: str | None
    email: str | None
    external_id: str | None
    manager: str | None
    id: str | None
    groups: list[MembershipOut]
    grants: list[GrantBrief]
    updated_at: datetime | None


class PeoplePage(BaseModel):
    items: list[PersonOut]
    next_cursor: str | None


class MemberOut(BaseModel):
    user: str
    source: str


class GroupOut(BaseModel):
    name: str
    source: str
    members: int
    id: str | None
    external_id: str | None
    people: list[MemberOut]


def _person(p: queries.PersonView) -> PersonOut:
    body: dict[str, Any] = asdict(p)
    return PersonOut(**body)


def _group(g: queries.GroupView) -> GroupOut:
    return GroupOut(name=g.name, source=g.source, members=g.members, id=g.id,
                    external_id=g.external_id,
                    people=[MemberOut(user=m.user, source=m.source) for m in g.people])


@router.get("/users", response_model=PeoplePage)
def list_users(
    who: Principal = Depends(require_reader),
    session: Session = Depends(db),
    source: Source | None = None,
    active: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(description="the last name of the previous page")] = None,
) -> PeoplePage:
    """People by name, from accord.yaml and the identity provider (auditors and admins)."""
    rows = queries.list_people(session, policy=who.policy, after=cursor, limit=limit + 1,
                               source=source, active=active)
    more = len(rows) > limit
    rows = rows[:limit]
    return PeoplePage(items=[_person(p) for p in rows],
                      next_cursor=rows[-1].name if more and rows else None)


@router.get("/users/{name}", response_model=PersonOut)
def show_user(name: str, who: Principal = Depends(require_reader),
              session: Session = Depends(db), st: AppState = Depends(state)) -> PersonOut:
    """One person: their groups with each one's source, their manager, their live grants."""
    return _person(queries.person(session, policy=who.policy, name=name, now=st.now()))


@router.get("/groups", response_model=list[GroupOut])
def list_groups(who: Principal = Depends(require_reader),
                session: Session = Depends(db)) -> list[GroupOut]:
    """Every group with its source and size."""
    return [_group(g) for g in queries.list_groups(session, policy=who.policy)]


@router.get("/groups/{name}", response_model=GroupOut)
def show_group(name: str, who: Principal = Depends(require_reader),
               session: Session = Depends(db)) -> GroupOut:
    """One group with its members, each with where the membership came from."""
    return _group(queries.group(session, policy=who.policy, name=name))
