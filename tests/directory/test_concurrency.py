"""Directory writers on PostgreSQL: writers of different people do not queue on one lock;
their changes are logged unnumbered and numbered later; every process's snapshot sees each
change whatever the order of commits and numbering; writes with consequences take turns."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from accord.db import make_sessionmaker, transaction, utcnow
from accord.directory.service import Change, UserFields, number_changes, user_named
from accord.ledger.events import Actor
from accord.people import snapshot
from accord.people.models import DirectoryChange, DirectoryUser
from accord.policy.engine import Policy
from accord.policy.store import PolicyStore
from accord.spec.load import parse_policy_text
from tests.conftest import POLICY


@pytest.fixture
def sessions(fresh_pg: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(fresh_pg)


@pytest.fixture
def store(tmp_path: Path) -> PolicyStore:
    return PolicyStore(tmp_path / "accord.yaml", Policy(parse_policy_text(POLICY)))


def change(s: Session, store: PolicyStore) -> Change:
    return Change(s, store=store, actor=Actor.scim("okta"), now=utcnow())


def create(sessions: sessionmaker[Session], store: PolicyStore, name: str) -> None:
    with transaction(sessions) as s:
        c = change(s, store)
        c.create_user(UserFields(user_name=name))
        c.finish()


def until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)  # another connection's state: nothing to await but polling it


def test_concurrent_first_writes_all_commit_then_are_numbered_in_sequence(
        sessions: sessionmaker[Session], store: PolicyStore) -> None:
    start = threading.Barrier(8)

    def one(i: int) -> None:
        start.wait(timeout=30)  # all eight begin together, as an initial push's first calls
        create(sessions, store, f"p{i}@example.com")

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(one, i) for i in range(8)]:
            future.result(timeout=60)
    with sessions() as s:
        assert len(s.execute(select(DirectoryUser.id)).all()) == 8
        assert set(s.execute(select(DirectoryChange.seq)).scalars()) == {None}
    with transaction(sessions) as s:
        assert number_changes(s) == 8
    with transaction(sessions) as s:
        assert number_changes(s) == 0  # nothing left
    with sessions() as s:
        seqs = list(s.execute(select(DirectoryChange.seq).order_by(DirectoryChange.id))
                    .scalars())
    assert seqs == list(range(1, 9))


def test_a_snapshot_sees_every_change_whatever_the_order_of_commits_and_numbers(
        sessions: sessionmaker[Session], store: PolicyStore) -> None:
    with sessions() as s:
        seen = snapshot.load(s)
    # A logs its change and stays open; B commits, and B alone is numbered.
    slow = sessions()
    a = change(slow, store)
    a.create_user(UserFields(user_name="late@example.com"))
    a.finish()
    create(sessions, store, "early@example.com")
    with transaction(sessions) as s:
        assert number_changes(s) == 1
    with sessions() as s:
        seen = snapshot.refresh(s, seen)
    assert seen.seq == 1 and "early@example.com" in seen.users
    assert "late@example.com" not in seen.users
    # A commits after the number B got: a refresh reads it unnumbered...
    slow.commit()
    slow.close()
    with sessions() as s:
        seen = snapshot.refresh(s, seen)
        assert "late@example.com" in seen.users and seen.seq == 1
        assert snapshot.refresh(s, seen) is seen  # ...once
    # ...and once numbered, after B's, nothing is lost nor read wrong.
    with transaction(sessions) as s:
        assert number_changes(s) == 1
    with sessions() as s:
        seen = snapshot.refresh(s, seen)
        assert seen.seq == 2 and {"late@example.com", "early@example.com"} <= seen.users.keys()
        assert snapshot.refresh(s, seen) is seen
        assert seen.users == snapshot.load(s).users


def test_numbering_skips_while_another_process_numbers(
        sessions: sessionmaker[Session], store: PolicyStore) -> None:
    create(sessions, store, "a@example.com")
    with transaction(sessions) as holder:
        holder.execute(text("SELECT seq FROM directory_state WHERE id = 1 FOR UPDATE"))
        with transaction(sessions) as s:
            assert number_changes(s) == 0  # no wait behind the holder
    with transaction(sessions) as s:
        assert number_changes(s) == 1


def test_writes_with_consequences_take_turns(
        sessions: sessionmaker[Session], store: PolicyStore) -> None:
    """Two people deactivated at once: the second write works out its consequences over a
    directory where the first one is already gone, never beside it."""
    for name in ("x@example.com", "y@example.com"):
        create(sessions, store, name)
    first = sessions()
    c1 = change(first, store)
    user = user_named(first, "x@example.com")
    assert user is not None
    c1.update_user(user, UserFields(user_name="x@example.com", active=False))
    c1.finish()  # holds the directory's lock until it commits

    result: dict[str, Policy | None] = {}

    def second() -> None:
        with transaction(sessions) as s:
            c2 = change(s, store)
            other = user_named(s, "y@example.com")
            assert other is not None
            c2.update_user(other, UserFields(user_name="y@example.com", active=False))
            result["policy"] = c2.finish()

    thread = threading.Thread(target=second)
    thread.start()

    def waiting() -> bool:
        with sessions() as s:
            return bool(s.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'")).scalar())
    until(waiting, "the second write to wait for the first one's lock")
    assert "policy" not in result
    first.commit()
    first.close()
    thread.join(timeout=30)
    policy = result["policy"]
    assert policy is not None
    assert policy.directory.inactive >= {"x@example.com", "y@example.com"}


def test_people_created_side_by_side_do_not_wait_for_each_other(
        sessions: sessionmaker[Session], store: PolicyStore) -> None:
    """The lock a whole push used to queue on is gone: a write that moves no access commits
    while another is still open."""
    open_one = sessions()
    c = change(open_one, store)
    c.create_user(UserFields(user_name="first@example.com"))
    c.finish()
    done = threading.Event()

    def other() -> None:
        create(sessions, store, "second@example.com")
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    assert done.wait(timeout=30), "a write without consequences waited for another one"
    thread.join()
    open_one.commit()
    open_one.close()
