"""Background ledger work: integrate pending events (PostgreSQL) and sign checkpoints.

On PostgreSQL a dedicated connection LISTENs on the ledger channel, so an event is
integrated moments after its transaction commits; while passes keep finding work the
integrator looks every BUSY_SECONDS instead, and writers stop sending notices (`LedgerWake`:
each one queued their commits on one lock); a short poll covers missed notices and catches
up after a restart. Replicas may all run this: the head row lock makes
them take turns, and no index is assigned twice.
"""

from __future__ import annotations

import contextlib
import logging
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

    def _listen(self) -> psycopg.Connection[tuple[object, ...]] | None:
        if not self.postgres:
            return None
        bind = self.sessions.kw["bind"]
        url = bind.url.set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            conn = psycopg.connect(url, autocommit=True)
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            return conn
        except psycopg.Error:
            log.exception("cannot LISTEN for ledger events; polling instead")
            return None

    def _run(self) -> None:
        conn = self._listen()
        relisten = time.monotonic() + RELISTEN_SECONDS
        try:
            while not self._stop.is_set():
                if conn is None and self.postgres and time.monotonic() >= relisten:
                    conn = self._listen()  # the server restarted, say: back to notices
                    relisten = time.monotonic() + RELISTEN_SECONDS
                try:
                    if self.postgres:
                        self._integrate()
                    if time.monotonic() >= self._next_sign:  # no database trip until due
                        sign_if_due(self.sessions, self.cfg, self.now())
                        self._next_sign = time.monotonic() + self.cfg.interval.total_seconds()
                    for sink in self.sinks:
                        pump(self.sessions, sink)
                except Exception:  # keep going; the next pass retries
                    log.exception("ledger pass failed")
                if not self._wait(conn):
                    log.warning("the ledger's LISTEN connection failed; polling every "
                                "%.2fs until it is back", POLL_SECONDS)
                    with contextlib.suppress(psycopg.Error):
                        conn.close()  # type: ignore[union-attr]
                    conn = None
                    relisten = time.monotonic() + RELISTEN_SECONDS
        finally:
            if conn is not None:
                conn.close()
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
