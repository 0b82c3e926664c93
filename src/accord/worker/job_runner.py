"""Runs durable jobs (provisioning, expiry at the exact end, deprovisioning) and reconciliation.

Sleeps until the next job is due, never longer than `POLL` (jobs other processes add
are seen within that), so a grant ends on time rather than on a coarse sweep. A job
another worker holds is due when its lease runs out, so a worker does not spin while
another runs a slow job. A heartbeat thread (`jobs.Leases`) keeps the leases of the
jobs this worker holds alive; see `accord.worker.jobs` for why.
"""

from __future__ import annotations

import functools
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
from accord.grants import service as grants
from accord.notify import outbox
from accord.notify import views as slack_views
from accord.policy.engine import Policy
from accord.policy.store import PolicyStore
from accord.provisioning import service as provisioning
from accord.provisioning.registry import Connectors
from accord.provisioning.secrets import SecretBox
from accord.requests import service as requests
from accord.reviews import scheduled as reviews
from accord.worker import jobs

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
        handlers = provisioning.handlers(self.connectors(), self.box, warn_before)
        handlers[slack_views.RESPOND] = slack_views.respond_handler
        handlers[outbox.DELIVER] = functools.partial(outbox.deliver, policy=policy)

        def remind(s: Session, job: jobs.Claimed, now: datetime) -> None:
            requests.remind(s, policy=policy, request_id=job.payload["request_id"], now=now)

        def escalate(s: Session, job: jobs.Claimed, now: datetime) -> None:
            requests.escalate(s, policy=policy, request_id=job.payload["request_id"], now=now)

        def warn(s: Session, job: jobs.Claimed, now: datetime) -> None:
            grants.warn(s, grant_id=job.payload["grant_id"], ends_at=job.payload["ends_at"],
                        now=now)

        def review_remind(s: Session, job: jobs.Claimed, now: datetime) -> None:
            requests.review_remind(s, policy=policy, request_id=job.payload["request_id"],
                                   round=job.payload["round"], now=now)

        handlers[requests.REVIEW_REMIND] = review_remind
        handlers[grants.WARN] = warn
        handlers[requests.REMIND] = remind
        handlers[requests.ESCALATE] = escalate
        handlers.update(reviews.handlers(policy))  # access review campaigns
        return jobs.run_due(self.sessions, handlers, worker=self.name, now=self.now,
                            leases=self.leases)

    def reconcile_all(self) -> None:
        connectors = self.connectors()
        for name, spec in self.policies.current.resources.items():
            if spec.provision is None or spec.reconcile == "off":
                continue
            try:
                with transaction(self.sessions) as session:
                    provisioning.reconcile(session, connectors=connectors, resource=name,
                                           now=self.now(), enforce=spec.reconcile == "enforce")
            except Exception:  # a target that is down is retried next round
                log.exception("reconciling %s failed", name)

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
