"""Recording policy versions: every new version is kept whole and announced in the ledger."""

from __future__ import annotations

from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.db import utcnow
from accord.ledger import service as ledger
from accord.ledger.events import Actor, EventType
from accord.policy.engine import Policy
from accord.policy.models import PolicyState, PolicyVersion


def _sections(text: str) -> dict[str, dict[str, Any]]:
    raw = yaml.safe_load(text) or {}
    out: dict[str, dict[Any, Any]] = {}
    for key in ("resources", "workflows"):
        out[key] = {item.get("name"): item for item in raw.get(key) or [] if isinstance(item, dict)}
    out["groups"] = dict(raw.get("groups") or {})
    users = raw.get("users") or {}
    out["users"] = {u: None for u in users} if isinstance(users, list) else dict(users)
    out["accord"] = {"roles": raw.get("accord")}
    return out


def diff(old_text: str | None, new_text: str) -> dict[str, dict[str, list[str]]]:
    """What changed between two policy texts, by section: added, removed, changed names."""
    new = _sections(new_text)
    old = _sections(old_text) if old_text is not None else {k: {} for k in new}
    out: dict[str, dict[str, list[str]]] = {}
    for section in new:
        a, b = old.get(section, {}), new[section]
        entry = {
            "added": sorted(str(k) for k in b.keys() - a.keys()),
            "removed": sorted(str(k) for k in a.keys() - b.keys()),
            "changed": sorted(str(k) for k in a.keys() & b.keys() if a[k] != b[k]),
        }
        if any(entry.values()):
            out[section] = entry
    return out


def announce(session: Session, *, policy: Policy, actor: Actor) -> dict[str, Any]:
    """Record `policy` as the active version if it is not already; returns what changed.

    Takes the policy_state row lock so replicas starting together announce once.
    """
    state = session.execute(
        select(PolicyState).where(PolicyState.id == 1).with_for_update()
    ).scalar_one_or_none()
    if state is not None and state.version == policy.version:
        return {"version": policy.version, "changed": False, "changes": {}}
    previous_text = None
    previous_version = state.version if state is not None else None
    if state is not None:
        prev = session.get(PolicyVersion, state.version)
        previous_text = prev.text if prev else None
    if session.get(PolicyVersion, policy.version) is None:
        session.add(
            PolicyVersion(
                version=policy.version,
                text=policy.loaded.text,
                source=policy.loaded.source,
                first_loaded_by=actor.id,
            )
        )
    changes = diff(previous_text, policy.loaded.text)
    now = utcnow()
    if state is None:
        session.add(PolicyState(id=1, version=policy.version, loaded_at=now))
    else:
        state.version = policy.version
        state.loaded_at = now
    ledger.record(
        session,
        type=EventType.POLICY_LOADED,
        actor=actor,
        subject=f"policy:{policy.version[:12]}",
        data={
            "version": policy.version,
            "previous": previous_version,
            "source": policy.loaded.source,
            "changes": changes,
        },
        time=now,
    )
    session.flush()
    return {"version": policy.version, "changed": True, "changes": changes}


def refuse(session: Session, *, version: str, source: str, actor: Actor,
           data: dict[str, Any]) -> None:
    """Record that a policy version was refused (its own tests failed): nothing else
    changes, the version in force stays."""
    state = session.get(PolicyState, 1)
    ledger.record(
        session,
        type=EventType.POLICY_REFUSED,
        actor=actor,
        subject=f"policy:{version[:12]}",
        data={"version": version, "running": state.version if state else None,
              "source": source, **data},
        time=utcnow(),
    )
    session.flush()
