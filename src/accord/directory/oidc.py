"""`identity.oidc_groups: sync`: an OIDC sign-in sets the person's provider groups to the ID
token's groups claim, for providers that do not push over SCIM.

Only memberships this sync made (source `oidc`) are removed when the claim drops a group;
SCIM's are the SCIM client's to change. A person the directory does not know yet becomes a
directory user at their first sign-in (source `oidc`), gated by `web.oidc.allowed_groups`
as every sign-in is. A claimed group named like one of accord.yaml's is skipped: the
file's group keeps its members (one source per group).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.directory.service import Change, UserFields, group_named, key, user_named
from accord.ledger.events import Actor, Via
from accord.people.models import DirectoryGroup, DirectoryMember
from accord.policy.store import PolicyStore


def sync(session: Session, *, store: PolicyStore, issuer: str, username: str,
         groups: Iterable[str], now: datetime) -> Change:
    """Bring `username`'s OIDC-sourced memberships in line with `groups` (one unit of work:
    the caller commits, then calls `change.after_commit()`)."""
    change = Change(session, store=store, actor=Actor("oidc", issuer, Via.WEB), now=now,
                    source="oidc")
    change.lock()  # it reads the person's groups, then writes them: one writer at a time
    row = user_named(session, username)
    if row is None:
        row = change.create_user(UserFields(user_name=username))
    file_groups = store.current.file_groups
    wanted: dict[str, str] = {}
    for name in groups:
        # A name the directory cannot hold (reserved, empty, too long, unprintable) is
        # skipped like a file group's: one odd claim must not refuse the whole sign-in.
        if name in file_groups or name in ("owners", "manager") or not name.strip() \
                or len(name) > 200 or not name.isprintable():
            continue
        wanted.setdefault(key(name), name)
    mine = dict(session.execute(
        select(DirectoryGroup.name_key, DirectoryGroup.id)
        .join(DirectoryMember, DirectoryMember.group_id == DirectoryGroup.id)
        .where(DirectoryMember.user_id == row.id, DirectoryMember.source == "oidc")).all())
    for k, name in sorted(wanted.items()):
        if k in mine:
            continue
        group = group_named(session, name) or change.create_group(name)
        change.change_members(group, add={row.id}, remove=set())
    for k, group_id in sorted(mine.items()):
        if k not in wanted and (gone := session.get(DirectoryGroup, group_id)) is not None:
            change.change_members(gone, add=set(), remove={row.id})
    change.finish()
    return change
