"""MCP gateway benchmark: a trivial tool's calls, directly and through Accord's MCP gateway
(auditing on: every call a `gateway.tool_call` in the ledger), from 8 concurrent sessions.

It starts an upstream MCP server (this script with --upstream, a tool that returns "ok")
and Accord on SQLite in a temporary directory (`accord serve --no-worker` and an `accord
worker`, the production layout; --embedded: `accord serve` alone, its jobs in its own
process), with an agent whose grant on the MCP resource the policy approves at once.
--sessions clients call the tool back to back: --warmup seconds on each side first (not
measured), then --rounds times for --seconds straight at the upstream, then through the
gateway, interleaved so that both sides see the same machine load. The clients are wrk
(`--client wrk`, the default when it is installed: Debian's `wrk`, C, one thread, one
keep-alive connection per session, each answer checked to be the tool's result), or the
`mcp` SDK's own `Client` (`--client sdk`: in this process, each warmed by a call). The
SDK's client costs about 1.1 ms of CPU per call, more than the upstream and the gateway
together, so on 2 cores it takes the CPU both measured paths need and the latency it
reports is mostly its own queueing; wrk costs a few µs a call, as a load generator
should. Prints each round to stderr and one JSON object: per
round, calls/s and latency percentiles of each side, CPU microseconds per call of each
process (`procstat`), the throughput ratio and the latency the gateway adds; and the
medians of those over the rounds (targets: ratio >= 0.5, p99 added < 10 ms on 2 cores).

Run: .venv/bin/python benchmarks/gateway_mcp.py [--sessions 8] [--seconds 10]
     [--rounds 3] [--embedded] [--client wrk|sdk]
(wrk: `apt-get install wrk`; without it the SDK's client is used, and the JSON says so.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from procstat import Breakdown, cmdline, descendants  # beside this file (sys.path[0])

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


def wait_http(url: str, timeout: float = 180) -> None:
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


# One tools/call of `ping` as the SDK's client sends it over the per-request protocol.
CALL = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
    "name": "ping", "arguments": {}, "_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}}}}, separators=(",", ":"))

# wrk's script: the call, each answer checked (an HTTP 200 carrying a JSON-RPC error, or
# a tool's error, counts as an error), and the figures printed as one JSON line.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [==[BODY]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["MCP-Protocol-Version"] = "2026-07-28"
wrk.headers["Mcp-Method"] = "tools/call"
wrk.headers["Mcp-Name"] = "ping"
AUTH
local threads = {}
function setup(thread) table.insert(threads, thread) end
bad = 0
function response(status, headers, body)
  if status ~= 200 or not string.find(body, '"isError":false', 1, true) then
    bad = bad + 1
  end
end
function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  for _, t in ipairs(threads) do errors = errors + t:get("bad") end
  io.write(string.format(
    '{"calls": %d, "errors": %d, "seconds": %.6f, "p50_us": %d, "p99_us": %d}\\n',
    summary.requests, errors, summary.duration / 1e6, latency:percentile(50),
    latency:percentile(99)))
end
"""


