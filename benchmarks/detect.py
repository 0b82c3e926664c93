"""Detector benchmark: do the detectors keep up with 2,000 ledger events/s?

A producer commits a realistic mix of ledger traffic at --rate events/s on PostgreSQL
(mostly gateway statements; requests filed through the real service, a share of them
auto-denied so the windowed detectors work; approvals seconds after filing, so the
rubber-stamp detector fires). The integrator runs as in `accord serve`, and the detectors
run as the worker runs them (`detect_all` rounds). Every 0.25 s the benchmark samples the
lag: integrated entries not yet read by the detectors, in events and in seconds (the age
of the oldest unread event).

Prints one JSON object. Run: .venv/bin/python benchmarks/detect.py [--rate 2000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import func, select

from accord import migrations
from accord.db import make_engine, make_sessionmaker, transaction
from accord.detect.models import Alert, DetectorCursor
from accord.ledger import service as ledger
from accord.ledger.events import Actor, EventType
from accord.ledger.models import LedgerEntry
from accord.ledger.upkeep import integrate_all
from accord.policy.engine import Policy
from accord.requests import service as requests
from accord.spec.load import parse_policy_text
from accord.worker.job_runner import detect_all

PG_ADMIN = os.environ.get("ACCORD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
POLICY = """\
users: [u0, u1, u2, u3, u4, u5, u6, u7, lead1, lead2]
groups: {team: [u0, u1, u2, u3, u4, u5, u6, u7], leads: [lead1, lead2], admins: [lead2]}
accord: {admins: [admins]}
resources:
  - {name: db, kind: postgres, labels: {env: prod}, owners: [leads], roles: [read, write]}
workflows:
  - name: prod
    match: 'true'
    max_duration: 4h
    auto_deny: 'size(request.reason) < 10'
    steps: [{approvers: [leads]}]
"""


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))] if values else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=2000, help="ledger events per second")
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()

    name = f"accord_bench_detect_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    engine = make_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        migrations.upgrade(engine)
        sessions = make_sessionmaker(engine)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "accord.yaml"
            path.write_text(POLICY)
            policy = Policy(parse_policy_text(POLICY, str(path)))
            print(json.dumps(run(sessions, policy, args.rate, args.seconds), indent=2))
    finally:
        engine.dispose()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(sessions: Any, policy: Policy, rate: int, seconds: float) -> dict[str, Any]:
    stop = threading.Event()
    produced = [0]
    clock_base = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)  # a Wednesday morning
    started = time.monotonic()

    def now() -> datetime:
        return clock_base + timedelta(seconds=time.monotonic() - started)

    def producer() -> None:
        tick, per_tick = 0.05, max(1, round(rate * 0.05))
        n = 0
        pending: list[int] = []
        next_at = time.monotonic()
        while not stop.is_set():
            with transaction(sessions) as s:
                made = 0
                if n % 10 == 0:  # a request: created + denied (short reason) or pending
                    user = f"u{n % 8}"
                    reason = "nope" if n % 20 == 0 else "INC-1234 look at the orders"
                    req = requests.create(s, policy=policy, caller=requests.Caller(user, "api"),
                                          resource="db", role="read",
                                          duration=timedelta(hours=1), reason=reason, now=now())
                    made += 2
                    if req.status == "pending":
                        pending.append(req.id)
                if pending and n % 10 == 5:  # an approval a moment later
                    requests.approve(s, policy=policy, caller=requests.Caller("lead1", "api"),
                                     request_id=pending.pop(0), comment="", now=now())
                    made += 3
                for i in range(per_tick - made):
                    ledger.record(s, type=EventType.GATEWAY_STATEMENT,
                                  actor=Actor("user", f"u{i % 8}", "gateway"),
                                  subject=f"grant:{i % 50}",
                                  resource={"name": "db", "role": "read"},
                                  data={"statement": "SELECT * FROM orders WHERE id = $1",
                                        "rows": 1, "duration_ms": 0.4}, time=now())
                produced[0] += max(per_tick, made)
            n += 1
            next_at += tick
            time.sleep(max(0.0, next_at - time.monotonic()))

    def integrator() -> None:
        while not stop.is_set():
            integrate_all(sessions)
            time.sleep(0.02)

    def detectors() -> None:
        while not stop.is_set():
            if detect_all(sessions, policy, now, budget=0.5) == 0:
                time.sleep(0.1)

    samples_events: list[int] = []
    samples_seconds: list[float] = []
    threads = [threading.Thread(target=f, daemon=True) for f in (producer, integrator, detectors)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        time.sleep(0.25)
        with sessions() as s:
            size = ledger.tree_size(s)
            cursor = s.get(DetectorCursor, "detectors")
            at = cursor.next_index if cursor else 0
            oldest = s.execute(select(LedgerEntry.time).where(LedgerEntry.idx == at)).scalar()
            samples_events.append(max(0, size - at))
            samples_seconds.append(max(0.0, (now() - oldest).total_seconds()) if oldest else 0.0)
    elapsed = time.monotonic() - t0
    stop.set()
    for t in threads:
        t.join(timeout=30)
    with sessions() as s:
        size = ledger.tree_size(s)
        cursor = s.get(DetectorCursor, "detectors")
        alerts = dict(s.execute(select(Alert.rule, func.count()).group_by(Alert.rule)).all())
    return {
        "benchmark": "detectors over a growing ledger (PostgreSQL)",
        "target_rate_events_per_s": rate,
        "produced_events_per_s": round(produced[0] / elapsed),
        "ledger_size": size,
        "detector_cursor": cursor.next_index if cursor else 0,
        "lag_events": {"p50": pct(samples_events, 50), "p95": pct(samples_events, 95),
                       "max": max(samples_events, default=0)},
        "lag_seconds": {"p50": round(pct(samples_seconds, 50), 3),
                        "p95": round(pct(samples_seconds, 95), 3),
                        "max": round(max(samples_seconds, default=0.0), 3)},
        "alerts_raised": alerts,
        "kept_up": pct(samples_seconds, 95) < 2.0,
        "samples": len(samples_events),
        "cpu_count": os.cpu_count(),
        "mean_lag_events": round(statistics.fmean(samples_events), 1) if samples_events else 0,
    }


if __name__ == "__main__":
    main()
