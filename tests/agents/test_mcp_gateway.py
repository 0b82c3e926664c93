"""The MCP gateway (`/gateway/mcp/<resource>`), driven by the `mcp` SDK's own client in front
of the tests' own upstream MCP server: tools hidden and refused by role, every call in the
ledger bound to the grant, revocation ending the session within 2 s, bad input answered
with errors that affect nothing else, and no answered call's event lost when the gateway
is killed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp.shared.exceptions import MCPError
from sqlalchemy.orm import Session, sessionmaker

from accord import migrations
from accord.db import make_engine, transaction
from accord.gateway import shipper, spool
from accord.gateway.mcp import live as mcp_live
from accord.ledger.service import INLINE
from accord.notify.message import render
from accord.worker.job_runner import detect_all
from tests.agents.mcpclient import connect, integrated, payload, serve, shipped
from tests.agents.policies import AGENTS_POLICY
from tests.agents.test_principals import agent_token
from tests.agents.upstream import Upstream, upstream
from tests.conftest import Env, make_env
from tests.gateway.conftest import children, free_port, gone

MCP_RESOURCE = """\
  - name: tools
    kind: mcp
    labels: {env: prod}
    owners: [dba]
    roles: [use, admin]
    mcp:
      url: UPSTREAM
      roles: {use: [echo, "get_*"], admin: ["*"]}
      resources: {use: ["docs://*"]}
      prompts: {use: [summarize]}
      tools: {drop_table: {approval: each_call}}
      approval_wait: WAIT
