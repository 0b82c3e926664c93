"""The integrity monitor: the worker re-hashes the ledger all the time, not only when an
auditor runs `accord audit verify`.

Incrementally, every `check_interval`, it re-hashes the entries appended since its last
look (`ledger.integrity`); every `full_interval` it starts a whole pass from index 0, done
in chunks between the incremental looks, so that changes to old entries are found too.
Its work is paced to `budget` of one core: after each chunk it waits (1 / budget - 1)
times as long as the chunk took. Reads are deferred transactions on SQLite: it never
holds the write lock.

On damage it raises a critical `ledger_integrity` alert naming the first bad index (once
per finding), which goes to the admins and auditors and puts a banner on every page they
see until it is resolved. It keeps looking: a finding it has raised is not raised again,
and a new one is. The damage is also kept as an open finding (`ledger_findings`), which
stops the signer: no checkpoint is signed, and no report or export signed, until a walk
from index 0 that began after the finding reaches the head with every entry re-hashing
(the ledger was restored).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from accord.db import readonly_sessions, transaction
from accord.detect.rules import Finding
from accord.detect.service import raise_alert
from accord.ledger import integrity
from accord.ledger.checkpoints import LedgerConfig
from accord.spec.ledger import IntegritySpec

log = logging.getLogger("accord.ledger")
RULE = "ledger_integrity"


@dataclass(frozen=True)
class Pace:
    check_interval: timedelta = timedelta(seconds=1)
    full_interval: timedelta = timedelta(hours=1)
    budget: float = 0.25  # of one core
    chunk: int = 20_000  # entries per read transaction


def finding(damage: integrity.Damage) -> Finding:
    digest = hashlib.sha256(damage.what.encode()).hexdigest()[:12]
    return Finding(
        RULE, "critical",
        f"the audit ledger was changed at index {damage.index}: {damage.what}",
        f"{RULE}:{damage.index}:{digest}", [damage.index], subject="ledger",
        data={"index": damage.index, "what": damage.what})


class IntegrityMonitor:
    """A daemon thread re-hashing the ledger; `check()` runs one step (tests call it)."""

    def __init__(self, sessions: sessionmaker[Session], cfg: LedgerConfig,
                 now: Callable[[], datetime], pace: Pace | None = None) -> None:
        self.sessions = sessions
        self.reader = readonly_sessions(sessions)
        self.cfg = cfg
        self.now = now
        self.pace = pace or Pace()
        self.incremental = integrity.Scan()
        self.full: integrity.Scan | None = integrity.Scan()  # the first pass starts at once
        self.full_started = time.monotonic()
        self.last_full: tuple[float, int] | None = None  # (when it ended, size it covered)
        self.damage: integrity.Damage | None = None  # the latest found
        # The findings mark of each walk from index 0 (see `_walk`), until it is whole.
        self._incremental_mark: int | None = None
        self._full_mark: int | None = None
        self.busy_seconds = 0.0  # time spent re-hashing (for the benchmark)
        self.hashed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="accord-integrity", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    # -- one step

    def _walk(self, scan: integrity.Scan, mark: int | None
              ) -> tuple[integrity.Scan, integrity.Damage | None, int | None, bool]:
        """One chunk of `scan`: where it stands, the damage, the findings mark of a walk
        from index 0 (read as it starts), and whether it reached the head."""
        started = time.thread_time()
        before = scan.position
        with self.reader() as session:
            if scan.position == 0:
                mark = integrity.last_finding_id(session)
            # The key ring is asked for after the checkpoints are read (a rotation installs
            # its key before the first checkpoint it signs), so a rotation is no damage.
            out, damage = integrity.verify(session, self.cfg.ring, scan=scan,
                                           remembered=self.cfg.remembered(),
                                           limit=self.pace.chunk)
            at_head = damage is None and out.position >= integrity.head_size(session)
        self.busy_seconds += time.thread_time() - started
        self.hashed += out.position - before
        return out, damage, mark, at_head

    def check(self) -> integrity.Damage | None:
        """One incremental look and one chunk of the full pass; alerts on damage. A walk
        from index 0 that reaches the head whole closes the findings made before it."""
        found: integrity.Damage | None = None
        self.incremental, damage, self._incremental_mark, at_head = self._walk(
            self.incremental, self._incremental_mark)
        if damage is not None:
            found = damage
            self.incremental = integrity.Scan()  # start over: the damage may be mended
            self._incremental_mark = None
        elif at_head and self._incremental_mark is not None:
            self._mended(self._incremental_mark)
            self._incremental_mark = None  # once per walk from 0
        if self.full is None and time.monotonic() - self.full_started >= \
                self.pace.full_interval.total_seconds():
            self.full, self.full_started = integrity.Scan(), time.monotonic()
        if self.full is not None:
            self.full, damage, self._full_mark, at_head = self._walk(self.full,
                                                                     self._full_mark)
            if damage is not None:
                found = found or damage
                self.full, self._full_mark = None, None
            elif at_head:
                self.last_full = (time.time(), self.full.position)
                if self._full_mark is not None:
                    self._mended(self._full_mark)
                self.full, self._full_mark = None, None
        if found is not None:
            self._alert(found)
        return found

    def _alert(self, damage: integrity.Damage) -> None:
        self.damage = damage
        log.critical("the audit ledger was changed: %s", damage)
        with transaction(self.sessions) as session:
            integrity.record_finding(session, damage, now=self.now())
            raise_alert(session, finding=finding(damage), now=self.now())

    def _mended(self, mark: int) -> None:
        with transaction(self.sessions) as session:
            closed = integrity.clear_findings(session, upto=mark, now=self.now())
        if closed:
            self.damage = None
            log.warning("the audit ledger re-hashes whole again (damage was at %s); "
                        "signing resumes", ", ".join(map(str, closed)))

    # -- the loop

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.check()
            except Exception:  # a database hiccup: the next look retries
                log.exception("ledger integrity check failed")
            took = time.monotonic() - started
            rest = took * (1 / self.pace.budget - 1)  # stay within the budget
            busy = self.full is not None
            self._stop.wait(max(rest, 0.0 if busy else
                                self.pace.check_interval.total_seconds() - took))


def monitor_for(sessions: sessionmaker[Session], cfg: LedgerConfig,
                now: Callable[[], datetime], spec: IntegritySpec) -> IntegrityMonitor | None:
    """The monitor `ledger.integrity` asks for (None when turned off)."""
    if not spec.enabled:
        return None
    return IntegrityMonitor(sessions, cfg, now, Pace(
        check_interval=spec.check_interval, full_interval=spec.full_interval,
        budget=spec.budget))
