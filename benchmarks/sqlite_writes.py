"""The embedded SQLite server under writes: its write ceiling, latency, and a burst past it.

Starts a real `accord serve` (one process, background jobs included: the default
deployment) on a fresh SQLite file and drives it over HTTP:

* ceiling:  for each concurrency C (default 1, 8, 50), C clients file auto-approved
            requests (`POST /api/v1/requests`, answered "active") back to back for
            `--seconds`; writes/s counts the 2xx answers. A client answered 503 waits
            the `Retry-After` it was given (as a well-behaved client does) and goes on.
            The run at 8 clients gives the p50/p99 latency target (p99 < 100 ms).
* burst:    `--burst` requests (default 400) at `--burst-clients` (default 50), one shot
            each, half `POST /api/v1/requests`, half reads (`GET /api/v1/requests` and
            `GET /api/v1/requests/{id}`), while one more client asks `/healthz` in a loop.
            Counts 2xx / 503 (and whether each 503 was problem+json with Retry-After) /
            other 4xx / other 5xx / client timeouts, per kind of call, and the latency of
            `/healthz` during the burst.

Outside the default working hours (Mon-Fri 8-19 UTC) the detectors raise an `off_hours`
alert for every request filed, the most they do beside the writers; `off_hours_alerts` in
the output says whether the run was such a time.

Prints one JSON object on stdout; progress and a summary go to stderr unless
--json-only. Exit status 1 when any call got a 5xx other than 503, a bad 503 or a
timeout; missed latency targets do not change it (they depend on the machine).

    .venv/bin/python benchmarks/sqlite_writes.py
    .venv/bin/python benchmarks/sqlite_writes.py --seconds 10 --concurrency 1,8,50 --json-only
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lifecycle as lc  # the sibling script's server and token helpers

from accord.detect.rules import WEEKDAYS
from accord.spec.detect import WorkingHours

P99_TARGET_MS = 100.0
MAX_SAMPLES = 5


class Http:
    """A minimal HTTP/1.1 keep-alive client (see lifecycle.RawClient) that also GETs,
    returns the headers, and reconnects after a failed call."""

    def __init__(self, base_url: str, timeout: float) -> None:
        hostport = base_url.split("://", 1)[1]
        self.host, _, port = hostport.partition(":")
        self.port = int(port)
        self.timeout = timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def call(self, method: str, path: str, token: str | None = None,
                   body: dict[str, Any] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One call; raises TimeoutError or OSError (and closes the connection) on failure."""
        try:
            return await asyncio.wait_for(self._call(method, path, token, body), self.timeout)
        except BaseException:
            await self.close()  # a late answer must not be read as the next call's
            raise

    async def _call(self, method: str, path: str, token: str | None,
                    body: dict[str, Any] | None) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        payload = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        if token:
            head += f"Authorization: Bearer {token}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        self.writer.write((head + "\r\n").encode() + payload)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        data = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, data


@dataclass
class Tally:
    """Outcomes of one kind of call."""

    latencies_ms: list[float] = field(default_factory=list)  # 2xx only
    outcomes: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)

    def add(self, outcome: str, ms: float, sample: str = "") -> None:
        self.outcomes[outcome] += 1
        if outcome == "2xx":
            self.latencies_ms.append(ms)
        elif sample and outcome != "503" and len(self.samples) < MAX_SAMPLES:
            self.samples.append(sample)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "count": sum(self.outcomes.values()),
            **{k: self.outcomes.get(k, 0)
               for k in ("2xx", "503", "503_malformed", "4xx", "5xx_other", "timeout",
                         "transport_error")},
            **lc.percentiles(self.latencies_ms),
        }
        if self.latencies_ms:
            out["max_ms"] = round(max(self.latencies_ms), 2)
        if self.samples:
            out["error_samples"] = self.samples
        return out