"""
DETECT = "detect: {agent_burst: {count: 5, window: 1m}}\n"
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture
def up() -> Iterator[Upstream]:
    with upstream() as u:
        yield u


@pytest.fixture
def committed(backend: str, tmp_path: Path, request: pytest.FixtureRequest
              ) -> Iterator[sessionmaker[Session]]:
    """Sessions that really commit, on a database of this test's own: the gateway waits on
    a held call in one thread while the API decides it in another (one shared connection,
    as `sessions` gives, cannot serve both)."""
    if backend == "postgresql":
        engine = request.getfixturevalue("fresh_pg")
    else:
        engine = make_engine(f"sqlite:///{tmp_path / 'accord.db'}")
        migrations.upgrade(engine)
    yield sessionmaker(bind=engine, expire_on_commit=False, info={INLINE: True})
    engine.dispose()


@pytest.fixture
def env(committed: sessionmaker[Session], tmp_path: Path, up: Upstream,
        request: pytest.FixtureRequest) -> Iterator[Env]:
    wait = getattr(request, "param", "30s")
    text = AGENTS_POLICY.replace("workflows:\n", MCP_RESOURCE.replace("UPSTREAM", up.url)
                                 .replace("WAIT", wait) + "workflows:\n") + DETECT
    e = make_env(committed, tmp_path, text)
    with e.client:
        yield e


@pytest.fixture
def base(env: Env) -> Iterator[str]:
    with serve(env.st) as url:
        yield url


def granted(env: Env, role: str = "use") -> tuple[dict[str, Any], dict[str, Any]]:
    """buildbot asks for `role` on tools, alice approves; the request and the connection."""
    agent_token(env)
    req = env.ask("buildbot", resource="tools", role=role, reason="nightly checks")
    assert env.act("alice", req["id"], "approve").json()["status"] == "active"
    r = env.post("buildbot", "/api/v1/mcp/connect", json={"resource": "tools"})
    assert r.status_code == 200, r.text
    conn: dict[str, Any] = r.json()
    return req, conn


def gateway_url(base: str) -> str:
    return f"{base}/gateway/mcp/tools"


def test_tools_are_hidden_and_refused_by_role_and_every_call_is_recorded(
        env: Env, base: str, up: Upstream) -> None:
    _req, conn = granted(env)

    async def agent() -> None:
        async with connect(gateway_url(base), conn["token"]) as client:
            names = sorted(t.name for t in (await client.list_tools()).tools)
            assert names == ["echo", "get_slowly", "get_time"]
            said = await client.call_tool("echo", {"text": "hello"})
            assert said.content[0].text == "echo: hello"
            assert payload(await client.call_tool("get_time", {})) == "12:00"
            with pytest.raises(MCPError) as refused:
                await client.call_tool("drop_table", {"table": "orders"})
            assert refused.value.error.code == -32001
            assert "not allowed for role use" in refused.value.error.message

    anyio.run(agent)
    assert up.calls == {"echo": 1, "get_time": 1}  # drop_table never reached the upstream
    shipped(base)
    calls = env.events(type="gateway.tool_call")
    assert [c["data"]["tool"] for c in calls] == ["echo", "get_time"]
    echo = calls[0]
    assert echo["subject"] == f"grant:{conn['grant_id']}"
    assert echo["resource"] == {"name": "tools", "role": "use"}
    assert echo["actor"] == {"kind": "agent", "id": "buildbot", "via": "gateway",
                             "owner": "alice"}
    data = echo["data"]
    assert data["grant_id"] == conn["grant_id"]
    assert data["argument_names"] == ["text"] and "arguments" not in data  # redacted
    assert data["arguments_sha256"] == hashlib.sha256(
        json.dumps({"text": "hello"}, separators=(",", ":")).encode()).hexdigest()
    assert data["result_bytes"] > 0 and len(data["result_sha256"]) == 64
    assert data["is_error"] is False and data["error"] is None
    assert data["duration_us"] >= 0
    [violation] = env.events(type="gateway.violation")
    assert violation["data"]["tool"] == "drop_table"
    assert violation["subject"] == f"grant:{conn['grant_id']}"
    assert violation["actor"]["owner"] == "alice"


def test_the_admin_role_sees_every_tool(env: Env, base: str, up: Upstream) -> None:
    _req, conn = granted(env, role="admin")

    async def agent() -> None:
        async with connect(gateway_url(base), conn["token"]) as client:
            names = sorted(t.name for t in (await client.list_tools()).tools)
            assert names == ["drop_table", "echo", "get_slowly", "get_time"]
            assert payload(await client.call_tool("echo", {"text": "x"})) == "echo: x"

    anyio.run(agent)
    assert up.calls == {"echo": 1}


# ---------------------------------------------------------------- per-call approval


def held_request(env: Env, approver: str = "alice") -> dict[str, Any]:
    """The tool-call request waiting for `approver` (polled: the agent's call files it)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        waiting = env.get(approver, "/api/v1/requests",
                          params={"awaiting": "me"}).json()["items"]
        if held := [r for r in waiting if r["kind"] == "tool_call"]:
            return held[0]  # type: ignore[no-any-return]
        threading.Event().wait(0.05)
    raise AssertionError("no tool-call request was filed")


