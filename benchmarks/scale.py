"""Scale benchmark on PostgreSQL (issue 24): a ledger of --events events (default ten
million), then what must not slow down with its size.

Prints one JSON object:
  generate       how the ledger was filled: events/s through `ledger.service.record`
  pages          GET /api/v1/audit/events at the head (no cursor) and the tail (cursor near
                 the end), unfiltered and by subject, p50/p99 ms, at each size on the way
                 (1e4, 1e5, 1e6, ...): constant, not growing with the size
  proofs         inclusion and consistency proofs at the full size, p50/p99 ms, through the
                 service (as ledger.py) and through the HTTP API; target p99 < 5 ms
  export/verify  `bundle.write` of the whole ledger and `accord.ledger.verify` of the bundle
  requests       POST /api/v1/requests (pending, a one-step workflow) per second against 1
                 `accord serve --no-worker --workers 1`, then 2 of them behind a client that
                 spreads its connections over both, with one `accord worker`; the ratio

The ledger is filled in bulk through the real append path: `record` buffers each event on
the session, the commit integrates them (`_integrate`: indices, chain values, completed
subtree hashes, the head) with the session's INLINE flag, in the writer's transaction and
--batch events per transaction. That is the integrator's code without the pending-row pass
(insert, then UPDATE of every row), which would double the writes and the table's dead rows
for nothing this benchmark measures. The database is created, VACUUM ANALYZEd once filled
(autovacuum's job on a live server) and dropped at the end (--keep to keep it).

Run: nice -n 10 .venv/bin/python benchmarks/scale.py [--events 10000000] [--requests 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lifecycle
from fastapi.testclient import TestClient

from accord.api.app import create_app
from accord.bootstrap import build_state
from accord.db import transaction, utcnow
from accord.identity import service as identity
from accord.ledger import bundle, checkpoints, merkle
from accord.ledger.events import Actor, EventType, Via
from accord.ledger.models import LedgerEntry
from accord.ledger.service import (
    INLINE,
    consistency_proof,
    inclusion_proof,
    record,
    root_at,
    tree_size,
)
from accord.ledger.verify import verify
from accord.settings import Settings
from accord.state import AppState

PG_ADMIN = os.environ.get("ACCORD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
AUDITOR = "auditor0"
TYPES = [EventType.REQUEST_CREATED, EventType.APPROVAL_RECORDED, EventType.GRANT_ACTIVATED,
         EventType.GRANT_EXPIRED]


def policy_text() -> str:
    """lifecycle.py's policy (64 requesters, 4 leads) and an auditor."""
    text = lifecycle.policy_text().replace("# Written by benchmarks/lifecycle.py",
                                           "# Written by benchmarks/scale.py")
    text = text.replace("users: [", f"users: [{AUDITOR}, ", 1)
    return text.replace("groups:\n", f"groups:\n  auditors: [{AUDITOR}]\n", 1) + \
        "accord: {auditors: [auditors]}\n"


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))], 3)


def ms(values: list[float]) -> dict[str, float]:
    return {"p50": pct(values, 50), "p99": pct(values, 99), "n": len(values)}


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- filling the ledger


def _event(session: Session, i: int) -> None:
    """A request's life in four events: created, approved, activated, expired."""
    rid, kind = divmod(i, 4)
    user = f"user{rid % 64}"
    record(session, type=TYPES[kind], actor=Actor("user", user, Via.API),
           subject=f"request:{rid}", resource={"name": f"db-{rid % 13}", "role": "read"},
           data={"request_id": rid, "user": user, "reason": f"INC-{rid} investigate orders",
                 "starts_at": "2026-11-27T10:00:00.000000Z",
                 "ends_at": "2026-11-27T11:00:00.000000Z"})


def fill(sessions: sessionmaker[Session], start: int, stop: int, batch: int) -> float:
    """Append events start..stop-1 (their numbers, not indices), `batch` a transaction."""
    t = time.perf_counter()
    last = t
    for first in range(start, stop, batch):
        with transaction(sessions) as session:
            for i in range(first, min(stop, first + batch)):
                _event(session, i)
        now = time.perf_counter()
        if now - last > 30:
            done = min(stop, first + batch)
            log(f"  {done:,} events, {(done - start) / (now - t):,.0f}/s")
            last = now
    return time.perf_counter() - t


# ---------------------------------------------------------------- measuring