def classify(status: int, headers: dict[str, str], body: bytes) -> str:
    if 200 <= status < 300:
        return "2xx"
    if status == 503:
        # What a client needs to back off: problem+json that says why, and when to retry.
        ok = (headers.get("content-type", "").startswith("application/problem+json")
              and headers.get("retry-after", "").isdigit() and b'"detail"' in body)
        return "503" if ok else "503_malformed"
    return "4xx" if 400 <= status < 500 else "5xx_other"


async def timed(http: Http, tally: Tally, method: str, path: str, token: str | None,
                body: dict[str, Any] | None = None) -> tuple[int, dict[str, str], bytes] | None:
    start = time.perf_counter()
    try:
        status, headers, raw = await http.call(method, path, token, body)
    except TimeoutError:
        tally.add("timeout", 0.0, f"{method} {path}: no answer in {http.timeout:g}s")
        return None
    except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
        tally.add("transport_error", 0.0, f"{method} {path}: {type(exc).__name__}: {exc}")
        return None
    ms = (time.perf_counter() - start) * 1000
    tally.add(classify(status, headers, raw), ms, f"{method} {path}: HTTP {status}: {raw[:200]!r}")
    return status, headers, raw


def off_hours(now: datetime) -> bool:
    """Whether the default detectors take `now` as outside working hours: then every request
    filed raises an `off_hours` alert (an alert row and a ledger event each), the heaviest
    work the detectors do beside the writers; within working hours they raise none."""
    hours = WorkingHours()
    local = now.astimezone(ZoneInfo(hours.timezone))
    return not (WEEKDAYS[local.weekday()] in hours.weekdays
                and hours.start <= local.hour < hours.end)


def create_body(i: int) -> dict[str, Any]:
    return {"resource": "bench-auto", "role": "read", "duration": "1h", "reason": f"bench {i}"}


# ---------------------------------------------------------------- phases


async def ceiling(base_url: str, tokens: dict[str, str], clients: int, seconds: float,
                  timeout: float, ids: list[tuple[str, int]]) -> dict[str, Any]:
    """`clients` writers back to back for `seconds`; 2xx answers per second."""
    tally = Tally()
    counter = iter(range(10**9))
    started = time.perf_counter()
    deadline = started + seconds

    async def writer(n: int) -> None:
        http = Http(base_url, timeout)
        user = lc.REQUESTERS[n % len(lc.REQUESTERS)]
        try:
            while time.perf_counter() < deadline:
                got = await timed(http, tally, "POST", "/api/v1/requests", tokens[user],
                                  create_body(next(counter)))
                if got is None:
                    continue
                status, headers, raw = got
                if 200 <= status < 300:
                    ids.append((user, int(json.loads(raw)["id"])))
                elif status == 503:
                    wait = float(headers.get("retry-after", "1") or 1)
                    await asyncio.sleep(max(0.0, min(wait, deadline - time.perf_counter())))
        finally:
            await http.close()

    await asyncio.gather(*(writer(n) for n in range(clients)))
    elapsed = time.perf_counter() - started
    out = tally.summary()
    return {"clients": clients, "elapsed_s": round(elapsed, 3),
            "writes_per_s": round(out["2xx"] / elapsed, 1) if elapsed > 0 else 0.0, **out}