def test_a_held_call_runs_once_its_owner_approves(env: Env, base: str, up: Upstream) -> None:
    _req, conn = granted(env, role="admin")
    seen: dict[str, Any] = {}

    def owner() -> None:
        seen["request"] = held_request(env)
        assert up.calls["drop_table"] == 0  # held: nothing reached the upstream yet
        r = env.act("alice", seen["request"]["id"], "approve", comment="ok, just that one")
        assert r.status_code == 200 and r.json()["status"] == "approved", r.text
        assert r.json()["grant"] is None  # a tool call grants nothing

    async def agent() -> None:
        async with connect(gateway_url(base), conn["token"]) as client, \
                anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, owner)
            said = await client.call_tool("drop_table", {"table": "tmp_1"})
            assert payload(said) == "dropped tmp_1"
            # The approval was for one call: the same call again is held anew.
            seen["again"] = await anyio.to_thread.run_sync(
                lambda: env.get("alice", "/api/v1/requests").json()["items"])

    anyio.run(agent)
    assert up.calls == {"drop_table": 1}
    rid = seen["request"]["id"]
    assert seen["request"]["tool_call"]["tool"] == "drop_table"
    assert seen["request"]["workflow"]["name"] == "agents"
    # Approval and execution are bound in the ledger by the request and the arguments' hash.
    [created] = env.events(type="request.created", subject=f"request:{rid}")
    [approved] = env.events(type="request.approved", subject=f"request:{rid}")
    [executed] = env.events(type="request.executed", subject=f"request:{rid}")
    shipped(base)
    [call] = env.events(type="gateway.tool_call")
    sha = created["data"]["tool_call"]["arguments_sha256"]
    assert created["data"]["kind"] == "tool_call"
    assert approved["data"]["tool_call"] == {"tool": "drop_table", "arguments_sha256": sha}
    assert executed["data"]["arguments_sha256"] == sha
    assert call["data"]["request_id"] == rid and call["data"]["arguments_sha256"] == sha
    assert approved["actor"]["id"] == "alice" and call["actor"]["owner"] == "alice"
    # What alice reads in her inbox, email or Slack says what she lets run.
    told = render(created, base_url="http://accord", recipient="alice", approver=True)
    assert "buildbot is an AI agent acting for alice" in told.text
    assert "one call of the tool drop_table" in told.text and "argument" in told.text
    assert told.actions == ["approve", "deny"]
    # ... and so does the request's page.
    from tests.web.test_pages import Browser, login_form

    b = Browser(env)
    assert b.post("/login/token", {"token": env.tokens["alice"],
                                   "csrf": login_form(b)}).status_code == 303
    page = b.get(f"/requests/{rid}").text
    assert "one call of <code>drop_table</code> through the MCP gateway" in page
    assert sha[:16] in page


def test_a_denied_call_is_refused(env: Env, base: str, up: Upstream) -> None:
    _req, conn = granted(env, role="admin")

    def owner() -> None:
        r = env.act("alice", held_request(env)["id"], "deny", comment="not today")
        assert r.status_code == 200, r.text

    async def agent() -> None:
        async with connect(gateway_url(base), conn["token"]) as client, \
                anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, owner)
            with pytest.raises(MCPError) as refused:
                await client.call_tool("drop_table", {"table": "orders"})
            assert refused.value.error.code == -32001
            assert "was denied" in refused.value.error.message

    anyio.run(agent)
    assert up.calls["drop_table"] == 0
    shipped(base)
    assert env.events(type="gateway.tool_call") == []


def test_a_held_call_ends_when_its_grant_is_revoked(env: Env, base: str, up: Upstream) -> None:
    req, conn = granted(env, role="admin")

    def owner() -> None:
        held_request(env)
        r = env.act("alice", req["id"], "revoke", comment="stop everything")
        assert r.status_code == 200, r.text
        seen["revoked"] = time.monotonic()

    seen: dict[str, float] = {}

    async def agent() -> None:
        async with connect(gateway_url(base), conn["token"]) as client, \
                anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, owner)
            with pytest.raises(MCPError) as ended:
                await client.call_tool("drop_table", {"table": "orders"})
            assert "is revoked" in ended.value.error.message
            assert time.monotonic() - seen["revoked"] < 2

    anyio.run(agent)
    assert up.calls["drop_table"] == 0


@pytest.mark.parametrize("env", ["0.3"], indirect=True)
def test_a_call_waiting_too_long_names_its_request_and_runs_when_asked_again(
        env: Env, base: str, up: Upstream) -> None:
    _req, conn = granted(env, role="admin")

    async def agent() -> None:
        async with connect(gateway_url(base), conn["token"]) as client:
            with pytest.raises(MCPError) as waiting:
                await client.call_tool("drop_table", {"table": "t"})
            assert waiting.value.error.code == -32003
            rid = waiting.value.error.data["request_id"]
            assert f"request {rid} is waiting" in waiting.value.error.message
            r = await anyio.to_thread.run_sync(lambda: env.act("alice", rid, "approve"))
            assert r.status_code == 200, r.text
            # Other arguments are another call: held anew, not run on this approval.
            with pytest.raises(MCPError):
                await client.call_tool("drop_table", {"table": "other"})
            assert payload(await client.call_tool("drop_table", {"table": "t"})) == "dropped t"

    anyio.run(agent)
    assert up.calls == {"drop_table": 1}
    held = [e for e in env.events(type="request.created") if e["data"].get("kind")]
    assert len(held) == 2


