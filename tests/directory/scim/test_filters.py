"""The SQL a filter becomes selects exactly what scim2-models' own evaluator
(`ScimFilter.match`) selects from the same resources, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from scim2_models import ScimFilter
from sqlalchemy import select

from accord.db import transaction
from accord.directory.scim.filters import groups_where, users_where
from accord.directory.scim.models import ENTERPRISE_SCHEMA, ScimGroup, ScimUser
from accord.directory.scim.storage import group_resource, user_resource
from accord.directory.service import Change, UserFields
from accord.ledger.events import Actor
from accord.people.models import DirectoryGroup, DirectoryMember, DirectoryUser
from tests.directory.scim.conftest import Scim

PEOPLE = [
    UserFields(user_name="Ann@Example.com", external_id="Ext-1", display_name="Ann 50% Off",
               email="Ann@Example.COM", email_type="work", given_name="Ann", family_name="Lee",
               department="R&D"),
    UserFields(user_name="bob_smith", external_id="ext-2", active=False,
               email="bob@corp.local", email_type="home", employee_number="007"),
    UserFields(user_name="cat", display_name="Cat", email="cat_x@corp.local"),
    UserFields(user_name="dan", external_id="", display_name=""),
    UserFields(user_name="eve", email="eve@x.test", display_name="100%_sure"),
]

USER_FILTERS = [
    'userName eq "ANN@example.com"', 'userName ne "cat"', 'userName co "_"', 'userName sw "B"',
    'userName ew ".COM"', 'userName gt "c"', 'userName le "cat"',
    'displayName co "50%"', 'displayName co "%_"', 'displayName co "_"', 'displayName pr',
    'displayName eq "cat"', 'displayName ne "cat"', 'not (displayName pr)',
    'externalId eq "ext-1"', 'externalId eq "Ext-1"', 'externalId sw "EXT"', 'externalId sw "ext"',
    'externalId ew "-1"', 'externalId co "XT"', 'externalId co "xt"', 'externalId ne "ext-2"',
    'externalId pr', 'not (externalId pr)',
    'emails.value eq "ann@example.com"', 'emails co "corp"', 'emails.value ew ".local"',
    'emails pr', 'emails.value ne "eve@x.test"', 'emails.type eq "home"', 'emails.type ne "home"',
    'emails[type eq "work" and value co "ANN"]', 'emails[type eq "home"]',
    'emails[not (type eq "home")]', 'emails[value sw "cat_"]', 'emails[type pr]',
    'active eq false', 'active eq true', 'active ne true', 'active pr',
    'active eq true and (emails pr or userName eq "cat")',
    'name.familyName eq "lee" or name.givenName sw "x"', 'name pr', 'not (name.givenName pr)',
    'not (active eq true) or userName eq "cat"', 'not (not (userName sw "a"))',
    f'{ENTERPRISE_SCHEMA}:department eq "r&d"', f'{ENTERPRISE_SCHEMA}:employeeNumber pr',
    f'{ENTERPRISE_SCHEMA}:manager pr', f'{ENTERPRISE_SCHEMA}:manager.value ne "x"',
]

GROUP_FILTERS = [
    'displayName eq "ENGINEERING"', 'displayName co "50%"', 'displayName sw "e"',
    'externalId pr', 'externalId ne "g-1"', 'members pr', 'not (members pr)',
    'members[value pr]', 'displayName ew "s" and members pr',
]


@pytest.fixture
def rows(scim: Scim) -> dict[str, Any]:
    st = scim.env.st
    with transaction(st.sessions) as session:
        change = Change(session, store=st.policies, actor=Actor.scim("test"), now=st.now())
        users = [change.create_user(f) for f in PEOPLE]
        change.update_user(users[2], UserFields(**{**vars(PEOPLE[2]),
                                                    "manager_id": users[0].id}))
        change.create_group("Engineering", external_id="g-1",
                            member_ids={users[0].id, users[1].id})
        change.create_group("Ops", member_ids={users[2].id})
        change.create_group("Empty 50%s")
        change.finish()
    change.after_commit()
    return {"users": [u.id for u in users]}


def _user_filters(rows: dict[str, Any]) -> list[str]:
    ann, bob = rows["users"][0], rows["users"][1]
    return [*USER_FILTERS, f'id eq "{bob}"', f'id ne "{bob}"',
            f'{ENTERPRISE_SCHEMA}:manager.value eq "{ann}"']


def test_user_filters_match_scim2_models(scim: Scim, rows: dict[str, Any]) -> None:
    with scim.env.st.sessions() as session:
        dialect = session.get_bind().dialect.name
        everyone = list(session.execute(select(DirectoryUser)).scalars())
        resources = {u.id: user_resource(u) for u in everyone}
        selections = set()
        for text in _user_filters(rows):
            flt = ScimFilter[ScimUser](text)
            in_sql = set(session.execute(select(DirectoryUser.id).where(
                users_where(flt, dialect=dialect))).scalars())
            in_memory = {uid for uid, r in resources.items() if flt.match(r)}
            assert in_sql == in_memory, text
            selections.add(frozenset(in_sql))
    assert len(selections) >= 15  # the filters tell the people apart in many ways


def test_group_filters_match_scim2_models(scim: Scim, rows: dict[str, Any]) -> None:
    ann, bob, cat = rows["users"][:3]
    texts = [*GROUP_FILTERS, f'members[value eq "{cat}"]', f'members eq "{ann}"',
             f'members.value ne "{ann}"', f'members[value eq "{ann}" or value eq "{cat}"]',
             f'members co "{bob[:8]}"', f'not (members eq "{bob}")']
    with scim.env.st.sessions() as session:
        dialect = session.get_bind().dialect.name
        groups = list(session.execute(select(DirectoryGroup)).scalars())
        members: dict[str, list[str]] = {g.id: [] for g in groups}
        for gid, uid in session.execute(select(DirectoryMember.group_id,
                                               DirectoryMember.user_id)):
            members[gid].append(uid)
        resources = {g.id: group_resource(g, members[g.id]) for g in groups}
        for text in texts:
            flt = ScimFilter[ScimGroup](text)
            in_sql = set(session.execute(select(DirectoryGroup.id).where(
                groups_where(flt, dialect=dialect))).scalars())
            in_memory = {gid for gid, r in resources.items() if flt.match(r)}
            assert in_sql == in_memory, text


def test_filter_values_are_bound_parameters(scim: Scim) -> None:
    flt = ScimFilter[ScimUser]('userName eq "x\' OR 1=1 --" or emails co "%\\\\_"')
    where = users_where(flt, dialect="postgresql")
    sql = str(select(DirectoryUser.id).where(where).compile())
    assert "1=1" not in sql and "%" not in sql.replace("'%'", "")
    params = select(DirectoryUser.id).where(where).compile().params
    assert "x' or 1=1 --" in params.values()
