"""scim2-server's storage over the directory's rows: reads query them, writes go through
`accord.directory.service.Change` (one per HTTP call), which records every change in the
ledger and applies its consequences.

scim2-server applies PUT and PATCH to the resource `get` returned and hands `update` the
whole new state; `update` turns it into the fields Accord keeps and lets the `Change` work
out what changed (member lists are diffed there too).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from scim2_models import (
    InvalidValueException,
    Meta,
    NotFoundException,
    NotImplementedException,
    PreconditionFailedException,
    Resource,
    ResourceType,
    ResponseParameters,
    SCIMException,
    ScimFilter,
    SearchRequest,
    UniquenessException,
)
from scim2_server.storage import ScimStorage, SearchPage
from sqlalchemy import ColumnElement, func, select, true
from sqlalchemy.orm import Session

from accord.directory.scim.filters import groups_where, users_where
from accord.directory.scim.models import (
    ENTERPRISE_SCHEMA,
    USERS,
    AccordEmail,
    AccordEnterprise,
    AccordGroup,
    AccordManager,
    AccordMember,
    AccordName,
    AccordUser,
    ScimUser,
)
from accord.directory.service import Change, UserFields
from accord.errors import AccordError, Conflict, NotFound
from accord.ledger.events import Actor
from accord.people.models import DirectoryGroup, DirectoryMember, DirectoryUser
from accord.policy.store import PolicyStore


def version(row: DirectoryUser | DirectoryGroup) -> str:
    return f'W/"{row.version}"'


def _text(value: str | None) -> str | None:
    """Entra clears an attribute with "": Accord keeps no empty strings."""
    return value if value else None


SCIM_NAMES = {"user_name": "userName", "external_id": "externalId",
              "display_name": "displayName", "given_name": "name.givenName",
              "family_name": "name.familyName", "email": "emails.value",
              "email_type": "emails.type", "manager_id": "manager", "department": "department",
              "employee_number": "employeeNumber"}


def _check_text(table: Any, values: dict[str, Any]) -> None:
    """Values the columns can hold (PostgreSQL refuses longer ones and NUL characters)."""
    for column, value in values.items():
        if not isinstance(value, str):
            continue
        name = SCIM_NAMES.get(column, column)
        limit = getattr(table.__table__.c[column].type, "length", None)
        if limit is not None and len(value) > limit:
            raise InvalidValueException(detail=f"{name} is longer than {limit} characters")
        if "\x00" in value:
            raise InvalidValueException(detail=f"{name} contains a NUL character")


def _meta(kind: str, row: DirectoryUser | DirectoryGroup) -> Meta:
    return Meta(resource_type=kind, created=row.created_at, last_modified=row.updated_at,
                version=version(row))


# ------------------------------------------------------------------ rows <-> resources


def user_resource(row: DirectoryUser) -> Resource[Any]:
    user = ScimUser(
        id=row.id, external_id=row.external_id, meta=_meta("User", row),
        user_name=row.user_name, display_name=row.display_name, active=row.active,
        name=(AccordName(given_name=row.given_name, family_name=row.family_name)
              if row.given_name or row.family_name else None),
        emails=[AccordEmail(value=row.email, type=row.email_type)] if row.email else None,
    )
    if row.manager_id or row.department or row.employee_number:
        user[AccordEnterprise] = AccordEnterprise(
            schemas=[ENTERPRISE_SCHEMA],
            employee_number=row.employee_number, department=row.department,
            manager=(AccordManager(value=row.manager_id, ref=f"Users/{row.manager_id}")
                     if row.manager_id else None))
    return user


def user_fields(resource: Resource[Any], current: DirectoryUser | None) -> UserFields:
    """What Accord keeps of a User: one address (the primary one, else the first), and
    `active` as stored when the provider leaves it out (true for a new person)."""
    assert isinstance(resource, AccordUser)
    if not resource.user_name:
        raise InvalidValueException(detail="userName is required")
    emails = [e for e in resource.emails or [] if e.value]
    email = next((e for e in emails if _primary(e)), emails[0] if emails else None)
    ext = resource[AccordEnterprise]
    manager = ext.manager if ext is not None else None
    active = resource.active
    if active is None:
        active = current.active if current is not None else True
    fields = UserFields(
        user_name=resource.user_name,
        external_id=_text(resource.external_id),
        display_name=_text(resource.display_name),
        given_name=_text(resource.name.given_name) if resource.name else None,
        family_name=_text(resource.name.family_name) if resource.name else None,
        email=email.value if email else None,
        email_type=_text(str(email.type) if email.type else None) if email else None,
        active=active,
        manager_id=_text(manager.value) if manager else None,
        department=_text(ext.department) if ext else None,
        employee_number=_text(ext.employee_number) if ext else None,
    )
    _check_text(DirectoryUser, vars(fields))
    return fields


def _primary(email: AccordEmail) -> bool:
    flag = next((v for k, v in email.unknown_attributes.items() if k.casefold() == "primary"),
                False)
    return flag is True or (isinstance(flag, str) and flag.casefold() == "true")


def group_resource(row: DirectoryGroup, members: list[str] | None) -> AccordGroup:
    """`members`: their ids, or None when the response leaves them out."""
    return AccordGroup(
        id=row.id, external_id=row.external_id, meta=_meta("Group", row),
        display_name=row.display_name,
        members=None if members is None else [
            AccordMember(value=uid, ref=f"Users/{uid}") for uid in members] or None,
    )


def _member_ids(resource: Resource[Any]) -> set[str]:
    assert isinstance(resource, AccordGroup)
    if resource.member_ids is not None:  # read as plain ids (protocol.read_creation)
        return set(resource.member_ids)
    ids = set()
    for m in resource.members or []:
        if not m.value:
            raise InvalidValueException(detail="a member needs a value (the user's id)")
        ids.add(m.value)
    return ids


def _check_group(resource: AccordGroup) -> str:
    """The group's displayName, once its values are known to fit."""
    if not resource.display_name:
        raise InvalidValueException(detail="displayName is required")
    _check_text(DirectoryGroup, {"display_name": resource.display_name,
                                 "external_id": resource.external_id})
    return resource.display_name