def test_revocation_ends_the_session_within_two_seconds(
        env: Env, base: str, up: Upstream) -> None:
    req, conn = granted(env)
    seen: dict[str, float] = {}

    async def agent() -> None:
        async with connect(gateway_url(base), conn["token"]) as client:
            assert payload(await client.call_tool("get_time", {})) == "12:00"
            r = await anyio.to_thread.run_sync(
                lambda: env.act("alice", req["id"], "revoke", comment="done"))
            assert r.status_code == 200, r.text
            t0 = anyio.current_time()
            # The grant watch (every watch_interval, 0.5 s) closes the session: calls made
            # before it looks may pass, none after.
            with pytest.raises(Exception):  # noqa: B017 - the transport's 403, whatever its type
                while anyio.current_time() - t0 < 5:
                    await client.call_tool("get_time", {})
                    await anyio.sleep(0.05)
            seen["ended"] = anyio.current_time() - t0

    anyio.run(agent)
    assert seen["ended"] < 2
    # The call that ended the loop was either refused at the door or cut off by the watch
    # closing the session under it; a new request with the token is refused either way.
    r = httpx.post(gateway_url(base), json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                   headers={**ACCEPT, "Authorization": f"Bearer {conn['token']}"})
    assert r.status_code == 403, r.text
    shipped(base)
    refused = env.events(type="gateway.login_refused")
    assert refused and all("no active grant" in e["data"]["reason"]
                           and e["actor"]["id"] == "buildbot" for e in refused)
    [opened] = env.events(type="gateway.session_opened")
    [closed] = env.events(type="gateway.session_closed")
    assert opened["data"]["session"] == closed["data"]["session"]
    assert closed["data"]["reason"] == "grant revoked"
    # Every call is recorded. One the watch's close caught (running, or let in but not yet
    # sent) was stopped, its event says so, and it is not in the close's count; only a
    # running one can have reached the upstream.
    calls = env.events(type="gateway.tool_call")
    stopped = [c for c in calls if "the call was stopped" in (c["data"]["error"] or "")]
    assert len(stopped) <= 1
    assert closed["data"]["statements"] == len(calls) - len(stopped)
    assert len(calls) - len(stopped) <= up.calls["get_time"] <= len(calls)


def test_an_answer_that_came_in_as_its_session_closed_is_withheld(
        env: Env, base: str, up: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    """The watch's close can land after a call's answer is in but before its task resumed
    (the cancellation finds nothing to cancel): the close and its count are spooled then,
    so the call is recorded as stopped and its answer withheld, as one cut off."""
    _req, conn = granted(env)
    running = mcp_live.Sessions.call

    @contextlib.contextmanager
    def closed_as_it_answers(self: mcp_live.Sessions, live: mcp_live.Live) -> Iterator[Any]:
        with running(self, live) as scope:
            yield scope
            if up.calls["echo"]:  # echo's answer is in, its task not yet on: the watch closes
                self.end(live, "grant revoked")

    monkeypatch.setattr(mcp_live.Sessions, "call", closed_as_it_answers)

    async def agent() -> None:
        async with connect(gateway_url(base), conn["token"]) as client:
            assert payload(await client.call_tool("get_time", {})) == "12:00"
            with pytest.raises(MCPError) as stopped:
                await client.call_tool("echo", {"text": "late"})
            assert "is revoked; the call was stopped" in stopped.value.error.message

    anyio.run(agent)
    shipped(base)
    [closed] = env.events(type="gateway.session_closed")
    calls = env.events(type="gateway.tool_call")
    assert [c["data"]["tool"] for c in calls] == ["get_time", "echo"]
    assert closed["data"]["statements"] == 1  # the close counted what had been answered
    late = calls[1]["data"]
    assert "the call was stopped" in late["error"] and late["result_bytes"] > 0
    assert up.calls["echo"] == 1  # it ran upstream: its answer is recorded, not returned


def test_revocation_stops_a_running_call_within_two_seconds(
        env: Env, base: str, up: Upstream) -> None:
    req, conn = granted(env)
    seen: dict[str, float] = {}

    def owner() -> None:
        deadline = time.monotonic() + 20
        while up.calls["get_slowly"] == 0:  # the call reached the upstream
            assert time.monotonic() < deadline
            threading.Event().wait(0.02)
        r = env.act("alice", req["id"], "revoke", comment="stop it")
        assert r.status_code == 200, r.text
        seen["revoked"] = time.monotonic()

    async def agent() -> None:
        async with connect(gateway_url(base), conn["token"]) as client, \
                anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, owner)
            with pytest.raises(MCPError) as stopped:
                await client.call_tool("get_slowly", {})
            seen["stopped"] = time.monotonic()
            assert "is revoked; the call was stopped" in stopped.value.error.message
        # The owner's thread is done now. The stop can come before the revoke's answer
        # reaches the owner (it is committed first), so it is compared once both are in.

    anyio.run(agent)
    assert seen["stopped"] - seen["revoked"] < 2
    shipped(base)
    [call] = env.events(type="gateway.tool_call")
    assert call["data"]["tool"] == "get_slowly" and "stopped" in call["data"]["error"]


