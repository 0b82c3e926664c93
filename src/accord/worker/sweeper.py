"""Records expiries: pending requests nobody decided, grants past their end.

Reads already show expiry as soon as it is due; this makes it a ledger fact.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from accord.db import reading, transaction
from accord.grants import service as grants
from accord.requests import service as requests

log = logging.getLogger("accord.worker")


BATCH = 500
# SQLite has one writer at a time, and a sweep's transaction holds the lock for every HTTP
# writer: there a batch is this many of each (a grant's end is a ledger event, maybe a
# deprovisioning job), so even a thousand grants ending at once never hold it for long,
# and whether anything is due is asked in a read transaction first: an idle sweep takes
# no lock at all.
SQLITE_BATCH = 10


def sweep_once(sessions: sessionmaker[Session], now: datetime) -> int:
    """One pass; each batch is its own transaction. Returns how many transitions it recorded."""
    bind = sessions.kw.get("bind")
    sqlite = bind is not None and bind.dialect.name == "sqlite"
    limit = SQLITE_BATCH if sqlite else BATCH
    total = 0
    while True:
        if sqlite:
            with reading(), sessions() as session:
                if not (requests.any_pending_expired(session, now=now)
                        or grants.any_due(session, now=now)):
                    return total
        with transaction(sessions) as session:
            n = requests.expire_pending(session, now=now, limit=limit)
            n += grants.expire_due(session, now=now, limit=limit)
        total += n
        if n == 0:
            return total


class Sweeper:
    """A daemon thread sweeping every `interval` seconds until stopped."""

    def __init__(
        self, sessions: sessionmaker[Session], *, now: Callable[[], datetime], interval: float = 1.0
    ) -> None:
        self.sessions = sessions
        self.now = now
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="accord-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                n = sweep_once(self.sessions, self.now())
                if n:
                    log.info("recorded %d expiries", n)
            except Exception:  # keep sweeping; the next pass retries what failed
                log.exception("sweep failed")
            self._stop.wait(self.interval)