async def burst(base_url: str, tokens: dict[str, str], total: int, clients: int,
                timeout: float, ids: list[tuple[str, int]]) -> dict[str, Any]:
    """`total` one-shot calls at `clients` concurrency, half writes, half reads, while
    /healthz is asked in a loop."""
    kinds = {"create": Tally(), "list": Tally(), "show": Tally()}
    health = Tally()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    done = asyncio.Event()
    known = ids or [(lc.REQUESTERS[0], 1)]

    async def client(n: int) -> None:
        http = Http(base_url, timeout)
        try:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                token = tokens[lc.REQUESTERS[i % len(lc.REQUESTERS)]]
                if i % 2 == 0:
                    await timed(http, kinds["create"], "POST", "/api/v1/requests", token,
                                create_body(1_000_000 + i))
                elif i % 4 == 1:
                    await timed(http, kinds["list"], "GET", "/api/v1/requests?limit=20", token)
                else:  # a request of the caller's own, so the answer is a 200
                    user, rid = known[(i // 4) % len(known)]
                    await timed(http, kinds["show"], "GET", f"/api/v1/requests/{rid}",
                                tokens[user])
        finally:
            await http.close()

    async def prober() -> None:
        http = Http(base_url, timeout)
        try:
            while not done.is_set():
                await timed(http, health, "GET", "/healthz", None)
                await asyncio.sleep(0.02)
        finally:
            await http.close()

    probe = asyncio.create_task(prober())
    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    elapsed = time.perf_counter() - started
    done.set()
    await probe
    per_kind = {name: t.summary() for name, t in kinds.items()}
    totals: Counter[str] = Counter()
    for t in kinds.values():
        totals.update(t.outcomes)
    return {
        "requests": total, "clients": clients, "elapsed_s": round(elapsed, 3),
        "totals": {k: totals.get(k, 0) for k in ("2xx", "503", "503_malformed", "4xx",
                                                  "5xx_other", "timeout", "transport_error")},
        "calls": per_kind,
        "healthz": health.summary(),
    }


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=5.0,
                   help="length of each ceiling run (default 5)")
    p.add_argument("--concurrency", default="1,8,50",
                   help="comma-separated writer counts for the ceiling (default 1,8,50)")
    p.add_argument("--burst", type=int, default=400, help="calls in the burst (default 400)")
    p.add_argument("--burst-clients", type=int, default=50,
                   help="concurrent clients in the burst (default 50)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds a client waits for an answer before counting a timeout "
                        "(default 10)")
    p.add_argument("--warmup", type=int, default=50,
                   help="unmeasured requests filed first, one client (default 50)")
    p.add_argument("--port", type=int, default=0, help="server port (default: a free port)")
    p.add_argument("--no-worker", action="store_true",
                   help="serve without the background jobs (sweeper, ledger, jobs, detectors), "
                        "to see what their transactions cost the writers")
    p.add_argument("--json-only", action="store_true", help="print only the JSON result")
    args = p.parse_args(argv)
    try:
        args.levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        p.error("--concurrency takes comma-separated integers")
    if (not args.levels or min(args.levels) < 1 or args.seconds <= 0 or args.burst < 0
            or args.burst_clients < 1 or args.timeout <= 0 or args.warmup < 0):
        p.error("counts must be >= 1 (--burst, --warmup >= 0) and times > 0")
    return args


async def drive(args: argparse.Namespace, base_url: str, tokens: dict[str, str],
                quiet: bool) -> dict[str, Any]:
    ids: list[tuple[str, int]] = []
    if args.warmup:
        http = Http(base_url, args.timeout)
        warm = Tally()
        for i in range(args.warmup):
            user = lc.REQUESTERS[i % len(lc.REQUESTERS)]
            got = await timed(http, warm, "POST", "/api/v1/requests", tokens[user],
                              create_body(-i))
            if got is not None and got[0] == 201:
                ids.append((user, int(json.loads(got[2])["id"])))
        await http.close()
    levels: dict[str, Any] = {}
    for clients in args.levels:
        levels[str(clients)] = await ceiling(base_url, tokens, clients, args.seconds,
                                             args.timeout, ids)
        if not quiet:
            r = levels[str(clients)]
            print(f"  ceiling at {clients:3d} writers: {r['writes_per_s']:7.1f} writes/s  "
                  f"p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  503s {r['503']}  "
                  f"timeouts {r['timeout']}  other 5xx {r['5xx_other']}", file=sys.stderr)
    result: dict[str, Any] = {"ceiling": levels}
    if args.burst:
        b = await burst(base_url, tokens, args.burst, args.burst_clients, args.timeout, ids)
        result["burst"] = b
        if not quiet:
            t, h = b["totals"], b["healthz"]
            print(f"  burst of {args.burst} at {args.burst_clients}: {t} in {b['elapsed_s']}s; "
                  f"/healthz p99 {h['p99_ms']} ms max {h.get('max_ms')} ms, "
                  f"{h['timeout']} timeouts", file=sys.stderr)
    return result


def start_server(port: int, config: Path, database_url: str, data_dir: Path, log: Path, *,
                 no_worker: bool) -> subprocess.Popen[bytes]:
    """`accord serve` as lifecycle.start_server starts it (one process), or without its
    background jobs."""
    if not no_worker:
        return lc.start_server(port, config, database_url, data_dir, log, 1)
    accord = Path(sys.executable).parent / "accord"
    cmd = [str(accord), "serve", "--host", lc.HOST, "--port", str(port), "--config",
           str(config), "--log-level", "warning", "--no-worker"]
    env = {**os.environ, "ACCORD_DATABASE_URL": database_url, "ACCORD_CONFIG": str(config),
           "ACCORD_DATA_DIR": str(data_dir)}
    env.pop("ACCORD_TOKEN", None)
    with log.open("wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def run(args: argparse.Namespace) -> dict[str, Any]:
    quiet: bool = args.json_only
    port: int = args.port or lc.free_port()
    base_url = f"http://{lc.HOST}:{port}"
    load_before = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="accord-bench-sqlite-") as tmp:
        tmp_dir = Path(tmp)
        config = tmp_dir / "accord.yaml"
        config.write_text(lc.policy_text(), encoding="utf-8")
        log = tmp_dir / "server.log"
        db_url = f"sqlite:///{tmp_dir / 'accord.db'}"
        tokens = lc.issue_tokens(db_url, config, tmp_dir)
        if not quiet:
            print(f"starting accord serve on {base_url} ({db_url})"
                  + ("; outside working hours: every request raises an off_hours alert"
                     if not args.no_worker and off_hours(started) else ""), file=sys.stderr)
        proc = start_server(port, config, db_url, tmp_dir, log, no_worker=args.no_worker)
        try:
            lc.wait_healthy(proc, base_url, log)
            result = asyncio.run(drive(args, base_url, tokens, quiet))
        finally:
            lc.stop_server(proc)
            server_log = log.read_text(errors="replace") if log.exists() else ""
    at8 = result["ceiling"].get("8")
    problems = [line for line in server_log.splitlines()
                if "database is locked" in line or "QueuePool limit" in line]
    kinds = sorted({line.split("Error: ", 1)[-1][:120] for line in problems})
    bad = 0
    for level in result["ceiling"].values():
        bad += level["5xx_other"] + level["503_malformed"] + level["timeout"]
    if "burst" in result:
        t = result["burst"]["totals"]
        bad += t["5xx_other"] + t["503_malformed"] + t["timeout"]
        bad += result["burst"]["healthz"]["count"] - result["burst"]["healthz"]["2xx"]
    return {
        "backend": "sqlite",
        "background_jobs": not args.no_worker,
        "started": started.isoformat(timespec="seconds"),
        "off_hours_alerts": not args.no_worker and off_hours(started),
        **result,
        "latency_at_8_clients": None if at8 is None else {
            "p50_ms": at8["p50_ms"], "p99_ms": at8["p99_ms"],
            "target": f"p99 < {P99_TARGET_MS:g} ms",
            "met": at8["p99_ms"] is not None and at8["p99_ms"] < P99_TARGET_MS},
        # Lines of the server's log saying the lock or the pool gave out (the errors behind
        # 500s and hung calls before the write gate), and which messages they were.
        "server_log_lock_errors": len(problems),
        "server_log_lock_messages": kinds[:MAX_SAMPLES],
        "failures": bad,
        "ok": bad == 0,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "loadavg_before": load_before},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