def test_no_valid_token_no_gateway(env: Env, base: str) -> None:
    _req, conn = granted(env)
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for path, token in ((gateway_url(base), None), (gateway_url(base), "acg_nonsense"),
                        (f"{base}/gateway/mcp/orders-db", conn["token"]),
                        (f"{base}/gateway/mcp/nothing", conn["token"])):
        headers = {**ACCEPT, **({"Authorization": f"Bearer {token}"} if token else {})}
        r = httpx.post(path, headers=headers, json=body)
        assert r.status_code in (401, 403), (path, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    # Each token shown is recorded; a call with no credentials at all is only answered.
    assert len(env.events(type="gateway.login_refused")) == 3


def test_bad_messages_get_json_rpc_errors_and_hurt_nothing_else(
        env: Env, base: str, up: Upstream) -> None:
    _req, conn = granted(env)
    headers = {**ACCEPT, "Authorization": f"Bearer {conn['token']}"}
    url = gateway_url(base)

    def post(content: bytes) -> httpx.Response:
        return httpx.post(url, headers=headers, content=content, timeout=30)

    def echo(rid: int, size: int) -> bytes:
        return json.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {
            "name": "echo", "arguments": {"text": "x" * size}}}).encode()

    malformed = post(b'{"jsonrpc": "2.0", "id": 1, "method": ')
    assert malformed.status_code >= 400 and malformed.json()["error"]["code"] == -32700
    unknown = post(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/frobnicate",
                               "params": {}}).encode())
    assert unknown.json()["error"]["code"] == -32601, unknown.text
    not_a_call = post(b'{"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": 7}')
    assert "error" in not_a_call.json(), not_a_call.text
    huge = post(echo(4, 5 << 20))  # over the resource's mcp.max_body (64 KiB by default)
    assert huge.status_code == 413, huge.text[:200]
    assert huge.json()["error"] == {"code": -32600,
                                    "message": "the message is over the 64 KiB limit"}
    assert up.calls["echo"] == 0
    fits = post(echo(5, 60_000))  # under it: a call like any other
    assert fits.json()["result"]["content"][0]["text"] == "echo: " + "x" * 60_000
    assert up.calls["echo"] == 1

    async def agent() -> None:  # the same grant still works for a well-behaved client
        async with connect(url, conn["token"]) as client:
            assert payload(await client.call_tool("get_time", {})) == "12:00"

    anyio.run(agent)


