"""Request-lifecycle throughput and latency of the real HTTP API on PostgreSQL.

Starts `accord serve` as a subprocess against a fresh PostgreSQL database, then
drives it with C concurrent HTTP clients through two phases:

* auto_approve:   POST /api/v1/requests to `bench-auto`; the policy approves at once
                  and the response must say "active".
* create_approve: POST /api/v1/requests to `bench-approve` ("pending"), then
                  POST /api/v1/requests/{id}/approve by a lead ("active").

Prints one JSON object on stdout (requests/s, p50/p95/p99 latency, errors, targets).
Progress and a short summary go to stderr unless --json-only. Exit status 1 when
any call failed (the JSON says so too), 0 otherwise; missed targets do not change
the exit status because they depend on the machine.

    .venv/bin/python benchmarks/lifecycle.py --requests 2000 --clients 8
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

HOST = "127.0.0.1"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REQUESTERS = [f"user{i}" for i in range(64)]
LEADS = [f"lead{i}" for i in range(4)]
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 30.0
MAX_ERROR_SAMPLES = 5

TARGETS = {
    "auto_approve_requests_per_s": 300.0,
    "auto_approve_p95_ms": 50.0,
    "create_approve_lifecycles_per_s": 100.0,
}


# ---------------------------------------------------------------- setup


def policy_text() -> str:
    users = ", ".join(REQUESTERS + LEADS)
    return f"""\
# Written by benchmarks/lifecycle.py
users: [{users}]
groups:
  engineers: [{", ".join(REQUESTERS)}]
  leads: [{", ".join(LEADS)}]
resources:
  - {{name: bench-auto, kind: generic, labels: {{env: auto}}, roles: [read]}}
  - {{name: bench-approve, kind: generic, labels: {{env: manual}}, roles: [read]}}
workflows:
  - name: bench-auto
    match: 'resource.labels.env == "auto"'
    max_duration: 8h
    require_reason: false
    auto_approve: '"engineers" in request.requester.groups'
    steps: [{{approvers: [leads]}}]
  - name: bench-approve
    match: 'resource.labels.env == "manual"'
    max_duration: 8h
    require_reason: false
    steps: [{{name: lead, approvers: [leads]}}]
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def with_database(url: str, name: str) -> str:
    base, _, _old = url.rpartition("/")
    return f"{base}/{name}"


@contextmanager
def database(explicit_url: str | None, admin_url: str) -> Iterator[str]:
    """The given database, or a fresh `accord_bench_<random>` dropped afterwards."""
    if explicit_url:
        yield explicit_url
        return
    name = f"accord_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def issue_tokens(database_url: str, config: Path, data_dir: Path) -> dict[str, str]:
    """Migrate the database, record the policy and issue one token per user, in-process."""
    from accord.bootstrap import build_state
    from accord.db import transaction
    from accord.identity import service as identity
    from accord.ledger.events import Actor, Via
    from accord.settings import Settings

    settings = Settings.from_env({
        "ACCORD_DATABASE_URL": database_url,
        "ACCORD_CONFIG": str(config),
        "ACCORD_DATA_DIR": str(data_dir),
    })
    st = build_state(settings, config_path=config, upgrade="if-empty")
    tokens: dict[str, str] = {}
    actor = Actor("system", "accord-bench", Via.CLI)
    try:
        with transaction(st.sessions) as session:
            for user in REQUESTERS + LEADS:
                _row, secret = identity.issue(
                    session, policy=st.policies.current, user=user, actor=actor,
                    now=st.now(), name="bench",
                )
                tokens[user] = secret
    finally:
        bind = st.sessions.kw.get("bind")
        if bind is not None:
            bind.dispose()
    return tokens


def serve_supports_workers() -> bool:
    from accord.cli.serve import serve

    return "workers" in inspect.signature(serve).parameters


