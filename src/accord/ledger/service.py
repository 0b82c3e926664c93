"""Append events to the ledger inside the caller's transaction. The only writer of audit rows."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import rfc8785
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from accord.db import utcnow
from accord.ledger.events import Actor, EventType, PolicyRef, envelope
from accord.ledger.models import LedgerEntry


def encode(env: dict[str, Any]) -> bytes:
    """The leaf bytes: RFC 8785 canonical JSON of the envelope, stored and hashed verbatim."""
    data: bytes = rfc8785.dumps(env)
    return data


def record(
    session: Session,
    *,
    type: EventType,
    actor: Actor,
    subject: str,
    resource: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    policy: PolicyRef | None = None,
    time: datetime | None = None,
) -> LedgerEntry:
    """Add one event to the session; it commits (or not) with the state change it describes."""
    when = time or utcnow()
    env = envelope(
        type=type,
        time=when,
        actor=actor,
        subject=subject,
        resource=resource,
        data=data or {},
        policy=policy,
    )
    entry = LedgerEntry(
        type=str(type),
        time=when,
        actor=actor.id,
        subject=subject,
        resource=(resource or {}).get("name"),
        leaf=encode(env),
    )
    session.add(entry)
    return entry


def decode(entry: LedgerEntry) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(entry.leaf)
    return value


def query_events(
    *,
    type: str | None = None,
    subject: str | None = None,
    resource: str | None = None,
    actor: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after_id: int | None = None,
) -> Select[LedgerEntry]:
    """Events in append order, filtered."""
    q = select(LedgerEntry).order_by(LedgerEntry.id)
    if type:
        q = q.where(LedgerEntry.type == type)
    if subject:
        q = q.where(LedgerEntry.subject == subject)
    if resource:
        q = q.where(LedgerEntry.resource == resource)
    if actor:
        q = q.where(LedgerEntry.actor == actor)
    if since:
        q = q.where(LedgerEntry.time >= since)
    if until:
        q = q.where(LedgerEntry.time < until)
    if after_id is not None:
        q = q.where(LedgerEntry.id > after_id)
    return q
