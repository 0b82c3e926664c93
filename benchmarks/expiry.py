"""Expiry benchmark: 1,000 grants on PostgreSQL ending within one minute, worker restarted.

Creates a target database and an Accord database on the local PostgreSQL, files
1,000 auto-approved requests (one user each) whose grants end spread over the same
minute, lets `accord worker` provision them, restarts the worker while they are
expiring, and measures for every grant the lag from its end to the confirmed
revocation on the target (`grants.deprovisioned_at - ends_at`).

The restart is a crash: from the middle of the expiry minute the benchmark watches
the jobs table and SIGKILLs the worker at a moment it holds the lease of a revocation
(a `grant.deprovision` job claimed and not done: checked while the worker is frozen
with SIGSTOP, so the job cannot finish between the look and the kill), then starts a
fresh one. That job
can only run again once its lease runs out; nothing else revokes that access (an
expiry job the dead worker held is covered by the new worker's sweeper, which ends
the grant again). A run reports the leases the dead worker held and the worst lag
among their grants.

Prints JSON per run (p50/p99/max lag) and, with several runs, a summary.
Target on 2 cores: p99 < 2 s, max < 5 s, in every run.

Run: .venv/bin/python benchmarks/expiry.py [--grants 1000] [--runs 1] [--headroom 70]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import func, or_, select

from accord.bootstrap import build_state
from accord.db import transaction
from accord.grants.models import Grant, GrantStatus
from accord.grants.service import DEPROVISION
from accord.jobs.models import Job
from accord.requests import service as requests
from accord.settings import Settings

PG = os.environ.get("ACCORD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
ACCORD = str(Path(sys.executable).parent / "accord")


def policy(n: int, target_db: str, resource: str) -> str:
    users = ", ".join(f"u{i}" for i in range(n))
    return f"""\
users: [{users}]
groups: {{engineers: [{users}]}}
resources:
  - name: {resource}
    roles: [read]
    reconcile: "off"
    provision:
      type: postgres
      dsn_env: BENCH_TARGET_DSN
      database: {target_db}
      roles: {{read: {{privileges: ["SELECT ON ALL TABLES IN SCHEMA public"]}}}}
workflows:
  - {{name: all, match: 'true', require_reason: false, max_duration: 1h, auto_approve: 'true'}}