def start_server(
    port: int, config: Path, database_url: str, data_dir: Path, log: Path, workers: int
) -> subprocess.Popen[bytes]:
    accord = Path(sys.executable).parent / "accord"
    cmd = [str(accord), "serve", "--host", HOST, "--port", str(port), "--config", str(config),
           "--log-level", "warning"]
    if workers > 1 and serve_supports_workers():
        cmd += ["--workers", str(workers)]
    env = {**os.environ, "ACCORD_DATABASE_URL": database_url, "ACCORD_CONFIG": str(config),
           "ACCORD_DATA_DIR": str(data_dir)}
    env.pop("ACCORD_TOKEN", None)
    with log.open("wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_healthy(proc: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"accord serve exited with {proc.returncode}:\n{tail(log)}")
            try:
                if client.get(f"{base_url}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"accord serve not healthy after {STARTUP_TIMEOUT_S:.0f}s:\n{tail(log)}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)


def _cpu_and_ppid(pid: int) -> tuple[float, int] | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[1])
    except (OSError, ValueError, IndexError):
        return None


def process_cpu_s(pid: int) -> float | None:
    """User+system CPU seconds of `pid` and its live children (server workers), Linux only."""
    own = _cpu_and_ppid(pid)
    if own is None:
        return None
    total = own[0]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(pid):
            info = _cpu_and_ppid(int(entry.name))
            if info is not None and info[1] == pid:
                total += info[0]
    return total


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------- load


