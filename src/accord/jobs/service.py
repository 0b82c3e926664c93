"""Leasing durable jobs from the database.

A worker claims due jobs in a short transaction (`FOR UPDATE SKIP LOCKED` on
PostgreSQL, so concurrent workers take disjoint jobs), runs each outside any
transaction, and records the result in another. Handlers must be idempotent (every
connector is), and whatever state a handler changes it changes in the same
transaction that marks the job done.

Leases are short and kept alive by a heartbeat (`Leases`): a claim leases a job for
`LEASE` (3 s), and a thread of the worker renews every lease it still holds every
`HEARTBEAT` (0.5 s), however long the job runs. So:

* a live worker never loses a job to another, even one whose target takes minutes;
* a worker that dies (SIGKILL, OOM, a lost host) stops renewing, and within `LEASE`
  its jobs are due again for any other worker: a revocation it held waits seconds,
  not a long fixed lease;
* a worker claims a job only when it is about to run it, so it never holds jobs it is
  not running (a slow job keeps nothing else waiting while other workers are idle);
* a worker that lost a lease anyway (its heartbeat could not reach the database for
  `LEASE` - `HEARTBEAT`) has its completion refused: its transaction is rolled back,
  so nothing it recorded commits, and the new holder's run is the one on record.

Why heartbeats and not locks tied to the worker's database session (PostgreSQL
advisory locks, or holding the job's row lock while the job runs): SQLite has no
such locks; a row lock held for the whole job would also block this worker's own
bookkeeping; and a session lock is freed only when PostgreSQL notices the session is
gone, which for a host that vanished (no TCP reset) takes the kernel's keepalive
time, two hours by default. A heartbeat expires on the same clock whatever killed
the worker, costs one UPDATE per worker per `HEARTBEAT` while it holds jobs (none
when idle), and works the same on both databases. On SQLite (one process, one
writer) it stays correct: a handler's transaction holds the write lock, so no one
can claim the job while it runs, even when that lock keeps the heartbeat waiting.

Lease times are written with the worker's clock: worker hosts' clocks must agree to
well within `LEASE` - `HEARTBEAT` (NTP does).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from accord.db import skip_locked, transaction
from accord.jobs.models import Job

log = logging.getLogger("accord.worker")
# A dead worker's jobs are due again at most LEASE after its last renewal. The heartbeat
# may miss LEASE - HEARTBEAT (2.5 s) before a live worker's lease can lapse.
LEASE = timedelta(seconds=3)
HEARTBEAT = 0.5  # seconds between renewals
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
    """Lease up to `limit` due jobs for `worker` (free, or their lease ran out)."""
    with transaction(sessions) as session:
        q = (
            select(Job)
            .where(Job.done_at.is_(None), Job.run_at <= now,
                   or_(Job.leased_until.is_(None), Job.leased_until < now))
            .order_by(Job.run_at, Job.id)
            .limit(limit)
        )
        jobs = list(session.execute(skip_locked(session, q)).scalars())
        for job in jobs:
            job.leased_by = worker
            job.leased_until = now + lease
            job.attempts += 1
        return [Claimed(j.id, j.kind, j.key, dict(j.payload), j.attempts) for j in jobs]


def renew(sessions: sessionmaker[Session], *, worker: str, job_ids: Iterable[int],
          now: datetime, lease: timedelta = LEASE) -> set[int]:
    """Extend `worker`'s leases on `job_ids` to `now + lease`. Returns the ids it still
    holds (a job done, or taken by another worker after the lease lapsed, is left alone)."""
    ids = sorted(set(job_ids))  # one lock order for every renewal
    if not ids:
        return set()
    with transaction(sessions) as session:
        rows = session.execute(
            update(Job)
            .where(Job.id.in_(ids), Job.leased_by == worker, Job.done_at.is_(None))
            .values(leased_until=now + lease)
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        return set(rows.scalars())


def _held(session: Session, job_id: int, worker: str) -> Job | None:
    job = session.get(Job, job_id, with_for_update=True)
    if job is None or job.done_at is not None or job.leased_by != worker:
        return None  # the lease ran out and someone else has it: do not record twice
    return job


def complete(session: Session, *, job_id: int, worker: str, now: datetime) -> bool:
    """Mark the job done, in the caller's transaction (with the handler's own changes).
    False if `worker` no longer holds it: the caller must then roll back."""
    job = _held(session, job_id, worker)
    if job is None:
        return False
    job.done_at = now
    job.leased_until = None
    job.last_error = None
    return True


def retry(session: Session, *, job_id: int, worker: str, now: datetime, error: str) -> bool:
    """Release the job to run again later, backing off exponentially. False if `worker`
    no longer holds it."""
    job = _held(session, job_id, worker)
    if job is None:
        return False
    backoff = min(MAX_BACKOFF, timedelta(seconds=2 ** min(job.attempts, 12)))
    job.run_at = now + backoff
    job.leased_by = None
    job.leased_until = None
    job.last_error = error[:2000]
    return True


def next_due(session: Session, *, until: datetime | None = None) -> datetime | None:
    """When the earliest job not done can be claimed (to sleep until then, not poll): its
    run_at, or when its lease runs out if another worker holds it. With `until`, only
    jobs whose run_at is by then count (a short range of the due index)."""
    available = case((Job.leased_until > Job.run_at, Job.leased_until), else_=Job.run_at)
    q = select(func.min(available)).where(Job.done_at.is_(None))
    if until is not None:
        q = q.where(Job.run_at <= until)
    value: datetime | None = session.execute(q).scalar_one()
    return value


class Leases:
    """The jobs one worker is running, and the heartbeat that keeps their leases alive.

    `start()` runs the heartbeat thread; without it (tests, one-off passes) a lease lives
    for `lease` from the claim or from an explicit `renew()`.
    """

    def __init__(self, sessions: sessionmaker[Session], *, worker: str,
                 now: Callable[[], datetime], lease: timedelta = LEASE,
                 every: float = HEARTBEAT) -> None:
        self.sessions = sessions
        self.worker = worker
        self.now = now
        self.lease = lease
        self.every = every
        self._held: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def claim(self, *, limit: int = 1) -> list[Claimed]:
        """Lease up to `limit` due jobs and keep them alive until `release`."""
        claimed = claim(self.sessions, worker=self.worker, now=self.now(), limit=limit,
                        lease=self.lease)
        with self._lock:
            self._held.update(job.id for job in claimed)
        return claimed

    def release(self, job_id: int) -> None:
        """Stop renewing `job_id` (done, retried later, or lost)."""
        with self._lock:
            self._held.discard(job_id)

    def renew(self) -> set[int]:
        """One heartbeat: extend the leases held; forget those lost. Returns those kept."""
        with self._lock:
            ids = set(self._held)
        if not ids:
            return set()  # idle: no database trip
        kept = renew(self.sessions, worker=self.worker, job_ids=ids, now=self.now(),
                     lease=self.lease)
        with self._lock:  # done a moment ago, or taken: the completion says which
            self._held -= ids - kept
        return kept

    def start(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="accord-leases", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.renew()
            except Exception:  # the database is away: retry next beat
                log.exception("renewing job leases failed")


Handler = Callable[[Session, Claimed, datetime], None]


class RetryLater(Exception):
    """Raised by a handler to try again later while keeping what it recorded this time."""


class LeaseLost(Exception):
    """The job was taken by another worker while this one ran it: roll back, record nothing."""


def run_due(sessions: sessionmaker[Session], handlers: dict[str, Handler], *, worker: str,
            now: Callable[[], datetime], leases: Leases | None = None,
            batch: int = 20) -> int:
    """Claim and run up to `batch` due jobs, one at a time. Returns how many completed.

    A job is claimed only when it is about to run: a worker never holds jobs it is not
    running, so a slow job does not keep others waiting behind it while idle workers
    could run them. `leases` (with its heartbeat running) keeps the running job's lease
    alive however long it takes; without it a job must finish within `LEASE`.
    """
    done = 0
    leases = leases or Leases(sessions, worker=worker, now=now)
    for _ in range(batch):
        claimed = leases.claim()
        if not claimed:
            break
        job = claimed[0]
        try:
            done += _run_one(sessions, handlers.get(job.kind), job, worker=worker, now=now)
        except LeaseLost:
            log.warning("job %s (%s): lease lost while it ran; what it did is rolled back "
                        "and its new holder runs it", job.key, job.kind)
        finally:
            leases.release(job.id)  # the heartbeat stops renewing it
    return done


def _run_one(sessions: sessionmaker[Session], handler: Handler | None, job: Claimed, *,
             worker: str, now: Callable[[], datetime]) -> int:
    try:
        if handler is None:
            raise LookupError(f"no handler for job kind {job.kind!r}")
        with transaction(sessions) as session:
            try:
                handler(session, job, now())
            except RetryLater as exc:
                if not retry(session, job_id=job.id, worker=worker, now=now(),
                             error=str(exc)):
                    raise LeaseLost from None
                return 0
            if not complete(session, job_id=job.id, worker=worker, now=now()):
                raise LeaseLost
            return 1
    except LeaseLost:
        raise
    except Exception as exc:  # the job says what went wrong and runs again later
        log.warning("job %s (%s) failed: %s", job.key, job.kind, exc)
        with transaction(sessions) as session:
            if not retry(session, job_id=job.id, worker=worker, now=now(), error=str(exc)):
                raise LeaseLost from None
        return 0
