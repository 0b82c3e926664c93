"""Durable jobs: idempotent enqueue, leases, retries, and two real workers on PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text

from accord.db import make_sessionmaker, transaction, utcnow
from accord.worker import jobs
from accord.worker.models import Job
from tests.conftest import Env

JOBS = 120


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


@pytest.mark.postgres
def test_two_worker_processes_run_each_job_once_even_when_one_is_killed(
    fresh_pg: Engine,
) -> None:
    sessions = make_sessionmaker(fresh_pg)
    with transaction(sessions) as session:
        session.execute(text("CREATE TABLE job_effects (key text PRIMARY KEY, worker text)"))
        now = utcnow()
        for i in range(JOBS):
            jobs.enqueue(session, kind="effect", key=f"job:{i}", run_at=now, now=now,
                         payload={"work": 0.005})
    url = fresh_pg.url.render_as_string(hide_password=False)
    root = Path(__file__).resolve().parents[2]
    spawn = [sys.executable, "-m", "tests.worker.job_worker", url]
    a = subprocess.Popen([*spawn, "a", "1.5"], cwd=root)
    b = subprocess.Popen([*spawn, "b", "1.5"], cwd=root)
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