"""


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def wait_for(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # another process does the work: poll, bounded
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def run(n: int, headroom: int) -> dict[str, Any]:
    """One run on fresh databases; returns its figures."""
    suffix = uuid.uuid4().hex[:8]
    accord_db, target_db, resource = f"accord_bench_{suffix}", f"accord_tgt_{suffix}", f"x{suffix}"
    base = PG.rsplit("/", 1)[0]
    with psycopg.connect(PG, autocommit=True) as c:
        # Logins are cluster-wide: drop only this run's (others may be running tests).
        roles_before = {r for (r,) in c.execute("SELECT rolname FROM pg_roles").fetchall()}
        c.execute(f'CREATE DATABASE "{accord_db}"')
        c.execute(f'CREATE DATABASE "{target_db}"')
    with psycopg.connect(f"{base}/{target_db}", autocommit=True) as c:
        c.execute("CREATE TABLE t (id int)")
    workers: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="accord-expiry-"))
    env = {**os.environ, "ACCORD_DATABASE_URL": f"{base}/{accord_db}",
           "ACCORD_DATA_DIR": str(tmp), "BENCH_TARGET_DSN": f"{base}/{target_db}",
           "ACCORD_CONFIG": str(tmp / "accord.yaml")}
    (tmp / "accord.yaml").write_text(policy(n, target_db, resource))
    st = build_state(Settings.from_env(env), config_path=tmp / "accord.yaml", upgrade="always")
    log = (tmp / "worker.log").open("ab")

    def start_worker() -> subprocess.Popen[bytes]:
        p = subprocess.Popen([ACCORD, "worker", "--interval", "1"], env=env, stdout=log,
                             stderr=log)
        workers.append(p)
        return p

    try:
        # Grants end `headroom` (70) .. +59 s after activation: within one minute, ~17 a second.
        with transaction(st.sessions) as session:
            for i in range(n):
                requests.create(session, policy=st.policies.current,
                                caller=requests.Caller(f"u{i}", "api"), resource=resource,
                                role="read", duration=timedelta(seconds=headroom + i * 60 // n),
                                reason="", now=st.now())
        print(f"filed {n} requests; provisioning ...", file=sys.stderr)
        started = time.monotonic()
        worker = start_worker()

        def count(status: GrantStatus) -> int:
            with st.sessions() as s:
                return int(s.execute(select(func.count()).select_from(Grant)
                                     .where(Grant.status == status)).scalar_one())

        # All must be active before the first ends (`headroom` after its activation).
        wait_for("provisioning", lambda: count(GrantStatus.ACTIVE) == n, headroom + 50)
        provision_s = time.monotonic() - started  # including the worker's start
        with st.sessions() as s:
            first_end = s.execute(select(func.min(Grant.ends_at))).scalar_one()
        # kill the worker in the middle of the expiry minute, while it holds a revocation
        mid = (first_end - st.now()).total_seconds() + 30
        print(f"all active; killing the worker in {mid:.0f}s ...", file=sys.stderr)
        time.sleep(max(0.0, mid))  # the benchmark's own schedule, not a wait on work
        # A worker is host:pid:random (host:pid before the heartbeat, for comparison runs).
        mine = or_(Job.leased_by.like(f"%:{worker.pid}:%"), Job.leased_by.like(f"%:{worker.pid}"))
        held = (select(Job.key).where(mine, Job.kind == DEPROVISION, Job.done_at.is_(None),
                                      Job.leased_until > func.now()))

        def holds_revocation() -> bool:
            with st.sessions() as s:
                return s.execute(held.limit(1)).first() is not None

        def frozen_holding_revocation() -> bool:
            """Whether the worker, frozen for a moment, is inside a revocation. Seeing one
            running and then sending SIGKILL is a race a 30 ms job often wins."""
            if not holds_revocation():
                return False
            os.kill(worker.pid, signal.SIGSTOP)
            os.waitpid(worker.pid, os.WUNTRACED)  # stopped: it can finish nothing now
            if holds_revocation():
                return True
            os.kill(worker.pid, signal.SIGCONT)
            return False

        wait_for("the worker to hold a revocation's lease", frozen_holding_revocation, 30)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        with st.sessions() as s:  # what it held when it died (it can finish nothing now)
            keys = list(s.execute(select(Job.key).where(mine, Job.done_at.is_(None)))
                        .scalars())
        held_grants = {int(m.group(1)) for k in keys if (m := re.match(r"grant:(\d+):", k))}
        start_worker()

        def all_done() -> bool:
            with st.sessions() as s:
                return s.execute(select(func.count()).select_from(Grant).where(
                    Grant.deprovisioned_at.is_(None))).scalar_one() == 0

        wait_for("revocations", all_done, 180)
        with st.sessions() as s:
            rows = s.execute(select(Grant.id, Grant.deprovisioned_at, Grant.ends_at)).all()
        lags = [(d - e).total_seconds() for _, d, e in rows]
        held_lags = [(d - e).total_seconds() for g, d, e in rows if g in held_grants]
        with psycopg.connect(f"{base}/{target_db}") as c:
            still = c.execute("SELECT count(*) FROM pg_auth_members am JOIN pg_roles g "
                              "ON g.oid = am.roleid WHERE g.rolname LIKE %s",
                              (f"accord_{resource}%",)).fetchone()
        return {
            "grants": n, "worker_restarts": 1, "provision_s": round(provision_s, 1),
            "leases_held_at_kill": len(keys),
            "revocations_held_at_kill": sum(k.endswith(":deprovision") for k in keys),
            "lag_s": {"p50": round(pct(lags, 50), 3), "p99": round(pct(lags, 99), 3),
                      "max": round(max(lags), 3), "min": round(min(lags), 3)},
            "max_lag_of_held_grants_s": round(max(held_lags), 3) if held_lags else None,
            "memberships_left_on_target": still[0] if still else None,
            "met": pct(lags, 99) < 2 and max(lags) < 5,
        }
    finally:
        for p in workers:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
        log.close()
        st.sessions.kw["bind"].dispose()
        with psycopg.connect(PG, autocommit=True) as c:
            for db in (accord_db, target_db):
                c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            for (role,) in c.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s "
                                     "OR rolname LIKE 'accord_u_u%%'",
                                     (f"accord_{resource}%",)).fetchall():
                if role not in roles_before:
                    c.execute(f'DROP ROLE IF EXISTS "{role}"')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--grants", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=1, help="independent runs, each on fresh databases")
    ap.add_argument("--headroom", type=int, default=70,
                    help="seconds from activation to the first grant's end: provisioning all\n"
                         "must take less (raise it on a slow or busy machine)")
    args = ap.parse_args()
    results: list[dict[str, Any]] = []
    for i in range(args.runs):
        try:
            out = run(args.grants, args.headroom)
        except RuntimeError as exc:  # e.g. provisioning outlasted --headroom: say so, go on
            out = {"error": str(exc), "met": False}
        results.append(out)
        print(json.dumps({"run": i + 1, **out}), flush=True)
    done = [r for r in results if "lag_s" in r]
    summary = {
        "runs": len(results),
        "target": {"p99_s": 2, "max_s": 5},
        "met_in": f"{sum(r['met'] for r in results)}/{len(results)}",
        "max_under_5s_in": f"{sum(r['lag_s']['max'] < 5 for r in done)}/{len(results)}",
        "p99_s": [r["lag_s"]["p99"] for r in done],
        "max_s": [r["lag_s"]["max"] for r in done],
        "machine": {"cpus": os.cpu_count()},
    }
    print(json.dumps(summary, indent=2))

if __name__ == "__main__":
    main()
