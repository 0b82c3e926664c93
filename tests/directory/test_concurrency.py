"""Directory writers take turns: concurrent first writes on a fresh database all commit,
and the change log's sequence numbers are contiguous (processes catch up by them)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import Engine, select

from accord.db import make_sessionmaker, transaction, utcnow
from accord.directory.service import Change, UserFields
from accord.ledger.events import Actor
from accord.people.models import DirectoryChange, DirectoryUser
from accord.policy.engine import Policy
from accord.policy.store import PolicyStore
from accord.spec.load import parse_policy_text
from tests.conftest import POLICY


def test_concurrent_first_writes_all_commit_in_sequence(fresh_pg: Engine,
                                                       tmp_path: Path) -> None:
    sessions = make_sessionmaker(fresh_pg)
    store = PolicyStore(tmp_path / "accord.yaml", Policy(parse_policy_text(POLICY)))
    start = threading.Barrier(8)

    def create(i: int) -> None:
        start.wait(timeout=30)  # all eight begin together, as an initial push's first calls
        with transaction(sessions) as s:
            change = Change(s, store=store, actor=Actor.scim("okta"), now=utcnow())
            change.create_user(UserFields(user_name=f"p{i}@example.com"))
            change.finish()

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(create, i) for i in range(8)]:
            future.result(timeout=60)
    with sessions() as s:
        assert len(s.execute(select(DirectoryUser.id)).all()) == 8
        seqs = list(s.execute(select(DirectoryChange.seq).order_by(DirectoryChange.seq))
                    .scalars())
    assert seqs == list(range(1, 9))
