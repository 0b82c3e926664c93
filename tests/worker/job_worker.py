"""A worker process for the job tests: runs `effect` jobs until none is left undone.

argv: database URL, worker name, lease seconds, heartbeat seconds. It runs jobs the
way `accord worker` does (`jobs.run_due` with a heartbeat thread renewing its leases).
Each effect job records that it started (in its own committed transaction, so a start
is seen even if the run is later rolled back), may wait for the test to open its gate
(a slow target), then inserts its key into `job_effects` (primary key) in the same
transaction that completes the job, so a job recorded twice would fail loudly.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from accord.db import make_engine, make_sessionmaker, transaction, utcnow
from accord.jobs import service as jobs
from accord.jobs.models import Job


def handler(sessions: sessionmaker[Session], name: str) -> jobs.Handler:
    def effect(session: Session, job: jobs.Claimed, now: datetime) -> None:
        with transaction(sessions) as s:
            s.execute(text("INSERT INTO job_starts (key, worker) VALUES (:k, :w)"),
                      {"k": job.key, "w": name})
        time.sleep(float(job.payload.get("work", 0)))  # stands for a slow target
        while job.payload.get("gate"):  # a target that answers when the test says so
            with sessions() as s:
                if s.execute(text("SELECT count(*) FROM job_gates")).scalar_one():
                    break
            time.sleep(0.05)
        session.execute(text("INSERT INTO job_effects (key, worker) VALUES (:k, :w)"),
                        {"k": job.key, "w": name})

    return effect


def main() -> None:
    url, name = sys.argv[1], sys.argv[2]
    lease, every = timedelta(seconds=float(sys.argv[3])), float(sys.argv[4])
    sessions = make_sessionmaker(make_engine(url))
    leases = jobs.Leases(sessions, worker=name, now=utcnow, lease=lease, every=every)
    leases.start()
    handlers = {"effect": handler(sessions, name)}
    deadline = time.monotonic() + 120  # bounded, whatever happens to the other worker
    try:
        while time.monotonic() < deadline:
            with sessions() as s:
                left = s.execute(select(func.count()).select_from(Job)
                                 .where(Job.done_at.is_(None))).scalar_one()
            if not left:
                return
            if not jobs.run_due(sessions, handlers, worker=name, now=utcnow, leases=leases):
                time.sleep(0.05)  # the other worker holds what is left
        sys.exit("jobs left undone")
    finally:
        leases.stop()


if __name__ == "__main__":
    main()