@pytest.mark.parametrize(("change", "expected"), [
    (("kind: mcp", "kind: generic"), "resources[1]: a resource of kind mcp"),
    (("url: UPSTREAM", "url: ftp://x"), "resources[1].mcp.url: must be an http"),
    (("admin: [\"*\"]", "root: [\"*\"]"), 'resources[1].mcp.roles.root: unknown role "root"'),
])
def test_policy_check_checks_mcp_resources(change: tuple[str, str], expected: str) -> None:
    from accord.spec.load import PolicyError, parse_policy_text

    text = AGENTS_POLICY.replace("workflows:\n", MCP_RESOURCE.replace("WAIT", "1m")
                                 + "workflows:\n")
    with pytest.raises(PolicyError) as exc:
        parse_policy_text(text.replace(*change))
    assert any(str(p).startswith(expected) for p in exc.value.problems), exc.value.problems


# ---------------------------------------------------------------- agent-aware detectors

WEDNESDAY_10 = datetime(2026, 11, 25, 10, 0, 0, 123456, tzinfo=UTC)
SUNDAY_3 = datetime(2026, 11, 29, 3, 0, 0, 123456, tzinfo=UTC)


def calls(base: str, token: str, *made: tuple[str, dict[str, Any]]) -> None:
    """Make these tool calls through the gateway; refusals are what some tests want."""

    async def agent() -> None:
        async with connect(gateway_url(base), token) as client:
            for name, arguments in made:
                with contextlib.suppress(MCPError):
                    await client.call_tool(name, arguments)

    anyio.run(agent)
    shipped(base)


def alerts(env: Env, rule: str) -> list[dict[str, Any]]:
    detect_all(env.st.sessions, env.st.policies.current, env.st.now)
    r = env.get("dave", "/api/v1/alerts", params={"rule": rule})
    assert r.status_code == 200, r.text
    return r.json()["items"]  # type: ignore[no-any-return]


def test_an_agent_calling_refused_tools_again_and_again_is_an_alert(
        env: Env, base: str) -> None:
    env.clock.value = WEDNESDAY_10
    _req, conn = granted(env)
    calls(base, conn["token"], *[("drop_table", {"table": f"t{i}"}) for i in range(3)])
    [alert] = alerts(env, "agent_refused_tools")
    assert alert["user"] == "buildbot" and alert["severity"] == "high"
    assert len(alert["evidence"]) == 3
    assert "agent buildbot (of alice) called 3 refused tools" in alert["title"]
    assert len(alerts(env, "scope_violation")) == 3  # each refusal is one as well


def test_an_agent_at_work_while_its_owner_is_not_is_one_alert_an_hour(
        env: Env, base: str) -> None:
    env.clock.value = WEDNESDAY_10
    _req, conn = granted(env)  # filed in working hours: nothing
    calls(base, conn["token"], ("get_time", {}))
    assert alerts(env, "agent_off_hours") == []
    env.clock.value = SUNDAY_3  # a new grant (the first ended), its request and calls
    _req, conn = granted(env)
    calls(base, conn["token"], ("get_time", {}), ("echo", {"text": "x"}))
    [alert] = alerts(env, "agent_off_hours")
    assert alert["user"] == "buildbot"
    assert "asked for access outside alice's working hours (Sun 03:00 UTC)" in alert["title"]
    assert alerts(env, "off_hours") == []  # the people's rule leaves agents to this one


def test_a_burst_of_tool_calls_is_an_alert(env: Env, base: str) -> None:
    env.clock.value = WEDNESDAY_10
    _req, conn = granted(env)
    calls(base, conn["token"], *[("get_time", {})] * 4)
    assert alerts(env, "agent_burst") == []
    calls(base, conn["token"], ("get_time", {}))
    [alert] = alerts(env, "agent_burst")
    assert "agent buildbot (of alice) made 5 tool calls within 1m" in alert["title"]
    calls(base, conn["token"], *[("get_time", {})] * 7)  # the burst goes on: the same alert
    assert len(alerts(env, "agent_burst")) == 1
    env.clock.value = WEDNESDAY_10 + timedelta(minutes=1, seconds=1)  # a window later
    calls(base, conn["token"], *[("get_time", {})] * 4)
    assert len(alerts(env, "agent_burst")) == 1  # 4 in this window so far
    calls(base, conn["token"], ("get_time", {}))
    assert len(alerts(env, "agent_burst")) == 2