@dataclass
class Phase:
    """What one phase measured: per-unit latency (lifecycle or request) and per call."""

    name: str
    units: int = 0
    elapsed_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    calls_ms: dict[str, list[float]] = field(default_factory=dict)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    server_cpu_s: float | None = None
    client_cpu_s: float = 0.0

    def fail(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(what)

    def call(self, name: str, ms: float) -> None:
        self.calls_ms.setdefault(name, []).append(ms)


class CallFailed(Exception):
    pass


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on one connection.

    On a 2-core machine the load generator shares the CPU with the server and
    PostgreSQL; httpx costs about 2 ms of CPU per call, this costs a tenth of that,
    so the figures describe the server rather than the client.
    """

    def __init__(self, base_url: str) -> None:
        hostport = base_url.split("://", 1)[1]
        self.host, _, port = hostport.partition(":")
        self.port = int(port or 80)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> RawClient:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()

    async def post(self, path: str, body: dict[str, Any], token: str) -> tuple[int, bytes]:
        return await self.call("POST", path, body, token)

    async def call(self, method: str, path: str, body: Any, token: str,
                   content_type: str = "application/json") -> tuple[int, bytes]:
        """One request with a JSON body; the status and the body of the answer."""
        assert self.reader is not None and self.writer is not None
        payload = json.dumps(body).encode()
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()
        self.writer.write(head + payload)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"connection":
                close = value.strip().lower() == b"close"
        answer = await self.reader.readexactly(length)
        if close:  # the server ends kept-alive connections after a number of requests
            await self.__aexit__()
            await self.__aenter__()
        return status, answer


async def post(
    client: RawClient, phase: Phase, call: str, path: str, token: str,
    body: dict[str, Any], expect_status: str,
) -> dict[str, Any]:
    """One POST; records its latency, raises CallFailed on a non-2xx or unexpected status."""
    start = time.perf_counter()
    try:
        status, raw = await asyncio.wait_for(client.post(path, body, token), CALL_TIMEOUT_S)
    except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError) as exc:
        raise CallFailed(f"{call}: {type(exc).__name__}: {exc}") from None
    ms = (time.perf_counter() - start) * 1000
    if not 200 <= status < 300:
        raise CallFailed(f"{call}: HTTP {status}: {raw[:300]!r}")
    data: dict[str, Any] = json.loads(raw)
    if data.get("status") != expect_status:
        raise CallFailed(f"{call}: status {data.get('status')!r}, expected {expect_status!r}")
    phase.call(call, ms)
    return data


Job = Callable[[RawClient, Phase, int], Awaitable[None]]


async def run_phase(
    name: str, job: Job, count: int, clients: int, base_url: str, server_pid: int, quiet: bool
) -> Phase:
    """`count` jobs pulled from one queue by `clients` workers, each with its own connection."""
    phase = Phase(name)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def worker() -> None:
        async with RawClient(base_url) as client:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                start = time.perf_counter()
                try:
                    await job(client, phase, i)
                except CallFailed as exc:
                    phase.fail(str(exc))
                    continue
                phase.latencies_ms.append((time.perf_counter() - start) * 1000)
                phase.units += 1

    server_before = process_cpu_s(server_pid)
    client_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    phase.elapsed_s = time.perf_counter() - started
    phase.client_cpu_s = time.process_time() - client_before
    server_after = process_cpu_s(server_pid)
    if server_before is not None and server_after is not None:
        phase.server_cpu_s = server_after - server_before
    if not quiet:
        print(f"  {name}: {count} in {phase.elapsed_s:.2f}s, {phase.errors} error(s)",
              file=sys.stderr)
    return phase


def auto_job(tokens: dict[str, str]) -> Job:
    async def job(client: RawClient, phase: Phase, i: int) -> None:
        user = REQUESTERS[i % len(REQUESTERS)]
        body = {"resource": "bench-auto", "role": "read", "duration": "1h",
                "reason": f"bench {i}"}
        await post(client, phase, "create", "/api/v1/requests", tokens[user], body, "active")

    return job


def approve_job(tokens: dict[str, str]) -> Job:
    async def job(client: RawClient, phase: Phase, i: int) -> None:
        user = REQUESTERS[i % len(REQUESTERS)]
        lead = LEADS[i % len(LEADS)]
        body = {"resource": "bench-approve", "role": "read", "duration": "1h",
                "reason": f"bench {i}"}
        req = await post(client, phase, "create", "/api/v1/requests", tokens[user], body,
                         "pending")
        await post(client, phase, "approve", f"/api/v1/requests/{req['id']}/approve",
                   tokens[lead], {"comment": "bench"}, "active")

    return job


async def load(
    tokens: dict[str, str], base_url: str, server_pid: int, requests: int, clients: int,
    warmup: int, quiet: bool,
) -> tuple[Phase, Phase]:
    if not quiet:
        print(f"warm-up ({warmup} auto-approved requests, {warmup // 2} lifecycles)...",
              file=sys.stderr)
    warm = [
        await run_phase("warmup_auto", auto_job(tokens), warmup, clients, base_url, server_pid,
                        quiet),
        await run_phase("warmup_approve", approve_job(tokens), warmup // 2, clients, base_url,
                        server_pid, quiet),
    ]
    for w in warm:
        if w.errors and not quiet:
            print(f"  warm-up errors: {w.error_samples}", file=sys.stderr)
    if not quiet:
        print(f"measuring {requests} of each with {clients} clients...", file=sys.stderr)
    auto = await run_phase("auto_approve", auto_job(tokens), requests, clients, base_url,
                           server_pid, quiet)
    manual = await run_phase("create_approve", approve_job(tokens), requests, clients, base_url,
                             server_pid, quiet)
    return auto, manual


# ---------------------------------------------------------------- report


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    if len(values) == 1:
        v = round(values[0], 2)
        return {"p50_ms": v, "p95_ms": v, "p99_ms": v}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50_ms": round(q[49], 2), "p95_ms": round(q[94], 2), "p99_ms": round(q[98], 2)}


def summarize(phase: Phase, rate_key: str) -> dict[str, Any]:
    rate = phase.units / phase.elapsed_s if phase.elapsed_s > 0 else 0.0
    out: dict[str, Any] = {
        rate_key: round(rate, 1),
        **percentiles(phase.latencies_ms),
        "errors": phase.errors,
        "completed": phase.units,
        "elapsed_s": round(phase.elapsed_s, 3),
        "calls": {name: {"count": len(ms), **percentiles(ms)}
                  for name, ms in sorted(phase.calls_ms.items())},
        # CPU spent per completed unit: where the machine's cores went during the phase.
        "server_cpu_ms_per_unit": (round(phase.server_cpu_s * 1000 / phase.units, 2)
                                   if phase.server_cpu_s is not None and phase.units else None),
        "client_cpu_ms_per_unit": (round(phase.client_cpu_s * 1000 / phase.units, 2)
                                   if phase.units else None),
    }
    if phase.error_samples:
        out["error_samples"] = phase.error_samples
    return out


def targets(auto: dict[str, Any], manual: dict[str, Any]) -> dict[str, Any]:
    def at_least(value: float | None, target: float) -> dict[str, Any]:
        return {"target": f">= {target:g}", "value": value,
                "met": value is not None and value >= target}

    def under(value: float | None, target: float) -> dict[str, Any]:
        return {"target": f"< {target:g}", "value": value,
                "met": value is not None and value < target}

    checks = {
        "auto_approve_requests_per_s": at_least(
            auto["requests_per_s"], TARGETS["auto_approve_requests_per_s"]),
        "auto_approve_p95_ms": under(auto["p95_ms"], TARGETS["auto_approve_p95_ms"]),
        "create_approve_lifecycles_per_s": at_least(
            manual["lifecycles_per_s"], TARGETS["create_approve_lifecycles_per_s"]),
    }
    no_errors = auto["errors"] == 0 and manual["errors"] == 0
    return {
        **checks,
        "no_errors": no_errors,
        "all_met": no_errors and all(c["met"] for c in checks.values()),
        "defined_for": "a 2-core machine at 8 clients",
    }


def print_summary(result: dict[str, Any]) -> None:
    a, m = result["auto_approve"], result["create_approve"]
    print(f"auto_approve:   {a['requests_per_s']:8.1f} req/s  p50 {a['p50_ms']} ms  "
          f"p95 {a['p95_ms']} ms  p99 {a['p99_ms']} ms  errors {a['errors']}", file=sys.stderr)
    print(f"create_approve: {m['lifecycles_per_s']:8.1f} lc/s   p50 {m['p50_ms']} ms  "
          f"p95 {m['p95_ms']} ms  p99 {m['p99_ms']} ms  errors {m['errors']}", file=sys.stderr)
    t = result["targets"]
    print(f"targets met: {t['all_met']}", file=sys.stderr)
    if result["errors"]:
        print(f"WARNING: {result['errors']} call(s) failed; figures cover successes only",
              file=sys.stderr)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=2000,
                   help="requests (phase 1) and lifecycles (phase 2) to measure (default 2000)")
    p.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients (default 8)")
    p.add_argument("--database-url",
                   help="use this PostgreSQL database as is (default: a fresh accord_bench_* "
                        "database, dropped at the end)")
    p.add_argument("--pg-admin-url", default=PG_ADMIN_URL,
                   help=f"where to create the fresh database (default {PG_ADMIN_URL})")
    p.add_argument("--port", type=int, default=0, help="server port (default: a free port)")
    p.add_argument("--server-workers", type=int, default=2,
                   help="server processes (`accord serve --workers`; default 2)")
    p.add_argument("--warmup", type=int, default=100,
                   help="unmeasured auto-approved requests first, then half as many "
                        "lifecycles (default 100)")
    p.add_argument("--json-only", action="store_true", help="print only the JSON result")
    args = p.parse_args(argv)
    if args.requests < 1 or args.clients < 1 or args.warmup < 0 or args.server_workers < 1:
        p.error("--requests, --clients and --server-workers must be >= 1, --warmup >= 0")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    quiet: bool = args.json_only
    port: int = args.port or free_port()
    base_url = f"http://{HOST}:{port}"
    workers_used = args.server_workers if serve_supports_workers() else 1
    load_before = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="accord-bench-") as tmp, \
            database(args.database_url, args.pg_admin_url) as db_url:
        tmp_dir = Path(tmp)
        config = tmp_dir / "accord.yaml"
        config.write_text(policy_text(), encoding="utf-8")
        log = tmp_dir / "server.log"
        t0 = time.perf_counter()
        tokens = issue_tokens(db_url, config, tmp_dir)
        if not quiet:
            print(f"issued {len(tokens)} tokens in {time.perf_counter() - t0:.2f}s; "
                  f"starting accord serve on {base_url}", file=sys.stderr)
        proc = start_server(port, config, db_url, tmp_dir, log, args.server_workers)
        try:
            wait_healthy(proc, base_url, log)
            auto, manual = asyncio.run(load(tokens, base_url, proc.pid, args.requests,
                                            args.clients, args.warmup, quiet))
        finally:
            stop_server(proc)
    auto_out = summarize(auto, "requests_per_s")
    manual_out = summarize(manual, "lifecycles_per_s")
    errors = auto.errors + manual.errors
    return {
        "backend": "postgresql",
        "clients": args.clients,
        "requests": args.requests,
        "server_workers": workers_used,
        "auto_approve": auto_out,
        "create_approve": manual_out,
        "errors": errors,
        "ok": errors == 0,
        "targets": targets(auto_out, manual_out),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "loadavg_before": load_before},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    if not args.json_only:
        print_summary(result)
    print(json.dumps(result, indent=2))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
