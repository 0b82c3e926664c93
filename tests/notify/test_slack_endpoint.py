"""Slack's Approve/Deny buttons against the real endpoint: signed, mapped, checked, recorded."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from accord.notify.slack import signature
from accord.settings import Secret
from accord.worker.job_runner import JobRunner
from tests.conftest import POLICY, Env, make_env

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
URL = "/api/v1/integrations/slack/interactions"


def _body(request_id: int, action: str = "approve", user: str = "U0BOB",
          response_url: str | None = None) -> bytes:
    payload: dict[str, Any] = {
        "type": "block_actions", "user": {"id": user}, "team": {"id": "T1"},
        "actions": [{"type": "button", "action_id": f"accord_{action}",
                     "value": f"{action}:{request_id}", "block_id": f"accord_request_{request_id}",
                     "text": {"type": "plain_text", "text": action.title()}}],
    }
    if response_url:
        payload["response_url"] = response_url
    return urlencode({"payload": json.dumps(payload)}).encode()


def _post(env: Env, body: bytes, *, secret: str = SECRET, age: int = 0,
          sig: str | None = None) -> Any:
    stamp = str(int(env.clock().timestamp()) - age)
    headers = {"X-Slack-Request-Timestamp": stamp,
               "X-Slack-Signature": sig or signature(secret, stamp, body),
               "Content-Type": "application/x-www-form-urlencoded"}
    return env.client.post(URL, content=body, headers=headers)


@pytest.fixture
def slack_env(sessions: sessionmaker[Session], tmp_path: Path) -> Any:
    text = POLICY.replace("users: [alice, bob, carol, dave, erin, frank, gina]",
                          "users: {alice: {}, bob: {slack: U0BOB}, carol: {slack: U0CAROL}, "
                          "dave: {}, erin: {}, frank: {}, gina: {}}")
    env = make_env(sessions, tmp_path, text)
    env.st.settings = dataclasses.replace(env.st.settings,
                                          slack_signing_secret=Secret(SECRET))
    with env.client:
        yield env


def test_a_signed_click_decides_through_every_check(slack_env: Env) -> None:
    env = slack_env
    req = env.ask("alice")
    r = _post(env, _body(req["id"]))
    assert r.status_code == 200, r.text
    body = env.get("alice", f"/api/v1/requests/{req['id']}").json()
    assert body["steps"][0]["approvals"][0] == {**body["steps"][0]["approvals"][0],
                                                "approver": "bob", "via": "slack"}
    recorded = env.events(subject=f"request:{req['id']}", type="approval.recorded")
    assert recorded[0]["actor"] == {"kind": "user", "id": "bob", "via": "slack"}
    # a Slack user with no Accord user behind them decides nothing
    r = _post(env, _body(req["id"], user="U0NOBODY"))
    assert r.status_code == 403 and "not mapped" in r.json()["detail"]


@pytest.mark.parametrize("attack", ["forged", "stale", "future", "modified"])
def test_forged_stale_or_modified_clicks_are_refused(slack_env: Env, attack: str) -> None:
    env = slack_env
    req = env.ask("alice")
    before = len(env.events())
    body = _body(req["id"])
    if attack == "forged":
        r = _post(env, body, secret="not-the-secret")
    elif attack == "stale":
        r = _post(env, body, age=400)
    elif attack == "future":
        r = _post(env, body, age=-400)
    else:
        stamp = str(int(env.clock().timestamp()))
        good = signature(SECRET, stamp, body)
        r = _post(env, _body(req["id"], action="deny"), sig=good)
    assert r.status_code == 401, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert len(env.events()) == before
    assert env.get("alice", f"/api/v1/requests/{req['id']}").json()["status"] == "pending"


def test_a_replayed_click_is_refused(slack_env: Env) -> None:
    env = slack_env
    req = env.ask("alice")
    body = _body(req["id"], action="deny")
    stamp = str(int(env.clock().timestamp()))
    sig = signature(SECRET, stamp, body)
    headers = {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": sig}
    assert env.client.post(URL, content=body, headers=headers).status_code == 200
    again = env.client.post(URL, content=body, headers=headers)
    assert again.status_code == 401 and "replay" in again.json()["detail"]


def test_the_slack_message_is_updated_through_response_url(slack_env: Env) -> None:
    env = slack_env
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200)

    req = env.ask("alice")
    assert _post(env, _body(req["id"], response_url="https://hooks.slack.com/actions/T1/1/x"))\
        .status_code == 200
    transport = httpx.MockTransport(handler)
    original = httpx.post

    def post(url: str, **kw: Any) -> httpx.Response:
        with httpx.Client(transport=transport) as client:
            return client.post(url, **kw)

    httpx.post = post  # type: ignore[assignment]
    try:
        runner = JobRunner(env.st.sessions, env.st.policies, env.st.connectors,
                           env.st.secrets, env.clock)
        assert runner.run_once() == 1
    finally:
        httpx.post = original  # type: ignore[assignment]
    assert seen and seen[0]["replace_original"] is True
    assert "approved by bob" in seen[0]["text"]


# ---------------------------------------------------------------- hostile but signed


@pytest.mark.parametrize("rid", [2**31, 999999999999999999])
def test_a_request_id_beyond_the_id_column_is_a_404_not_a_500(slack_env: Env,
                                                                 rid: int) -> None:
    # Signed clicks are still input: an id no row can have (ids are 32-bit on PostgreSQL)
    # is a 404 as on the API, never "integer out of range" from the database (a 500).
    env = slack_env
    before = len(env.events())
    r = _post(env, _body(rid))
    assert r.status_code == 404, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["detail"] == f"request {rid} does not exist"
    assert len(env.events()) == before


def _queued_responses(env: Env) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from accord.jobs.models import Job

    with env.st.sessions() as session:
        return [dict(j.payload) for j in session.execute(
            select(Job).where(Job.kind == "slack.respond")).scalars()]


@pytest.mark.parametrize("url", [
    "https://evil.example/actions/T1/1/x",
    "https://hooks.slack.com.evil.example/actions/T1/1/x",
    "https://evil.example@hooks.slack.co/actions/T1/1/x",
    "https://hooks.slack.com:8443/actions/T1/1/x",
    "https://127.0.0.1/actions/T1/1/x",
])
def test_a_response_url_off_slack_is_refused_and_never_called(
        slack_env: Env, url: str, caplog: pytest.LogCaptureFixture) -> None:
    env = slack_env
    req = env.ask("alice")
    with caplog.at_level("WARNING", logger="accord.notify"):
        r = _post(env, _body(req["id"], response_url=url))
    assert r.status_code == 422, r.text
    assert "response_url" in r.json()["detail"]
    assert "notify.slack.response_hosts" in r.json()["detail"]
    # nothing decided, nothing queued to call that host, and the operator can see why
    assert env.get("alice", f"/api/v1/requests/{req['id']}").json()["status"] == "pending"
    assert not env.events(subject=f"request:{req['id']}", type="approval.recorded")
    assert _queued_responses(env) == []
    assert any("response_hosts" in m for m in caplog.messages), caplog.messages


def test_response_hosts_are_configurable(sessions: sessionmaker[Session],
                                         tmp_path: Path) -> None:
    text = POLICY.replace("users: [alice, bob, carol, dave, erin, frank, gina]",
                          "users: {alice: {}, bob: {slack: U0BOB}, carol: {}, dave: {}, "
                          "erin: {}, frank: {}, gina: {}}")
    text += "notify: {slack: {webhook_url_env: SLACK_URL, " \
            "response_hosts: [hooks.slack.example, '*.grid.example']}}\n"
    env = make_env(sessions, tmp_path, text)
    env.st.settings = dataclasses.replace(env.st.settings, slack_signing_secret=Secret(SECRET))
    with env.client:
        first, second, third = env.ask("alice"), env.ask("alice"), env.ask("alice")
        assert _post(env, _body(first["id"], response_url="https://hooks.slack.example/r/1"))\
            .status_code == 200
        assert _post(env, _body(second["id"], response_url="https://a.grid.example/r/2"))\
            .status_code == 200
        # the default host is no longer trusted once the list is set
        r = _post(env, _body(third["id"], response_url="https://hooks.slack.com/r/3"))
        assert r.status_code == 422, r.text
        assert [j["url"] for j in _queued_responses(env)] == [
            "https://hooks.slack.example/r/1", "https://a.grid.example/r/2"]
