"""Who is told what: routing ledger events to people and channels, and delivering.

The ledger is the outbox. Every state change commits its event in its own
transaction, so nothing to tell is ever lost; the worker reads the ledger from its
own cursor, turns each event into delivery jobs (one idempotency key per event,
channel and recipient) and delivers them with retries and backoff. Each delivery's
outcome is itself a ledger event (`notification.sent` / `notification.failed`), so
"who was told what, when" is auditable.

Each person is told on the channels that are configured, that they have an address
for, that their preferences choose and that the request's workflow allows
(`notify.channels`). People in digest mode get most events in a daily digest
(`accord.notify.digest`); what asks them to act (a request to decide, a warning that
their access ends) still goes out at once.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from accord import metrics
from accord.db import utcnow
from accord.grants.models import Grant
from accord.jobs import service as jobs
from accord.ledger import service as ledger
from accord.ledger.events import Actor, EventType
from accord.ledger.models import LedgerEntry, SinkCursor
from accord.notify import digest
from accord.notify import service as prefs
from accord.notify.channels import DeliveryError, RecipientAddress, send_once
from accord.notify.message import render
from accord.policy.engine import Policy
from accord.requests.models import AccessRequest, RequestApprover, Status
from accord.spec.notify import NotifySpec
from accord.spec.workflows import WorkflowNotifySpec

log = logging.getLogger("accord.notify")
CURSOR = "notify"
DELIVER = "notify.deliver"
MAX_ATTEMPTS = 8
_ENDINGS = {"grant.expired", "grant.revoked", "grant.relinquished"}
ROUTED = frozenset({
    "request.created", "approval.recorded", "request.approved", "request.denied",
    "request.expired", "request.reminded", "request.escalated", "grant.activated",
    "grant.expiring", "alert.raised", "request.review_reminded", *_ENDINGS,
    "review.started", "review.reminded",  # reviewers with entries to decide
})
# Events that ask someone to decide: they are shown the request itself.
_RESHOW = {"approval.recorded", "request.reminded", "request.escalated"}
# Sent at once even to people in digest mode: a digest would come too late to act on.
URGENT = frozenset({"grant.expiring", "alert.raised"})
SEVERITIES = ("low", "medium", "high", "critical")


def urgent(event: dict[str, Any], approver: bool) -> bool:
    """Does this message need acting on soon (so never waits for a digest)?"""
    return approver or event.get("type") in URGENT


def _request_of(session: Session, event: dict[str, Any]) -> AccessRequest | None:
    """The request an event is about; for grant events, the request that made the grant."""
    data = event.get("data") or {}
    rid = data.get("request_id")
    if isinstance(rid, int):
        return session.get(AccessRequest, rid)
    subject = str(event.get("subject") or "")
    if subject.startswith("grant:") and subject[6:].isdigit():
        grant = session.get(Grant, int(subject[6:]))
        return session.get(AccessRequest, grant.request_id) if grant is not None else None
    return None


def workflow_notify(session: Session, policy: Policy, event: dict[str, Any]
                    ) -> WorkflowNotifySpec | None:
    """The `notify:` choices of the workflow that routed the event's request, if any."""
    req = _request_of(session, event)
    if req is None or req.workflow is None:
        return None
    spec = next((w.spec for w in policy.workflows if w.spec.name == req.workflow), None)
    return spec.notify if spec is not None else None


def _auto_approved(req: AccessRequest | None, event: dict[str, Any]) -> bool:
    """Did a rule approve it? (A provisioned grant is activated by the system, so ask the
    request which rule decided; the actor is the fallback.)"""
    if req is not None:
        return req.rule == "auto_approve"
    return (event.get("actor") or {}).get("kind") == "policy"


