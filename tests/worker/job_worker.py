"""A worker process for the job tests: runs `effect` jobs until none are left.

Each effect job inserts its key into `job_effects` (primary key) in the same
transaction that completes the job, so a job run twice would fail loudly.
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

from accord.db import make_engine, make_sessionmaker, utcnow
from accord.worker import jobs


def effect(session: Session, job: jobs.Claimed, now: object) -> None:
    time.sleep(float(job.payload.get("work", 0)))  # stands for a slow target
    session.execute(text("INSERT INTO job_effects (key, worker) VALUES (:k, :w)"),
                    {"k": job.key, "w": sys.argv[2]})


def main() -> None:
    url, name, lease = sys.argv[1], sys.argv[2], float(sys.argv[3])
    sessions = make_sessionmaker(make_engine(url))
    idle = 0
    while idle < 40:  # bounded: stop once the queue stayed empty for a while
        claimed = jobs.claim(sessions, worker=name, now=utcnow(), limit=5,
                             lease=timedelta(seconds=lease))
        if not claimed:
            idle += 1
            time.sleep(0.05)
            continue
        idle = 0
        for job in claimed:
            with sessions.begin() as session:
                effect(session, job, utcnow())
                jobs.complete(session, job_id=job.id, worker=name, now=utcnow())


if __name__ == "__main__":
    main()
