"""Writing the directory. Every change is a ledger event in the caller's transaction, and
its consequences are applied in that same transaction (`consequences.py`): a person the
provider deactivates or deletes loses their tokens, sessions, pending requests and grants;
people who join or leave a group gain or lose the approvals that group gives at once.

A `Change` is one unit of work. The rows it changes are locked as it reads them (the storage
reads a PUT's or PATCH's target FOR UPDATE); at `finish` it logs the names it changed
(`directory_changes`, which every process catches up from) and, if the change moves access,
locks `directory_state` to work out its consequences while no other such change runs. The
caller commits, then calls `after_commit` to install the new directory in its process.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from accord.directory import consequences
from accord.errors import Conflict, Invalid, NotFound
from accord.ledger import service as ledger
from accord.ledger.events import Actor, EventType
from accord.people.models import (
    DirectoryChange,
    DirectoryGroup,
    DirectoryMember,
    DirectoryState,
    DirectoryUser,
)
from accord.policy.engine import Policy
from accord.policy.store import PolicyStore

SOURCES = ("scim", "oidc")

# PostgreSQL: log the changed names unnumbered (`number_changes` numbers them later).
LOG_CHANGES = text("""
INSERT INTO directory_changes (kind, name, at)
SELECT v.kind, v.name, :at FROM unnest(CAST(:kinds AS text[]), CAST(:names AS text[]))
  AS v(kind, name)
""")

# Number the logged changes that have committed, in the order of their ids. Run with
# directory_state locked: its seq is the last number given.
NUMBER_CHANGES = text("""
WITH todo AS (SELECT id, row_number() OVER (ORDER BY id) AS i
              FROM directory_changes WHERE seq IS NULL),
     s AS (UPDATE directory_state SET seq = seq + (SELECT count(*) FROM todo)
           WHERE id = 1 RETURNING seq),
     done AS (UPDATE directory_changes c SET seq = s.seq - (SELECT count(*) FROM todo) + todo.i
              FROM todo, s WHERE c.id = todo.id RETURNING 1)
SELECT count(*) FROM done
""")


# Add members (SCIM ids) to a group and name the people added, in one statement; ids that
# name nobody are not inserted (the caller refuses the change).
ADD_MEMBERS = text("""
WITH added AS (
  INSERT INTO directory_members (group_id, user_id, source, added_at)
  SELECT :group_id, u.id, :source, :at FROM directory_users u
  WHERE u.id = ANY(CAST(:ids AS text[]))
  RETURNING user_id)
SELECT u.id, u.name FROM directory_users u JOIN added ON added.user_id = u.id
""")


def _insert_user(postgres: bool) -> Any:
    """A new person's row, inserted unless the name is taken (the caller passes the values).
    Built once: a statement with `.values(...)` is compiled and cache-keyed anew each call
    (half a millisecond of every SCIM user creation); one without is cached by its keys."""
    table: Any = DirectoryUser.__table__
    return ((pg_insert if postgres else sqlite_insert)(table)
            .on_conflict_do_nothing(index_elements=["name"]).returning(table.c.id))


_INSERT_USER = {True: _insert_user(True), False: _insert_user(False)}
_MEMBERS: Any = DirectoryMember.__table__
_INSERT_MEMBER = insert(_MEMBERS)  # Core: the ORM's bulk path costs more


def key(name: str) -> str:
    """How SCIM compares userName and displayName: case-insensitively."""
    return name.casefold()


# An Accord name for a person from the provider: userName case-folded, as tokens, grants
# and requests carry it (the file's names are the same minus "@" and "+").
PERSON = re.compile(r"^[a-z0-9][a-z0-9._@+-]{0,63}$")


@dataclass
class UserFields:
    """What the provider says about a person (SCIM's User, enterprise extension included)."""

    user_name: str
    external_id: str | None = None
    display_name: str | None = None
    given_name: str | None = None
    family_name: str | None = None
    email: str | None = None
    email_type: str | None = None
    active: bool = True
    manager_id: str | None = None
    department: str | None = None
    employee_number: str | None = None

    @classmethod
    def of(cls, row: DirectoryUser) -> UserFields:
        return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})