def recipients(session: Session, policy: Policy, event: dict[str, Any]) -> list[tuple[str, bool]]:
    """(user, asked to decide) pairs for one event; empty when nobody needs telling."""
    kind = event["type"]
    if kind not in ROUTED:
        return []
    data = event.get("data") or {}
    req = _request_of(session, event)
    if kind == "request.created" and req is not None and req.status == Status.PENDING:
        return [(u, True) for u in _step_approvers(session, req)]
    if kind == "approval.recorded" and data.get("step_complete") and req is not None \
            and req.status == Status.PENDING:
        return [(u, True) for u in _step_approvers(session, req)]
    if kind == "request.reminded" and req is not None and req.status == Status.PENDING:
        decided = {a.approver for a in req.approvals}
        return [(u, True) for u in _step_approvers(session, req) if u not in decided]
    if kind == "request.escalated" and req is not None and req.status == Status.PENDING:
        return [(u, True) for u in data.get("added", [])]
    if kind in ("request.approved", "grant.activated") and _auto_approved(req, event):
        choice = workflow_notify(session, policy, event)
        audience = choice.auto_approved if choice is not None else "requester"
        if audience == "none":
            return []
        if audience == "requester" or kind == "request.approved":  # "all" adds the owners
            user = data.get("user") if kind == "grant.activated" else \
                (req.requester if req is not None else None)
            return [(str(user), False)] if user else []
    if kind in ("request.approved", "request.denied", "request.expired") and req is not None:
        return [(req.requester, False)]
    if kind == "grant.activated":
        out = [(str(data.get("user")), False)]
        resource = (event.get("resource") or {}).get("name", "")
        out += [(o, False) for o in sorted(policy.owners_of(resource))
                if o != data.get("user")]
        return out
    if kind in _ENDINGS or kind == "grant.expiring":
        return [(str(data.get("user")), False)]
    if kind == "alert.raised" and data.get("rule") == "ledger_integrity":
        # Evidence itself is in doubt: everyone who answers for it hears, whatever
        # detect.notify says.
        return [(u, False) for u in sorted(set(policy.admins) | set(policy.auditors))]
    if kind == "alert.raised":  # detect.notify groups, else the admins
        spec = policy.loaded.spec.detect
        if SEVERITIES.index(str(data.get("severity", "low"))) < \
                SEVERITIES.index(spec.notify_severity):
            return []
        groups = spec.notify
        people = set().union(*(policy.resolve(g, None) for g in groups)) if groups \
            else set(policy.admins)
        return [(u, False) for u in sorted(people)]
    if kind == "request.review_reminded":
        return [(str(u), True) for u in data.get("reviewers", [])]
    if kind in ("review.started", "review.reminded"):  # {reviewer: entries waiting on them}
        waiting = data.get("reviewers") or {}
        return [(str(u), True) for u in sorted(waiting) if waiting[u]]
    return []


def _step_approvers(session: Session, req: AccessRequest) -> list[str]:
    return sorted(session.execute(
        select(RequestApprover.username).where(RequestApprover.request_id == req.id,
                                               RequestApprover.step == req.current_step)
    ).scalars())


def _created_index(session: Session, event: dict[str, Any]) -> int | None:
    value: int | None = session.execute(
        select(LedgerEntry.idx).where(LedgerEntry.subject == event.get("subject"),
                                      LedgerEntry.type == "request.created")
    ).scalar_one_or_none()
    return value


def channels_for(spec: NotifySpec, address: RecipientAddress) -> list[str]:
    """Every channel `address` can be reached on (before preferences and workflows)."""
    return prefs.available_channels(spec, address)


