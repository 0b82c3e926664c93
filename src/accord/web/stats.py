"""Figures for the overview page, over the requests the viewer may see."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from accord.policy.engine import Policy
from accord.requests.models import AccessRequest, Status
from accord.requests.service import status_clause, visible_clause

AUTOMATIC_RULES = ("auto_approve", "auto_deny", "default_deny", "no_approvers")
OUTCOMES = ("approved", "denied", "pending", "other")
# Time-to-decision buckets: (label, upper bound in seconds)
BUCKETS = (("< 1 min", 60), ("< 15 min", 900), ("< 1 h", 3600), ("< 4 h", 14400),
           ("< 1 day", 86400), ("longer", None))


@dataclass
class Overview:
    counts: dict[str, int]
    days: list[date]
    per_day: dict[str, list[int]]  # outcome -> count per day
    decision_buckets: list[tuple[str, int]]
    median_decision: float | None  # seconds, human decisions only
    top_resources: list[tuple[str, int]]
    automatic: int
    human: int
    window_days: int
    extra: dict[str, Any] = field(default_factory=dict)


def _outcome(status: str, granted: bool) -> str:
    if granted or status in (Status.APPROVED, Status.ACTIVE):
        return "approved"
    if status == Status.DENIED:
        return "denied"
    if status == Status.PENDING:
        return "pending"
    return "other"


def overview(session: Session, *, policy: Policy, user: str, now: datetime,
             window_days: int = 14) -> Overview:
    visible = visible_clause(policy, user)

    def scoped(q: Any) -> Any:
        return q if visible is None else q.where(visible)

    counts = {}
    for name in (Status.PENDING, Status.APPROVED, Status.DENIED, Status.ACTIVE):
        q = select(func.count()).select_from(AccessRequest).where(status_clause(name, now))
        counts[str(name)] = int(session.execute(scoped(q)).scalar_one())

    start_day = (now - timedelta(days=window_days - 1)).date()
    since = datetime.combine(start_day, datetime.min.time(), tzinfo=now.tzinfo)
    days = [start_day + timedelta(days=i) for i in range(window_days)]
    per_day = {o: [0] * window_days for o in OUTCOMES}
    waits: list[float] = []
    buckets = Counter[str]()
    automatic = human = 0
    resources = Counter[str]()
    rows = select(AccessRequest.created_at, AccessRequest.decided_at, AccessRequest.status,
               AccessRequest.rule, AccessRequest.resource,
               AccessRequest.grant_id).where(AccessRequest.created_at >= since)
    for created, decided, status, rule, resource, grant_id in session.execute(scoped(rows)):
        day = (created.date() - start_day).days
        if 0 <= day < window_days:
            per_day[_outcome(status, grant_id is not None)][day] += 1
        resources[resource] += 1
        if rule in AUTOMATIC_RULES:
            automatic += 1
        elif decided is not None:
            human += 1
            wait = (decided - created).total_seconds()
            waits.append(wait)
            for label, bound in BUCKETS:
                if bound is None or wait < bound:
                    buckets[label] += 1
                    break
    waits.sort()
    median = waits[len(waits) // 2] if waits else None
    return Overview(
        counts=counts, days=days, per_day=per_day,
        decision_buckets=[(label, buckets[label]) for label, _ in BUCKETS],
        median_decision=median, top_resources=resources.most_common(5),
        automatic=automatic, human=human, window_days=window_days,
    )
