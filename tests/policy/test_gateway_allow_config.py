"""`accord policy check` on a resource's `gateway.allow` (LOAD DATA LOCAL INFILE per role)."""

from __future__ import annotations

from accord.spec.load import parse_policy_text
from tests.policy.test_config import problems
from tests.policy.test_masking_config import with_masking


def with_allow(allow: str, kind: str = "mariadb") -> str:
    """The masking tests' resource, with no masking rules and `gateway.allow`."""
    return with_masking(f"        []\n      allow: {allow}\n", kind=kind)


def test_a_role_may_be_allowed_local_infile() -> None:
    loaded = parse_policy_text(with_allow("{write: [local_infile]}"), "accord.yaml")
    g = next(r for r in loaded.spec.resources if r.name == "orders-db").gateway
    assert g is not None and g.allow == {"write": ["local_infile"]}


def test_unknown_roles_and_postgres_resources_are_problems() -> None:
    found = problems(with_allow("{owner: [local_infile]}"))
    assert 'resources[1].gateway.allow.owner: unknown role "owner"' in found
    found = problems(with_allow("{write: [local_infile]}", kind="postgres"))
    assert "resources[1].gateway.allow.write: local_infile (LOAD DATA LOCAL INFILE) is " \
           "MySQL's; this resource is served over postgres" in found
    assert any("allow" in p for p in problems(with_allow("{write: [load_file]}")))
