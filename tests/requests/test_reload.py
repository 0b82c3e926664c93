"""POST /api/v1/admin/reload: re-reading accord.yaml while the service runs."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from tests.conftest import POLICY, Env, make_env

RELOAD = "/api/v1/admin/reload"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def swap(old: str, new: str, text: str = POLICY) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def loaded_events(env: Env) -> list[dict[str, Any]]:
    return env.events(type="policy.loaded")


def inbox(env: Env, user: str) -> set[int]:
    r = env.get(user, "/api/v1/requests", params={"awaiting": "me", "limit": 500})
    assert r.status_code == 200, r.text
    return {item["id"] for item in r.json()["items"]}


def test_reload_installs_the_new_file_and_reports_what_changed(env: Env) -> None:
    old_version = env.st.policies.current.version
    assert old_version == sha(POLICY)
    before = loaded_events(env)

    text = swap("leads: [bob, gina]", "leads: [bob, gina, dave]")
    text = swap("max_duration: 4h", "max_duration: 6h", text)
    text = swap("users: [alice,", "users: [hank, alice,", text)
    text = swap("  - {name: lab,",
                "  - {name: cache, kind: redis, labels: {env: staging}, owners: [dba], "
                "roles: [read]}\n  - {name: lab,", text)
    env.write_policy(text)

    r = env.post("carol", RELOAD)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == sha(text)
    assert body["changed"] is True
    assert body["changes"] == {
        "groups": {"added": [], "removed": [], "changed": ["leads"]},
        "users": {"added": ["hank"], "removed": [], "changed": []},
        "resources": {"added": ["cache"], "removed": [], "changed": []},
        "workflows": {"added": [], "removed": [], "changed": ["prod"]},
    }
    assert env.st.policies.current.version == sha(text)

    after = loaded_events(env)
    assert len(after) == len(before) + 1
    event = after[-1]
    assert event["actor"] == {"kind": "user", "id": "carol", "via": "api"}
    assert event["data"]["version"] == sha(text)
    assert event["data"]["previous"] == old_version
    assert event["data"]["changes"] == body["changes"]
    assert event["subject"] == f"policy:{sha(text)[:12]}"

    # The new policy is the one in force.
    req = env.ask("alice", duration="5h")  # over the old 4h maximum, within the new 6h
    assert req["workflow"] == {"name": "prod", "version": sha(text), "rule": "match"}
    assert req["steps"][0]["eligible"] == ["bob", "dave", "gina"]
    cache = env.ask("alice", resource="cache", role="read", reason="")
    assert cache["status"] == "active"
    me = env.get("dave", "/api/v1/me").json()
    assert "leads" in me["groups"]
    assert "approver" in me["roles"]


def test_reloading_an_unchanged_file_changes_nothing(env: Env) -> None:
    version = env.st.policies.current.version
    before = loaded_events(env)
    r = env.post("carol", RELOAD)
    assert r.status_code == 200, r.text
    assert r.json() == {"version": version, "changed": False, "changes": {}}
    assert loaded_events(env) == before

    # Reload a change, then the same file again: the second one is a no-op.
    text = swap("leads: [bob, gina]", "leads: [bob, gina, dave]")
    env.write_policy(text)
    assert env.post("frank", RELOAD).json()["changed"] is True
    count = len(loaded_events(env))
    r = env.post("frank", RELOAD)
    assert r.status_code == 200, r.text
    assert r.json() == {"version": sha(text), "changed": False, "changes": {}}
    assert len(loaded_events(env)) == count


def test_returning_to_an_earlier_version_is_a_change(env: Env) -> None:
    text = swap("leads: [bob, gina]", "leads: [bob, gina, dave]")
    env.write_policy(text)
    assert env.post("carol", RELOAD).json()["changed"] is True
    env.write_policy(POLICY)
    r = env.post("carol", RELOAD)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == sha(POLICY)
    assert r.json()["changed"] is True
    assert r.json()["changes"] == {"groups": {"added": [], "removed": [], "changed": ["leads"]}}
    assert loaded_events(env)[-1]["data"]["previous"] == sha(text)


def test_a_broken_file_is_refused_and_the_running_policy_stays(env: Env) -> None:
    version = env.st.policies.current.version
    before = loaded_events(env)
    broken = swap("      - {name: lead, approvers: [leads]}\n",
                  "      - {name: lead, approvers: [lead]}\n")
    broken = swap("  - name: prod\n", "  - name: staging\n", broken)
    broken = swap("leads: [bob, gina]", "leads: [bob, gina, dave]", broken)
    env.write_policy(broken)

    r = env.post("carol", RELOAD)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    detail = r.json()["detail"]
    assert 'workflows[1].steps[0].approvers[0]: unknown group "lead"' in detail
    assert 'workflows[1].name: duplicate workflow "staging"' in detail
    assert "unchanged" in detail

    assert env.st.policies.current.version == version
    assert loaded_events(env) == before
    # Still the old policy: the prod workflow routes orders-db, leads are bob and gina.
    req = env.ask("alice")
    assert req["workflow"] == {"name": "prod", "version": version, "rule": "match"}
    assert req["steps"][0]["eligible"] == ["bob", "gina"]
    assert inbox(env, "dave") == set()

    # Bad YAML is refused the same way.
    env.write_policy("workflows: [\n")
    r = env.post("carol", RELOAD)
    assert r.status_code == 422, r.text
    assert "not valid YAML" in r.json()["detail"]
    assert env.st.policies.current.version == version

    # Fixing the file makes the next reload work.
    env.write_policy(POLICY)
    r = env.post("carol", RELOAD)
    assert r.status_code == 200, r.text
    assert r.json() == {"version": version, "changed": False, "changes": {}}


def test_reload_needs_an_admin(env: Env) -> None:
    env.write_policy(swap("leads: [bob, gina]", "leads: [bob, gina, dave]"))
    for user in ("alice", "bob", "dave"):
        r = env.post(user, RELOAD)
        assert r.status_code == 403, (user, r.text)
    assert env.post(None, RELOAD).status_code == 401
    assert env.st.policies.current.version == sha(POLICY)


def test_a_membership_change_moves_pending_requests_between_inboxes(env: Env) -> None:
    a = env.ask("alice")                       # lead step
    b = env.ask("alice")                       # moved on to the owner step (carol, erin)
    assert env.act("gina", b["id"], "approve").status_code == 200
    c = env.ask("alice", resource="staging-db", role="write", reason="")
    assert inbox(env, "bob") == {a["id"], c["id"]}
    assert inbox(env, "dave") == set()
    assert inbox(env, "carol") == {b["id"]}

    # bob leaves the leads, dave joins; erin leaves the dba.
    text = swap("leads: [bob, gina]", "leads: [gina, dave]")
    text = swap("dba: [carol, erin]", "dba: [carol]", text)
    env.write_policy(text)
    r = env.post("carol", RELOAD)
    assert r.status_code == 200, r.text
    assert r.json()["changes"] == {"groups": {"added": [], "removed": [],
                                              "changed": ["dba", "leads"]}}

    assert inbox(env, "bob") == set()
    assert inbox(env, "dave") == {a["id"], c["id"]}
    assert inbox(env, "gina") == {a["id"], c["id"]}
    assert inbox(env, "erin") == set()
    assert inbox(env, "carol") == {b["id"]}
    shown = env.get("alice", f"/api/v1/requests/{a['id']}").json()
    assert [s["eligible"] for s in shown["steps"]] == [["dave", "gina"], ["carol"]]

    # Who may decide follows the inbox.
    assert env.act("bob", a["id"], "approve").status_code in (403, 404)
    assert env.act("erin", b["id"], "approve").status_code in (403, 404)
    r = env.act("dave", a["id"], "approve")
    assert r.status_code == 200, r.text
    assert r.json()["current_step"] == 1
    assert inbox(env, "dave") == {c["id"]}
    assert inbox(env, "carol") == {a["id"], b["id"]}
    r = env.act("carol", a["id"], "approve")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "active"


def test_a_reload_does_not_reroute_decided_requests(env: Env) -> None:
    active = env.ask("alice", resource="staging-db", role="read", reason="")
    denied = env.ask("alice", reason="short")
    env.write_policy(swap("leads: [bob, gina]", "leads: [gina, dave]"))
    assert env.post("carol", RELOAD).status_code == 200
    assert env.get("alice", f"/api/v1/requests/{active['id']}").json()["status"] == "active"
    after = env.get("alice", f"/api/v1/requests/{denied['id']}").json()
    assert after["status"] == "denied"
    assert after["workflow"]["version"] == sha(POLICY)
    assert inbox(env, "dave") == set()


def test_a_reload_in_one_process_reaches_the_others(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    # Two server processes on one database (as with `serve --workers 2` or replicas).
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = make_env(sessions, tmp_path / "a")
    second = make_env(sessions, tmp_path / "b")
    with first.client, second.client:
        assert first.post("frank", "/api/v1/admin/reload").status_code == 200
        second.write_policy(POLICY.replace("admins: [carol, frank]", "admins: [carol]"))
        assert second.post("carol", "/api/v1/admin/reload").status_code == 200
        first.st.policies._checked = 0.0  # as if a second had passed
        r = first.post("frank", "/api/v1/admin/reload")
        assert r.status_code == 403, r.text
        assert first.st.policies.current.version == second.st.policies.current.version