def timed_get(client: TestClient, url: str, token: str, samples: int,
              cpu: list[float] | None = None) -> list[float]:
    """Wall ms of each call; `cpu` gets this process's CPU ms of each (the app runs in it)."""
    out = []
    for _ in range(samples):
        t, c = time.perf_counter(), time.process_time()
        r = client.get(url, headers={"Authorization": f"Bearer {token}"})
        out.append((time.perf_counter() - t) * 1000)
        if cpu is not None:
            cpu.append((time.process_time() - c) * 1000)
        assert r.status_code == 200, (url, r.status_code, r.text[:300])
    return out


def pages(client: TestClient, token: str, size: int, samples: int) -> dict[str, Any]:
    """Head and tail pages of 100 events: unfiltered, for one subject, for a rare type."""
    tail = max(0, size - 100)
    last_request = (size - 1) // 4
    base = "/api/v1/audit/events?limit=100"
    urls = {
        "head": base,
        "tail": f"{base}&cursor={tail}",
        "subject_head": f"{base}&subject=request:0",
        "subject_tail": f"{base}&subject=request:{last_request}&cursor={max(0, size - 8)}",
        "rare_type_head": f"{base}&type=policy.loaded",  # one event, near index 0
        "rare_type_tail": f"{base}&type=policy.loaded&cursor={tail}",  # none there
    }
    for url in urls.values():  # warm the plan cache and the buffers
        timed_get(client, url, token, 3)
    out: dict[str, Any] = {}
    for name, url in urls.items():
        cpu: list[float] = []
        out[name] = ms(timed_get(client, url, token, samples, cpu))
        out[name]["cpu_p50"] = pct(cpu, 50)
    out["load"] = load_avg()
    return out


def _ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def proofs(sessions: sessionmaker[Session], client: TestClient, token: str,
           samples: int) -> dict[str, Any]:
    """Wall ms per proof, and CPU ms per proof (this process and its PostgreSQL backend,
    from /proc: on a loaded machine the wall time is mostly waiting for a core)."""
    rng = random.Random(7)
    tick = os.sysconf("SC_CLK_TCK")
    with sessions() as session:
        size = tree_size(session)
        root = root_at(session, size)
        backend = int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())
        inc, con, cpu = [], [], {}
        for name in ("inclusion", "consistency"):
            c, b = time.process_time(), _ticks(backend)
            for _ in range(samples):
                if name == "inclusion":
                    i = rng.randrange(size)
                    t = time.perf_counter()
                    inclusion_proof(session, i, size)
                    inc.append((time.perf_counter() - t) * 1000)
                else:
                    old = rng.randrange(1, size)
                    t = time.perf_counter()
                    consistency_proof(session, old, size)
                    con.append((time.perf_counter() - t) * 1000)
            client_ms = (time.process_time() - c) * 1000 / samples
            backend_ms = (_ticks(backend) - b) / tick * 1000 / samples
            cpu[name] = {"client": round(client_ms, 3), "postgres": round(backend_ms, 3)}
        for _ in range(20):  # the proofs verify against the root
            i = rng.randrange(size)
            leaf = session.execute(select(LedgerEntry.leaf_hash)
                                   .where(LedgerEntry.idx == i)).scalar_one()
            assert merkle.verify_inclusion(leaf, i, size, inclusion_proof(session, i, size),
                                           root)
    api_inc = [x for _ in range(samples // 4) for x in timed_get(
        client, f"/api/v1/audit/proof/inclusion?index={rng.randrange(size)}&size={size}",
        token, 1)]
    api_con = [x for _ in range(samples // 4) for x in timed_get(
        client, f"/api/v1/audit/proof/consistency?from={rng.randrange(1, size)}&to={size}",
        token, 1)]
    return {
        "size": size,
        "service": {"inclusion_ms": ms(inc), "consistency_ms": ms(con)},
        "cpu_ms_per_proof": cpu,
        "api": {"inclusion_ms": ms(api_inc), "consistency_ms": ms(api_con)},
        "target_p99_ms": 5,
        "met": max(pct(inc, 99), pct(con, 99)) < 5,
    }


