"""The ledger's own upkeep, each step a unit of work of its own: integrate pending events
(PostgreSQL) and sign a checkpoint when one is due. Run by the worker's ledger loop, and by
whatever needs the ledger current first (reports, `accord worker --once`)."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from accord.db import reading, transaction
from accord.ledger import checkpoints
from accord.ledger.checkpoints import LedgerConfig
from accord.ledger.models import LedgerCheckpoint, LedgerWake
from accord.ledger.service import LedgerCorruption, integrate_pending

log = logging.getLogger("accord.ledger")


def integrate_all(sessions: sessionmaker[Session], batch: int = 5000) -> int:
    """Integrate every pending event, one batch per transaction."""
    total = 0
    while True:
        with transaction(sessions) as session:
            n = integrate_pending(session, limit=batch)
        total += n
        if n < batch:
            return total


def announce(sessions: sessionmaker[Session], *, idle: bool) -> None:
    """Tell writers (PostgreSQL) whether the integrators wait for a NOTIFY (`LedgerWake`)."""
    with transaction(sessions) as session:
        session.execute(update(LedgerWake).where(LedgerWake.id == 1).values(idle=idle))


def catch_up(sessions: sessionmaker[Session]) -> int:
    """Give every event committed so far its index before something counts or signs them:
    on PostgreSQL the integrator does that moments after commit; SQLite integrates at
    commit, so there is nothing to do. Returns how many were integrated."""
    bind = sessions.kw.get("bind")
    if bind is None or bind.dialect.name != "postgresql":
        return 0
    return integrate_all(sessions)


def sign_now(sessions: sessionmaker[Session], cfg: LedgerConfig, now: datetime
             ) -> LedgerCheckpoint | None:
    """Sign the tree as it stands, every event committed so far included (raises
    LedgerCorruption when the signer refuses)."""
    catch_up(sessions)
    with transaction(sessions) as session:
        cp = checkpoints.sign(session, cfg, now=now, force=True)
    checkpoints.after_commit(cfg, cp)
    return cp


def sign_if_due(sessions: sessionmaker[Session], cfg: LedgerConfig, now: datetime) -> None:
    """Sign a checkpoint when one is due. On SQLite the proofs that the tree extends the
    last checkpoint are read in a read transaction, without the write lock every writer
    waits for (they held it ~15 ms); only the insert is a write."""
    bind = sessions.kw.get("bind")
    cp: LedgerCheckpoint | None
    try:
        if bind is not None and bind.dialect.name == "sqlite":
            with reading(), sessions() as session:
                drafted = checkpoints.draft(session, cfg, now=now)
            if isinstance(drafted, checkpoints.Draft):
                with transaction(sessions) as session:
                    cp = checkpoints.store(session, cfg, drafted, now=now)
            else:
                cp = drafted  # too soon, or the tree did not grow: nothing to write
        else:
            with transaction(sessions) as session:
                cp = checkpoints.sign(session, cfg, now=now)
        checkpoints.after_commit(cfg, cp)
    except LedgerCorruption as exc:
        log.critical("NOT signing the ledger: %s", exc)
