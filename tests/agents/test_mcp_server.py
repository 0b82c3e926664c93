"""Accord as an MCP server (`/mcp`, streamable HTTP), driven by the `mcp` SDK's own client:
the five tools, the agent's token, the API's permission checks and ledger events."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.agents.mcpclient import connect, error_text, payload, serve
from tests.agents.policies import AGENTS_POLICY
from tests.agents.test_principals import agent_token
from tests.conftest import Env, make_env

SRC = Path(__file__).resolve().parents[2] / "src"
TOOLS = {"list_resources", "request_access", "request_status", "my_grants", "relinquish"}


@pytest.fixture
def env(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Env]:
    e = make_env(sessions, tmp_path, AGENTS_POLICY)
    with e.client:
        yield e


@pytest.fixture
def url(env: Env) -> Iterator[str]:
    with serve(env.st) as base:
        yield base + "/mcp"


def test_an_agent_asks_its_owner_approves_and_it_gives_the_access_back(
        env: Env, url: str) -> None:
    token = agent_token(env)

    async def agent() -> None:
        async with connect(url, token) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            assert tools == TOOLS
            catalog = payload(await client.call_tool("list_resources", {}))
            assert [r["name"] for r in catalog] == ["orders-db"]
            req = payload(await client.call_tool("request_access", {
                "resource": "orders-db", "role": "read", "duration": "30m",
                "reason": "nightly report"}))
            assert req["status"] == "pending" and req["requester"] == "buildbot"
            assert req["created_via"] == "mcp"
            # The owner approves through the API while the agent polls.
            r = await anyio.to_thread.run_sync(lambda: env.act("alice", req["id"], "approve"))
            assert r.status_code == 200, r.text
            status = payload(await client.call_tool("request_status",
                                                    {"request_id": req["id"]}))
            assert status["status"] == "active"
            grants = payload(await client.call_tool("my_grants", {}))
            assert [(g["resource"], g["role"]) for g in grants] == [("orders-db", "read")]
            done = payload(await client.call_tool("relinquish", {"request_id": req["id"]}))
            assert done["status"] == "relinquished"
            assert payload(await client.call_tool("my_grants", {})) == []

    anyio.run(agent)
    [created] = env.events(type="request.created")
    assert created["actor"] == {"kind": "agent", "id": "buildbot", "via": "mcp",
                                "owner": "alice"}
    [ended] = env.events(type="grant.relinquished")
    assert ended["actor"]["kind"] == "agent" and ended["actor"]["via"] == "mcp"


def test_the_tools_refuse_what_the_api_refuses(env: Env, url: str) -> None:
    token = agent_token(env)
    theirs = env.ask("alice", role="read", reason="INC-9 check the orders")

    async def agent() -> None:
        async with connect(url, token) as client:
            unknown = await client.call_tool("request_access", {
                "resource": "payroll", "role": "read", "duration": "1h"})
            assert 'unknown resource "payroll"' in error_text(unknown)
            too_long = await client.call_tool("request_access", {
                "resource": "orders-db", "role": "read", "duration": "3h"})
            assert "over the maximum" in error_text(too_long)
            bad = await client.call_tool("request_access", {
                "resource": "orders-db", "role": "read", "duration": "soon"})
            assert "duration" in error_text(bad)
            # Someone else's request is as invisible as through the API.
            hidden = await client.call_tool("request_status", {"request_id": theirs["id"]})
            assert "does not exist or is not visible" in error_text(hidden)
            gone = await client.call_tool("relinquish", {"request_id": theirs["id"]})
            assert "does not exist or is not visible" in error_text(gone)

    anyio.run(agent)
    assert env.get("alice", f"/api/v1/requests/{theirs['id']}").json()["status"] == "pending"


def test_no_token_no_tools(env: Env, url: str) -> None:
    for headers in ({}, {"Authorization": "Bearer acc_nonsense"},
                    {"Authorization": "Basic YWxpY2U6eA=="}):
        r = httpx.post(url, headers={**headers, "Accept": "application/json, text/event-stream"},
                       json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert r.status_code == 401, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "tools" not in r.text


def test_a_revoked_token_stops_the_tools_at_once(env: Env, url: str) -> None:
    token = agent_token(env)
    [row] = [t for t in env.get("alice", "/api/v1/tokens").json() if t["user"] == "buildbot"]

    async def agent() -> None:
        async with connect(url, token) as client:
            assert payload(await client.call_tool("my_grants", {})) == []
            r = await anyio.to_thread.run_sync(
                lambda: env.call("DELETE", "alice", f"/api/v1/tokens/{row['id']}"))
            assert r.status_code == 200
            with pytest.raises(Exception):  # noqa: B017 - the transport's 401, whatever its type
                await client.call_tool("my_grants", {})

    anyio.run(agent)


def test_a_person_uses_the_tools_too(env: Env, url: str) -> None:
    async def person() -> None:
        async with connect(url, env.tokens["alice"]) as client:
            req = payload(await client.call_tool("request_access", {
                "resource": "orders-db", "role": "read", "duration": "1h",
                "reason": "INC-12 look at the orders"}))
            assert req["workflow"]["name"] == "people" and req["status"] == "pending"

    anyio.run(person)
    [created] = env.events(type="request.created")
    assert created["actor"] == {"kind": "user", "id": "alice", "via": "mcp"}


# ---------------------------------------------------------------- accord mcp (stdio)


def _stdio(env_vars: dict[str, str], *args: str) -> Any:
    from mcp import StdioServerParameters

    return StdioServerParameters(
        command=sys.executable, args=["-m", "accord.cli.main", "mcp", *args],
        env={**os.environ, "PYTHONPATH": str(SRC), **env_vars})


def test_accord_mcp_relays_stdio_to_the_server(env: Env, url: str) -> None:
    from mcp import Client

    token = agent_token(env)
    params = _stdio({"ACCORD_URL": url.removesuffix("/mcp"), "ACCORD_TOKEN": token})

    async def agent() -> None:
        async with Client(params) as client:
            assert {t.name for t in (await client.list_tools()).tools} == TOOLS
            req = payload(await client.call_tool("request_access", {
                "resource": "orders-db", "role": "read", "duration": "30m"}))
            assert req["status"] == "pending" and req["requester"] == "buildbot"

    anyio.run(agent)
    [created] = env.events(type="request.created")
    assert created["actor"]["via"] == "mcp" and created["actor"]["owner"] == "alice"


def test_accord_mcp_local_serves_from_the_database(tmp_path: Path) -> None:
    from mcp import Client
    from typer.testing import CliRunner

    from accord.cli.main import app

    config = tmp_path / "accord.yaml"
    config.write_text(AGENTS_POLICY, encoding="utf-8")
    cli_env = {"ACCORD_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
               "ACCORD_CONFIG": str(config), "ACCORD_DATA_DIR": str(tmp_path / "data")}
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"], env=cli_env).exit_code == 0
    issued = runner.invoke(app, ["token", "issue", "alice", "--agent", "buildbot"], env=cli_env)
    token = issued.stdout.strip()

    async def agent() -> None:
        async with Client(_stdio({**cli_env, "ACCORD_TOKEN": token}, "--local")) as client:
            req = payload(await client.call_tool("request_access", {
                "resource": "orders-db", "role": "read", "duration": "30m"}))
            assert req["status"] == "pending" and req["created_via"] == "mcp"
            again = payload(await client.call_tool("request_status",
                                                   {"request_id": req["id"]}))
            assert again["id"] == req["id"]

    anyio.run(agent)
    refused = runner.invoke(app, ["mcp", "--local"], env={**cli_env, "ACCORD_TOKEN": "acc_x"})
    assert refused.exit_code == 1 and "invalid token" in refused.stderr


def test_building_the_mcp_server_leaves_the_root_logger_alone() -> None:
    """The SDK's constructor configures the root logger (a rich handler at INFO) when nothing
    did yet: a benchmark building the app then printed every httpx request."""
    script = ("import logging\n"
              "from accord.api import mcp\n"
              "mcp.build(None, None)  # type: ignore[arg-type]\n"
              "root = logging.getLogger()\n"
              "print(len(root.handlers), root.level)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(SRC)}, check=True, timeout=60)
    assert out.stdout.split() == ["0", str(logging.WARNING)]
