"""Who is told what: routing ledger events to people and channels, and delivering.

The ledger is the outbox. Every state change commits its event in its own
transaction, so nothing to tell is ever lost; the worker reads the ledger from its
own cursor, turns each event into delivery jobs (one idempotency key per event,
channel and recipient) and delivers them with retries and backoff. Each delivery's
outcome is itself a ledger event (`notification.sent` / `notification.failed`), so
"who was told what, when" is auditable.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.config import NotifySpec
from accord.db import utcnow
from accord.ledger import service as ledger
from accord.ledger.events import Actor, EventType
from accord.ledger.models import LedgerEntry, SinkCursor
from accord.notify.channels import (
    Channel,
    DeliveryError,
    EmailChannel,
    RecipientAddress,
    SlackChannel,
    WebhookChannel,
)
from accord.notify.message import render
from accord.policy.engine import Policy
from accord.requests.models import AccessRequest, RequestApprover, Status
from accord.worker import jobs

log = logging.getLogger("accord.notify")
CURSOR = "notify"
DELIVER = "notify.deliver"
MAX_ATTEMPTS = 8
_ENDINGS = {"grant.expired", "grant.revoked", "grant.relinquished"}
ROUTED = frozenset({
    "request.created", "approval.recorded", "request.approved", "request.denied",
    "request.expired", "request.reminded", "request.escalated", "grant.activated",
    "grant.expiring", *_ENDINGS,
})
# Events that ask someone to decide: they are shown the request itself.
_RESHOW = {"approval.recorded", "request.reminded", "request.escalated"}


def recipients(session: Session, policy: Policy, event: dict[str, Any]) -> list[tuple[str, bool]]:
    """(user, asked to decide) pairs for one event; empty when nobody needs telling."""
    kind = event["type"]
    if kind not in ROUTED:
        return []
    data = event.get("data") or {}
    rid = data.get("request_id")
    req = session.get(AccessRequest, rid) if isinstance(rid, int) else None
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
    if kind in ("request.approved", "request.denied", "request.expired") and req is not None:
        return [(req.requester, False)]
    if kind == "grant.activated":
        out = [(str(data.get("user")), False)]
        automatic = (event.get("actor") or {}).get("kind") == "policy"
        resource = (event.get("resource") or {}).get("name", "")
        if not automatic:  # auto-approved access tells only the requester
            out += [(o, False) for o in sorted(policy.owners_of(resource))
                    if o != data.get("user")]
        return out
    if kind in _ENDINGS or kind == "grant.expiring":
        return [(str(data.get("user")), False)]
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
    out = []
    if spec.email is not None and address.email:
        out.append("email")
    if spec.slack is not None and address.slack:
        out.append("slack")
    return out


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
    rows = session.execute(
        select(LedgerEntry.idx, LedgerEntry.leaf).where(LedgerEntry.idx >= cursor.position)
        .order_by(LedgerEntry.idx).limit(batch)
    ).all()
    queued = 0
    for idx, leaf in rows:
        event = json.loads(leaf)
        if not str(event.get("type", "")).startswith("notification."):
            # A step completed: the next approvers get the request itself to decide on.
            shown = _created_index(session, event) if event["type"] in _RESHOW else idx
            for user, approver in recipients(session, policy, event):
                address = RecipientAddress.from_spec(user, policy.users.get(user))
                for channel in channels_for(spec, address):
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


def build_channel(spec: NotifySpec, name: str, env: dict[str, str] | None = None) -> Channel:
    env = dict(os.environ if env is None else env)
    if name == "email" and spec.email is not None:
        e = spec.email
        return EmailChannel(e.host, e.port, security=e.security, sender=e.sender,
                            username=env.get(e.username_env) if e.username_env else None,
                            password=env.get(e.password_env) if e.password_env else None)
    if name == "slack" and spec.slack is not None:
        s = spec.slack
        return SlackChannel(
            webhook_url=env.get(s.webhook_url_env) if s.webhook_url_env else None,
            bot_token=env.get(s.bot_token_env) if s.bot_token_env else None)
    for hook in spec.webhooks:
        if name == f"webhook.{hook.name}":
            secret = env.get(hook.secret_env, "")
            if not secret:
                raise DeliveryError(f"set {hook.secret_env} for webhook {hook.name}",
                                    retryable=False)
            return WebhookChannel(hook.url, secret.encode())
    raise DeliveryError(f"channel {name} is not configured", retryable=False)


def deliver(session: Session, job: jobs.Claimed, now: datetime, *, policy: Policy) -> None:
    """Send one notification; its outcome is a ledger event."""
    spec = policy.loaded.spec.notify
    payload = job.payload
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
        channel = build_channel(spec, channel_name)
        try:
            channel.send(address, message, idempotency_key=job.key)
        finally:
            close = getattr(channel, "close", None)
            if callable(close):
                close()
    except DeliveryError as exc:
        if exc.retryable and job.attempts < MAX_ATTEMPTS:
            raise jobs.RetryLater(str(exc)) from None
        outcome["error"] = str(exc)
        log.error("notification %s to %s via %s failed for good: %s", job.key, user,
                  channel_name, exc)
        ledger.record(session, type=EventType.NOTIFICATION_FAILED, actor=Actor.system(),
                      subject=str(event.get("subject")), data=outcome, time=now)
        return
    except ValueError as exc:  # nothing to render for this event
        log.info("notification %s skipped: %s", job.key, exc)
        return
    ledger.record(session, type=EventType.NOTIFICATION_SENT, actor=Actor.system(),
                  subject=str(event.get("subject")), data=outcome, time=now or utcnow())