class Change:
    """One unit of directory writes and their consequences (the caller's transaction)."""

    def __init__(self, session: Session, *, store: PolicyStore, actor: Actor, now: datetime,
                 source: str = "scim") -> None:
        self.session, self.store, self.actor, self.now, self.source = (
            session, store, actor, now, source)
        self._users: set[str] = set()
        self._groups: set[str] = set()
        self.effects = consequences.Effects(actor, now)
        self.left, self.lost = self.effects.left, self.effects.lost
        self.joined, self.managed = self.effects.joined, self.effects.managed
        self.policy: Policy | None = None

    def lock(self) -> None:
        """Take the directory's lock (held until commit): `finish` takes it for a change
        with consequences; a unit of work that reads much of the directory before it
        writes (an OIDC sign-in's group sync) takes it first."""
        self.session.execute(select(DirectoryState.id).where(DirectoryState.id == 1)
                             .with_for_update())

    # ------------------------------------------------------------------ users

    def create_user(self, f: UserFields) -> DirectoryUser:
        self._check_user_name(f.user_name)
        self._check_manager(f.manager_id, None)
        values = {"id": str(uuid.uuid4()), "source": self.source, "version": 1,
                  "created_at": self.now, "updated_at": self.now, "name": key(f.user_name),
                  **{k.name: getattr(f, k.name) for k in fields(UserFields)}}
        # One statement checks and inserts (an identity provider's first push is tens of
        # thousands of these): a name taken, also by a writer beside this one, is a 409.
        made = self.session.execute(
            _INSERT_USER[self.session.get_bind().dialect.name == "postgresql"], values
        ).scalar_one_or_none()
        if made is None:
            raise Conflict(f'a user named "{f.user_name}" already exists', field="userName")
        row = DirectoryUser(**values)  # what the caller answers with; the row is stored
        self._users.add(row.name)
        self._event(EventType.DIRECTORY_USER_CREATED, f"user:{row.name}",
                    user=row.name, user_name=row.user_name, user_id=row.id,
                    external_id=row.external_id, active=row.active, email=row.email,
                    manager=self._name_of(row.manager_id))
        if not row.active:
            self.left[row.name] = "created inactive by the identity provider"
        if row.manager_id:
            self.managed.add(row.name)
        return row

    def update_user(self, row: DirectoryUser, f: UserFields) -> bool:
        """Replace what the provider says about `row` (PUT, PATCH). False if nothing changed."""
        old = UserFields.of(row)
        changed = {k.name: [getattr(old, k.name), getattr(f, k.name)]
                   for k in fields(UserFields) if getattr(old, k.name) != getattr(f, k.name)}
        if not changed:
            return False
        if "user_name" in changed:
            self._check_user_name(f.user_name)
            other = self._user_by_key(f.user_name)
            if other is not None and other.id != row.id:
                raise Conflict(f'a user named "{f.user_name}" already exists', field="userName")
        if "manager_id" in changed:
            self._check_manager(f.manager_id, row.id)
        groups = self._groups_of(row.id)
        for k in fields(UserFields):
            setattr(row, k.name, getattr(f, k.name))
        was = row.name
        row.name = key(row.user_name)
        row.version += 1
        row.updated_at = self.now
        self.session.flush()
        name = row.name
        self._users |= {name, was}
        if name != was or "active" in changed:
            self._groups |= groups  # their names (or their presence) in these groups changed
        if "manager_id" in changed:
            changed["manager_id"] = [self._name_of(old.manager_id), self._name_of(f.manager_id)]
            self.managed.add(name)
        attrs = {("manager" if k == "manager_id" else k): v
                 for k, v in changed.items() if k != "active"}
        if attrs:  # `active` alone has its own event below
            self._event(EventType.DIRECTORY_USER_UPDATED, f"user:{name}", user=name,
                        user_id=row.id, changed=attrs)
        if name != was:
            self.left[was] = f'renamed to "{name}" by the identity provider'
            self.joined.add(name)
            # The people they manage name their manager anew (snapshots, manager steps).
            reports = set(self.session.execute(select(DirectoryUser.name).where(
                DirectoryUser.manager_id == row.id)).scalars())
            self._users |= reports
            self.managed |= reports
        if "active" in changed:
            if row.active:
                self._event(EventType.DIRECTORY_USER_REACTIVATED, f"user:{name}", user=name,
                            user_id=row.id)
                self.left.pop(name, None)
                self.joined.add(name)
            else:
                self._event(EventType.DIRECTORY_USER_DEACTIVATED, f"user:{name}", user=name,
                            user_id=row.id)
                self.left[name] = "deactivated by the identity provider"
        return True

    def delete_user(self, row: DirectoryUser) -> None:
        groups = self._groups_of(row.id)
        name = row.name
        reports = list(self.session.execute(
            select(DirectoryUser.name).where(DirectoryUser.manager_id == row.id)).scalars())
        self.session.execute(delete(DirectoryMember).where(DirectoryMember.user_id == row.id))
        for u in self.session.execute(
                select(DirectoryUser).where(DirectoryUser.manager_id == row.id)).scalars():
            u.manager_id = None
            u.version += 1
        self.session.delete(row)
        self.session.flush()
        self._users |= {name, *reports}
        self._groups |= groups
        self.managed |= set(reports)
        self._event(EventType.DIRECTORY_USER_DELETED, f"user:{name}", user=name, user_id=row.id,
                    groups=sorted(groups))
        self.left[name] = "deleted by the identity provider"

    # ----------------------------------------------------------------- groups

    def create_group(self, display_name: str, *, external_id: str | None = None,
                     member_ids: Iterable[str] = ()) -> DirectoryGroup:
        # The name is checked by the insert (a taken one fails it): one statement less.
        self._check_group_name(display_name, None, taken=False)
        row = DirectoryGroup(id=str(uuid.uuid4()), display_name=display_name,
                             name_key=key(display_name), external_id=external_id,
                             source=self.source, version=1, created_at=self.now,
                             updated_at=self.now)
        self.session.add(row)
        try:
            self.session.flush()
        except IntegrityError:  # created beside this one since the check above
            raise Conflict(f'a group named "{display_name}" already exists',
                           field="displayName") from None
        self._groups.add(display_name)
        self._event(EventType.DIRECTORY_GROUP_CREATED, f"group:{display_name}",
                    group=display_name, group_id=row.id, external_id=external_id)
        self.change_members(row, add=set(member_ids), remove=set(), bump=False, have=set())
        return row

    def update_group(self, row: DirectoryGroup, *, display_name: str,
                     external_id: str | None) -> bool:
        changed: dict[str, list[Any]] = {}
        if display_name != row.display_name:
            self._check_group_name(display_name, row.id)
            changed["display_name"] = [row.display_name, display_name]
            members = self._member_names(row.id)
            self._groups.add(row.display_name)
            for m in members:  # they leave the old name (revoke_on_group_loss sees it)
                self.lost.setdefault(m, set()).add(row.display_name)
            self.joined |= members
            row.display_name, row.name_key = display_name, key(display_name)
        if external_id != row.external_id:
            changed["external_id"] = [row.external_id, external_id]
            row.external_id = external_id
        if not changed:
            return False
        row.version += 1
        row.updated_at = self.now
        self.session.flush()
        self._groups.add(row.display_name)
        self._event(EventType.DIRECTORY_GROUP_UPDATED, f"group:{row.display_name}",
                    group=row.display_name, group_id=row.id, changed=changed)
        return True

    def set_members(self, row: DirectoryGroup, member_ids: set[str], *, bump: bool = True) -> bool:
        """Make the group's members exactly `member_ids` (SCIM ids). False if unchanged."""
        have = self._member_ids(row.id)
        return self.change_members(row, add=member_ids - have, remove=have - member_ids,
                                   bump=bump, have=have)

    def change_members(self, row: DirectoryGroup, *, add: set[str], remove: set[str],
                       bump: bool = True, have: set[str] | None = None) -> bool:
        """Add and remove members (SCIM ids); `have`: the members now, when the caller
        just read them (the group row is locked, so they cannot have changed)."""
        if have is None:
            have = self._member_ids(row.id)
        add, remove = add - have, remove & have
        if not add and not remove:
            return False
        if self.session.get_bind().dialect.name == "postgresql":
            names = self._names(remove)
            if add:  # checked, inserted and named in one statement
                added = self.session.execute(ADD_MEMBERS, {
                    "group_id": row.id, "source": self.source, "at": self.now,
                    "ids": sorted(add)})
                names.update((uid, name) for uid, name in added)
        else:
            names = self._names(add | remove)
        if missing := sorted(add - names.keys()):
            raise Invalid(f"no user has the id {missing[0]}"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                          field="members")
        if remove:
            self.session.execute(delete(DirectoryMember).where(
                DirectoryMember.group_id == row.id, DirectoryMember.user_id.in_(list(remove))))
        if add and self.session.get_bind().dialect.name != "postgresql":
            self.session.execute(_INSERT_MEMBER, [
                {"group_id": row.id, "user_id": u, "source": self.source, "added_at": self.now}
                for u in sorted(add)])
        if bump:
            row.version += 1
            row.updated_at = self.now
            self.session.flush()
        self._groups.add(row.display_name)
        if add:
            joined = sorted(names[u] for u in add)
            self.joined |= set(joined)
            self._event(EventType.DIRECTORY_MEMBER_ADDED, f"group:{row.display_name}",
                        group=row.display_name, group_id=row.id, users=joined)
        if remove:
            gone = sorted(names[u] for u in remove)
            for u in gone:
                self.lost.setdefault(u, set()).add(row.display_name)
            self._event(EventType.DIRECTORY_MEMBER_REMOVED, f"group:{row.display_name}",
                        group=row.display_name, group_id=row.id, users=gone)
        return True

    def delete_group(self, row: DirectoryGroup) -> None:
        members = self._member_names(row.id)
        name = row.display_name
        self.session.execute(delete(DirectoryMember).where(DirectoryMember.group_id == row.id))
        self.session.delete(row)
        self.session.flush()
        self._groups.add(name)
        for m in members:
            self.lost.setdefault(m, set()).add(name)
        self._event(EventType.DIRECTORY_GROUP_DELETED, f"group:{name}", group=name,
                    group_id=row.id, users=sorted(members))

    # ------------------------------------------------------------------ finish

    def finish(self) -> Policy | None:
        """Log what changed for every process, then apply the consequences. Returns the
        policy over the new directory (installed by `after_commit`), or None when nothing
        needed it (the process follows the change within a second)."""
        rows = [("user", n) for n in sorted(self._users)] + \
            [("group", n) for n in sorted(self._groups)]
        if rows:
            self._log_changes(rows)
        if not self._consequential():
            # Nothing here moves access (a new active person, a group nobody refers to):
            # skip re-reading the directory; every process, this one included, catches up
            # at its next follow(), batching a provider's burst into one refresh a second.
            return None
        # Writes with consequences take turns, each working them out over a directory no
        # other such write is changing (two people leaving one approver group at once must
        # not each count the other as an approver still). The lock is taken last: writers
        # of different people and groups work side by side until here.
        self.lock()
        policy = self.store.current.with_directory(self.store.directory(self.session))
        self.policy = policy
        consequences.apply(self.session, policy=policy, change=self.effects)
        return policy

    def _log_changes(self, rows: list[tuple[str, str]]) -> None:
        """Log the changed names for every process to catch up from.

        On PostgreSQL they are logged unnumbered, without a lock: before, every writer took
        the next numbers under `directory_state`'s lock and held it through its commit, so
        a provider's push went one commit at a time (the database's own commit batching had
        nothing to batch). The background jobs number them (`number_changes`). SQLite has
        one writer at a time anyway: its writer numbers its own."""
        if self.session.get_bind().dialect.name == "postgresql":
            self.session.execute(LOG_CHANGES, {
                "at": self.now, "kinds": [k for k, _ in rows], "names": [n for _, n in rows]})
            return
        first = self._take_seqs(len(rows))
        self.session.execute(insert(DirectoryChange), [
            {"seq": first + i, "kind": kind, "name": name, "at": self.now}
            for i, (kind, name) in enumerate(rows)])

    def _take_seqs(self, count: int) -> int:
        """The first of `count` change sequence numbers (see `_log_changes`)."""
        seq = self.session.execute(
            update(DirectoryState).where(DirectoryState.id == 1)
            .values(seq=DirectoryState.seq + count).returning(DirectoryState.seq)
        ).scalar_one_or_none()
        if seq is None:  # migration 0013 creates the row; only a database emptied by hand
            self.session.add(DirectoryState(id=1, seq=count))
            self.session.flush()
            seq = count
        return int(seq) - count + 1

    def policy_now(self) -> Policy:
        """The policy over the directory as this unit of work left it (before commit), for a
        caller that acts on it at once (a sign-in); installed by `after_commit`."""
        if self.policy is None:
            self.policy = self.store.current.with_directory(
                self.store.directory(self.session))
        return self.policy

    def _consequential(self) -> bool:
        e, current = self.effects, self.store.current
        if e.left or e.managed:
            return True
        groups = {g for gs in e.lost.values() for g in gs} | self._groups
        if (e.lost or e.joined) and groups & current.referenced_groups:
            return True
        return bool(e.lost) and any(w.spec.revoke_on_group_loss for w in current.workflows)

    @property
    def revoked_tokens(self) -> list[int]:
        """Tokens the consequences revoked (for the process's caches, after commit)."""
        return self.effects.revoked_tokens

    @property
    def ended_sessions(self) -> list[str]:
        """Digests of web sessions the consequences ended."""
        return self.effects.ended_sessions

    def after_commit(self) -> None:
        # Without a policy (nothing moved access) the process follows at its next
        # follow(), within a second, like every other process: a push of 50,000 people
        # then costs one refresh a second, not ten.
        if self.policy is not None:
            self.store.fresh_install(self.policy)

    # ---------------------------------------------------------------- helpers

    def _event(self, type: EventType, subject: str, **data: Any) -> None:
        ledger.record(self.session, type=type, actor=self.actor, subject=subject,
                      data={"source": self.source, **data}, time=self.now)

    def _check_user_name(self, name: str) -> None:
        if not PERSON.match(key(name)):
            raise Invalid(f'"{name}" cannot be an Accord user name: up to 64 letters, digits '
                          "and . _ @ + - (compared case-insensitively)", field="userName")

    def _check_group_name(self, name: str, group_id: str | None, *, taken: bool = True) -> None:
        """`taken`: also look for another group of that name (the caller's insert does not)."""
        if not name.strip() or len(name) > 200 or not name.isprintable():
            raise Invalid(f"{name!r} cannot be a group name: 1 to 200 printable characters",
                          field="displayName")
        if name in self.store.current.file_groups or name in ("owners", "manager"):
            raise Conflict(f'accord.yaml defines a group "{name}": a group has one source; '
                           "rename one of them", field="displayName")
        if not taken:
            return
        other = self.session.execute(select(DirectoryGroup.id).where(
            DirectoryGroup.name_key == key(name))).scalar_one_or_none()
        if other is not None and other != group_id:
            raise Conflict(f'a group named "{name}" already exists', field="displayName")

    def _check_manager(self, manager_id: str | None, user_id: str | None) -> None:
        if manager_id is None:
            return
        if manager_id == user_id:
            raise Invalid("a person cannot be their own manager", field="manager")
        if self.session.get(DirectoryUser, manager_id) is None:
            raise Invalid(f"no user has the id {manager_id} (the manager)", field="manager")

    def _user_by_key(self, user_name: str) -> DirectoryUser | None:
        return user_named(self.session, user_name)

    def _name_of(self, user_id: str | None) -> str | None:
        if user_id is None:
            return None
        return self.session.execute(select(DirectoryUser.name).where(
            DirectoryUser.id == user_id)).scalar_one_or_none()

    def _names(self, ids: set[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        ordered = sorted(ids)
        for i in range(0, len(ordered), 500):
            out.update(self.session.execute(select(DirectoryUser.id, DirectoryUser.name)
                       .where(DirectoryUser.id.in_(ordered[i:i + 500]))).all())
        return out

    def _member_ids(self, group_id: str) -> set[str]:
        return set(self.session.execute(select(DirectoryMember.user_id).where(
            DirectoryMember.group_id == group_id)).scalars())

    def _groups_of(self, user_id: str) -> set[str]:
        return set(self.session.execute(
            select(DirectoryGroup.display_name).join(
                DirectoryMember, DirectoryMember.group_id == DirectoryGroup.id)
            .where(DirectoryMember.user_id == user_id)).scalars())

    def _member_names(self, group_id: str) -> set[str]:
        return set(self.session.execute(
            select(DirectoryUser.name).join(
                DirectoryMember, DirectoryMember.user_id == DirectoryUser.id)
            .where(DirectoryMember.group_id == group_id)).scalars())


def number_changes(session: Session) -> int:
    """PostgreSQL: number the directory changes writers logged unnumbered and that have
    committed; returns how many. Skips (0) while another process numbers: it will number
    these too, or the next pass will. Every process's snapshot re-reads unnumbered changes
    meanwhile, so a slow numbering delays nothing; it keeps the re-reading short."""
    if session.get_bind().dialect.name != "postgresql":
        return 0
    if session.execute(select(DirectoryChange.id).where(DirectoryChange.seq.is_(None))
                       .limit(1)).first() is None:
        return 0
    if session.execute(select(DirectoryState.seq).where(DirectoryState.id == 1)
                       .with_for_update(skip_locked=True)).first() is None:
        return 0
    # A statement of its own, begun after the lock: it numbers whatever committed before
    # it, and numbers become visible in order (numberers take turns on the lock).
    return int(session.execute(NUMBER_CHANGES).scalar() or 0)


# ------------------------------------------------------------------- reading


def get_user(session: Session, user_id: str) -> DirectoryUser:
    row = session.get(DirectoryUser, user_id)
    if row is None:
        raise NotFound(f"no user has the id {user_id}")
    return row


def get_group(session: Session, group_id: str) -> DirectoryGroup:
    row = session.get(DirectoryGroup, group_id)
    if row is None:
        raise NotFound(f"no group has the id {group_id}")
    return row


def user_named(session: Session, name: str) -> DirectoryUser | None:
    return session.execute(select(DirectoryUser).where(
        DirectoryUser.name == key(name))).scalar_one_or_none()


def group_named(session: Session, name: str) -> DirectoryGroup | None:
    return session.execute(select(DirectoryGroup).where(
        DirectoryGroup.name_key == key(name))).scalar_one_or_none()


def counts(session: Session) -> tuple[int, int, int]:
    """Users, groups, memberships."""
    return (session.execute(select(func.count()).select_from(DirectoryUser)).scalar_one(),
            session.execute(select(func.count()).select_from(DirectoryGroup)).scalar_one(),
            session.execute(select(func.count()).select_from(DirectoryMember)).scalar_one())
