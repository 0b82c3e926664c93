"""Reading the directory as Accord sees it: the file's people and groups beside the
provider's, each membership with where it came from (`file`, `scim`, `oidc`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from accord.errors import NotFound
from accord.grants.models import Grant, GrantStatus
from accord.people.models import DirectoryGroup, DirectoryMember, DirectoryUser
from accord.policy.engine import Policy


@dataclass
class Membership:
    group: str
    source: str  # file | scim | oidc


@dataclass
class Member:
    user: str
    source: str


@dataclass
class PersonView:
    name: str
    source: str  # file | scim | oidc | file+scim | file+oidc
    active: bool
    user_name: str | None = None  # as the provider spells it
    display_name: str | None = None
    email: str | None = None
    external_id: str | None = None
    manager: str | None = None
    id: str | None = None  # the SCIM id
    groups: list[Membership] = field(default_factory=list)
    grants: list[dict[str, object]] = field(default_factory=list)
    updated_at: datetime | None = None


@dataclass
class GroupView:
    name: str
    source: str
    members: int
    id: str | None = None
    external_id: str | None = None
    people: list[Member] = field(default_factory=list)  # when the group is shown whole


def _view(policy: Policy, name: str, row: DirectoryUser | None,
          managers: dict[str, str]) -> PersonView:
    file_spec = policy.loaded.spec.user_specs().get(name)
    if row is None:
        assert file_spec is not None
        return PersonView(name=name, source="file", active=True, email=file_spec.email,
                          display_name=file_spec.name, manager=file_spec.manager)
    return PersonView(
        name=name, source=f"file+{row.source}" if file_spec is not None else row.source,
        active=row.active, user_name=row.user_name, display_name=row.display_name
        or (file_spec.name if file_spec else None), email=row.email or
        (file_spec.email if file_spec else None), external_id=row.external_id,
        manager=managers.get(row.manager_id or "") or (file_spec.manager if file_spec else None),
        id=row.id, updated_at=row.updated_at)


def list_people(session: Session, *, policy: Policy, after: str | None, limit: int,
                source: str | None = None, active: bool | None = None) -> list[PersonView]:
    """People by name (keyset: names after `after`), file and provider together."""
    q = select(DirectoryUser).order_by(DirectoryUser.name).limit(limit)
    if after:
        q = q.where(DirectoryUser.name > after)
    if active is not None:
        q = q.where(DirectoryUser.active.is_(active))
    rows = {} if source == "file" else {
        r.name: r for r in session.execute(q).scalars()
        if source is None or r.source == source}
    names = set(rows)
    if source in (None, "file"):
        names |= {n for n in policy.loaded.spec.user_specs()
                  if (after is None or n > after) and active is not False}
    picked = sorted(names)[:limit]
    missing = [n for n in picked if n not in rows and policy.directory.users.get(n)]
    if missing:  # file people the provider also knows, beyond this page of its rows
        rows.update({r.name: r for r in session.execute(
            select(DirectoryUser).where(DirectoryUser.name.in_(missing))).scalars()})
    managers = _names(session, {r.manager_id for r in rows.values() if r.manager_id})
    out = [_view(policy, n, rows.get(n), managers) for n in picked]
    if active is not None:
        out = [p for p in out if p.active is active]
    return out


def person(session: Session, *, policy: Policy, name: str, now: datetime) -> PersonView:
    """One person: groups with their source, manager, live grants."""
    row = session.execute(select(DirectoryUser).where(
        DirectoryUser.name == name)).scalar_one_or_none()
    if row is None and name not in policy.loaded.spec.user_specs():
        raise NotFound(f'nobody is called "{name}" in accord.yaml or the directory')
    managers = _names(session, {row.manager_id} if row and row.manager_id else set())
    view = _view(policy, name, row, managers)
    groups = [Membership(g, "file") for g, members in policy.loaded.spec.groups.items()
              if name in members]
    if row is not None:
        groups += [Membership(g, src) for g, src in session.execute(
            select(DirectoryGroup.display_name, DirectoryMember.source)
            .join(DirectoryMember, DirectoryMember.group_id == DirectoryGroup.id)
            .where(DirectoryMember.user_id == row.id)).all()]
    view.groups = sorted(groups, key=lambda m: m.group)
    view.grants = [
        {"id": g.id, "resource": g.resource, "role": g.role, "status": g.status,
         "ends_at": g.ends_at}
        for g in session.execute(select(Grant).where(
            Grant.user == name, Grant.status.in_([GrantStatus.ACTIVE, GrantStatus.PROVISIONING]),
            Grant.ends_at > now).order_by(Grant.id)).scalars()]
    return view


def list_groups(session: Session, *, policy: Policy) -> list[GroupView]:
    counts = dict(session.execute(
        select(DirectoryMember.group_id, func.count()).group_by(DirectoryMember.group_id)).all())
    out = [GroupView(name=g, source="file", members=len(m))
           for g, m in policy.loaded.spec.groups.items()]
    out += [GroupView(name=r.display_name, source=r.source, members=counts.get(r.id, 0), id=r.id,
                      external_id=r.external_id)
            for r in session.execute(select(DirectoryGroup)).scalars()]
    return sorted(out, key=lambda g: g.name.casefold())


def group(session: Session, *, policy: Policy, name: str) -> GroupView:
    members = policy.loaded.spec.groups.get(name)
    if members is not None:
        return GroupView(name=name, source="file", members=len(members),
                         people=[Member(m, "file") for m in sorted(members)])
    row = session.execute(select(DirectoryGroup).where(
        DirectoryGroup.display_name == name)).scalar_one_or_none()
    if row is None:
        raise NotFound(f'no group is called "{name}" in accord.yaml or the directory')
    people = [Member(n, src) for n, src in session.execute(
        select(DirectoryUser.name, DirectoryMember.source)
        .join(DirectoryMember, DirectoryMember.user_id == DirectoryUser.id)
        .where(DirectoryMember.group_id == row.id).order_by(DirectoryUser.name)).all()]
    return GroupView(name=row.display_name, source=row.source, members=len(people), id=row.id,
                     external_id=row.external_id, people=people)


def _names(session: Session, ids: set[str]) -> dict[str, str]:
    if not ids:
        return {}
    return dict(session.execute(select(DirectoryUser.id, DirectoryUser.name)
                                .where(DirectoryUser.id.in_(list(ids)))).all())
