"""GET /api/v1/directory: the file's people and groups beside the provider's, with sources."""

from __future__ import annotations

from accord.directory.service import user_named
from tests.conftest import Env
from tests.directory.test_consequences import env, group, person  # noqa: F401 (env: a fixture)

DIR = "/api/v1/directory"


def test_people_and_groups_show_where_each_came_from(env: Env) -> None:  # noqa: F811
    person(env, "alice")  # the file's alice, also pushed by the provider
    person(env, "mia")
    person(env, "sam", manager="mia")
    group(env, "oncall", "alice", "sam")
    r = env.get("dave", f"{DIR}/users", params={"limit": 3})
    assert r.status_code == 200, r.text
    page = r.json()
    assert [p["name"] for p in page["items"]] == ["alice", "bob", "carol"]
    assert page["items"][0]["source"] == "file+scim" and page["items"][1]["source"] == "file"
    rest = env.get("dave", f"{DIR}/users", params={"cursor": page["next_cursor"],
                                                   "limit": 100}).json()
    assert [p["name"] for p in rest["items"]] == ["dave", "erin", "frank", "gina", "mia", "sam"]
    assert rest["next_cursor"] is None
    only = env.get("dave", f"{DIR}/users", params={"source": "scim"}).json()["items"]
    assert [p["name"] for p in only] == ["alice", "mia", "sam"]  # the provider knows alice

    alice = env.get("dave", f"{DIR}/users/alice").json()
    assert {(m["group"], m["source"]) for m in alice["groups"]} == {
        ("engineers", "file"), ("oncall", "scim")}
    sam = env.get("frank", f"{DIR}/users/sam").json()  # admins read it too
    assert sam["manager"] == "mia" and sam["source"] == "scim" and sam["active"] is True

    groups = {g["name"]: g for g in env.get("dave", f"{DIR}/groups").json()}
    assert groups["oncall"]["source"] == "scim" and groups["oncall"]["members"] == 2
    assert groups["leads"]["source"] == "file"
    oncall = env.get("dave", f"{DIR}/groups/oncall").json()
    assert oncall["people"] == [{"user": "alice", "source": "scim"},
                                {"user": "sam", "source": "scim"}]


def test_only_auditors_and_admins_read_the_directory_and_unknown_names_are_404(
        env: Env) -> None:  # noqa: F811
    r = env.get("alice", f"{DIR}/users")
    assert r.status_code == 403 and r.headers["content-type"].startswith(
        "application/problem+json")
    r = env.get("dave", f"{DIR}/users/nobody")
    assert r.status_code == 404 and "nobody" in r.json()["detail"]
    r = env.get("dave", f"{DIR}/groups/nobody")
    assert r.status_code == 404


def test_a_deactivated_person_is_listed_inactive(env: Env) -> None:  # noqa: F811
    person(env, "zoe", active=False)
    with env.st.sessions() as s:
        assert user_named(s, "zoe") is not None
    r = env.get("dave", f"{DIR}/users", params={"active": "false"}).json()
    assert [p["name"] for p in r["items"]] == ["zoe"]
    assert r["items"][0]["active"] is False