def export_and_verify(st: AppState, tmp: Path) -> dict[str, Any]:
    with transaction(st.sessions) as session:
        checkpoints.sign(session, st.ledger, now=utcnow(), force=True)
    path = tmp / "ledger.bundle"
    signer = st.ledger.signer
    t = time.perf_counter()
    with path.open("wb") as f, st.sessions() as session:
        bundle.write(session, f, origin=st.ledger.origin, key=signer.verifier.encode(),
                     exported_at=utcnow())
    exported = time.perf_counter() - t
    mb = path.stat().st_size / 1e6
    t = time.perf_counter()
    report = verify(lambda: path.open("rb"), key=signer.verifier, path=path)
    verified = time.perf_counter() - t
    assert report.ok, report.problems
    path.unlink()
    n = report.size
    return {
        "events": n, "bundle_mb": round(mb, 1),
        "export_s": round(exported, 1), "export_events_per_s": round(n / exported),
        "export_mb_per_s": round(mb / exported, 1),
        "verify_s": round(verified, 1), "verify_events_per_s": round(n / verified),
        "verify_processes": os.cpu_count(),
    }


# ---------------------------------------------------------------- requests, 1 and 2 replicas


async def create_requests(urls: list[str], tokens: dict[str, str], count: int,
                          clients: int, offset: int) -> dict[str, Any]:
    """`count` POST /requests (pending) by `clients` connections spread over `urls`."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(offset + i)
    latencies: list[float] = []
    errors: list[str] = []

    async def worker(n: int) -> None:
        async with lifecycle.RawClient(urls[n % len(urls)]) as client:
            while not queue.empty():
                i = queue.get_nowait()
                user = lifecycle.REQUESTERS[i % len(lifecycle.REQUESTERS)]
                body = {"resource": "bench-approve", "role": "read", "duration": "1h",
                        "reason": f"scale {i}"}
                t = time.perf_counter()
                status, raw = await client.post("/api/v1/requests", body, tokens[user])
                latencies.append((time.perf_counter() - t) * 1000)
                if status != 201:
                    errors.append(f"HTTP {status}: {raw[:200]!r}")

    t = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(clients)))
    elapsed = time.perf_counter() - t
    return {"requests": count, "seconds": round(elapsed, 2),
            "requests_per_s": round(count / elapsed, 1), "latency_ms": ms(latencies),
            "errors": len(errors), "error_samples": errors[:3]}


def replicas(url: str, config: Path, data: Path, tokens: dict[str, str], count: int,
             clients: int, tmp: Path) -> dict[str, Any]:
    accord = str(Path(sys.executable).parent / "accord")
    env = {**os.environ, "ACCORD_DATABASE_URL": url, "ACCORD_CONFIG": str(config),
           "ACCORD_DATA_DIR": str(data)}
    env.pop("ACCORD_TOKEN", None)
    procs: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], name: str) -> subprocess.Popen[bytes]:
        with (tmp / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen([accord, *args], env=env, stdout=out, stderr=out)
        procs.append(proc)
        return proc

    out: dict[str, Any] = {"clients": clients, "per_replica": "accord serve --no-worker "
                           "--workers 1", "worker": "one accord worker"}
    try:
        start(["worker", "--config", str(config)], "worker")
        ports = [lifecycle.free_port(), lifecycle.free_port()]
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        for n, port in enumerate(ports):
            proc = start(["serve", "--no-worker", "--workers", "1", "--port", str(port),
                          "--config", str(config), "--log-level", "warning"], f"serve{n}")
            lifecycle.wait_healthy(proc, urls[n], tmp / f"serve{n}.log")
        offset = 0
        for label, targets in (("one_replica", urls[:1]), ("two_replicas", urls)):
            asyncio.run(create_requests(targets, tokens, max(50, count // 10), clients, offset))
            offset += count
            log(f"requests: {label}, {count} ...")
            out[label] = asyncio.run(create_requests(targets, tokens, count, clients, offset))
            out[label]["load_before"] = load_avg()
            offset += count
        out["ratio_two_to_one"] = round(out["two_replicas"]["requests_per_s"]
                                        / out["one_replica"]["requests_per_s"], 2)
    finally:
        for proc in procs:
            lifecycle.stop_server(proc)
    return out


# ---------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict[str, Any]:
    admin, existing = args.pg_admin_url, args.database_url
    name = existing.rsplit("/", 1)[1] if existing else f"accord_scale_{uuid.uuid4().hex[:8]}"
    if not existing:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    url = existing or admin.rsplit("/", 1)[0] + f"/{name}"
    tmp = Path(tempfile.mkdtemp(prefix="accord-scale-"))
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load_before": load_avg()},
                           "database": name, "events": args.events}
    st: AppState | None = None
    try:
        config, data = tmp / "accord.yaml", tmp / "data"
        config.write_text(policy_text(), encoding="utf-8")
        settings = Settings.from_env({"ACCORD_DATABASE_URL": url, "ACCORD_CONFIG": str(config),
                                      "ACCORD_DATA_DIR": str(data)})
        st = build_state(settings, config_path=config,
                         upgrade="never" if existing else "always",
                         announce_policy=not existing)
        bind = st.sessions.kw["bind"]
        bulk = sessionmaker(bind, expire_on_commit=False, info={INLINE: True})
        tokens: dict[str, str] = {}
        with transaction(bulk) as session:
            for user in [AUDITOR, *lifecycle.REQUESTERS, *lifecycle.LEADS]:
                _row, tokens[user] = identity.issue(
                    session, policy=st.policies.current, user=user, now=utcnow(),
                    actor=Actor("system", "accord-bench", Via.CLI), name="scale")
        client = TestClient(create_app(st))
        client.__enter__()
        token = tokens[AUDITOR]

        with st.sessions() as session:
            have = tree_size(session)
        milestones = sorted({m for m in (10**4, 10**5, 10**6, 10**7) if m < args.events}
                            | {args.events}) if not existing else [have]
        out["pages"] = {}
        generated = 0.0
        for size in milestones:
            log(f"filling to {size:,} events ...")
            generated += fill(bulk, have, size, args.batch)
            have = size
            with psycopg.connect(url, autocommit=True) as conn:
                for table in ("ledger_entries", "ledger_nodes") if not existing else ():
                    conn.execute(f"VACUUM ANALYZE {table}")
            with st.sessions() as session:
                real = tree_size(session)
            out["pages"][str(real)] = pages(client, token, real, args.samples)
            log(f"  pages at {real:,}: {json.dumps(out['pages'][str(real)])}")
        out["generate"] = {
            "events": have, "seconds": round(generated, 1),
            "events_per_s": round(have / generated) if generated else None,
            "per_transaction": args.batch,
            "route": "ledger.service.record, integrated at commit (INLINE) on PostgreSQL",
        }
        with psycopg.connect(url) as conn:
            (db_bytes,) = conn.execute(
                "SELECT pg_database_size(current_database())").fetchone() or (0,)
            out["generate"]["database_mb"] = round(db_bytes / 1e6)
        sizes = sorted(out["pages"], key=int)
        small, big = out["pages"][sizes[0]], out["pages"][sizes[-1]]
        out["pages_growth"] = {  # p50 (wall, CPU) at the full size over at the smallest
            name: {"wall": round(big[name]["p50"] / small[name]["p50"], 2),
                   "cpu": round(big[name]["cpu_p50"] / small[name]["cpu_p50"], 2)}
            for name in big if name != "load"}

        log("proofs ...")
        out["proofs"] = proofs(st.sessions, client, token, args.samples * 10)
        log(f"  {json.dumps(out['proofs'])}")
        client.__exit__(None, None, None)
        if not args.skip_export:
            log("export and verify ...")
            out["export_verify"] = export_and_verify(st, tmp)
            log(f"  {json.dumps(out['export_verify'])}")
        if args.requests:
            out["requests"] = replicas(url, config, data, tokens, args.requests, args.clients,
                                       tmp)
        out["machine"]["load_after"] = load_avg()
        return out
    finally:
        if st is not None:
            st.sessions.kw["bind"].dispose()
        shutil.rmtree(tmp, ignore_errors=True)
        if not args.keep and not existing:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000, help="ledger size to reach")
    ap.add_argument("--batch", type=int, default=10_000, help="events per transaction")
    ap.add_argument("--samples", type=int, default=200, help="timed calls per page figure")
    ap.add_argument("--requests", type=int, default=1000,
                    help="requests per replica phase (0: skip)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent HTTP connections")
    ap.add_argument("--skip-export", action="store_true", help="no export/verify")
    ap.add_argument("--keep", action="store_true", help="do not drop the database")
    ap.add_argument("--database-url", help="measure the ledger of this scale database as it "
                    "is (no filling; it is not dropped)")
    ap.add_argument("--pg-admin-url", default=PG_ADMIN)
    args = ap.parse_args(argv)
    print(json.dumps(run(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
