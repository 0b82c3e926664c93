"""Agents as principals: accord.yaml `agents:`, tokens issued by the owner or an admin, CEL's
`request.requester.kind`/`owner`, `owner` as an approver, agents never approving, and every
event naming the agent with its owner."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from accord.cli.main import app
from accord.policy.engine import Policy
from accord.policy.lint import unfillable
from accord.spec.load import PolicyError, parse_policy_text
from tests.agents.policies import AGENTS_POLICY
from tests.conftest import Env, make_env

runner = CliRunner()
AGENT_ACTOR = {"kind": "agent", "id": "buildbot", "via": "api", "owner": "alice"}


@pytest.fixture
def env(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Env]:
    e = make_env(sessions, tmp_path, AGENTS_POLICY)
    with e.client:
        yield e


def agent_token(env: Env, agent: str = "buildbot", issuer: str = "alice") -> str:
    r = env.post(issuer, f"/api/v1/agents/{agent}/tokens", json={"name": "ci"})
    assert r.status_code == 201, r.text
    secret: str = r.json()["secret"]
    env.tokens[agent] = secret
    return secret


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as exc:
        parse_policy_text(text)
    return [str(p) for p in exc.value.problems]


# ---------------------------------------------------------------- accord.yaml


def test_the_policy_knows_agents_and_their_owners() -> None:
    policy = Policy(parse_policy_text(AGENTS_POLICY))
    assert policy.is_agent("buildbot") and not policy.is_user("buildbot")
    assert policy.is_principal("buildbot") and policy.is_principal("alice")
    assert policy.owner_of("buildbot") == "alice" and policy.owner_of("alice") is None
    assert policy.requester_groups("buildbot") == {"engineers"}
    assert policy.roles_of("buildbot") == ["requester"]
    # In no group's members: an agent is never anyone's approver, admin or auditor.
    assert "buildbot" not in policy.groups["engineers"]
    assert policy.resolve("owner", None, "buildbot") == {"alice"}
    assert policy.resolve("owner", None, "alice") == frozenset()


@pytest.mark.parametrize(("extra", "expected"), [
    ("  - {name: buildbot, owner: bob}\n", 'agents[2].name: duplicate agent "buildbot"'),
    ("  - {name: alice, owner: bob}\n", 'agents[2].name: "alice" is both a user and an agent'),
    ("  - {name: ghost, owner: mallory}\n", 'agents[2].owner: unknown user "mallory"'),
    ("  - {name: sub, owner: buildbot}\n",
     "agents[2].owner: \"buildbot\" is an agent; an agent's owner is a person"),
    ("  - {name: x, owner: bob, groups: [nope]}\n", 'agents[2].groups[0]: unknown group "nope"'),
    ("  - {name: x, owner: bob, groups: [admins]}\n",
     'agents[2].groups[0]: group "admins" holds an Accord role'),
    ("  - {name: engineers, owner: bob}\n", 'agents[2].name: "engineers" is a group name'),
    ("  - {name: owner, owner: bob}\n", 'agents[2].name: "owner" is reserved'),
    ("  - {name: x}\n", "agents[2].owner: is required"),
])
def test_policy_check_names_what_is_wrong_with_an_agent(extra: str, expected: str) -> None:
    found = problems(AGENTS_POLICY + extra)
    assert any(p.startswith(expected) for p in found), found


def test_an_agent_named_as_an_approver_is_an_error() -> None:
    text = AGENTS_POLICY.replace("steps: [{approvers: [leads]}]",
                                 "steps: [{approvers: [leads, buildbot]}]")
    assert problems(text) == ['workflows[1].steps[0].approvers[1]: "buildbot" is an agent, '
                              "and an agent never approves, reviews or administers"]


def test_owner_is_known_in_steps_only() -> None:
    text = AGENTS_POLICY.replace("owners: [dba]", "owners: [owner]")
    assert problems(text) == ['resources[0].owners[0]: "owner" is only meaningful in steps']


def test_the_checker_warns_of_an_owner_step_people_reach() -> None:
    text = AGENTS_POLICY.replace("""match: 'request.requester.kind == "agent"'""", "match: 'true'")
    found = [str(u) for u in unfillable(Policy(parse_policy_text(text)), now=_now())]
    assert found and all('workflow "agents"' in f for f in found), found
    assert "alice" in found[0] and "buildbot" not in found[0] and "helper" not in found[0]


def test_the_checker_is_content_with_owner_steps_only_agents_reach() -> None:
    assert unfillable(Policy(parse_policy_text(AGENTS_POLICY)), now=_now()) == []


def test_an_agent_whose_owner_is_gone_is_no_agent() -> None:
    from accord.people.snapshot import Directory, Person

    policy = Policy(parse_policy_text(AGENTS_POLICY),
                    Directory(users={"alice": Person("alice", active=False)}))
    assert not policy.is_agent("buildbot") and not policy.is_principal("buildbot")
    assert policy.is_agent("helper")


def test_policy_check_counts_agents(tmp_path: Path) -> None:
    path = tmp_path / "accord.yaml"
    path.write_text(AGENTS_POLICY, encoding="utf-8")
    r = runner.invoke(app, ["policy", "check", "--offline", str(path)])
    assert r.exit_code == 0, r.output
    assert "2 agents" in r.stdout


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime(2026, 1, 5, 12, tzinfo=UTC)


# ---------------------------------------------------------------- tokens


def test_the_owner_issues_an_agent_token_and_the_agent_knows_who_it_is(env: Env) -> None:
    secret = agent_token(env)
    me = env.get("buildbot", "/api/v1/me").json()
    assert me == {"user": "buildbot", "kind": "agent", "owner": "alice",
                  "groups": ["engineers"], "roles": ["requester"]}
    [issued] = env.events(type="token.issued", actor="alice")
    assert issued["actor"] == {"kind": "user", "id": "alice", "via": "api"}
    assert issued["data"]["agent"] == "buildbot" and issued["data"]["owner"] == "alice"
    assert secret not in str(issued)


def test_an_admin_issues_an_agent_token_too(env: Env) -> None:
    agent_token(env, issuer="frank")
    assert env.get("buildbot", "/api/v1/me").json()["owner"] == "alice"


@pytest.mark.parametrize("issuer", ["bob", "carol", "dave"])
def test_nobody_else_issues_an_agent_token(env: Env, issuer: str) -> None:
    r = env.post(issuer, "/api/v1/agents/buildbot/tokens")
    assert r.status_code == 403, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "alice" in r.json()["detail"]


def test_an_agent_issues_no_tokens_not_even_its_own(env: Env) -> None:
    agent_token(env)
    assert env.post("buildbot", "/api/v1/agents/buildbot/tokens").status_code == 403
    assert env.post("buildbot", "/api/v1/agents/helper/tokens").status_code == 403


def test_an_unknown_agent_is_404(env: Env) -> None:
    r = env.post("frank", "/api/v1/agents/nobody/tokens")
    assert r.status_code == 404 and "nobody" in r.json()["detail"]


def test_the_owner_lists_and_revokes_the_agent_tokens(env: Env) -> None:
    agent_token(env)
    mine = env.get("alice", "/api/v1/tokens").json()
    [theirs] = [t for t in mine if t["user"] == "buildbot"]
    assert theirs["kind"] == "agent"
    assert env.get("bob", "/api/v1/tokens", params={"user": "buildbot"}).status_code == 403
    assert env.call("DELETE", "bob", f"/api/v1/tokens/{theirs['id']}").status_code == 404
    assert env.call("DELETE", "alice", f"/api/v1/tokens/{theirs['id']}").status_code == 200
    assert env.get("buildbot", "/api/v1/me").status_code == 401


def test_an_agent_token_stops_working_when_the_agent_leaves_the_policy(env: Env) -> None:
    agent_token(env)
    assert env.get("buildbot", "/api/v1/me").status_code == 200
    policy = env.st.policies.current
    env.st.policies.install(Policy(parse_policy_text(AGENTS_POLICY.replace(
        "  - {name: buildbot, owner: alice, groups: [engineers], description: CI agent}\n",
        ""))))
    r = env.get("buildbot", "/api/v1/me")
    assert r.status_code == 401 and "agent" in r.json()["detail"]
    env.st.policies.install(policy)


def test_an_agent_token_does_not_sign_in_to_the_web(env: Env) -> None:
    from tests.web.test_pages import Browser, login_form

    secret = agent_token(env)
    b = Browser(env)
    r = b.post("/login/token", {"token": secret, "csrf": login_form(b)})
    assert r.status_code == 303 and r.headers["location"].startswith("/login"), r.text
    assert "agents do not sign in" in b.get(r.headers["location"]).text
    [refused] = env.events(type="web.login_refused")
    assert "buildbot" in refused["data"]["reason"]


def test_cli_issues_an_agent_token_on_the_owner_s_authority(tmp_path: Path) -> None:
    config = tmp_path / "accord.yaml"
    config.write_text(AGENTS_POLICY, encoding="utf-8")
    cli_env = {"ACCORD_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
               "ACCORD_CONFIG": str(config), "ACCORD_DATA_DIR": str(tmp_path / "data")}
    assert runner.invoke(app, ["db", "upgrade"], env=cli_env).exit_code == 0
    ok = runner.invoke(app, ["token", "issue", "alice", "--agent", "buildbot"], env=cli_env)
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.strip().startswith("acc_")
    assert "agent buildbot (owner alice)" in " ".join(ok.stderr.split())
    no = runner.invoke(app, ["token", "issue", "bob", "--agent", "buildbot"], env=cli_env)
    assert no.exit_code == 1 and no.stdout == ""
    assert "alice" in no.stderr
    admin = runner.invoke(app, ["token", "issue", "frank", "--agent", "buildbot"], env=cli_env)
    assert admin.exit_code == 0, admin.output
    listed = runner.invoke(app, ["token", "list", "--json"], env=cli_env)
    assert [t["kind"] for t in __import__("json").loads(listed.stdout)] == ["agent", "agent"]


# ---------------------------------------------------------------- requests


def test_an_agent_request_is_routed_to_its_owner(env: Env) -> None:
    agent_token(env)
    req = env.ask("buildbot", role="read", reason="nightly report")
    assert req["status"] == "pending" and req["workflow"]["name"] == "agents"
    [created] = env.events(type="request.created", subject=f"request:{req['id']}")
    assert created["actor"] == AGENT_ACTOR
    assert created["data"]["owner"] == "alice"
    assert created["data"]["requester_kind"] == "agent"
    assert created["data"]["inputs"]["request"]["requester"]["kind"] == "agent"
    assert created["data"]["inputs"]["request"]["requester"]["owner"] == "alice"
    assert created["data"]["steps"][0]["approvers"] == ["owner"]
    assert env.get("alice", "/api/v1/requests", params={"awaiting": "me"}).json()[
        "items"][0]["id"] == req["id"]
    # The owner approves; the grant is the agent's.
    r = env.act("alice", req["id"], "approve")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "active"
    grants = env.get("buildbot", "/api/v1/grants").json()
    assert [g["user"] for g in grants["items"]] == ["buildbot"]
    # Its owner sees it too; another person does not.
    assert [g["user"] for g in env.get("alice", "/api/v1/grants").json()["items"]] == \
        ["buildbot"]
    assert env.get("bob", "/api/v1/grants").json()["items"] == []


def test_cel_sees_the_owner(env: Env) -> None:
    agent_token(env, "helper", "bob")
    req = env.ask("helper", role="write", reason="fix a row")
    assert req["status"] == "denied" and req["workflow"]["rule"] == "auto_deny"


def test_people_are_routed_by_their_kind(env: Env) -> None:
    req = env.ask("alice", role="read", reason="INC-7 look at the orders")
    assert req["workflow"]["name"] == "people"
    [created] = env.events(type="request.created", subject=f"request:{req['id']}")
    assert created["actor"] == {"kind": "user", "id": "alice", "via": "api"}
    assert created["data"]["inputs"]["request"]["requester"]["kind"] == "user"
    assert "owner" not in created["data"]


def test_an_agent_never_approves_or_denies(env: Env) -> None:
    agent_token(env)
    req = env.ask("alice", role="read", reason="INC-7 look at the orders")
    for verb in ("approve", "deny"):
        r = env.act("buildbot", req["id"], verb)
        assert r.status_code == 403, r.text
        assert "an agent never" in r.json()["detail"]
    assert env.get("alice", f"/api/v1/requests/{req['id']}").json()["status"] == "pending"


def test_the_owner_sees_and_revokes_the_agent_s_access_others_do_not(env: Env) -> None:
    agent_token(env)
    req = env.ask("buildbot", role="read", reason="nightly report")
    assert env.get("bob", f"/api/v1/requests/{req['id']}").status_code == 404
    assert env.act("alice", req["id"], "approve").status_code == 200
    assert env.act("bob", req["id"], "revoke").status_code == 404
    assert env.act("buildbot", req["id"], "revoke").status_code == 403
    r = env.act("alice", req["id"], "revoke", comment="enough")
    assert r.status_code == 200 and r.json()["status"] == "revoked", r.text


def test_the_agent_relinquishes_its_own_access(env: Env) -> None:
    agent_token(env)
    req = env.ask("buildbot", role="read", reason="nightly report")
    env.act("alice", req["id"], "approve")
    r = env.act("buildbot", req["id"], "relinquish")
    assert r.status_code == 200 and r.json()["status"] == "relinquished", r.text
    [ended] = env.events(type="grant.relinquished")
    assert ended["actor"] == AGENT_ACTOR


def test_an_agent_s_database_gateway_session_names_its_owner(env: Env) -> None:
    """The database gateway's events (shipped from its spool) carry the agent's owner."""
    import time

    from accord.db import transaction
    from accord.gateway import recording
    from accord.gateway.records import SessionInfo

    info = SessionInfo(id="t-1", number=1, grant_id=1, user="buildbot", resource="orders-db",
                       role="read", client="127.0.0.1", application="psql", tls=False,
                       upstream_role=None, owner="alice")
    assert SessionInfo.of(info.as_dict()) == info
    with transaction(env.st.sessions) as session:
        recording.record_facts(session, facts=[(1, "open", info, time.time_ns(), {})],
                               instance="t", per_event=10, max_text=100)
    [opened] = env.events(type="gateway.session_opened")
    assert opened["actor"] == {"kind": "agent", "id": "buildbot", "via": "gateway",
                               "owner": "alice"}
