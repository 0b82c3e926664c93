"""Leasing durable jobs from the database.

A worker claims due jobs in a short transaction (`FOR UPDATE SKIP LOCKED` on
PostgreSQL, so concurrent workers take disjoint jobs), runs each outside any
transaction, and records the result in another. A lease outlives any single run,
so two workers never hold one job at once; if a worker dies mid-job the lease
runs out and another takes the job again. Handlers must therefore be idempotent
(every connector is), and whatever state a handler changes it changes in the
same transaction that marks the job done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from accord.db import transaction
from accord.worker.models import Job

log = logging.getLogger("accord.worker")
LEASE = timedelta(seconds=60)
MAX_BACKOFF = timedelta(minutes=10)


@dataclass(frozen=True)
class Claimed:
    id: int
    kind: str
    key: str
    payload: dict[str, Any]
    attempts: int


def enqueue(session: Session, *, kind: str, key: str, run_at: datetime, now: datetime,
            payload: dict[str, Any] | None = None) -> bool:
    """Add a job unless one with `key` exists. True if it was added."""
    if session.execute(select(Job.id).where(Job.key == key)).first() is not None:
        return False
    try:
        with session.begin_nested():
            session.add(Job(kind=kind, key=key, payload=payload or {}, run_at=run_at,
                            created_at=now))
    except IntegrityError:  # a concurrent enqueue of the same key won
        return False
    return True


def claim(sessions: sessionmaker[Session], *, worker: str, now: datetime, limit: int = 20,
          lease: timedelta = LEASE) -> list[Claimed]:
    """Lease up to `limit` due jobs for `worker`."""
    with transaction(sessions) as session:
        q = (
            select(Job)
            .where(Job.done_at.is_(None), Job.run_at <= now,
                   or_(Job.leased_until.is_(None), Job.leased_until < now))
            .order_by(Job.run_at, Job.id)
            .limit(limit)
        )
        if session.get_bind().dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)
        jobs = list(session.execute(q).scalars())
        for job in jobs:
            job.leased_by = worker
            job.leased_until = now + lease
            job.attempts += 1
        return [Claimed(j.id, j.kind, j.key, dict(j.payload), j.attempts) for j in jobs]


def _held(session: Session, job_id: int, worker: str) -> Job | None:
    job = session.get(Job, job_id, with_for_update=True)
    if job is None or job.done_at is not None or job.leased_by != worker:
        return None  # the lease ran out and someone else has it: do not record twice
    return job


def complete(session: Session, *, job_id: int, worker: str, now: datetime) -> bool:
    """Mark the job done, in the caller's transaction (with the handler's own changes)."""
    job = _held(session, job_id, worker)
    if job is None:
        return False
    job.done_at = now
    job.leased_until = None
    job.last_error = None
    return True


def retry(session: Session, *, job_id: int, worker: str, now: datetime, error: str) -> None:
    """Release the job to run again later, backing off exponentially."""
    job = _held(session, job_id, worker)
    if job is None:
        return
    backoff = min(MAX_BACKOFF, timedelta(seconds=2 ** min(job.attempts, 12)))
    job.run_at = now + backoff
    job.leased_by = None
    job.leased_until = None
    job.last_error = error[:2000]


def next_due(session: Session) -> datetime | None:
    """When the earliest job not done is due (to sleep until then, not poll)."""
    value: datetime | None = session.execute(
        select(func.min(Job.run_at)).where(Job.done_at.is_(None))
    ).scalar_one()
    return value


Handler = Callable[[Session, Claimed, datetime], None]


class RetryLater(Exception):
    """Raised by a handler to try again later while keeping what it recorded this time."""


def run_due(sessions: sessionmaker[Session], handlers: dict[str, Handler], *, worker: str,
            now: Callable[[], datetime]) -> int:
    """Claim and run due jobs once. Returns how many completed."""
    done = 0
    for job in claim(sessions, worker=worker, now=now()):
        handler = handlers.get(job.kind)
        try:
            if handler is None:
                raise LookupError(f"no handler for job kind {job.kind!r}")
            with transaction(sessions) as session:
                try:
                    handler(session, job, now())
                except RetryLater as exc:
                    retry(session, job_id=job.id, worker=worker, now=now(), error=str(exc))
                    continue
                if complete(session, job_id=job.id, worker=worker, now=now()):
                    done += 1
        except Exception as exc:  # the job says what went wrong and runs again later
            log.warning("job %s (%s) failed: %s", job.key, job.kind, exc)
            with transaction(sessions) as session:
                retry(session, job_id=job.id, worker=worker, now=now(), error=str(exc))
    return done