def pump(session: Session, *, policy: Policy, now: datetime, batch: int = 200) -> int:
    """Turn new ledger events into delivery jobs, in the caller's transaction."""
    spec = policy.loaded.spec.notify
    if not (spec.email or spec.slack or spec.webhooks):
        return 0  # nobody can be told anything: leave the ledger alone
    cursor = session.get(SinkCursor, CURSOR, with_for_update=True)
    if cursor is None:
        cursor = SinkCursor(name=CURSOR, position=0, updated_at=now)
        session.add(cursor)
        session.flush()
    # Read the types first and the leaves only of events someone is told about: the
    # gateway's statement events are large and, without webhooks, concern nobody here.
    kinds = session.execute(
        select(LedgerEntry.idx, LedgerEntry.type).where(LedgerEntry.idx >= cursor.position)
        .order_by(LedgerEntry.idx).limit(batch)
    ).all()
    wanted = [int(i or 0) for i, kind in kinds
              if not kind.startswith("notification.") and (spec.webhooks or kind in ROUTED)]
    leaves = dict(session.execute(
        select(LedgerEntry.idx, LedgerEntry.leaf).where(LedgerEntry.idx.in_(wanted))).all()) \
        if wanted else {}
    queued = 0
    chosen: dict[str, prefs.Preferences] = {}
    for idx, _kind in kinds:
        leaf = leaves.get(idx)
        event = json.loads(leaf) if leaf is not None else None
        if event is not None:
            # A step completed: the next approvers get the request itself to decide on.
            shown = _created_index(session, event) if event["type"] in _RESHOW else idx
            targets = recipients(session, policy, event)
            workflow = workflow_notify(session, policy, event) if targets else None
            allowed = workflow.channels if workflow is not None else None
            for user, approver in targets:
                address = RecipientAddress.from_spec(user, policy.users.get(user))
                if user not in chosen:
                    chosen[user] = prefs.get(session, user=user)
                choice = chosen[user]
                later = choice.digest and not urgent(event, approver)
                for channel in prefs.route(spec, address, choice, allowed):
                    if later and choice.digest_hour is not None:
                        queued += digest.add(
                            session, kind=DELIVER, user=user, hour=choice.digest_hour,
                            event_index=int(idx or 0), show_index=int(shown or idx or 0),
                            event_type=event["type"], channel=channel, approver=approver,
                            now=now)
                        continue
                    queued += jobs.enqueue(
                        session, kind=DELIVER, key=f"notify:{idx}:{channel}:{user}", run_at=now,
                        now=now, payload={"index": idx, "show": shown, "user": user,
                                          "approver": approver, "channel": channel})
            for hook in spec.webhooks:
                queued += jobs.enqueue(
                    session, kind=DELIVER, key=f"notify:{idx}:webhook.{hook.name}:-",
                    run_at=now, now=now,
                    payload={"index": idx, "user": "-", "approver": False,
                             "channel": f"webhook.{hook.name}"})
        cursor.position = int(idx or 0) + 1
        cursor.updated_at = now
    return queued


def counted(channel: str, outcome: str) -> None:
    """One delivery's outcome (sent, retry, failed) on /metrics."""
    metrics.get().notifications.labels(channel, outcome).inc()


def deliver(session: Session, job: jobs.Claimed, now: datetime, *, policy: Policy) -> None:
    """Send one notification (or one user's daily digest); its outcome is a ledger event."""
    payload = job.payload
    if payload.get("digest"):  # same job kind, so every worker already runs digests
        digest.send(session, job, now, policy=policy, max_attempts=MAX_ATTEMPTS)
        return
    spec = policy.loaded.spec.notify
    shown = payload.get("show", payload["index"])
    row = session.execute(select(LedgerEntry.leaf).where(LedgerEntry.idx == shown)).scalar_one()
    event = json.loads(row)
    user, channel_name = str(payload["user"]), str(payload["channel"])
    address = RecipientAddress.from_spec(user, policy.users.get(user))
    outcome: dict[str, Any] = {"index": payload["index"], "event_type": event["type"],
                               "channel": channel_name, "recipient": user,
                               "attempts": job.attempts}
    try:
        message = render(event, base_url=spec.base_url, recipient=user,
                         approver=bool(payload["approver"]))
        send_once(spec, channel_name, address, message, idempotency_key=job.key)
    except DeliveryError as exc:
        if exc.retryable and job.attempts < MAX_ATTEMPTS:
            counted(channel_name, "retry")
            raise jobs.RetryLater(str(exc)) from None
        counted(channel_name, "failed")
        outcome["error"] = str(exc)
        log.error("notification %s to %s via %s failed for good: %s", job.key, user,
                  channel_name, exc)
        ledger.record(session, type=EventType.NOTIFICATION_FAILED, actor=Actor.system(),
                      subject=str(event.get("subject")), data=outcome, time=now)
        return
    except ValueError as exc:  # nothing to render for this event
        log.info("notification %s skipped: %s", job.key, exc)
        return
    counted(channel_name, "sent")
    ledger.record(session, type=EventType.NOTIFICATION_SENT, actor=Actor.system(),
                  subject=str(event.get("subject")), data=outcome, time=now or utcnow())
