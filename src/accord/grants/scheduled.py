"""The worker's side of grants: the warning that access is about to end."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from accord.grants import service
from accord.jobs import service as jobs


def handlers() -> dict[str, jobs.Handler]:
    def warn(s: Session, job: jobs.Claimed, now: datetime) -> None:
        service.warn(s, grant_id=job.payload["grant_id"], ends_at=job.payload["ends_at"],
                     now=now)

    return {service.WARN: warn}
