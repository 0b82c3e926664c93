"""`render` writes Users and Groups out by hand for speed: it must give, for every shape the
storage builds, exactly what scim2-server's publish and dump give."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from scim2_models import Context
from scim2_server.service import ScimService

from accord.directory.scim import render
from accord.directory.scim.protocol import SERVICE
from accord.directory.scim.storage import group_resource, user_resource
from accord.people.models import DirectoryGroup, DirectoryUser

BASE = "https://accord.example.com/scim/v2"
text = st.none() | st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]),
                           min_size=1, max_size=12)
times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                     timezones=st.just(UTC))
ids = st.uuids().map(str)


def library(resource: Any) -> dict[str, Any]:
    """What scim2-server answers to a creation: its publish, then its dump."""
    published = ScimService.publish(SERVICE, BASE, resource)
    return ScimService.resource_response(published, Context.RESOURCE_CREATION_RESPONSE).body


@st.composite
def users(draw: st.DrawFn) -> DirectoryUser:
    email = draw(st.none() | st.emails())
    return DirectoryUser(
        id=draw(ids), user_name=draw(st.from_regex(r"[a-z][a-z0-9.]{0,10}", fullmatch=True)),
        external_id=draw(text), display_name=draw(text), given_name=draw(text),
        family_name=draw(text), email=email,
        email_type=draw(st.sampled_from([None, "work", "home", "other", "corp"]))
        if email else None,
        active=draw(st.booleans()), manager_id=draw(st.none() | ids),
        department=draw(text), employee_number=draw(text), source="scim",
        version=draw(st.integers(1, 10_000)), created_at=draw(times), updated_at=draw(times))


@settings(max_examples=300, deadline=None)
@given(users())
def test_a_user_renders_as_the_library_publishes_it(row: DirectoryUser) -> None:
    row.name = row.user_name
    assert render.body(user_resource(row), BASE) == library(user_resource(row))


@settings(max_examples=100, deadline=None)
@given(ids, text, st.lists(ids, max_size=50, unique=True), times, st.integers(1, 99))
def test_a_created_group_renders_as_the_library_publishes_it(
        gid: str, external_id: str | None, members: list[str], when: datetime,
        version: int) -> None:
    row = DirectoryGroup(id=gid, display_name="team", name_key="team", external_id=external_id,
                         source="scim", version=version, created_at=when, updated_at=when)
    created = group_resource(row, None)
    created.set_member_ids(sorted(members))  # as storage answers a creation
    assert render.body(created, BASE) == library(group_resource(row, sorted(members)))
    # A group read back (member objects, published or not) renders the same.
    assert render.body(group_resource(row, sorted(members)), BASE) == render.body(created, BASE)


def test_the_creation_answer_carries_location_and_etag() -> None:
    when = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    row = DirectoryUser(id="u-1", user_name="ada", name="ada", active=True, source="scim",
                        version=3, created_at=when, updated_at=when)
    response = SERVICE.creation_response(BASE, user_resource(row))
    assert int(response.status) == 201
    assert response.headers["Location"] == f"{BASE}/Users/u-1"
    assert response.headers["Content-Location"] == f"{BASE}/Users/u-1"
    assert response.headers["ETag"] == 'W/"3"'
    assert response.body == library(user_resource(row))


member = st.fixed_dictionaries(
    {"value": ids},
    optional={"$ref": st.none() | ids.map(lambda i: f"Users/{i}"),
              "type": st.sampled_from(["User", "Group", "weird"]), "display": text})


@settings(max_examples=200, deadline=None)
@given(st.lists(member, max_size=30), st.none() | text)
def test_a_groups_plain_members_read_as_the_library_reads_them(
        members: list[dict[str, Any]], external_id: str | None) -> None:
    """Creations with plain member ids skip the library's member validation
    (`AccordService.read_creation`): the group read is the same."""
    import orjson
    from scim2_models import ResourceType

    from accord.directory.scim.models import GROUPS, AccordGroup

    body = orjson.dumps({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                         "displayName": "team", "externalId": external_id,
                         "members": members})
    kind: ResourceType = GROUPS
    with SERVICE.provider:
        fast = SERVICE.read_creation(kind, body, "application/scim+json")
        slow = ScimService.read_creation(SERVICE, kind, body, "application/scim+json")
    assert isinstance(fast, AccordGroup) and isinstance(slow, AccordGroup)
    assert fast.member_ids == [m["value"] for m in members]
    assert (fast.display_name, fast.external_id) == (slow.display_name, slow.external_id)
    assert [m.value for m in slow.members or []] == fast.member_ids
