"""MCP gateway benchmark: a trivial tool's calls, directly and through Accord's MCP gateway
(auditing on: every call a `gateway.tool_call` in the ledger), from 8 concurrent sessions.

It starts an upstream MCP server (this script with --upstream, a tool that returns "ok")
and `accord serve` on SQLite in a temporary directory, with an agent whose grant on the
MCP resource the policy approves at once; then each run drives --sessions clients for
--seconds, first straight at the upstream, then at the gateway, and prints one JSON object:
calls per second and latency percentiles of each, the throughput ratio (target >= 0.5)
and the p99 latency the gateway adds (target < 10 ms on 2 cores).

Run: .venv/bin/python benchmarks/gateway_mcp.py [--sessions 8] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

POLICY = """\
users: [alice, frank]
groups: {admins: [frank]}
accord: {admins: [admins]}
resources:
  - name: tools
    kind: mcp
    owners: [frank]
    roles: [use]
    mcp: {url: "UPSTREAM", roles: {use: ["*"]}}
workflows:
  - {name: agents, match: 'request.requester.kind == "agent"', require_reason: false,
     auto_approve: 'true'}
agents:
  - {name: benchbot, owner: alice}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def upstream(port: int) -> None:
    """The upstream MCP server (stateless, JSON answers) with one trivial tool."""
    import uvicorn
    from mcp.server.mcpserver import MCPServer

    server: MCPServer = MCPServer("bench-upstream", log_level="WARNING")

    @server.tool(description="Answer ok.")
    def ping() -> str:
        return "ok"

    app = server.streamable_http_app(stateless_http=True, json_response=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


async def drive(url: str, token: str | None, sessions: int, seconds: float) -> dict[str, Any]:
    """`sessions` SDK clients calling `ping` back to back for `seconds`."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    latencies: list[float] = []
    errors = 0

    async def one() -> None:
        nonlocal errors
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http, \
                Client(streamable_http_client(url, http_client=http)) as client:
            await client.call_tool("ping", {})  # warm
            await ready.wait()
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                result = await client.call_tool("ping", {})
                latencies.append(time.perf_counter() - t0)
                errors += bool(result.is_error)

    ready = asyncio.Event()
    stop = float("inf")
    tasks = [asyncio.create_task(one()) for _ in range(sessions)]
    await asyncio.sleep(1)  # the clients connect and warm up
    if any(t.done() and t.exception() for t in tasks):
        await asyncio.gather(*tasks)  # raises what went wrong
    start = time.perf_counter()
    stop = start + seconds
    ready.set()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {"calls": len(latencies), "errors": errors,
            "calls_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(q[49] * 1000, 2), "p99_ms": round(q[98] * 1000, 2)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.upstream:
        upstream(args.upstream)
        return 0
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            up_port, port = free_port(), free_port()
            procs.append(subprocess.Popen([sys.executable, __file__, "--upstream",
                                           str(up_port)]))
            up_url = f"http://127.0.0.1:{up_port}/mcp"
            config = Path(tmp) / "accord.yaml"
            config.write_text(POLICY.replace("UPSTREAM", up_url), encoding="utf-8")
            env = {**os.environ, "ACCORD_CONFIG": str(config), "ACCORD_DATA_DIR": tmp,
                   "ACCORD_DATABASE_URL": f"sqlite:///{tmp}/accord.db"}
            accord = [sys.executable, "-m", "accord.cli.main"]
            subprocess.run([*accord, "db", "upgrade"], env=env, check=True,
                           capture_output=True)
            token = subprocess.run([*accord, "token", "issue", "alice", "--agent", "benchbot"],
                                   env=env, check=True, capture_output=True, text=True
                                   ).stdout.strip()
            procs.append(subprocess.Popen([*accord, "serve", "--port", str(port),
                                           "--log-level", "warning"], env=env))
            base = f"http://127.0.0.1:{port}"
            wait_http(f"{base}/healthz")
            wait_http(f"http://127.0.0.1:{up_port}/")
            auth = {"Authorization": f"Bearer {token}"}
            r = httpx.post(f"{base}/api/v1/requests", headers=auth, timeout=30, json={
                "resource": "tools", "role": "use", "duration": "1h", "reason": "bench"})
            assert r.status_code == 201 and r.json()["status"] == "active", r.text
            conn = httpx.post(f"{base}/api/v1/mcp/connect", headers=auth, timeout=30,
                              json={"resource": "tools"}).json()
            direct = asyncio.run(drive(up_url, None, args.sessions, args.seconds))
            gateway = asyncio.run(drive(conn["url"], conn["token"], args.sessions,
                                        args.seconds))
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=30)
    ratio = gateway["calls_per_s"] / direct["calls_per_s"] if direct["calls_per_s"] else 0
    print(json.dumps({
        "sessions": args.sessions, "seconds": args.seconds, "direct": direct,
        "gateway": gateway, "throughput_ratio": round(ratio, 3),
        "added_p99_ms": round(gateway["p99_ms"] - direct["p99_ms"], 2),
        "targets": {"throughput_ratio": ">= 0.5", "added_p99_ms": "< 10"},
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
