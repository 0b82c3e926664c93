"""PostgreSQL: concurrent writers leave pending rows; integrators give them contiguous indices."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from accord.bootstrap import ledger_config
from accord.db import make_sessionmaker, transaction, utcnow
from accord.ledger import bundle, checkpoints
from accord.ledger.events import Actor, EventType
from accord.ledger.models import LedgerEntry
from accord.ledger.service import pending_count, record
from accord.ledger.upkeep import integrate_all
from accord.ledger.verify import verify
from accord.policy.engine import Policy
from accord.settings import Settings
from accord.spec.load import parse_policy_text
from tests.conftest import POLICY

WRITERS = 8
PER_WRITER = 60


@pytest.mark.postgres
def test_concurrent_writers_and_two_integrators_give_contiguous_indices(
    fresh_pg: Engine, tmp_path: Path
) -> None:
    sessions = make_sessionmaker(fresh_pg)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for i in range(PER_WRITER):
                with transaction(sessions) as session:
                    record(session, type=EventType.POLICY_LOADED, actor=Actor.system(),
                           subject=f"w{w}:{i}", data={"w": w, "i": i})
        except BaseException as exc:  # reported below
            errors.append(exc)

    def integrator() -> None:
        try:
            while not stop.is_set():
                integrate_all(sessions, batch=50)
        except BaseException as exc:
            errors.append(exc)

    integrators = [threading.Thread(target=integrator) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    for t in integrators + writers:
        t.start()
    for t in writers:
        t.join(timeout=120)
    stop.set()
    for t in integrators:
        t.join(timeout=60)
    assert not errors, errors
    integrate_all(sessions)

    total = WRITERS * PER_WRITER
    with sessions() as s:
        assert pending_count(s) == 0
        indices = s.execute(select(LedgerEntry.idx).order_by(LedgerEntry.idx)).scalars().all()
        assert indices == list(range(total))
        subjects = s.execute(select(func.count(func.distinct(LedgerEntry.subject)))).scalar_one()
        assert subjects == total

    # and the result is a log an auditor accepts
    settings = Settings.from_env({"ACCORD_DATA_DIR": str(tmp_path)})
    cfg = ledger_config(settings, Policy(parse_policy_text(POLICY)))
    with transaction(sessions) as session:
        cp = checkpoints.sign(session, cfg, now=utcnow(), force=True)
    assert cp is not None and cp.size == total
    buf = io.BytesIO()
    with sessions() as session:
        bundle.write(session, buf, origin=cfg.origin, key=cfg.signer.verifier.encode(),
                     exported_at=cp.signed_at)
    report = verify(lambda: io.BytesIO(buf.getvalue()), key=cfg.signer.verifier)
    assert report.ok, report.problems
