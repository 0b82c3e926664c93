"""What a directory change does to access, end to end through the API: people the provider
deactivates or deletes lose everything at once; group and manager changes move approvals;
`revoke_on_group_loss` ends grants the lost group was the reason for."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from accord.db import transaction
from accord.directory.service import Change, UserFields, group_named, user_named
from accord.errors import Conflict
from accord.grants.models import Grant
from accord.identity import service as identity
from accord.identity.models import ApiToken
from accord.ledger.events import Actor
from accord.requests.models import RequestApprover
from accord.web.auth import forget_credentials
from tests.conftest import POLICY, Env, make_env

T = TypeVar("T")

DIRECTORY_POLICY = POLICY.replace("accord: {admins: [admins], auditors: [auditors]}", """\
accord: {admins: [admins], auditors: [auditors]}
identity: {scim: true}""").replace(
    "  - {name: lab, kind: generic, labels: {env: lab}, owners: [frank], roles: [use]}\n",
    "  - {name: lab, kind: generic, labels: {env: lab}, owners: [frank], roles: [use]}\n"
    "  - {name: pager, kind: generic, labels: {env: pager}, owners: [frank], "
    "roles: [use, admin]}\n") + """\
  - name: pager
    match: 'resource.labels.env == "pager"'
    steps: [{approvers: [oncall]}]
  - name: oncall
    match: 'resource.labels.env == "lab" && "oncall" in request.requester.groups'
    auto_approve: 'request.role == "use"'
    revoke_on_group_loss: true
    steps: [{approvers: [oncall]}]
  - name: lab-by-manager
    match: 'resource.labels.env == "lab"'
    steps: [{approvers: [manager]}]
