"""The directory in memory: who exists, who is active, who is in which group, who manages
whom. Each process keeps one, swapped whole (readers never see half an update), and
catches up by re-reading only the names `directory_changes` lists after its sequence
number, so a 50,000-person directory costs one full load per process and then stays cheap.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from accord.people.models import DirectoryChange, DirectoryGroup, DirectoryMember, DirectoryUser


@dataclass(frozen=True)
class Person:
    """A directory user as the policy sees them."""

    name: str
    active: bool
    email: str | None = None
    display_name: str | None = None
    manager: str | None = None  # the manager's user name
    source: str = "scim"


@dataclass(frozen=True)
class Directory:
    """An immutable snapshot: `users` by name, `groups` (name -> its active members) and
    `groups_of` (active person -> group names)."""

    seq: int = 0
    users: dict[str, Person] = field(default_factory=dict)
    groups: dict[str, frozenset[str]] = field(default_factory=dict)
    groups_of: dict[str, frozenset[str]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # group name -> scim | oidc
    loaded: bool = True  # False only for EMPTY: nothing was read yet
    # Unnumbered changes (ids) already read: re-read only once they get their number.
    pending: frozenset[int] = field(default=frozenset(), repr=False, compare=False)
    # Worked out from `users` unless the caller (a refresh) already knows it: a scan of
    # 50,000 people costs 4 ms, and a provider's push refreshes every second.
    known_inactive: frozenset[str] | None = field(default=None, repr=False, compare=False)

    @property
    def inactive(self) -> frozenset[str]:
        """People the provider deactivated (the file's groups drop them too)."""
        assert self.known_inactive is not None
        return self.known_inactive

    def __post_init__(self) -> None:
        if self.known_inactive is None:
            object.__setattr__(self, "known_inactive", frozenset(
                n for n, p in self.users.items() if not p.active))

    def active(self, name: str) -> bool | None:
        """True/False for a directory user, None for a name the directory does not know."""
        p = self.users.get(name)
        return None if p is None else p.active


EMPTY = Directory(loaded=False)


def latest_seq(session: Session) -> int:
    """The newest change's sequence number (0 when the directory never changed)."""
    return session.execute(select(func.max(DirectoryChange.seq))).scalar_one() or 0


def _pending(session: Session) -> frozenset[int]:
    return frozenset(session.execute(select(DirectoryChange.id)
                                     .where(DirectoryChange.seq.is_(None))).scalars())


def load(session: Session) -> Directory:
    """The whole directory (at start, or when the changes log was compacted past us)."""
    # Read before the rows: a change logged after this is re-read by the next refresh.
    seq = latest_seq(session)
    pending = _pending(session)
    names = dict(session.execute(select(DirectoryUser.id, DirectoryUser.name)).all())
    users: dict[str, Person] = {}
    for u in session.execute(select(DirectoryUser)).scalars():
        users[u.name] = _person(u, names)
    gnames = dict(session.execute(select(DirectoryGroup.id, DirectoryGroup.display_name)).all())
    sources = dict(session.execute(
        select(DirectoryGroup.display_name, DirectoryGroup.source)).all())
    members: dict[str, set[str]] = {g: set() for g in gnames.values()}
    active = {p.name for p in users.values() if p.active}
    for gid, uid in session.execute(select(DirectoryMember.group_id, DirectoryMember.user_id)):
        if names[uid] in active:
            members[gnames[gid]].add(names[uid])
    groups = {g: frozenset(m) for g, m in members.items()}
    return Directory(seq, users, groups, _invert(groups), sources, pending=pending)


def refresh(session: Session, old: Directory) -> Directory:
    """`old` brought up to date with the changes committed since it was taken (itself if
    nothing changed: one indexed query).

    It re-reads every name changed after `old.seq`, and every name logged but not yet
    numbered (PostgreSQL's writers log unnumbered; see `DirectoryChange`). Re-reading a
    name gives its state now, whatever the order of the changes, so a change read while
    unnumbered and again once numbered costs a second read, never a wrong answer; and
    numbers become visible in order, so none is skipped."""
    rows = session.execute(
        select(DirectoryChange.id, DirectoryChange.seq, DirectoryChange.kind,
               DirectoryChange.name)
        .where(or_(DirectoryChange.seq > old.seq, DirectoryChange.seq.is_(None)))).all()
    pending = frozenset(i for i, s, _, _ in rows if s is None)
    rows = [r for r in rows if r[1] is not None or r[0] not in old.pending]
    if not rows:
        return old
    seq = max((s for _, s, _, _ in rows if s is not None), default=old.seq)
    user_names = {n for _, _, k, n in rows if k == "user"}
    group_names = {n for _, _, k, n in rows if k == "group"}
    users = dict(old.users)
    found = {u.name: u for u in session.execute(
        select(DirectoryUser).where(DirectoryUser.name.in_(user_names))).scalars()}
    managers = {u.manager_id for u in found.values() if u.manager_id}
    names = dict(session.execute(select(DirectoryUser.id, DirectoryUser.name)
                                 .where(DirectoryUser.id.in_(managers))).all())
    for name in user_names:
        if name in found:
            users[name] = _person(found[name], names)
        else:
            users.pop(name, None)
    groups = dict(old.groups)
    sources = dict(old.sources)
    present = dict(session.execute(
        select(DirectoryGroup.display_name, DirectoryGroup.id)
        .where(DirectoryGroup.display_name.in_(group_names))).all())
    for name in group_names - present.keys():
        groups.pop(name, None)
        sources.pop(name, None)
    if present:
        members: dict[str, set[str]] = {g: set() for g in present}
        by_id = {gid: g for g, gid in present.items()}
        for gid, uname in session.execute(
                select(DirectoryMember.group_id, DirectoryUser.name)
                .join(DirectoryUser, DirectoryUser.id == DirectoryMember.user_id)
                .where(DirectoryMember.group_id.in_(list(by_id)), DirectoryUser.active)):
            members[by_id[gid]].add(uname)
        for g, m in members.items():
            groups[g] = frozenset(m)
        sources.update(session.execute(
            select(DirectoryGroup.display_name, DirectoryGroup.source)
            .where(DirectoryGroup.display_name.in_(list(present)))).all())
    touched = group_names | {g for n in user_names for g in old.groups_of.get(n, ())}
    groups_of = _reindex(old.groups_of, old.groups, groups, touched)
    inactive = (old.inactive - user_names) | {
        n for n in user_names if n in users and not users[n].active}
    return Directory(seq, users, groups, groups_of, sources, known_inactive=inactive,
                     pending=pending)


def _person(u: DirectoryUser, names: dict[str, str]) -> Person:
    return Person(name=u.name, active=u.active, email=u.email, display_name=u.display_name,
                  manager=names.get(u.manager_id) if u.manager_id else None, source=u.source)


def _invert(groups: dict[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    out: dict[str, set[str]] = {}
    for g, members in groups.items():
        for m in members:
            out.setdefault(m, set()).add(g)
    return {u: frozenset(gs) for u, gs in out.items()}


def _reindex(old_of: dict[str, frozenset[str]], old: dict[str, frozenset[str]],
             new: dict[str, frozenset[str]], touched: Iterable[str]) -> dict[str, frozenset[str]]:
    """`groups_of` after the groups in `touched` changed: only their members are re-indexed."""
    of = dict(old_of)
    touched = set(touched)
    affected: set[str] = set()
    joined: dict[str, set[str]] = {}  # person -> touched groups they are in now
    for g in touched:
        affected |= old.get(g, frozenset())
        for person in new.get(g, frozenset()):
            joined.setdefault(person, set()).add(g)
    affected |= joined.keys()
    for person in affected:
        mine = {g for g in of.get(person, frozenset()) if g not in touched}
        mine |= joined.get(person, set())
        if mine:
            of[person] = frozenset(mine)
        else:
            of.pop(person, None)
    return of
