"""What /scim/v2 publishes and reads: only the attributes Accord stores.

The schemas served at /Schemas are generated from these classes, so an identity provider's
attribute mapping (and scim2-tester) asks for exactly what is kept. Everything else a
provider sends (Okta's `password`, `locale`, `groups`; Entra's `roles`, its extra group
schema URN) is accepted and dropped by the policy (`unknown=ignore`).
"""

# No `from __future__ import annotations`: `Reference["User"]` names the resource type, a
# string pydantic must see as such, not a name to look up (nor ruff: noqa F821).
from typing import Annotated, Any

from pydantic import Field, PrivateAttr, model_validator
from scim2_models import (
    URN,
    AuthenticationScheme,
    Bulk,
    CaseExact,
    ChangePassword,
    ComplexAttribute,
    Email,
    ETag,
    Extension,
    External,
    Filter,
    Mutability,
    Patch,
    Reference,
    Required,
    Resource,
    ResourceType,
    ScimPolicy,
    ScimProvider,
    ServiceProviderConfig,
    Sort,
    Uniqueness,
)

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_SCHEMA = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
MAX_RESULTS = 200  # a page of a search, at most (maxResults)


class AccordName(ComplexAttribute):
    family_name: str | None = None
    given_name: str | None = None


class AccordEmail(ComplexAttribute):
    # A plain string, not EmailStr: that one refuses `*.local` (Okta's own examples, real
    # Active Directory tenants) and `*.test`, and rewrites the domain's case.
    value: str | None = None
    type: Email.Type | None = None  # work, home, other (canonical values), or another word
    # No `primary`: one address is kept, so it could not be sent back as it came. The one
    # a provider marks primary is the one kept (storage reads it off unknown_attributes).


class AccordManager(ComplexAttribute):
    value: Annotated[str | None, CaseExact.true] = None
    # scim2-models marks `$ref` required; RFC 7643 does not, and no provider sends it.
    ref: Annotated[Reference["User"] | None, Required.false] = Field(  # type: ignore[name-defined]  # noqa: F821
        None, serialization_alias="$ref", validation_alias="$ref")
    display_name: Annotated[str | None, Mutability.read_only] = None

    @model_validator(mode="before")
    @classmethod
    def _bare_id(cls, value: Any) -> Any:
        # Entra ID sends the manager as the bare id: "manager": "<id>".
        return {"value": value} if isinstance(value, str) else value


class AccordEnterprise(Extension):
    __schema__ = URN(ENTERPRISE_SCHEMA)

    employee_number: str | None = None
    department: str | None = None
    manager: AccordManager | None = None


class AccordUser(Resource[Any]):
    __schema__ = URN(USER_SCHEMA)

    user_name: Annotated[str | None, Uniqueness.server, Required.true] = None
    name: AccordName | None = None
    display_name: str | None = None
    # Required: Accord stores whether a person is active and cannot leave it unassigned, so
    # a PATCH may not remove it. A creation or a PUT may still leave it out (Okta's PUT
    # does): see _check_necessity.
    active: Annotated[bool | None, Required.true] = None
    # One address is kept: the primary one, else the first.
    emails: list[AccordEmail] | None = None

    def _check_necessity(self, field_name: str, value: Any) -> None:
        # A POST without `active` creates an active person, a PUT without it keeps the
        # stored value (AccordService.apply_replacement): never deactivated by omission.
        if field_name != "active":
            super()._check_necessity(field_name, value)


class AccordMember(ComplexAttribute):
    """A member of a group: a user (groups do not nest), by id. A provider's `type` and
    `display` are dropped: Accord keeps only who the member is."""

    value: Annotated[str | None, Mutability.immutable, CaseExact.true] = None
    ref: Annotated[Reference["User"] | None, Mutability.immutable] = Field(  # type: ignore[name-defined]  # noqa: F821
        None, serialization_alias="$ref", validation_alias="$ref")


class AccordGroup(Resource[Any]):
    __schema__ = URN(GROUP_SCHEMA)

    display_name: Annotated[str | None, Required.true] = None
    members: list[AccordMember] | None = None

    # A group storage just created carries its members' ids instead of member objects:
    # its answer (render.py) lists them without building and publishing one object each.
    _member_ids: list[str] | None = PrivateAttr(default=None)

    @property
    def member_ids(self) -> list[str] | None:
        return self._member_ids

    def set_member_ids(self, ids: list[str]) -> None:
        self._member_ids = ids


ScimUser = AccordUser[AccordEnterprise]  # type: ignore[type-arg]
ScimGroup = AccordGroup

POLICY = ScimPolicy(
    unknown=ScimPolicy.Unknown.ignore,
    # Entra removes members with {"op": "Remove", "path": "members", "value": [...]}.
    remove_value_as_filter=ScimPolicy.RemoveValue.apply,
    # Entra adds `emails[type eq "work"].value` to a user who has no work address yet.
    unmatched_path_filter=ScimPolicy.UnmatchedPathFilter.create,
)

CONFIG = ServiceProviderConfig(
    documentation_uri=None,
    patch=Patch(supported=True),
    bulk=Bulk(supported=False, max_operations=0, max_payload_size=0),
    filter=Filter(supported=True, max_results=MAX_RESULTS),
    change_password=ChangePassword(supported=False),
    sort=Sort(supported=False),
    etag=ETag(supported=True),
    authentication_schemes=[AuthenticationScheme(
        type=AuthenticationScheme.Type.oauthbearertoken,
        name="OAuth Bearer Token",
        description="A token issued with `accord scim token issue NAME`",
        spec_uri=Reference[External]("https://www.rfc-editor.org/rfc/rfc6750"),
        primary=True,
    )],
)

USERS = ResourceType.from_resource(ScimUser)
GROUPS = ResourceType.from_resource(ScimGroup)

PROVIDER = ScimProvider(
    models=[AccordUser, AccordEnterprise, AccordGroup],
    resource_types=[USERS, GROUPS],
    config=CONFIG,
    policy=POLICY,
)