def drive_wrk(url: str, token: str | None, sessions: int, seconds: float,
              tmp: str) -> dict[str, Any]:
    """wrk: `sessions` keep-alive connections calling `ping` back to back for `seconds`."""
    auth = f'wrk.headers["Authorization"] = "Bearer {token}"' if token else ""
    script = Path(tmp) / f"wrk-{os.getpid()}.lua"
    script.write_text(WRK_SCRIPT.replace("BODY", CALL).replace("AUTH", auth),
                      encoding="utf-8")
    out = subprocess.run(["wrk", "-t1", f"-c{sessions}", f"-d{max(1, round(seconds))}s",
                          "--timeout", "30s", "-s", str(script), url],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout}")
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    return {"calls": figures["calls"], "errors": figures["errors"],
            "calls_per_s": round(figures["calls"] / figures["seconds"], 1),
            "p50_ms": round(figures["p50_us"] / 1000, 2),
            "p99_ms": round(figures["p99_us"] / 1000, 2)}


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3) if values else 0.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10, help="of each side in each round")
    ap.add_argument("--rounds", type=int, default=3, help="direct, then gateway, this often")
    ap.add_argument("--warmup", type=float, default=5, help="seconds of each side first")
    ap.add_argument("--embedded", action="store_true",
                    help="run the background jobs inside `accord serve` (its default) "
                         "instead of in an `accord worker` process of their own")
    ap.add_argument("--client", choices=["wrk", "sdk"],
                    help="the load generator (default: wrk when installed, else sdk)")
    ap.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client is None:
        args.client = "wrk" if shutil.which("wrk") else "sdk"
        if args.client == "sdk":
            print("wrk is not installed (apt-get install wrk): the mcp SDK's client drives "
                  "the calls, and its own CPU takes much of 2 cores", file=sys.stderr)
    elif args.client == "wrk" and not shutil.which("wrk"):
        raise SystemExit("--client wrk: wrk is not installed (apt-get install wrk)")
    if args.upstream:
        upstream(args.upstream)
        return 0
    procs: dict[str, subprocess.Popen[bytes]] = {}
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            up_port, port = free_port(), free_port()
            procs["upstream"] = subprocess.Popen([sys.executable, __file__, "--upstream",
                                                  str(up_port)])
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
            serve = [*accord, "serve", "--port", str(port), "--log-level", "warning"]
            if not args.embedded:
                serve.append("--no-worker")
                procs["worker"] = subprocess.Popen([*accord, "worker"], env=env)
            procs["accord"] = subprocess.Popen(serve, env=env)
            base = f"http://127.0.0.1:{port}"
            wait_http(f"{base}/healthz")
            wait_http(f"http://127.0.0.1:{up_port}/")
            auth = {"Authorization": f"Bearer {token}"}
            r = httpx.post(f"{base}/api/v1/requests", headers=auth, timeout=30, json={
                "resource": "tools", "role": "use", "duration": "8h", "reason": "bench"})
            assert r.status_code == 201 and r.json()["status"] == "active", r.text
            conn = httpx.post(f"{base}/api/v1/mcp/connect", headers=auth, timeout=30,
                              json={"resource": "tools"}).json()
            roles = _roles(os.getpid(), procs)

            def run(url: str, bearer: str | None, seconds: float) -> dict[str, Any]:
                if args.client == "wrk":
                    return drive_wrk(url, bearer, args.sessions, seconds, tmp)
                return asyncio.run(drive(url, bearer, args.sessions, seconds))

            for url, bearer in ((up_url, None), (conn["url"], conn["token"])):
                # Not measured: the shipper starts with the gateway's first call, and the
                # worker's first rounds over the new events are slower than its later ones.
                run(url, bearer, args.warmup)
            for _ in range(args.rounds):  # interleaved: the machine's load changes
                one: dict[str, Any] = {"load": round(os.getloadavg()[0], 1)}
                for side, url, bearer in (("direct", up_url, None),
                                          ("gateway", conn["url"], conn["token"])):
                    sampler = Breakdown(roles)
                    sampler.start()
                    one[side] = run(url, bearer, args.seconds)
                    one[side]["cpu_us_per_call"] = sampler.stop(max(one[side]["calls"], 1))
                one["throughput_ratio"] = round(
                    one["gateway"]["calls_per_s"] / one["direct"]["calls_per_s"], 3) \
                    if one["direct"]["calls_per_s"] else 0.0
                one["added_p99_ms"] = round(one["gateway"]["p99_ms"] - one["direct"]["p99_ms"],
                                            2)
                one["added_p50_ms"] = round(one["gateway"]["p50_ms"] - one["direct"]["p50_ms"],
                                            2)
                rounds.append(one)
                print(json.dumps(one), file=sys.stderr, flush=True)
        finally:
            for p in procs.values():
                p.terminate()
                p.wait(timeout=60)
    print(json.dumps({
        "sessions": args.sessions, "seconds": args.seconds,
        "layout": "embedded" if args.embedded else "serve --no-worker + worker",
        "client": args.client,
        "rounds": rounds,
        "throughput_ratio": median([r["throughput_ratio"] for r in rounds]),
        "added_p99_ms": median([r["added_p99_ms"] for r in rounds]),
        "added_p50_ms": median([r["added_p50_ms"] for r in rounds]),
        "targets": {"throughput_ratio": ">= 0.5", "added_p99_ms": "< 10"},
    }, indent=2))
    return 0


def _roles(me: int, procs: dict[str, subprocess.Popen[bytes]]) -> Any:
    """Name each process of the benchmark for the CPU breakdown (the shipper is a child
    of `accord serve`)."""
    pids = {p.pid: name for name, p in procs.items()}

    def role(pid: int) -> str | None:
        if pid == me or cmdline(pid).startswith("wrk"):
            return "clients"
        if pid in pids:
            return pids[pid]
        if pid in descendants(procs["accord"].pid):
            return "shipper"
        return None

    return role


if __name__ == "__main__":
    raise SystemExit(main())
