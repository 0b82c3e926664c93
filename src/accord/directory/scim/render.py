"""The published form of Accord's Users and Groups, written out directly.

scim2-models serializes a resource by walking its schema: a User's answer costs about
0.25 ms and a Group of 40 members about 2 ms (building 40 member objects, rewriting their
references in place, dumping them), a fifth of what an identity provider's first push
costs the server. Accord's resources hold a small, closed set of attributes (`models.py`),
so their answers are written here; `tests/directory/scim/test_render.py` holds this to
the library's output for every shape `storage.py` produces. Calls that ask for some
attributes only (`attributes`, `excludedAttributes`) go through the library.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import TypeAdapter
from scim2_models import Meta, Resource

from accord.directory.scim.models import (
    ENTERPRISE_SCHEMA,
    AccordEmail,
    AccordEnterprise,
    AccordGroup,
    AccordUser,
)

_TIME = TypeAdapter(datetime)


def _time(value: datetime | None) -> str | None:
    return None if value is None else str(_TIME.dump_python(value, mode="json"))


def _url(base_url: str, reference: str) -> str:
    """A reference relative to the SCIM root ("Users/<id>") as a URL; absolute ones kept
    (the library's `reference_location` for the endpoints Accord serves)."""
    if "://" in reference or reference.startswith("/"):
        return reference
    return f"{base_url.rstrip('/')}/{reference}"


def _compact(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _meta(meta: Meta | None, kind: str, location: str) -> dict[str, Any] | None:
    if meta is None:
        return None
    return _compact({"resourceType": meta.resource_type or kind,
                     "created": _time(meta.created), "lastModified": _time(meta.last_modified),
                     "location": meta.location or location, "version": meta.version})


def _email(email: AccordEmail) -> dict[str, Any]:
    kind = email.type
    return _compact({"value": email.value,
                     "type": None if kind is None else str(getattr(kind, "value", kind))})


def user(resource: AccordUser, base_url: str) -> dict[str, Any]:
    assert resource.id is not None
    name = resource.name
    ext = resource[AccordEnterprise]
    body = _compact({
        "schemas": list(resource.schemas),
        "id": resource.id,
        "externalId": resource.external_id,
        "meta": _meta(resource.meta, "User", _url(base_url, f"Users/{resource.id}")),
        "userName": resource.user_name,
        "name": (_compact({"familyName": name.family_name, "givenName": name.given_name})
                 or None) if name is not None else None,
        "displayName": resource.display_name,
        "active": resource.active,
        "emails": [_email(e) for e in resource.emails or []] or None,
    })
    if ext is not None:
        if ENTERPRISE_SCHEMA not in body["schemas"]:
            body["schemas"].append(ENTERPRISE_SCHEMA)
        manager = ext.manager
        body[ENTERPRISE_SCHEMA] = _compact({
            "employeeNumber": ext.employee_number,
            "department": ext.department,
            "manager": None if manager is None else _compact({
                "value": manager.value,
                "$ref": None if manager.ref is None else _url(base_url, str(manager.ref)),
                "displayName": manager.display_name}),
        })
    return body


def group(resource: AccordGroup, base_url: str) -> dict[str, Any]:
    assert resource.id is not None
    if resource.member_ids is not None:  # storage's creation: the ids, no member objects
        members = [{"value": uid, "$ref": _url(base_url, f"Users/{uid}")}
                   for uid in resource.member_ids]
    else:
        members = [_compact({"value": m.value,
                             "$ref": None if m.ref is None else _url(base_url, str(m.ref))})
                   for m in resource.members or []]
    return _compact({
        "schemas": list(resource.schemas),
        "id": resource.id,
        "externalId": resource.external_id,
        "meta": _meta(resource.meta, "Group", _url(base_url, f"Groups/{resource.id}")),
        "displayName": resource.display_name,
        "members": members or None,
    })


def body(resource: Resource[Any], base_url: str) -> dict[str, Any] | None:
    """The published answer for `resource`, or None for a resource this module does not
    know (the caller uses the library's)."""
    if isinstance(resource, AccordUser):
        return user(resource, base_url)
    if isinstance(resource, AccordGroup):
        return group(resource, base_url)
    return None
