"""The in-memory directory each process keeps: caught up by change number (`refresh`), it
is the same as read whole (`load`), whatever the provider did in between (a seeded random
walk of creations, renames, deactivations, deletions and membership changes)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from accord.db import transaction
from accord.directory.service import Change, UserFields
from accord.ledger.events import Actor
from accord.people.models import DirectoryGroup, DirectoryUser
from accord.people.snapshot import Directory, load, refresh
from tests.conftest import Env, make_env
from tests.directory.test_consequences import DIRECTORY_POLICY


@pytest.fixture
def env(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Env]:
    e = make_env(sessions, tmp_path, DIRECTORY_POLICY)
    with e.client:
        yield e


def same(a: Directory, b: Directory) -> None:
    assert a.seq == b.seq
    assert a.users == b.users
    assert {g: m for g, m in a.groups.items()} == dict(b.groups)
    assert {p: g for p, g in a.groups_of.items() if g} == {p: g for p, g in b.groups_of.items()
                                                            if g}
    assert a.sources == b.sources and a.inactive == b.inactive


def step(rng: random.Random, c: Change, n: int) -> None:
    """One thing an identity provider does."""
    s = c.session
    users = list(s.execute(select(DirectoryUser).order_by(DirectoryUser.name)).scalars())
    groups = list(s.execute(select(DirectoryGroup).order_by(DirectoryGroup.name_key)).scalars())
    ids = [u.id for u in users]
    pick = rng.random()
    if pick < 0.3 or len(users) < 4:
        c.create_user(UserFields(user_name=f"u{n}", active=rng.random() < 0.8,
                                 manager_id=rng.choice(ids) if ids and rng.random() < 0.3
                                 else None))
    elif pick < 0.45 and len(groups) < 12:
        c.create_group(f"g{n}", member_ids=set(rng.sample(ids, min(len(ids), rng.randint(0, 6)))))
    elif pick < 0.6 and groups:
        g = rng.choice(groups)
        have = {m for m in ids if rng.random() < 0.3}
        c.change_members(g, add=have, remove=set(rng.sample(ids, min(3, len(ids)))) - have)
    elif pick < 0.7 and users:
        u = rng.choice(users)
        f = UserFields.of(u)
        f.active = not f.active
        c.update_user(u, f)
    elif pick < 0.78 and users:
        u = rng.choice(users)
        f = UserFields.of(u)
        f.user_name = f"r{n}"  # renamed: its memberships follow the new name
        c.update_user(u, f)
    elif pick < 0.86 and groups:
        c.update_group(rng.choice(groups), display_name=f"h{n}", external_id=None)
    elif pick < 0.93 and users:
        c.delete_user(rng.choice(users))
    elif groups:
        c.delete_group(rng.choice(groups))


def test_caught_up_by_change_number_it_is_the_directory_read_whole(env: Env) -> None:
    rng = random.Random(20261205)  # noqa: S311 - a reproducible walk, not a secret
    with env.st.sessions() as s:
        snapshots = [load(s)]
    for n in range(120):
        with transaction(env.st.sessions) as s:
            change = Change(s, store=env.st.policies, actor=Actor.scim("okta"),
                            now=env.clock())
            step(rng, change, n)
            change.finish()
        if n % 3 == 2:  # a process catches up after one or several changes
            with env.st.sessions() as s:
                whole = load(s)
                for old in snapshots[-3:]:  # from several points behind
                    same(refresh(s, old), whole)
            snapshots.append(whole)
    assert len(snapshots[-1].users) > 10 and snapshots[-1].groups


def test_a_refresh_with_nothing_new_is_the_same_snapshot(env: Env) -> None:
    with transaction(env.st.sessions) as s:
        change = Change(s, store=env.st.policies, actor=Actor.scim("okta"), now=env.clock())
        change.create_user(UserFields(user_name="zoe"))
        change.finish()
    with env.st.sessions() as s:
        whole = load(s)
        assert refresh(s, whole) is whole
