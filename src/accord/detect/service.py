"""Alerts: raised by the detectors as the ledger grows, then acknowledged and resolved by
people. Every change to an alert is a ledger event in the same transaction. Never commits.

`pump` reads the ledger from its cursor, runs the detectors and, in the same
transaction, inserts the alerts, records `alert.raised` for each and moves the cursor:
a crash replays at most the uncommitted batch, and the dedup key keeps a finding from
ever being raised twice. On SQLite the batches are small (SQLITE_BATCH, SQLITE_FINDINGS):
the transaction holds the database's one write lock.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from accord.detect.models import Alert, AlertStatus, DetectorCursor
from accord.detect.rules import BY_TYPE, NEEDS_REQUEST, Finding, RequestFacts, Scan
from accord.errors import Conflict, Forbidden, Invalid, NotFound
from accord.identity.caller import Caller
from accord.ledger import service as ledger
from accord.ledger.events import Actor, EventType
from accord.ledger.models import LedgerEntry
from accord.policy.engine import Policy
from accord.requests import service as requests
from accord.requests.models import AccessRequest

CURSOR = "detectors"
SKIP = ("alert.", "notification.")  # the detectors' own output, and the outbox's
BATCH = 2000
# SQLite has one writer at a time, so a pass holds the write lock for every other writer
# (HTTP calls wait behind it). There one transaction reads at most SQLITE_BATCH events and
# stops after the event that raised the SQLITE_FINDINGS-th alert (each is an alert row and
# a ledger event): a few ms, about two requests' creations, where 2000 events raising an
# alert each held it for ~100 ms; the next batch queues behind the writers that came
# meanwhile. A pass costs ~3 ms whatever it holds and an alert ~0.2 ms more: smaller
# batches would spend the lock on passes. PostgreSQL writers do not wait for it.
SQLITE_BATCH = 200
SQLITE_FINDINGS = 16


def pump(session: Session, *, policy: Policy, now: datetime, batch: int | None = None,
         findings: int | None = None) -> int:
    """Run the detectors over up to `batch` new ledger events, stopping after the event that
    brought the findings to `findings` (the defaults depend on the database: see
    SQLITE_BATCH). Returns how many events it read past."""
    if session.get_bind().dialect.name == "sqlite":
        batch = SQLITE_BATCH if batch is None else batch
        findings = SQLITE_FINDINGS if findings is None else findings
    batch = BATCH if batch is None else batch
    cursor = session.get(DetectorCursor, CURSOR, with_for_update=True)
    if cursor is None:
        cursor = DetectorCursor(name=CURSOR, next_index=0, state={})
        session.add(cursor)
        session.flush()
    # Types first; leaves only for the events some detector reads (statement events from
    # the gateway are large and read by none).
    rows = session.execute(
        select(LedgerEntry.idx, LedgerEntry.type)
        .where(LedgerEntry.idx >= cursor.next_index, LedgerEntry.idx.is_not(None))
        .order_by(LedgerEntry.idx).limit(batch)
    ).all()
    if not rows:
        return 0
    read = [int(idx or 0) for idx, kind in rows
            if kind in BY_TYPE and not kind.startswith(SKIP)]
    leaves: dict[int, bytes] = {int(idx or 0): leaf for idx, leaf in session.execute(
        select(LedgerEntry.idx, LedgerEntry.leaf).where(LedgerEntry.idx.in_(read)))} \
        if read else {}
    # Parsed as the detectors get to them (a batch may stop early), except the events whose
    # request the detectors need: those are fetched for the whole batch at once.
    parsed = {idx: json.loads(leaves[idx]) for idx, kind in rows
              if kind in NEEDS_REQUEST and idx in leaves}
    wanted = {rid for ev in parsed.values()
              if isinstance(rid := (ev.get("data") or {}).get("request_id"), int)}
    facts = {}
    if wanted:
        for rid, requester, created, resource in session.execute(
                select(AccessRequest.id, AccessRequest.requester, AccessRequest.created_at,
                       AccessRequest.resource).where(AccessRequest.id.in_(wanted))):
            facts[rid] = RequestFacts(requester, created, resource)
    state = json.loads(json.dumps(cursor.state or {}))  # a copy: JSON columns need reassigning
    scan = Scan(session, policy, policy.loaded.spec.detect, state, facts)
    last = int(rows[-1][0] or 0)
    found: list[Finding] = []
    for idx in read:
        ev = parsed.pop(idx, None) or json.loads(leaves[idx])
        for detector in BY_TYPE[ev["type"]]:
            found.extend(detector(scan, idx, ev))
        if findings is not None and len(found) >= findings:
            last = idx  # the state holds every event up to here, and none after
            break
    raise_alerts(session, findings=found, now=now)
    cursor.next_index = last + 1
    cursor.state = state
    return sum(1 for idx, _kind in rows if int(idx or 0) <= last)


def raise_alert(session: Session, *, finding: Finding, now: datetime) -> Alert | None:
    """Open an alert for a finding, once: None when its key was raised before."""
    raised = raise_alerts(session, findings=[finding], now=now)
    return raised[0] if raised else None


def raise_alerts(session: Session, *, findings: Sequence[Finding], now: datetime
                 ) -> list[Alert]:
    """Open an alert for each finding whose key was never raised, in order: one query for
    the keys already raised and one insert for the new alerts, then their events."""
    if not findings:
        return []
    known = set(session.execute(select(Alert.dedup_key).where(
        Alert.dedup_key.in_({f.key for f in findings}))).scalars())
    alerts: list[Alert] = []
    for finding in findings:
        if finding.key in known:
            continue
        known.add(finding.key)
        alerts.append(Alert(
            rule=finding.rule, severity=finding.severity, status=AlertStatus.OPEN,
            title=finding.title, user=finding.user, resource=finding.resource,
            subject=finding.subject, evidence=finding.evidence, data=finding.data,
            dedup_key=finding.key, opened_at=now, note=""))
    session.add_all(alerts)
    session.flush()
    for alert in alerts:
        ledger.record(session, type=EventType.ALERT_RAISED, actor=Actor.system(),
                      subject=f"alert:{alert.id}", time=now,
                      resource={"name": alert.resource} if alert.resource else None,
                      data={"alert_id": alert.id, "rule": alert.rule,
                            "severity": alert.severity, "title": alert.title,
                            "user": alert.user, "about": alert.subject,
                            "evidence": alert.evidence})
    return alerts


def get(session: Session, *, alert_id: int, lock: bool = False) -> Alert:
    q = select(Alert).where(Alert.id == alert_id)
    if lock:
        q = q.with_for_update()
    alert = session.execute(q).scalar_one_or_none()
    if alert is None:
        raise NotFound(f"alert {alert_id} does not exist")
    return alert


def about(alert: Alert) -> frozenset[str]:
    """The people an alert is about: whose behaviour raised it (`user`), a `user:` subject,
    and the requester a fast approval favoured. None of them may close it."""
    people = {alert.user} if alert.user else set()
    if alert.subject and alert.subject.startswith("user:"):
        people.add(alert.subject.removeprefix("user:"))
    requester = (alert.data or {}).get("requester")
    if isinstance(requester, str) and requester:
        people.add(requester)
    return frozenset(people)


def _not_about(alert: Alert, actor: Actor, verb: str) -> None:
    if actor.kind == "user" and actor.id in about(alert):
        raise Forbidden(f"alert {alert.id} is about you ({actor.id}): another admin must "
                        f"{verb} it, so nobody closes the case against themselves")


def acknowledge(session: Session, *, alert_id: int, actor: Actor, note: str,
                now: datetime) -> Alert:
    """Someone is looking at it (never someone it is about)."""
    alert = get(session, alert_id=alert_id, lock=True)
    _not_about(alert, actor, "acknowledge")
    if alert.status != AlertStatus.OPEN:
        raise Conflict(f"alert {alert.id} is {alert.status}; only an open alert is "
                       "acknowledged")
    alert.status, alert.acknowledged_at, alert.acknowledged_by = (
        AlertStatus.ACKNOWLEDGED, now, actor.id)
    if note:
        alert.note = note
    ledger.record(session, type=EventType.ALERT_ACKNOWLEDGED, actor=actor,
                  subject=f"alert:{alert.id}", time=now,
                  data={"alert_id": alert.id, "rule": alert.rule, "note": note})
    return alert


def resolve(session: Session, *, alert_id: int, actor: Actor, note: str, now: datetime,
            policy: Policy | None = None) -> Alert:
    """Close it, saying why (never someone it is about). A break-glass alert closes only
    through its review."""
    alert = get(session, alert_id=alert_id, lock=True)
    _not_about(alert, actor, "resolve")
    if alert.status == AlertStatus.RESOLVED:
        raise Conflict(f"alert {alert.id} was already resolved by {alert.resolved_by}")
    if not note.strip():
        raise Invalid("say how it was resolved", field="note")
    if alert.rule == "break_glass" and actor.kind == "user":
        raise Conflict("a break-glass alert is resolved by reviewing the request "
                       f"({alert.subject}): POST /api/v1/requests/{{id}}/review")
    _close(session, alert, actor=actor, note=note, now=now)
    return alert


def _close(session: Session, alert: Alert, *, actor: Actor, note: str, now: datetime) -> None:
    alert.status, alert.resolved_at, alert.resolved_by = AlertStatus.RESOLVED, now, actor.id
    alert.note = note
    ledger.record(session, type=EventType.ALERT_RESOLVED, actor=actor,
                  subject=f"alert:{alert.id}", time=now,
                  data={"alert_id": alert.id, "rule": alert.rule, "note": note})


def resolve_for_subject(session: Session, *, rule: str, subject: str, actor: Actor,
                        now: datetime, note: str, severity: str) -> int:
    """Resolve the open alerts of `rule` about `subject` (a review closes its break-glass
    alert). The detectors may not have raised it yet: raise it now, then close it, so the
    record never shows a use of the glass without its alert."""
    alerts = list(session.execute(
        select(Alert).where(Alert.rule == rule, Alert.subject == subject,
                            Alert.status != AlertStatus.RESOLVED).with_for_update()).scalars())
    if not alerts and not session.execute(
            select(Alert.id).where(Alert.dedup_key == f"{rule}:{subject}")).first():
        req_id = int(subject.split(":", 1)[1]) if subject.startswith("request:") else None
        req = session.get(AccessRequest, req_id) if req_id else None
        raised = raise_alert(session, finding=Finding(
            rule, severity, f"{req.requester if req else '?'} broke the glass on "
            f"{req.resource if req else '?'}", f"{rule}:{subject}", [],
            user=req.requester if req else None, resource=req.resource if req else None,
            subject=subject), now=now)
        alerts = [raised] if raised else []
    for alert in alerts:
        _close(session, alert, actor=actor, note=note, now=now)
    return len(alerts)


def list_alerts(session: Session, *, status: str | None = None, severity: str | None = None,
                rule: str | None = None, user: str | None = None, resource: str | None = None,
                before_id: int | None = None, limit: int = 50) -> list[Alert]:
    q = select(Alert).order_by(Alert.id.desc()).limit(limit)
    for column, value in ((Alert.status, status), (Alert.severity, severity),
                          (Alert.rule, rule), (Alert.user, user), (Alert.resource, resource)):
        if value:
            q = q.where(column == value)
    if before_id is not None:
        q = q.where(Alert.id < before_id)
    return list(session.execute(q).scalars())


GROUP_BY = ("rule", "user", "resource", "subject")
_RANK = {"low": 1, "medium": 2, "high": 3, "critical": 4}


@dataclass(frozen=True)
class AlertGroup:
    """Alerts of one rule (and, by `by`, one user, resource or subject), counted."""

    rule: str
    user: str | None
    resource: str | None
    subject: str | None
    count: int
    severity: str  # the most severe in the group
    newest: Alert
    oldest_opened_at: datetime


def group_alerts(session: Session, *, by: str = "rule", status: str | None = None,
                 severity: str | None = None, rule: str | None = None,
                 user: str | None = None, resource: str | None = None,
                 limit: int = 100) -> list[AlertGroup]:
    """Alerts counted per rule, or per rule and `by` (user, resource or subject), the
    group with the newest alert first: eleven off-hours alerts read as one line."""
    if by not in GROUP_BY:
        raise Invalid(f"must be one of {', '.join(GROUP_BY)}", field="by")
    keys = [Alert.rule] + ([getattr(Alert, by)] if by != "rule" else [])
    rank = case(_RANK, value=Alert.severity, else_=0)
    q = (select(*keys, func.count(), func.max(Alert.id), func.min(Alert.opened_at),
                func.max(rank))
         .group_by(*keys).order_by(func.max(Alert.id).desc()).limit(limit))
    for column, value in ((Alert.status, status), (Alert.severity, severity),
                          (Alert.rule, rule), (Alert.user, user), (Alert.resource, resource)):
        if value:
            q = q.where(column == value)
    rows = session.execute(q).all()
    newest = {a.id: a for a in session.execute(
        select(Alert).where(Alert.id.in_([r[-3] for r in rows]))).scalars()} if rows else {}
    names = {v: k for k, v in _RANK.items()}
    out = []
    for row in rows:
        alert = newest[int(row[-3])]
        key = row[1] if by != "rule" else None
        out.append(AlertGroup(
            rule=row[0], user=key if by == "user" else None,
            resource=key if by == "resource" else None,
            subject=key if by == "subject" else None, count=int(row[-4]),
            severity=names.get(int(row[-1] or 0), alert.severity), newest=alert,
            oldest_opened_at=row[-2]))
    return out


def alerts_about(session: Session, *, subject: str, limit: int = 100) -> list[Alert]:
    """The alerts raised about one subject (`grant:12`), oldest first."""
    return list(session.execute(select(Alert).where(Alert.subject == subject)
                                .order_by(Alert.id).limit(limit)).scalars())


def unresolved(session: Session, *, rule: str, limit: int = 5) -> list[Alert]:
    """The newest alerts of `rule` not resolved yet."""
    return list(session.execute(
        select(Alert).where(Alert.rule == rule, Alert.status != AlertStatus.RESOLVED)
        .order_by(Alert.id.desc()).limit(limit)).scalars())


def open_alert_counts(session: Session, *, subjects: list[str]) -> dict[str, int]:
    """How many alerts not yet resolved each subject has (subjects without any: absent)."""
    if not subjects:
        return {}
    rows = session.execute(
        select(Alert.subject, func.count()).where(
            Alert.subject.in_(subjects), Alert.status != AlertStatus.RESOLVED)
        .group_by(Alert.subject)).all()
    return {str(subject): int(n) for subject, n in rows}


def as_dict(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.id, "rule": alert.rule, "severity": alert.severity, "status": alert.status,
        "title": alert.title, "user": alert.user, "resource": alert.resource,
        "subject": alert.subject, "evidence": list(alert.evidence), "data": dict(alert.data),
        "opened_at": alert.opened_at, "acknowledged_at": alert.acknowledged_at,
        "acknowledged_by": alert.acknowledged_by, "resolved_at": alert.resolved_at,
        "resolved_by": alert.resolved_by, "note": alert.note,
    }


def review_break_glass(session: Session, *, policy: Policy, caller: Caller, request_id: int,
                       verdict: str, note: str, now: datetime) -> AccessRequest:
    """The after-the-fact review of a break-glass request (`requests.service.review`), and
    the break-glass alert it closes, in the caller's transaction."""
    req = requests.review(session, policy=policy, caller=caller, request_id=request_id,
                          verdict=verdict, note=note, now=now)
    resolve_for_subject(session, rule=requests.BREAK_GLASS, subject=f"request:{req.id}",
                        actor=caller.actor, now=now, note=f"reviewed: {verdict}",
                        severity=policy.loaded.spec.detect.break_glass.severity)
    return req
