"""The worker's side of notifications: delivering the outbox's messages, and updating a
Slack message after a click through its response_url."""

from __future__ import annotations

import functools
from typing import Any

import httpx
from sqlalchemy.orm import Session

from accord.jobs import service as jobs
from accord.notify import outbox, slack
from accord.policy.engine import Policy


def respond(session: Session, job: jobs.Claimed, now: Any) -> None:
    """Update the Slack message (its response_url accepts a replacement)."""
    r = httpx.post(job.payload["url"], json={"replace_original": True,
                                             "text": job.payload["text"]}, timeout=10)
    if r.status_code >= 500 or r.status_code == 429:
        raise jobs.RetryLater(f"Slack answered {r.status_code}")


def handlers(policy: Policy) -> dict[str, jobs.Handler]:
    return {slack.RESPOND: respond,
            outbox.DELIVER: functools.partial(outbox.deliver, policy=policy)}