def _wants_members(parameters: ResponseParameters[Any] | None) -> bool:
    if parameters is None:
        return True
    def named(paths: Any) -> set[str]:
        return {str(p).rsplit(":", 1)[-1].split(".")[0].casefold() for p in paths or []}
    if "members" in named(parameters.excluded_attributes):
        return False
    return not parameters.attributes or "members" in named(parameters.attributes)


def scim_exception(exc: AccordError) -> SCIMException:
    """A refusal of the directory's as a SCIM error (RFC 7644 §3.12)."""
    if isinstance(exc, Conflict):
        return UniquenessException(detail=exc.detail)
    if isinstance(exc, NotFound):
        return NotFoundException(detail=exc.detail)
    return InvalidValueException(detail=exc.detail)  # Invalid, and anything else refused


@contextmanager
def _scim_errors() -> Iterator[None]:
    try:
        yield
    except AccordError as exc:
        raise scim_exception(exc) from exc


class SqlStorage(ScimStorage):
    """One HTTP call's view of the directory. `write` calls hold a `Change` and read the
    resource they change FOR UPDATE, so it cannot change before it is written back."""

    def __init__(self, session: Session, *, store: PolicyStore, actor: Actor, now: datetime,
                 write: bool) -> None:
        self.session = session
        self.dialect = session.get_bind().dialect.name
        self.change = Change(session, store=store, actor=actor, now=now) if write else None
        self._lock = True if write else None  # None: a read may use the identity map
        self.wrote = False

    def _writer(self) -> Change:
        if self.change is None:
            raise RuntimeError("a write in a read-only SCIM call")
        self.wrote = True
        return self.change

    # ------------------------------------------------------------------- reads

    def _user_row(self, user_id: str) -> DirectoryUser:
        # A write call locks what it read until commit: a PUT or PATCH applies to the
        # version it read, and concurrent writes to one resource take turns.
        row = self.session.get(DirectoryUser, user_id, with_for_update=self._lock)
        if row is None:
            raise NotFoundException(detail=f"no user has the id {user_id}")
        return row

    def _group_row(self, group_id: str) -> DirectoryGroup:
        row = self.session.get(DirectoryGroup, group_id, with_for_update=self._lock)
        if row is None:
            raise NotFoundException(detail=f"no group has the id {group_id}")
        return row

    def _users(self, rows: list[DirectoryUser]) -> list[Resource[Any]]:
        return [user_resource(r) for r in rows]

    def _groups(self, rows: list[DirectoryGroup], *,
                members: bool) -> list[Resource[Any]]:
        if not members:
            return [group_resource(r, None) for r in rows]
        of: dict[str, list[str]] = {r.id: [] for r in rows}
        if rows:
            found = self.session.execute(
                select(DirectoryMember.group_id, DirectoryMember.user_id)
                .where(DirectoryMember.group_id.in_(list(of)))
                .order_by(DirectoryMember.group_id, DirectoryMember.added_at,
                          DirectoryMember.user_id))
            for gid, uid in found:
                of[gid].append(uid)
        return [group_resource(r, of[r.id]) for r in rows]

    def get(self, resource_type: ResourceType, resource_id: str, *,
            response_parameters: ResponseParameters[Any] | None = None) -> Resource[Any]:
        if resource_type.id == USERS.id:
            return self._users([self._user_row(resource_id)])[0]
        return self._groups([self._group_row(resource_id)],
                            members=_wants_members(response_parameters))[0]

    def search(self, resource_types: list[ResourceType], search_request: SearchRequest[Any],
               *, position: Any = None) -> SearchPage:
        if len(resource_types) != 1:
            raise NotImplementedException(detail="search /Users or /Groups, not the root")
        users = resource_types[0].id == USERS.id
        flt = search_request.filter
        where: ColumnElement[bool] = true()
        if flt is not None:
            assert isinstance(flt, ScimFilter)
            where = (users_where if users else groups_where)(flt, dialect=self.dialect)
        table: Any = DirectoryUser if users else DirectoryGroup
        total = self.session.execute(
            select(func.count()).select_from(table).where(where)).scalar_one()
        count = search_request.count
        start = max(search_request.start_index or 1, 1)
        if count == 0 or start > total:
            return SearchPage(total=total, resources=[])
        query = select(table).where(where).order_by(table.created_at, table.id) \
            .offset(start - 1)
        if count is not None:
            query = query.limit(count)
        rows = list(self.session.execute(query).scalars())
        if users:
            return SearchPage(total=total, resources=self._users(rows))
        return SearchPage(total=total, resources=self._groups(
            rows, members=_wants_members(search_request)))

    # ------------------------------------------------------------------ writes

    def create(self, resource_type: ResourceType, resource: Resource[Any]) -> Resource[Any]:
        change = self._writer()
        with _scim_errors():
            if resource_type.id == USERS.id:
                user = change.create_user(user_fields(resource, None))
                return self._users([user])[0]
            assert isinstance(resource, AccordGroup)
            members = _member_ids(resource)
            group = change.create_group(_check_group(resource),
                                        external_id=_text(resource.external_id),
                                        member_ids=members)
            created = group_resource(group, None)
            # All added at once: the order a read gives them (added_at, then id).
            created.set_member_ids(sorted(members))
            return created

    def _check(self, row: DirectoryUser | DirectoryGroup, expected: str | None) -> None:
        if expected is not None and version(row) != expected:
            raise PreconditionFailedException(
                detail=f"the resource is at version {version(row)}, not {expected}")

    def update(self, resource_type: ResourceType, resource: Resource[Any], *,
               expected_version: str | None = None) -> Resource[Any]:
        change = self._writer()
        assert resource.id is not None
        with _scim_errors():
            if resource_type.id == USERS.id:
                user = self._user_row(resource.id)
                self._check(user, expected_version)
                change.update_user(user, user_fields(resource, user))
                return self._users([user])[0]
            assert isinstance(resource, AccordGroup)
            group = self._group_row(resource.id)
            self._check(group, expected_version)
            change.update_group(group, display_name=_check_group(resource),
                                external_id=_text(resource.external_id))
            change.set_members(group, _member_ids(resource))
            return self._groups([group], members=True)[0]

    def delete(self, resource_type: ResourceType, resource_id: str, *,
               expected_version: str | None = None) -> None:
        change = self._writer()
        with _scim_errors():
            if resource_type.id == USERS.id:
                user = self._user_row(resource_id)
                self._check(user, expected_version)
                change.delete_user(user)
            else:
                group = self._group_row(resource_id)
                self._check(group, expected_version)
                change.delete_group(group)