"""


@pytest.fixture
def env(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Env]:
    e = make_env(sessions, tmp_path, DIRECTORY_POLICY)
    with e.client:
        yield e


def push(env: Env, fn: Callable[[Change], T]) -> T:
    """One SCIM-like unit of work, as the SCIM endpoints run it."""
    with transaction(env.st.sessions) as s:
        change = Change(s, store=env.st.policies, actor=Actor.scim("okta"), now=env.clock())
        out = fn(change)
        change.finish()
    change.after_commit()
    forget_credentials(env.st, token_ids=change.revoked_tokens, digests=change.ended_sessions)
    with env.st.sessions() as s:  # what the process's next call does (it is due at once)
        env.st.policies.follow(s)
    return out


def person(env: Env, name: str, *, manager: str | None = None, active: bool = True) -> str:
    """A directory user (and an API token for them); returns their SCIM id."""
    def make(c: Change) -> str:
        boss = user_named(c.session, manager) if manager else None
        return c.create_user(UserFields(user_name=name, email=f"{name}@example.com",
                                        active=active, manager_id=boss.id if boss else None)).id
    uid = push(env, make)
    if active:
        with transaction(env.st.sessions) as s:
            _row, env.tokens[name] = identity.issue(
                s, policy=env.st.policies.current, user=name, actor=Actor.system("cli"),
                now=env.clock())
    return uid


def group(env: Env, name: str, *members: str) -> None:
    def make(c: Change) -> None:
        ids = [u.id for m in members if (u := user_named(c.session, m)) is not None]
        c.create_group(name, member_ids=ids)
    push(env, make)


def members(env: Env, name: str, *, add: tuple[str, ...] = (),
            remove: tuple[str, ...] = ()) -> None:
    def edit(c: Change) -> None:
        g = group_named(c.session, name)
        assert g is not None
        ids = {m: u.id for m in add + remove if (u := user_named(c.session, m)) is not None}
        c.change_members(g, add={ids[m] for m in add}, remove={ids[m] for m in remove})
    push(env, edit)


def set_active(env: Env, name: str, active: bool) -> None:
    def edit(c: Change) -> None:
        row = user_named(c.session, name)
        assert row is not None
        f = UserFields.of(row)
        f.active = active
        c.update_user(row, f)
    push(env, edit)


def grant_of(env: Env, request_id: int) -> dict[str, Any]:
    r = env.get("dave", f"/api/v1/requests/{request_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def types(env: Env) -> list[str]:
    return [e["type"] for e in env.events()]


# ------------------------------------------------------------------ leaving


def test_a_deactivated_person_loses_tokens_requests_and_grants_at_once(env: Env) -> None:
    person(env, "alice")  # the file's alice, now also the provider's: the same person
    live = env.ask("alice", "staging-db", "read")  # engineers' read: auto-approved
    assert live["status"] == "active"
    waiting = env.ask("alice", "orders-db", "read")
    assert waiting["status"] == "pending"
    assert env.get("alice", "/api/v1/me").status_code == 200

    set_active(env, "alice", False)

    r = env.get("alice", "/api/v1/me")
    assert r.status_code == 401, r.text
    assert grant_of(env, live["id"])["status"] == "revoked"
    assert grant_of(env, waiting["id"])["status"] == "cancelled"
    with env.st.sessions() as s:
        assert all(t.revoked_at is not None for t in s.execute(
            select(ApiToken).where(ApiToken.user == "alice")).scalars())
        g = s.execute(select(Grant).where(Grant.request_id == live["id"])).scalar_one()
        assert g.ended_by == "okta"
    seen = types(env)
    for t in ("directory.user_created", "directory.user_deactivated", "token.revoked",
              "grant.revoked", "request.cancelled"):
        assert t in seen, t
    revoked = [e for e in env.events() if e["type"] == "grant.revoked"][-1]
    assert revoked["actor"] == {"kind": "scim", "id": "okta", "via": "scim"}
    assert "deactivated by the identity provider" in revoked["data"]["comment"]
    # Not a user any more: the file's groups drop her too, so she approves nothing.
    assert "alice" not in env.st.policies.current.groups["engineers"]


def test_a_deleted_person_is_nobody_and_a_reactivated_one_needs_new_tokens(env: Env) -> None:
    person(env, "zoe")
    assert env.get("zoe", "/api/v1/me").status_code == 200
    set_active(env, "zoe", False)
    set_active(env, "zoe", True)
    assert env.st.policies.current.is_user("zoe")
    assert env.get("zoe", "/api/v1/me").status_code == 401  # revoked when she left

    def delete(c: Change) -> None:
        row = user_named(c.session, "zoe")
        assert row is not None
        c.delete_user(row)
    push(env, delete)
    assert not env.st.policies.current.is_user("zoe")
    assert "directory.user_deleted" in types(env)


def test_an_approver_who_is_deactivated_approves_nothing_pending(env: Env) -> None:
    """An approver who leaves stops being one of anything pending; a request only they
    could decide is denied at once, with the reason (never left to expire)."""
    person(env, "yan")
    person(env, "sam", manager="yan")
    req = env.ask("sam", "lab", "use", reason="lab time")
    assert req["status"] == "pending"
    set_active(env, "yan", False)
    assert env.act("yan", req["id"], "approve").status_code == 401
    with env.st.sessions() as s:
        assert not s.execute(select(RequestApprover).where(
            RequestApprover.request_id == req["id"])).all()
    body = grant_of(env, req["id"])
    assert body["status"] == "denied"
    assert body["decision_reason"] == ("nobody can complete it any more: step 1 needs 1 "
                                       "approval but nobody can give it")
    denied = [e for e in env.events() if e["type"] == "request.denied"][-1]
    assert denied["policy"]["rule"] == "unsatisfiable"
    assert denied["data"]["trigger"] == {"kind": "scim", "id": "okta"}  # who changed it


# ------------------------------------------------------------------ groups


def test_joining_and_leaving_a_group_moves_approvals_at_once(env: Env) -> None:
    for name in ("zoe", "yan"):
        person(env, name)
    group(env, "oncall", "zoe")
    req = env.ask("alice", "pager", "admin", reason="rotate keys")
    assert req["status"] == "pending"
    members(env, "oncall", remove=("zoe",), add=("yan",))
    r = env.act("zoe", req["id"], "approve")
    # Left the group: not an approver any more, so the request is not even visible to her.
    assert r.status_code == 404, r.text
    assert grant_of(env, req["id"])["status"] == "pending"  # and nothing changed
    r = env.act("yan", req["id"], "approve")
    assert r.status_code == 200, r.text  # joined it: an approver at once
    assert r.json()["status"] == "active"
    added = [e for e in env.events() if e["type"] == "directory.member_added"][-1]
    assert added["data"]["users"] == ["yan"] and added["data"]["group"] == "oncall"


def test_a_group_change_that_leaves_a_pending_request_impossible_denies_it(env: Env) -> None:
    for name in ("zoe", "yan"):
        person(env, name)
    group(env, "oncall", "zoe", "yan")
    req = env.ask("alice", "pager", "admin", reason="rotate keys")
    other = env.ask("alice", "orders-db", "read")  # not the group's: untouched
    members(env, "oncall", remove=("zoe",))
    assert grant_of(env, req["id"])["status"] == "pending"  # yan still can
    members(env, "oncall", remove=("yan",))
    body = grant_of(env, req["id"])
    assert body["status"] == "denied"
    assert "step 1 needs 1 approval but nobody can give it" in body["decision_reason"]
    assert [e["type"] for e in env.events(subject=f"request:{req['id']}")][-1] == \
        "request.denied"
    assert grant_of(env, other["id"])["status"] == "pending"


def test_revoke_on_group_loss_ends_the_grant_the_group_was_the_reason_for(env: Env) -> None:
    person(env, "zoe")
    group(env, "oncall", "zoe")
    req = env.ask("zoe", "lab", "use", reason="pager duty")
    assert req["status"] == "active"
    assert req["workflow"]["name"] == "oncall"
    members(env, "oncall", remove=("zoe",))
    assert grant_of(env, req["id"])["status"] == "revoked"
    ended = [e for e in env.events() if e["type"] == "grant.revoked"][-1]
    assert "left oncall" in ended["data"]["comment"]
    assert "directory.member_removed" in types(env)


# ------------------------------------------------------------------ managers


def test_the_manager_step_names_the_requesters_manager_and_follows_changes(env: Env) -> None:
    person(env, "mia")
    person(env, "yan")
    person(env, "sam", manager="mia")
    req = env.ask("sam", "lab", "use", reason="lab time")
    assert req["status"] == "pending" and req["workflow"]["name"] == "lab-by-manager"
    assert env.act("yan", req["id"], "approve").status_code == 404  # not hers to see

    def new_boss(c: Change) -> None:
        row, boss = user_named(c.session, "sam"), user_named(c.session, "yan")
        assert row is not None and boss is not None
        f = UserFields.of(row)
        f.manager_id = boss.id
        c.update_user(row, f)
    push(env, new_boss)
    assert env.act("mia", req["id"], "approve").status_code == 404  # not any more
    r = env.act("yan", req["id"], "approve")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "active"


def test_a_renamed_manager_still_approves_for_the_people_they_manage(env: Env) -> None:
    person(env, "mia")
    person(env, "sam", manager="mia")
    req = env.ask("sam", "lab", "use", reason="lab time")

    def rename(c: Change) -> None:
        row = user_named(c.session, "mia")
        assert row is not None
        f = UserFields.of(row)
        f.user_name = "mia.b"
        c.update_user(row, f)
    push(env, rename)
    assert env.st.policies.current.manager_of("sam") == "mia.b"
    with transaction(env.st.sessions) as s:  # mia.b signs in with a token of her new name
        _row, env.tokens["mia.b"] = identity.issue(
            s, policy=env.st.policies.current, user="mia.b", actor=Actor.system("cli"),
            now=env.clock())
    r = env.act("mia.b", req["id"], "approve")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "active"


def test_no_manager_is_an_unsatisfiable_step(env: Env) -> None:
    """Handled like any step nobody can fill: refused at once (422), saying why."""
    person(env, "sam")
    r = env.post("sam", "/api/v1/requests", json={"resource": "lab", "role": "use",
                                                   "duration": "1h", "reason": "lab"})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["type"].endswith("/unsatisfiable")
    assert "step 1 needs 1 approval but nobody can give it" in body["detail"]


# ------------------------------------------------------------------ names


def test_a_provider_group_may_not_take_a_file_groups_name(env: Env) -> None:

    with pytest.raises(Conflict, match=r"accord\.yaml defines a group"):
        group(env, "leads")
    with pytest.raises(Conflict, match="already exists"):
        group(env, "oncall")
        group(env, "OnCall")
