"""The daily digest: events kept for a user in digest mode and sent once a day at their hour.

The outbox stores one `DigestItem` per (event, channel, recipient) instead of queuing a
delivery, and makes sure a durable job is due at the user's next digest hour (UTC). The
job's key is unique per user and day, so a day has at most one digest however many
events arrive. When it runs, it sends one message per channel listing every item not
sent yet, and marks those items sent, with a `notification.sent` (or `.failed`) ledger
event per item, in the same transaction that completes the job: a second run, or a
run after a worker restart, finds nothing left to send.

Both sides lock the user's preference row first (a user in digest mode always has one),
so an item stored while its digest is being sent either makes it into that digest or
finds the job done and plans the next day's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from accord import metrics
from accord.jobs import service as jobs
from accord.jobs.models import Job
from accord.ledger import service as ledger
from accord.ledger.events import Actor, EventType
from accord.ledger.models import LedgerEntry
from accord.notify.channels import DeliveryError, RecipientAddress, send_once
from accord.notify.message import render_digest
from accord.notify.models import DigestItem, NotificationPreference
from accord.policy.engine import Policy

log = logging.getLogger("accord.notify")
KEY_PREFIX = "notify:digest"


def next_run(now: datetime, hour: int) -> datetime:
    """The first `hour`:00 UTC strictly after `now`."""
    at = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    return at if at > now else at + timedelta(days=1)


def job_key(user: str, run_at: datetime) -> str:
    return f"{KEY_PREFIX}:{user}:{run_at.date().isoformat()}"


def _lock(session: Session, user: str) -> None:
    session.execute(select(NotificationPreference.user)
                    .where(NotificationPreference.user == user).with_for_update())


def add(session: Session, *, kind: str, user: str, hour: int, event_index: int,
        show_index: int, event_type: str, channel: str, approver: bool,
        now: datetime) -> bool:
    """Keep one event for `user`'s digest on `channel` and plan the digest that sends it.

    True if the item is new; an event routed twice is stored once.
    """
    _lock(session, user)
    exists = session.execute(select(DigestItem.id).where(
        DigestItem.event_index == event_index, DigestItem.channel == channel,
        DigestItem.recipient == user)).first()
    if exists is not None:
        return False
    try:
        with session.begin_nested():
            session.add(DigestItem(event_index=event_index, show_index=show_index,
                                   event_type=event_type, channel=channel, recipient=user,
                                   approver=approver, created_at=now))
    except IntegrityError:  # a concurrent pump stored it
        return False
    run_at = next_run(now, hour)
    while True:  # the first day whose digest has not run yet
        key = job_key(user, run_at)
        job = session.execute(select(Job.done_at).where(Job.key == key)).first()
        if job is None:
            jobs.enqueue(session, kind=kind, key=key, run_at=run_at, now=now,
                         payload={"digest": True, "user": user,
                                  "day": run_at.date().isoformat()})
            return True
        if job.done_at is None:
            return True  # that digest is still to come and will carry this item
        run_at += timedelta(days=1)


def pending(session: Session, *, user: str) -> list[DigestItem]:
    """`user`'s items not sent yet, oldest event first."""
    return list(session.execute(
        select(DigestItem).where(DigestItem.recipient == user, DigestItem.sent_at.is_(None))
        .order_by(DigestItem.event_index, DigestItem.id)
    ).scalars())


def send(session: Session, job: jobs.Claimed, now: datetime, *, policy: Policy,
         max_attempts: int) -> None:
    """Send `job`'s user one digest per channel with everything not sent yet.

    A channel that fails in a way worth retrying leaves its items for the job's next
    attempt (jobs.RetryLater) while what the other channels sent stays recorded.
    """
    spec = policy.loaded.spec.notify
    user = str(job.payload["user"])
    day = str(job.payload.get("day") or now.date().isoformat())
    _lock(session, user)
    items = pending(session, user=user)
    if not items:
        return
    wanted = {i.event_index for i in items} | {i.show_index for i in items}
    leaves = {idx: json.loads(leaf) for idx, leaf in session.execute(
        select(LedgerEntry.idx, LedgerEntry.leaf).where(LedgerEntry.idx.in_(wanted)))
        if idx is not None}
    address = RecipientAddress.from_spec(user, policy.users.get(user))
    by_channel: dict[str, list[DigestItem]] = {}
    for item in items:
        by_channel.setdefault(item.channel, []).append(item)
    again: list[str] = []
    for channel, group in by_channel.items():
        message = render_digest(
            [(leaves[i.show_index], i.approver) for i in group if i.show_index in leaves],
            base_url=spec.base_url, recipient=user, day=day)
        if message is None:  # nothing in it has a notification
            _finish(session, group, leaves, job, now, outcome="skipped")
            continue
        try:
            send_once(spec, channel, address, message, idempotency_key=f"{job.key}:{channel}")
        except DeliveryError as exc:
            if exc.retryable and job.attempts < max_attempts:
                again.append(f"{channel}: {exc}")
                metrics.get().notifications.labels(channel, "retry").inc()
                continue
            log.error("digest %s via %s failed for good: %s", job.key, channel, exc)
            metrics.get().notifications.labels(channel, "failed").inc()
            _finish(session, group, leaves, job, now, outcome="failed", error=str(exc))
            continue
        metrics.get().notifications.labels(channel, "sent").inc()
        _finish(session, group, leaves, job, now, outcome="sent")
    if again:
        raise jobs.RetryLater("; ".join(again))


def _finish(session: Session, group: Sequence[DigestItem], leaves: dict[int, Any],
            job: jobs.Claimed, now: datetime, *, outcome: str, error: str | None = None
            ) -> None:
    """Mark the items done and record, per item, who was told what (as the immediate path)."""
    for item in group:
        item.sent_at = now
        item.digest = job.key
        item.outcome = outcome
        if outcome == "skipped":
            continue
        data: dict[str, Any] = {"index": item.event_index, "event_type": item.event_type,
                                "channel": item.channel, "recipient": item.recipient,
                                "attempts": job.attempts, "digest": job.key}
        if error is not None:
            data["error"] = error
        event = leaves.get(item.event_index) or {}
        ledger.record(session,
                      type=EventType.NOTIFICATION_SENT if outcome == "sent"
                      else EventType.NOTIFICATION_FAILED,
                      actor=Actor.system(), subject=str(event.get("subject")), data=data,
                      time=now)
    session.flush()
