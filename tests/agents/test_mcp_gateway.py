"""The MCP gateway (`/gateway/mcp/<resource>`), driven by the `mcp` SDK's own client in front
of the tests' own upstream MCP server: tools hidden and refused by role, every call in the
ledger bound to the grant, revocation ending access at the next call, and bad input
answered with errors that affect nothing else."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp.shared.exceptions import MCPError
from sqlalchemy.orm import Session, sessionmaker

from tests.agents.mcpclient import connect, payload, serve
from tests.agents.policies import AGENTS_POLICY
from tests.agents.test_principals import agent_token
from tests.agents.upstream import Upstream, upstream
from tests.conftest import Env, make_env

MCP_RESOURCE = """\
  - name: tools
    kind: mcp
    labels: {env: prod}
    owners: [dba]
    roles: [use, admin]
    mcp:
      url: UPSTREAM
      roles: {use: [echo, "get_*"], admin: ["*"]}
"""
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture
def up() -> Iterator[Upstream]:
    with upstream() as u:
        yield u


@pytest.fixture
def env(sessions: sessionmaker[Session], tmp_path: Path, up: Upstream) -> Iterator[Env]:
    text = AGENTS_POLICY.replace("workflows:\n", MCP_RESOURCE.replace("UPSTREAM", up.url)
                                 + "workflows:\n")
    e = make_env(sessions, tmp_path, text)
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
            assert names == ["echo", "get_time"]
            said = await client.call_tool("echo", {"text": "hello"})
            assert said.content[0].text == "echo: hello"
            assert payload(await client.call_tool("get_time", {})) == "12:00"
            with pytest.raises(MCPError) as refused:
                await client.call_tool("drop_table", {"table": "orders"})
            assert refused.value.error.code == -32001
            assert "not allowed for role use" in refused.value.error.message

    anyio.run(agent)
    assert up.calls == {"echo": 1, "get_time": 1}  # drop_table never reached the upstream
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
            assert names == ["drop_table", "echo", "get_time"]
            assert payload(await client.call_tool("drop_table", {"table": "t"})) == "dropped t"

    anyio.run(agent)
    assert up.calls == {"drop_table": 1}


def test_revocation_ends_access_at_the_next_call(env: Env, base: str, up: Upstream) -> None:
    req, conn = granted(env)

    async def agent() -> None:
        async with connect(gateway_url(base), conn["token"]) as client:
            assert payload(await client.call_tool("get_time", {})) == "12:00"
            r = await anyio.to_thread.run_sync(
                lambda: env.act("alice", req["id"], "revoke", comment="done"))
            assert r.status_code == 200, r.text
            t0 = anyio.current_time()
            with pytest.raises(Exception):  # noqa: B017 - the transport's 403, whatever its type
                await client.call_tool("get_time", {})
            assert anyio.current_time() - t0 < 2

    anyio.run(agent)
    assert up.calls == {"get_time": 1}
    [refused] = env.events(type="gateway.login_refused")
    assert "no active grant" in refused["data"]["reason"]
    assert refused["actor"]["id"] == "buildbot"


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

    malformed = post(b'{"jsonrpc": "2.0", "id": 1, "method": ')
    assert malformed.status_code >= 400 and malformed.json()["error"]["code"] == -32700
    unknown = post(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "resources/list",
                               "params": {}}).encode())
    assert "error" in unknown.json(), unknown.text
    huge = post(json.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
        "name": "echo", "arguments": {"text": "x" * (5 << 20)}}}).encode())
    assert huge.status_code == 413 or "error" in huge.json(), huge.text[:200]
    assert up.calls["echo"] == 0

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

    text = AGENTS_POLICY.replace("workflows:\n", MCP_RESOURCE + "workflows:\n")
    with pytest.raises(PolicyError) as exc:
        parse_policy_text(text.replace(*change))
    assert any(str(p).startswith(expected) for p in exc.value.problems), exc.value.problems