def test_accord_connect_gives_the_mcp_url_and_token(env: Env, base: str, up: Upstream) -> None:
    from typer.testing import CliRunner

    from accord.cli.main import app

    granted(env)
    r = CliRunner().invoke(app, ["connect", "tools"],
                           env={"ACCORD_URL": base, "ACCORD_TOKEN": env.tokens["buildbot"]})
    assert r.exit_code == 0, r.output
    url = next(ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("URL:"))
    token = next(ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("token:"))
    assert url == gateway_url(base) and token.startswith("acg_")
    calls(base, token, ("echo", {"text": "via the CLI's token"}))
    assert up.calls["echo"] == 1


def test_resources_and_prompts_are_governed_as_tools_are(
        env: Env, base: str, up: Upstream) -> None:
    _req, conn = granted(env)

    async def agent() -> None:
        async with connect(gateway_url(base), conn["token"]) as client:
            listed = [str(r.uri) for r in (await client.list_resources()).resources]
            assert listed == ["docs://readme"]
            read = await client.read_resource("docs://readme")
            assert read.contents[0].text == "read me"
            with pytest.raises(MCPError) as refused:
                await client.read_resource("secret://keys")
            assert refused.value.error.code == -32001
            prompts = [p.name for p in (await client.list_prompts()).prompts]
            assert prompts == ["summarize"]
            got = await client.get_prompt("summarize", {"text": "the news"})
            assert "Summarize: the news" in got.messages[0].content.text
            with pytest.raises(MCPError):
                await client.get_prompt("exfiltrate", {})

    anyio.run(agent)
    assert up.calls == {"docs://readme": 1, "summarize": 1}
    shipped(base)
    done = env.events(type="gateway.tool_call")
    assert sorted((e["data"]["method"], e["data"]["tool"]) for e in done) == [
        ("prompts/get", "summarize"), ("resources/read", "docs://readme")]
    refused_ = env.events(type="gateway.violation")
    assert sorted(e["data"]["tool"] for e in refused_) == ["exfiltrate", "secret://keys"]


def test_an_upstream_started_as_a_command_speaks_stdio(
        env: Env, base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setenv("UPSTREAM_SECRET", "s3")
    monkeypatch.setenv("NOT_PASSED", "the gateway's own secret")
    script = Path(__file__).with_name("stdio_upstream.py")
    text = env.policy_path.read_text(encoding="utf-8").replace("workflows:\n", f"""\
  - name: local-tools
    kind: mcp
    owners: [dba]
    roles: [use]
    mcp:
      command: [{json.dumps(sys.executable)}, {json.dumps(str(script))}]
      env: [UPSTREAM_SECRET]
      roles: {{use: ["*"]}}
workflows:
""")
    from accord.ledger.events import Actor
    from accord.requests import reload as reloader

    env.write_policy(text)
    with transaction(env.st.sessions) as session:
        result = reloader.reload(session, store=env.st.policies, actor=Actor.system("cli"))
    reloader.install_after_commit(env.st.policies, result)
    assert "local-tools" in env.st.policies.current.resources
    agent_token(env)
    req = env.ask("buildbot", resource="local-tools", role="use", reason="x")
    assert env.act("alice", req["id"], "approve").status_code == 200
    conn = env.post("buildbot", "/api/v1/mcp/connect", json={"resource": "local-tools"}).json()

    async def agent() -> list[str]:
        async with connect(f"{base}/gateway/mcp/local-tools", conn["token"]) as client:
            return [payload(await client.call_tool("whoami", {})) for _ in range(2)]

    first, second = anyio.run(agent)
    assert first.startswith("stdio pid ") and "secret=s3" in first
    assert "other=-" in first  # only the named variables (and the SDK's safe defaults)
    assert first.split()[2] == second.split()[2]  # one process serves the calls
    shipped(base)
    assert [e["data"]["tool"] for e in env.events(type="gateway.tool_call")] == ["whoami"] * 2


# ---------------------------------------------------------------- a gateway killed
# An `accord serve` killed (SIGKILL) after its MCP gateway answered calls loses none of
# their events: they were in its spool before the answers went back, and its shipper (or,
# killed too, the next start) puts them in the ledger, once.

ACCORD = [sys.executable, "-m", "accord.cli.main"]


@pytest.fixture
def killed(env: Env, tmp_path: Path, up: Upstream) -> Iterator[tuple[str, subprocess.Popen[bytes],
                                                                       Path]]:
    """`accord serve` in a process of its own on the tests' database, its shipper shipping
    only once an hour (so what is in the ledger after the kill came from the spool)."""
    port = free_port()
    config = tmp_path / "serve.yaml"
    config.write_text(env.policy_path.read_text(encoding="utf-8")
                      + "gateway: {flush_interval: 1h}\n", encoding="utf-8")
    url = env.st.sessions.kw["bind"].url.render_as_string(hide_password=False)
    data = tmp_path / "serve-data"
    environ = {**os.environ, "ACCORD_CONFIG": str(config), "ACCORD_DATA_DIR": str(data),
               "ACCORD_DATABASE_URL": url.replace("+psycopg", "")}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*ACCORD, "serve", "--no-worker", "--port", str(port),
                                 "--log-level", "warning"], env=environ, stdout=out,
                                stderr=out)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a loaded machine starts Python slowly
        while True:  # another process: nothing to await but its port
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "accord serve did not start: " + log.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            time.sleep(0.05)
        yield base, proc, data / "gateway-spool"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


