"""Background ledger work: integrate pending events (PostgreSQL) and sign checkpoints.

On PostgreSQL one process at a time holds the integrator role: a session-level advisory
lock (`INTEGRATOR_LOCK`) taken on a connection of its own, which then LISTENs on the
ledger channel, so events are integrated moments after their transaction commits; while
passes keep finding work it looks every BUSY_SECONDS instead, and writers stop sending
notices (`LedgerWake`: each one queued their commits on one lock); a short poll covers
missed notices and catches up after a restart. The holder also signs
checkpoints and feeds the sinks. Every other process stands by, trying the lock every
`STANDBY_SECONDS`: when the holder dies its connection closes, PostgreSQL frees the lock,
and a standby takes over within that time (for a host that vanished without closing its
connection, once the server's TCP keepalives, set short on that connection, give up).

The lock only elects who does the work; it is not what keeps the ledger right. Index
assignment and signing run under the head row lock (`ledger.service.integrate_pending`,
`checkpoints.sign`), so two integrators at once (a holder the server has not yet given
up on, `catch_up` before a report or a fresh checkpoint, a process that could not reach
the lock and integrates on a poll instead) take turns and no index is assigned twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select as selectmod
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime

import psycopg
from sqlalchemy.orm import Session, sessionmaker

from accord.db import transaction
from accord.ledger import checkpoints
from accord.ledger.checkpoints import LedgerConfig
from accord.ledger.service import NOTIFY_CHANNEL, LedgerCorruption
from accord.ledger.sinks import SinkState, pump
from accord.ledger.sinks import build as build_sink
from accord.ledger.upkeep import announce, integrate_all, sign_if_due, sign_now
from accord.spec.ledger import SinkSpec

log = logging.getLogger("accord.ledger")
POLL_SECONDS = 0.25  # without a LISTEN connection (it failed): how often to look
# With one, a notice comes with every commit of ledger rows; a pass this often anyway only
# guards against the unforeseen. Polling at POLL_SECONDS cost an idle worker 4 database
# round trips a second.
SAFETY_SECONDS = 5.0
RELISTEN_SECONDS = 5.0  # after the LISTEN connection failed, how often to reconnect
COALESCE_SECONDS = 0.02  # after a wake-up, let a few more commits arrive: bigger, cheaper batches
# While commits keep coming (the last pass found work), at most one pass per BUSY_SECONDS:
# a pass has a fixed cost (head lock, four queries, commit) that a bigger batch shares.
# Under a gateway's steady stream this halved the worker's CPU; an event after a quiet
# spell is still integrated within COALESCE_SECONDS.
BUSY_SECONDS = 0.2
# The integrator role: pg_try_advisory_lock(classid, objid), ("acd1" as an int, 1).
INTEGRATOR_LOCK = (0x61636431, 1)
STANDBY_SECONDS = 0.5  # how often a standby tries to take the role over
# Server-side TCP keepalives on the role's connection: a holder whose host vanished (no
# FIN, no RST) loses the lock after about idle + interval * count seconds, not two hours.
KEEPALIVE = {"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2",
             "tcp_keepalives_count": "3", "tcp_user_timeout": "10000"}


def _app_name(role: str) -> str:
    """The role connection's application_name (pg_stat_activity shows who holds it)."""
    return f"accord ledger {role} {socket.gethostname()[:24]}:{os.getpid()}"


