"""Records expiries: pending requests nobody decided, grants past their end.

Reads already show expiry as soon as it is due; this makes it a ledger fact.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from accord.db import transaction
from accord.grants import service as grants
from accord.requests import service as requests

log = logging.getLogger("accord.worker")


def sweep_once(sessions: sessionmaker[Session], now: datetime) -> int:
    """One pass; each batch is its own transaction. Returns how many transitions it recorded."""
    total = 0
    while True:
        with transaction(sessions) as session:
            n = requests.expire_pending(session, now=now)
            n += grants.expire_due(session, now=now)
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
