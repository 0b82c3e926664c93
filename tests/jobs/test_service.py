"""Durable jobs: idempotent enqueue, short leases kept alive by a heartbeat, retries,
and real worker processes on PostgreSQL (one killed mid-run, one running a slow job)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from accord.db import make_sessionmaker, transaction, utcnow
from accord.jobs import service as jobs
from accord.jobs.models import Job
from tests.conftest import Env

JOBS = 120
ROOT = Path(__file__).resolve().parents[2]
TICK = timedelta(microseconds=1)


def test_enqueue_is_idempotent_by_key(env: Env) -> None:
    now = env.clock()
    with transaction(env.st.sessions) as session:
        assert jobs.enqueue(session, kind="effect", key="grant:1:expire", run_at=now, now=now)
        assert not jobs.enqueue(session, kind="effect", key="grant:1:expire", run_at=now, now=now)
    with env.st.sessions() as session:
        assert session.execute(select(func.count()).select_from(Job)).scalar_one() == 1


def test_jobs_run_when_due_and_retry_with_backoff(env: Env) -> None:
    now = env.clock()
    with transaction(env.st.sessions) as session:
        jobs.enqueue(session, kind="flaky", key="later", run_at=now + timedelta(minutes=5),
                     now=now)
        jobs.enqueue(session, kind="flaky", key="now", run_at=now, now=now)
    calls: list[str] = []

    def flaky(session: object, job: jobs.Claimed, at: object) -> None:
        calls.append(job.key)
        if len(calls) == 1:
            raise RuntimeError("target said 503")

    handlers: dict[str, jobs.Handler] = {"flaky": flaky}  # type: ignore[dict-item]
    assert jobs.run_due(env.st.sessions, handlers, worker="w1", now=env.clock) == 0
    with env.st.sessions() as session:
        job = session.execute(select(Job).where(Job.key == "now")).scalar_one()
        assert job.last_error == "target said 503" and job.done_at is None
        assert job.run_at > env.clock()  # backed off
        assert jobs.next_due(session) == job.run_at
    env.clock.advance(seconds=3)
    assert jobs.run_due(env.st.sessions, handlers, worker="w1", now=env.clock) == 1
    env.clock.advance(minutes=5)
    assert jobs.run_due(env.st.sessions, handlers, worker="w1", now=env.clock) == 1
    assert calls == ["now", "now", "later"]


def test_a_lease_keeps_a_job_from_a_second_worker_until_it_runs_out(env: Env) -> None:
    now = env.clock()
    with transaction(env.st.sessions) as session:
        jobs.enqueue(session, kind="x", key="one", run_at=now, now=now)
    first = jobs.claim(env.st.sessions, worker="a", now=now, lease=timedelta(seconds=30))
    assert [j.key for j in first] == ["one"]
    assert jobs.claim(env.st.sessions, worker="b", now=now) == []
    later = now + timedelta(seconds=31)
    second = jobs.claim(env.st.sessions, worker="b", now=later)  # a died: b takes over
    assert [j.key for j in second] == ["one"] and second[0].attempts == 2
    with transaction(env.st.sessions) as session:  # a's late completion must not count
        assert not jobs.complete(session, job_id=first[0].id, worker="a", now=later)
        assert jobs.complete(session, job_id=second[0].id, worker="b", now=later)


def _one_job(env: Env, key: str = "one") -> int:
    now = env.clock()
    with transaction(env.st.sessions) as session:
        jobs.enqueue(session, kind="x", key=key, run_at=now, now=now)
        return session.execute(select(Job.id).where(Job.key == key)).scalar_one()


def test_a_job_whose_worker_stopped_heartbeating_is_claimable_within_the_short_lease(
    env: Env,
) -> None:
    _one_job(env)
    a = jobs.Leases(env.st.sessions, worker="a", now=env.clock)
    [job] = a.claim()
    env.clock.advance(seconds=jobs.HEARTBEAT)
    assert a.renew() == {job.id}  # one beat, then worker a dies
    died = env.clock()
    env.clock.value = died + jobs.LEASE
    assert jobs.claim(env.st.sessions, worker="b", now=env.clock()) == []  # not a moment early
    env.clock.value = died + timedelta(seconds=3) + TICK  # within seconds, not a minute
    [taken] = jobs.claim(env.st.sessions, worker="b", now=env.clock())
    assert taken.id == job.id and taken.attempts == 2


def test_a_worker_that_heartbeats_keeps_its_job_across_many_lease_lengths(env: Env) -> None:
    _one_job(env)
    a = jobs.Leases(env.st.sessions, worker="a", now=env.clock)
    [job] = a.claim()
    start = env.clock()
    while env.clock() - start < 10 * jobs.LEASE:  # a slow target: a provisioning call of 30 s
        env.clock.advance(seconds=jobs.HEARTBEAT)
        assert a.renew() == {job.id}
        assert jobs.claim(env.st.sessions, worker="b", now=env.clock() + jobs.LEASE - TICK) \
            == []
    with transaction(env.st.sessions) as session:
        assert jobs.complete(session, job_id=job.id, worker="a", now=env.clock())
    a.release(job.id)
    assert a.renew() == set()  # nothing held: the heartbeat makes no database trip


def test_a_renewal_gives_up_a_job_another_worker_took(env: Env) -> None:
    _one_job(env)
    a = jobs.Leases(env.st.sessions, worker="a", now=env.clock)
    [job] = a.claim()
    env.clock.advance(seconds=10)  # a's heartbeat stalled past the lease; b took the job
    assert [j.id for j in jobs.claim(env.st.sessions, worker="b", now=env.clock())] == [job.id]
    assert a.renew() == set()
    with env.st.sessions() as session:
        assert session.get(Job, job.id).leased_by == "b"  # type: ignore[union-attr]


def test_a_late_completion_from_a_lost_lease_records_nothing(env: Env) -> None:
    _one_job(env)
    clock, sessions = env.clock, env.st.sessions

    class Overtaken(jobs.Leases):
        """Claims, then stalls past its lease while worker b takes the job."""

        def claim(self, *, limit: int = 1) -> list[jobs.Claimed]:
            got = super().claim(limit=limit)
            clock.advance(seconds=jobs.LEASE.total_seconds() + 1)
            assert len(jobs.claim(sessions, worker="b", now=clock())) == 1
            return got

    def handler(session: Session, job: jobs.Claimed, now: datetime) -> None:
        jobs.enqueue(session, kind="x", key="side-effect", run_at=clock(), now=clock())

    ran = jobs.run_due(sessions, {"x": handler}, worker="a", now=clock,
                       leases=Overtaken(sessions, worker="a", now=clock))
    assert ran == 0
    with env.st.sessions() as session:
        job = session.execute(select(Job).where(Job.key == "one")).scalar_one()
        assert (job.leased_by, job.done_at, job.last_error) == ("b", None, None)
        assert session.execute(select(Job).where(Job.key == "side-effect")).first() is None


def test_a_job_another_worker_holds_is_due_when_its_lease_runs_out(env: Env) -> None:
    _one_job(env)
    [job] = jobs.claim(env.st.sessions, worker="a", now=env.clock())
    with env.st.sessions() as session:
        # Not its run_at (past): a worker sleeping until then would spin while a runs it.
        assert jobs.next_due(session) == env.clock() + jobs.LEASE
        assert jobs.next_due(session, until=env.clock()) == env.clock() + jobs.LEASE
        assert jobs.next_due(session, until=env.clock() - TICK) is None  # not yet due
    with transaction(env.st.sessions) as session:
        assert jobs.complete(session, job_id=job.id, worker="a", now=env.clock())
    with env.st.sessions() as session:
        assert jobs.next_due(session) is None


def _job_tables(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as session:
        session.execute(text("CREATE TABLE job_effects (key text PRIMARY KEY, worker text)"))
        session.execute(text("CREATE TABLE job_starts (key text, worker text)"))
        session.execute(text("CREATE TABLE job_gates (opened int)"))


def _spawn(engine: Engine, name: str, lease: float, every: float) -> subprocess.Popen[bytes]:
    url = engine.url.render_as_string(hide_password=False)
    return subprocess.Popen([sys.executable, "-m", "tests.worker.job_worker", url, name,
                             str(lease), str(every)], cwd=ROOT)


@pytest.mark.postgres
def test_two_worker_processes_run_each_job_once_even_when_one_is_killed(
    fresh_pg: Engine,
) -> None:
    sessions = make_sessionmaker(fresh_pg)
    _job_tables(sessions)
    with transaction(sessions) as session:
        now = utcnow()
        for i in range(JOBS):
            jobs.enqueue(session, kind="effect", key=f"job:{i}", run_at=now, now=now,
                         payload={"work": 0.005})
    a = _spawn(fresh_pg, "a", 1.5, 0.25)
    b = _spawn(fresh_pg, "b", 1.5, 0.25)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # let a make some progress, then kill it mid-run
        with sessions() as s:
            done_by_a = s.execute(text("SELECT count(*) FROM job_effects WHERE worker = 'a'"))\
                .scalar_one()
        if done_by_a >= 10:
            break
        time.sleep(0.02)
    os.kill(a.pid, signal.SIGKILL)
    a.wait(timeout=30)
    assert b.wait(timeout=120) == 0
    with sessions() as s:
        effects = s.execute(text("SELECT count(*), count(DISTINCT key) FROM job_effects")).one()
        assert tuple(effects) == (JOBS, JOBS)  # every job once (the primary key forbids twice)
        not_done = s.execute(select(func.count()).select_from(Job)
                             .where(Job.done_at.is_(None))).scalar_one()
        assert not_done == 0
        by_b = s.execute(text("SELECT count(*) FROM job_effects WHERE worker = 'b'"))\
            .scalar_one()
        assert 0 < by_b < JOBS


@pytest.mark.postgres
def test_a_live_worker_keeps_a_slow_job_across_many_lease_lengths(fresh_pg: Engine) -> None:
    """Two real workers with a 1 s lease: whichever takes the slow job keeps it, beating,
    until its target answers; the other, polling all along, never starts it."""
    sessions = make_sessionmaker(fresh_pg)
    _job_tables(sessions)
    with transaction(sessions) as session:
        now = utcnow()
        jobs.enqueue(session, kind="effect", key="slow", run_at=now, now=now,
                     payload={"gate": True})
    lease = 1.0  # beats every third of it: margin for a loaded CI machine
    a, b = _spawn(fresh_pg, "a", lease, 0.1), _spawn(fresh_pg, "b", lease, 0.1)
    try:
        def leased_until() -> datetime | None:
            with sessions() as s:
                return s.execute(select(Job.leased_until).where(Job.key == "slow")) \
                    .scalar_one()

        deadline = time.monotonic() + 60
        first: datetime | None = None
        while time.monotonic() < deadline:  # other processes' work: nothing to await but rows
            until = leased_until()
            if until is not None and first is None:
                first = until
            if first is not None and until is not None \
                    and until - first >= timedelta(seconds=8 * lease):
                break  # renewed across 8 lease lengths while the job ran
            time.sleep(0.05)
        else:
            pytest.fail("the slow job's lease was not renewed")
        assert a.poll() is None and b.poll() is None  # both alive: b was free to steal it
        with transaction(sessions) as session:
            session.execute(text("INSERT INTO job_gates VALUES (1)"))  # the target answers
        assert a.wait(timeout=60) == 0 and b.wait(timeout=60) == 0
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    with sessions() as s:
        starts = s.execute(text("SELECT worker FROM job_starts")).scalars().all()
        effects = s.execute(text("SELECT worker FROM job_effects")).scalars().all()
        job = s.execute(select(Job).where(Job.key == "slow")).scalar_one()
    assert len(starts) == 1 and effects == starts  # started once, by the one that finished it
    assert job.attempts == 1 and job.done_at is not None
