"""The worker's side of requests: reminders and escalations of pending requests, and
reminders to review a break-glass use."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from accord.jobs import service as jobs
from accord.policy.engine import Policy
from accord.requests import service


def handlers(policy: Policy) -> dict[str, jobs.Handler]:
    def remind(s: Session, job: jobs.Claimed, now: datetime) -> None:
        service.remind(s, policy=policy, request_id=job.payload["request_id"], now=now)

    def escalate(s: Session, job: jobs.Claimed, now: datetime) -> None:
        service.escalate(s, policy=policy, request_id=job.payload["request_id"], now=now)

    def review_remind(s: Session, job: jobs.Claimed, now: datetime) -> None:
        service.review_remind(s, policy=policy, request_id=job.payload["request_id"],
                              round=job.payload["round"], now=now)

    return {service.REMIND: remind, service.ESCALATE: escalate,
            service.REVIEW_REMIND: review_remind}
