"""Runs durable jobs (provisioning, expiry at the exact end, deprovisioning) and reconciliation.

Sleeps until the next job is due, never longer than `POLL` (jobs other processes add
are seen within that), so a grant ends on time rather than on a coarse sweep. A job
another worker holds is due when its lease runs out, so a worker does not spin while
another runs a slow job. A heartbeat thread (`jobs.Leases`) keeps the leases of the
jobs this worker holds alive; see `accord.jobs.service` for why.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from accord.db import transaction
from accord.detect import service as detect
from accord.directory import service as directory
from accord.grants import scheduled as grant_jobs
from accord.jobs import service as jobs
from accord.notify import outbox
from accord.notify import scheduled as notify_jobs
from accord.policy.engine import Policy
from accord.policy.store import PolicyStore
from accord.provisioning import scheduled as provisioning_jobs
from accord.provisioning import service as provisioning
from accord.provisioning.registry import Connectors
from accord.provisioning.secrets import SecretBox
from accord.requests import scheduled as request_jobs
from accord.reviews import scheduled as reviews

log = logging.getLogger("accord.worker")
POLL = 0.5


def detect_all(sessions: sessionmaker[Session], policy: Policy, now: Callable[[], datetime],
               budget: float = 0.5) -> int:
    """Run the detectors over new ledger events, a batch per transaction, for at most
    `budget` seconds (the rest waits for the next round)."""
    total, until = 0, time.monotonic() + budget
    while True:
        with transaction(sessions) as session:
            n = detect.pump(session, policy=policy, now=now())
        total += n
        if n == 0 or time.monotonic() > until:
            return total


class JobRunner:
    def __init__(self, sessions: sessionmaker[Session], policies: PolicyStore,
                 connectors: Callable[[], Connectors], box: SecretBox,
                 now: Callable[[], datetime]) -> None:
        self.sessions = sessions
        self.policies = policies
        self.connectors = connectors
        self.box = box
        self.now = now
        # The random part tells this process apart from an earlier one with the same host
        # and pid (a restarted container's pid 1), which must not pass for the holder of the
        # dead one's leases.
        self.name = f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(3)}"
        self.leases = jobs.Leases(sessions, worker=self.name, now=now)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="accord-jobs", daemon=True)
        self._next_reconcile = time.monotonic() + 5.0
        self._reviews_planned: str | None = None  # policy version reviews were planned for

    def start(self) -> None:
        self.leases.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        self.leases.stop()  # after the runner: a job still running keeps its lease till then

    def run_once(self) -> int:
        if self.policies.due():
            with transaction(self.sessions) as session:  # what every process catches up by
                directory.number_changes(session)
            with self.sessions() as session:
                self.policies.follow(session)
        policy = self.policies.current
        with transaction(self.sessions) as session:
            outbox.pump(session, policy=policy, now=self.now())
        detect_all(self.sessions, policy, self.now)
        if self._reviews_planned != policy.version:  # each review's next start, as a job
            with transaction(self.sessions) as session:
                reviews.plan(session, policy=policy, now=self.now())
            self._reviews_planned = policy.version
        notify = policy.loaded.spec.notify
        warn_before = notify.expiry_warning if (notify.email or notify.slack) else None
        # Each domain's job handlers live beside it, in its scheduled.py.
        handlers = {**provisioning_jobs.handlers(self.connectors(), self.box, warn_before),
                    **notify_jobs.handlers(policy), **request_jobs.handlers(policy),
                    **grant_jobs.handlers(), **reviews.handlers(policy)}
        return jobs.run_due(self.sessions, handlers, worker=self.name, now=self.now,
                            leases=self.leases)

    def reconcile_all(self) -> None:
        """Enqueue this period's reconciliation of each resource that asks for it: one job
        per resource and period (`reconcile_every`), keyed by both, so however many
        processes enqueue it, one of them runs it once."""
        policy = self.policies.current
        every = policy.loaded.spec.worker.reconcile_every.total_seconds()
        now = self.now()
        period = int(now.timestamp() // max(every, 1.0))
        with transaction(self.sessions) as session:
            for name, spec in policy.resources.items():
                if spec.provision is None or spec.reconcile == "off":
                    continue
                jobs.enqueue(session, kind=provisioning.RECONCILE,
                             key=f"{provisioning.RECONCILE}:{name}:{period}", run_at=now,
                             now=now, payload={"resource": name,
                                               "enforce": spec.reconcile == "enforce"})

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ran = self.run_once()
                if time.monotonic() >= self._next_reconcile:
                    every = self.policies.current.loaded.spec.worker.reconcile_every
                    self._next_reconcile = time.monotonic() + every.total_seconds()
                    self.reconcile_all()
                if ran:
                    continue
                now = self.now()
                with self.sessions() as session:
                    due = jobs.next_due(session, until=now + timedelta(seconds=POLL))
                wait = POLL if due is None else (due - now).total_seconds()
                self._stop.wait(min(POLL, max(0.0, wait)))
            except Exception:  # keep the worker alive; the failed job says why
                log.exception("job pass failed")
                self._stop.wait(POLL)
