"""The worker's side of access reviews: job handlers and the start schedule."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from accord.jobs import service as jobs
from accord.policy.engine import Policy
from accord.reviews import service
from accord.reviews.models import ReviewCampaign


def handlers(policy: Policy) -> dict[str, jobs.Handler]:
    """Start campaigns when due, remind reviewers, close campaigns at their deadline."""

    def start(s: Session, job: jobs.Claimed, now: datetime) -> None:
        service.start_due(s, policy=policy, name=str(job.payload["name"]), now=now)

    def remind(s: Session, job: jobs.Claimed, now: datetime) -> None:
        service.remind(s, campaign_id=int(job.payload["campaign_id"]),
                       round=int(job.payload["round"]), now=now)

    def close(s: Session, job: jobs.Claimed, now: datetime) -> None:
        camp = s.get(ReviewCampaign, int(job.payload["campaign_id"]))
        spec = service.definitions(policy).get(camp.definition) if camp else None
        service.close(s, campaign_id=int(job.payload["campaign_id"]), now=now,
                      revoke=spec is not None and spec.on_expiry == "revoke")

    return {service.START: start, service.REMIND: remind, service.CLOSE: close}


def plan(session: Session, *, policy: Policy, now: datetime) -> int:
    """Schedule each review definition's next start (idempotent; run on policy changes)."""
    return service.plan(session, policy=policy, now=now)
