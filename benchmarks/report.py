"""Report benchmark: a quarter's access report over 100,000 requests and ~1,000,000 events.

Builds a fresh PostgreSQL database with a quarter (2026-07-01 .. 2026-10-01) of history:
--requests requests over --resources resources and 400 users (half auto-approved, some
auto-denied, people approving or denying the rest, some cancelled or left to expire),
their approvals and grants, gateway usage per grant, a few hundred alerts, and a ledger of
real leaves (request.created, approval.recorded, decisions, grant.activated, grant ends,
and the gateway.statement events of each grant's use) integrated into the Merkle tree by
`ledger.record`, in time order. Rows are bulk-inserted through the real models; the API is
bypassed only to build the data set quickly.

Then it runs `accord report access --from 2026-07-01 --to 2026-10-01` (the real CLI code,
in a fresh process per format, so peak memory is the report's own) for each --formats,
and prints one JSON object: seconds, peak RSS (MB), output size and, for the PDF, pages.

Run: .venv/bin/python benchmarks/report.py [--requests 100000] [--formats pdf,csv]
     [--keep]   (keep the database; its URL is printed)
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

PG_ADMIN = os.environ.get("ACCORD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
START = datetime(2026, 7, 1, tzinfo=UTC)
END = datetime(2026, 10, 1, tzinfo=UTC)
USERS = [f"u{i:03d}" for i in range(400)]
LEADS = [f"lead{i}" for i in range(10)]
OWNERS = [f"dba{i}" for i in range(10)]
REASONS = ["INC-{n}: investigate slow orders query", "CHG-{n} apply the reviewed migration",
           "on-call: disk filling up on replica", "audit sample for ticket SEC-{n}",
           "debug failing nightly export {n}", "customer escalation #{n}"]
STATEMENTS = ["SELECT * FROM orders WHERE id = $1", "SELECT count(*) FROM payments",
              "UPDATE orders SET status = $1 WHERE id = $2", "EXPLAIN ANALYZE SELECT 1",
              "SELECT * FROM customers WHERE email = $1"]


def policy_text(resources: list[str]) -> str:
    groups = {"engineers": USERS, "leads": LEADS, "dba": OWNERS, "auditors": ["auditor"],
              "admins": ["admin"]}
    lines = ["groups:"] + [f"  {g}: [{', '.join(m)}]" for g, m in groups.items()]
    lines += ["accord: {admins: [admins], auditors: [auditors]}", "resources:"]
    for i, r in enumerate(resources):
        env = "staging" if i % 2 else "prod"
        lines.append(f"  - {{name: {r}, kind: postgres, labels: {{env: {env}}}, "
                     "owners: [dba], roles: [read, write]}")
    lines += [
        "workflows:",
        "  - name: staging",
        "    match: 'resource.labels.env == \"staging\"'",
        "    max_duration: 8h",
        "    auto_approve: 'request.role == \"read\"'",
        "    steps: [{approvers: [leads]}]",
        "  - name: prod",
        "    match: 'resource.labels.env == \"prod\"'",
        "    max_duration: 8h",
        "    auto_deny: 'size(request.reason) < 10'",
        "    steps: [{name: lead, approvers: [leads]}, {name: owner, approvers: [owners]}]",
    ]
    return "\n".join(lines) + "\n"


class Ledger:
    """Events pushed in any order, recorded in time order as real leaves."""

    def __init__(self, sessions: sessionmaker[Session], per_tx: int = 5000) -> None:
        self.sessions = sessions
        self.heap: list[tuple[datetime, int, dict[str, Any]]] = []
        self.seq = 0
        self.per_tx = per_tx
        self.session: Session | None = None
        self.in_tx = 0
        self.count = 0

    def push(self, when: datetime, **event: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (when, self.seq, event))

    def flush_until(self, when: datetime | None) -> None:
        from accord.ledger.service import record

        while self.heap and (when is None or self.heap[0][0] < when):
            at, _seq, ev = heapq.heappop(self.heap)
            if self.session is None:
                self.session = self.sessions()
            record(self.session, time=at, **ev)
            self.in_tx += 1
            self.count += 1
            if self.in_tx >= self.per_tx:
                self.commit()

    def commit(self) -> None:
        if self.session is not None:
            self.session.commit()
            self.session.close()
        self.session, self.in_tx = None, 0
        if self.count and self.count % 100_000 < self.per_tx:
            print(f"  ledger: {self.count} events", file=sys.stderr)


def build(url: str, n_requests: int, resources: list[str], version: str) -> dict[str, Any]:
    """The quarter's rows and ledger. Returns counts."""
    from accord.db import make_engine
    from accord.detect.models import Alert
    from accord.grants.models import Grant
    from accord.ledger.events import Actor, EventType, PolicyRef
    from accord.ledger.service import INLINE
    from accord.requests.models import AccessRequest, Approval

    try:
        from accord.gateway.models import GatewayUsage
    except ImportError:  # a tree without the gateway: no usage rows
        GatewayUsage = None  # type: ignore[assignment,misc]

    rng = random.Random(2026)
    engine = make_engine(url)
    sessions = sessionmaker(engine, expire_on_commit=False, info={INLINE: True})
    ledger = Ledger(sessions)
    span = (END - START).total_seconds()
    created = sorted(START + timedelta(seconds=rng.random() * span) for _ in range(n_requests))
    reqs: list[dict[str, Any]] = []
    grants: list[dict[str, Any]] = []
    approvals: list[dict[str, Any]] = []
    usage: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []

    def rows_out(final: bool = False) -> None:
        if len(reqs) < 10_000 and not final:
            return
        with sessions() as s:
            if grants:
                s.execute(insert(Grant.__table__), grants)  # type: ignore[arg-type]
            if reqs:
                s.execute(insert(AccessRequest.__table__), reqs)  # type: ignore[arg-type]
            if approvals:
                s.execute(insert(Approval.__table__), approvals)  # type: ignore[arg-type]
            if usage and GatewayUsage is not None:
                s.execute(insert(GatewayUsage.__table__), usage)  # type: ignore[arg-type]
            if alerts:
                s.execute(insert(Alert.__table__), alerts)  # type: ignore[arg-type]
            s.commit()
        for batch in (reqs, grants, approvals, usage, alerts):
            batch.clear()

    grant_id = 0
    statements = 0
    for rid, at in enumerate(created, 1):
        ledger.flush_until(at)
        user = rng.choice(USERS)
        res_i = rng.randrange(len(resources))
        res = resources[res_i]
        prod = res_i % 2 == 0
        role = "read" if rng.random() < 0.8 else "write"
        seconds = rng.choice([1800, 3600, 7200, 14400, 28800])
        reason = rng.choice(REASONS).format(n=rng.randrange(10_000))
        roll = rng.random()
        if prod and roll < 0.08:
            reason = "quick"
        workflow = "prod" if prod else "staging"
        auto_ok = not prod and role == "read"
        auto_deny = prod and len(reason) < 10
        rule = "auto_approve" if auto_ok else "auto_deny" if auto_deny else "match"
        ref = PolicyRef(workflow, version, rule)
        steps = [] if auto_ok or auto_deny else (
            [{"name": "lead", "approvers": ["leads"], "min_approvals": 1},
             {"name": "owner", "approvers": ["owners"], "min_approvals": 1}] if prod
            else [{"name": None, "approvers": ["leads"], "min_approvals": 1}])
        res_ref = {"name": res, "role": role}
        subject = f"request:{rid}"
        ledger.push(at, type=EventType.REQUEST_CREATED, actor=Actor.user(user, "api"),
                    subject=subject, resource=res_ref, policy=ref,
                    data={"request_id": rid, "requester": user, "duration_seconds": seconds,
                          "reason": reason, "extends_grant_id": None, "steps": steps,
                          "routing": {"outcome": "approve" if auto_ok else "deny"
                                      if auto_deny else "steps", "reason": rule},
                          "inputs": {"requester": user, "resource": res, "role": role}})
        row: dict[str, Any] = {
            "id": rid, "requester": user, "resource": res, "role": role,
            "duration_seconds": seconds, "reason": reason, "created_at": at,
            "created_via": "api", "workflow": workflow, "policy_version": version,
            "rule": rule, "plan": {"steps": steps}, "current_step": None,
            "extends_grant_id": None, "grant_id": None, "emergency": False,
            "pending_until": None, "decided_at": None, "decision_reason": None,
            "status": "pending"}
        policy_actor = Actor("policy", workflow, "policy")
        decided_at = at
        granted = False
        if auto_deny:
            row.update(status="denied", decided_at=at, decision_reason="auto_deny")
            ledger.push(at, type=EventType.REQUEST_DENIED, actor=policy_actor, subject=subject,
                        resource=res_ref, policy=ref, data={"request_id": rid})
        elif auto_ok:
            row.update(decided_at=at, decision_reason="auto_approve")
            ledger.push(at, type=EventType.REQUEST_APPROVED, actor=policy_actor,
                        subject=subject, resource=res_ref, policy=ref,
                        data={"request_id": rid})
            granted = True
        else:
            fate = rng.random()
            if fate < 0.06:
                decided_at = at + timedelta(minutes=rng.randrange(1, 60))
                row.update(status="cancelled", decided_at=decided_at,
                           decision_reason="cancelled by the requester")
                ledger.push(decided_at, type=EventType.REQUEST_CANCELLED,
                            actor=Actor.user(user, "api"), subject=subject, resource=res_ref,
                            data={"request_id": rid, "reason": "cancelled by the requester"})
            elif fate < 0.10:
                decided_at = at + timedelta(hours=24)
                row.update(status="expired", decided_at=decided_at,
                           decision_reason="nobody decided in time")
                ledger.push(decided_at, type=EventType.REQUEST_EXPIRED, actor=Actor.system(),
                            subject=subject, resource=res_ref, data={"request_id": rid})
            else:
                deciders = [rng.choice(LEADS)] + ([rng.choice(OWNERS)] if prod else [])
                deny_at = len(deciders) - 1 if fate < 0.18 else None
                t = at
                for step, who in enumerate(deciders):
                    t = t + timedelta(minutes=rng.randrange(1, 90))
                    decision = "deny" if step == deny_at else "approve"
                    comment = rng.choice(["", "ok", "looks fine", "ticket checked"])
                    approvals.append({"request_id": rid, "step": step, "approver": who,
                                      "decision": decision, "comment": comment, "via": "api",
                                      "created_at": t})
                    ledger.push(t, type=EventType.APPROVAL_RECORDED,
                                actor=Actor.user(who, "api"), subject=subject,
                                resource=res_ref,
                                data={"request_id": rid, "decision": decision, "step": step,
                                      "comment": comment})
                decided_at = t
                if deny_at is not None:
                    row.update(status="denied", decided_at=t,
                               decision_reason=f"denied by {deciders[-1]}")
                    ledger.push(t, type=EventType.REQUEST_DENIED,
                                actor=Actor.user(deciders[-1], "api"), subject=subject,
                                resource=res_ref, data={"request_id": rid})
                else:
                    row.update(decided_at=t, decision_reason=f"approved by {deciders[-1]}")
                    ledger.push(t, type=EventType.REQUEST_APPROVED,
                                actor=Actor.user(deciders[-1], "api"), subject=subject,
                                resource=res_ref, data={"request_id": rid})
                    granted = True
        if granted:
            grant_id += 1
            starts = decided_at
            ends = starts + timedelta(seconds=seconds)
            how = rng.random()
            status, ended = ("expired", ends) if how < 0.9 else \
                ("revoked", starts + timedelta(seconds=seconds * rng.random())) if how < 0.95 \
                else ("relinquished", starts + timedelta(seconds=seconds * rng.random()))
            grants.append({"id": grant_id, "request_id": rid, "user": user, "resource": res,
                           "role": role, "status": status, "starts_at": starts,
                           "ends_at": ends, "ended_at": ended,
                           "ended_by": "accord" if status == "expired" else user})
            row.update(status=status, grant_id=grant_id)
            gref = f"grant:{grant_id}"
            ledger.push(starts, type=EventType.GRANT_ACTIVATED, actor=Actor.system(),
                        subject=gref, resource=res_ref,
                        data={"grant_id": grant_id, "request_id": rid, "user": user})
            end_type = {"expired": EventType.GRANT_EXPIRED, "revoked": EventType.GRANT_REVOKED,
                        "relinquished": EventType.GRANT_RELINQUISHED}[status]
            ledger.push(ended, type=end_type, actor=Actor.system(), subject=gref,
                        resource=res_ref, data={"grant_id": grant_id, "user": user,
                                                "request_ids": [rid]})
            n = rng.randrange(0, 15)
            held = (ended - starts).total_seconds()
            times = sorted(starts + timedelta(seconds=rng.random() * held) for _ in range(n))
            for k, st in enumerate(times):
                ledger.push(st, type=EventType.GATEWAY_STATEMENT,
                            actor=Actor.user(user, "gateway"), subject=gref,
                            resource=res_ref, data={"grant_id": grant_id, "seq": k,
                                                    "sql": rng.choice(STATEMENTS),
                                                    "class": "read", "rows": rng.randrange(50)})
            statements += n
            if n:
                usage.append({"grant_id": grant_id, "first_used_at": times[0],
                              "last_used_at": times[-1], "statement_count": n,
                              "violation_count": 0, "session_count": 1 + n // 5})
            if rng.random() < 0.004:
                alerts.append({"rule": "off_hours", "severity": "medium", "status": "open",
                               "title": f"{user} used {res} outside working hours",
                               "user": user, "resource": res, "subject": gref,
                               "evidence": [], "data": {}, "dedup_key": f"off_hours:{gref}",
                               "opened_at": starts + timedelta(minutes=5), "note": ""})
        reqs.append(row)
        rows_out()
    rows_out(final=True)
    ledger.flush_until(None)
    ledger.commit()
    engine.dispose()
    return {"requests": n_requests, "grants": grant_id, "gateway_statements": statements,
            "ledger_events": ledger.count}


def child(fmt: str, out: str) -> None:
    """Run the real CLI command in this process; print its time and this process's peak."""
    from accord.cli.main import app

    started, cpu = time.perf_counter(), time.process_time()
    try:
        app(["report", "access", "--from", "2026-07-01", "--to", "2026-10-01", "--format", fmt,
             "--out", out], standalone_mode=False)
    finally:
        elapsed = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"seconds": round(elapsed, 2),
                          "cpu_seconds": round(time.process_time() - cpu, 2),
                          "peak_rss_mb": round(peak, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--resources", type=int, default=30)
    ap.add_argument("--formats", default="pdf,csv")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("FORMAT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return

    from accord import migrations
    from accord.db import make_engine
    from accord.policy.engine import Policy
    from accord.spec.load import parse_policy_text

    name = f"accord_bench_{uuid.uuid4().hex[:8]}"
    tmp = ""
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(),
                                       "loadavg_before": os.getloadavg()}}
    try:
        with contextlib.ExitStack() as stack:
            tmp = tempfile.mkdtemp(prefix="accord-report-bench-")
            if not args.keep:
                stack.callback(shutil.rmtree, tmp, ignore_errors=True)
            resources = [f"db-{i:02d}" for i in range(args.resources)]
            config = Path(tmp) / "accord.yaml"
            config.write_text(policy_text(resources), encoding="utf-8")
            version = Policy(parse_policy_text(config.read_text(), str(config))).version
            engine = make_engine(url)
            migrations.upgrade(engine)
            engine.dispose()
            print(f"building {args.requests} requests and their ledger ...", file=sys.stderr)
            t = time.perf_counter()
            out["data"] = build(url, args.requests, resources, version)
            out["data"]["build_seconds"] = round(time.perf_counter() - t, 1)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE")
            env = {**os.environ, "ACCORD_DATABASE_URL": url, "ACCORD_CONFIG": str(config),
                   "ACCORD_DATA_DIR": str(Path(tmp) / "data")}
            out["reports"] = {}
            for fmt in args.formats.split(","):
                target = Path(tmp) / f"q3.{fmt}"
                print(f"report as {fmt} ...", file=sys.stderr)
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", fmt, str(target)], env=env,
                    capture_output=True, text=True, timeout=600, check=False)
                if proc.returncode != 0:
                    raise RuntimeError(f"report {fmt} failed:\n{proc.stderr[-3000:]}")
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                result["bytes"] = target.stat().st_size
                if fmt == "pdf":
                    result["pages"] = len(re.findall(rb"/Type\s*/Page\b", target.read_bytes()))
                result["summary"] = [line for line in proc.stderr.splitlines()
                                     if line.startswith(("wrote", "warning"))
                                     or "requests in the period" in line]
                result["met"] = result["seconds"] < 30 and result["peak_rss_mb"] < 500
                out["reports"][fmt] = result
            out["targets"] = {"seconds": 30, "peak_rss_mb": 500,
                              "all_met": all(r["met"] for r in out["reports"].values())}
    finally:
        if args.keep:
            print(f"kept {url} (accord.yaml and the ledger key in {tmp})", file=sys.stderr)
        else:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