@pytest.mark.parametrize("shipper_too", [False, True], ids=["serve", "serve-and-shipper"])
def test_a_killed_gateway_loses_no_answered_call(
        env: Env, up: Upstream, killed: tuple[str, subprocess.Popen[bytes], Path],
        shipper_too: bool) -> None:
    base, proc, spooled = killed
    _req, conn = granted(env)

    async def agent() -> None:
        async with connect(f"{base}/gateway/mcp/tools", conn["token"]) as client:
            for i in range(3):
                assert payload(await client.call_tool("echo", {"text": f"{i}"})) == f"echo: {i}"
            with pytest.raises(MCPError):
                await client.call_tool("drop_table", {"table": "orders"})

    anyio.run(agent)  # every call answered: now the gateway dies
    victims = [*children(proc.pid), proc.pid] if shipper_too else [proc.pid]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while not all(gone(pid) for pid in victims):  # init reaps the orphaned shipper
        assert time.monotonic() < deadline, "a killed process lived on"
        time.sleep(0.02)
    if shipper_too:  # nothing shipped it: the next start does
        assert env.events(type="gateway.tool_call") == []
        assert shipper.replay_dead(env.st.sessions, spooled, per_event=1000,
                                   max_text=16384) > 0
    else:  # the orphaned shipper saw its gateway gone and shipped the rest
        deadline = time.monotonic() + 30
        while any(spooled.iterdir()):
            assert time.monotonic() < deadline, "the shipper did not finish the spool"
            time.sleep(0.05)
    assert not any(spooled.iterdir())
    integrated(env.st)
    calls = env.events(type="gateway.tool_call")
    assert sorted(c["data"]["argument_names"] == ["text"] and c["data"]["tool"]
                  for c in calls) == ["echo"] * 3
    assert all(c["subject"] == f"grant:{conn['grant_id']}" for c in calls)
    assert len({c["data"]["session"] for c in calls}) == 1
    [refused] = env.events(type="gateway.violation")
    assert refused["data"]["tool"] == "drop_table"
    [closed] = env.events(type="gateway.session_closed")
    assert closed["data"]["reason"] == spool.RECOVERED and closed["data"]["grant_id"] == \
        conn["grant_id"]
    assert shipper.replay_dead(env.st.sessions, spooled, per_event=1000, max_text=16384) == 0