class LedgerWorker:
    """A daemon thread: integrate (PostgreSQL) and sign checkpoints until stopped."""

    def __init__(self, sessions: sessionmaker[Session], cfg: LedgerConfig,
                 now: Callable[[], datetime], sinks: Sequence[SinkSpec] = ()) -> None:
        self.sessions = sessions
        self.cfg = cfg
        self.now = now
        self.sinks: list[SinkState] = []
        for spec in sinks:
            try:
                self.sinks.append(SinkState(build_sink(spec), spec.batch))
            except ValueError as exc:
                log.error("sink %s disabled: %s", spec.name, exc)
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()  # stop() ends a wait for notices
        self._thread = threading.Thread(target=self._run, name="accord-ledger", daemon=True)
        self._next_sign = 0.0
        self._busy = False  # the last pass integrated something
        self._announced = 0.0  # when writers were last told (0: not yet by this process)
        self.integrator = False  # this process holds the integrator role (PostgreSQL)
        bind = sessions.kw.get("bind")
        self.postgres = bind is not None and bind.dialect.name == "postgresql"

    def start(self) -> None:
        with transaction(self.sessions) as session:
            checkpoints.publish_missing(session, self.cfg)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):  # closed already: stopped before
            self._wake_w.send(b"x")
        self._thread.join(timeout=10)
        self._wake_r.close()
        self._wake_w.close()
        # Leave nothing behind that could have been integrated and signed.
        try:
            sign_now(self.sessions, self.cfg, self.now())
        except LedgerCorruption as exc:  # said already, as the worker's signer says it
            log.critical("NOT signing the ledger: %s", exc)
        except Exception:  # shutting down: the next start catches up
            log.exception("final ledger pass failed")

    def _connect(self) -> psycopg.Connection[tuple[object, ...]] | None:
        """The role's connection (PostgreSQL): standing by until `_lead` takes the role."""
        if not self.postgres:
            return None
        bind = self.sessions.kw["bind"]
        url = bind.url.set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            conn = psycopg.connect(url, autocommit=True, connect_timeout=10,
                                   application_name=_app_name("standby"))
        except psycopg.Error:
            log.exception("cannot reach the database for the ledger integrator role; "
                          "integrating on a poll instead")
            return None
        for name, value in KEEPALIVE.items():
            with contextlib.suppress(psycopg.Error):  # tcp_user_timeout: PostgreSQL 12+
                conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        return conn

    def _lead(self, conn: psycopg.Connection[tuple[object, ...]]) -> bool:
        """Whether this process holds the integrator role, taking it if it is free."""
        if self.integrator:
            return True
        row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", INTEGRATOR_LOCK).fetchone()
        if row is None or not row[0]:
            return False
        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        conn.execute("SELECT set_config('application_name', %s, false)",
                     (_app_name("integrator"),))
        self.integrator = True
        log.info("this process holds the ledger integrator role now")
        return True

    def _run(self) -> None:
        conn = self._connect()
        reconnect = time.monotonic() + RELISTEN_SECONDS
        try:
            while not self._stop.is_set():
                if conn is None and self.postgres and time.monotonic() >= reconnect:
                    conn = self._connect()  # the server restarted, say: back to the role
                    reconnect = time.monotonic() + RELISTEN_SECONDS
                try:
                    # Without the role's connection, integrate on a poll (taking turns
                    # under the head row lock); with it, only as the holder.
                    working = conn is None or self._lead(conn)
                    if working:
                        if self.postgres:
                            self._integrate()
                        if time.monotonic() >= self._next_sign:  # no trip until due
                            sign_if_due(self.sessions, self.cfg, self.now())
                            self._next_sign = (time.monotonic()
                                               + self.cfg.interval.total_seconds())
                        for sink in self.sinks:
                            pump(self.sessions, sink)
                except psycopg.Error:
                    pass  # the role's connection failed: _wait says so
                except Exception:  # keep going; the next pass retries
                    log.exception("ledger pass failed")
                if not self._wait(conn):
                    if self.integrator:
                        log.warning("the ledger integrator role's connection failed; "
                                    "polling until it is back")
                    self.integrator = False  # the lock went with the connection
                    with contextlib.suppress(psycopg.Error):
                        conn.close()  # type: ignore[union-attr]
                    conn = None
                    reconnect = time.monotonic() + RELISTEN_SECONDS
        finally:
            if conn is not None:
                conn.close()  # gives the role up at once
            for sink in self.sinks:
                sink.sink.close()

    def _integrate(self) -> None:
        """A pass, and what writers must know of it (`LedgerWake`): while passes find work
        the integrator looks again every BUSY_SECONDS and writers need not NOTIFY (it would
        make their commits queue on the cluster's notify lock); once one finds none, they
        must again. A busy integrator says so once a second, so that another one going idle
        beside it does not leave writers notifying for the rest of a burst."""
        found = integrate_all(self.sessions) > 0
        now = time.monotonic()
        if found and (not self._busy or now - self._announced >= 1.0):
            announce(self.sessions, idle=False)
            self._announced = now
        elif not found and (self._busy or self._announced == 0.0):
            announce(self.sessions, idle=True)
            self._announced = now
            # A writer that read "busy" just before may commit after this pass: look once
            # more, when its commit has had time to land (else the safety pass finds it).
            self._stop.wait(COALESCE_SECONDS)
            if integrate_all(self.sessions) > 0:
                announce(self.sessions, idle=False)
                found = True
        self._busy = found

    def _wait(self, conn: psycopg.Connection[tuple[object, ...]] | None) -> bool:
        """Until the next pass is due; False when the LISTEN connection failed."""
        if conn is None:
            # SQLite integrates inline; this loop only signs, so it need not spin fast.
            wait = POLL_SECONDS if self.postgres else self.cfg.interval.total_seconds()
            self._stop.wait(max(POLL_SECONDS, wait))
            return True
        if not self.integrator:  # standing by: try the role again shortly
            try:
                selectmod.select([self._wake_r.fileno()], [], [], STANDBY_SECONDS)
            except (OSError, ValueError):
                return False
            return not (conn.closed or conn.broken)
        # Sinks are pumped every pass: they keep the old pace. Checkpoints are signed on time.
        timeout = POLL_SECONDS if self.sinks else min(
            SAFETY_SECONDS, max(0.0, self._next_sign - time.monotonic()))
        try:
            if self._busy:  # writers send no notices meanwhile (`_integrate`)
                self._stop.wait(BUSY_SECONDS)
            else:
                ready, _, _ = selectmod.select([conn.fileno(), self._wake_r.fileno()], [], [],
                                               timeout)
                if conn.fileno() not in ready:
                    return not conn.closed
                self._stop.wait(COALESCE_SECONDS)
            for _ in conn.notifies(timeout=0, stop_after=100000):
                pass
        except (psycopg.Error, OSError, ValueError):
            return False
        return not conn.closed
