"""API shapes for access reviews."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from accord.requests.schemas import StrictIn
from accord.reviews.models import ReviewCampaign, ReviewEntry


class StartIn(StrictIn):
    definition: str = Field(min_length=1, max_length=64, examples=["prod-quarterly"],
                            description="the name of a review in accord.yaml (`reviews`)")


class DecisionIn(StrictIn):
    note: str = Field(default="", max_length=2000, examples=["still on the on-call rota"],
                      description="why (required to revoke)")


class Counts(BaseModel):
    total: int
    pending: int
    certified: int
    revoked: int
    expired: int
    mine: int = Field(description="pending entries you decide")


class CampaignOut(BaseModel):
    id: int
    definition: str
    status: str
    trigger: str
    started_by: str
    started_at: datetime
    deadline: datetime
    completed_at: datetime | None
    period_start: datetime
    period_end: datetime
    resources: list[str]
    spec: dict[str, Any]
    counts: Counts

    @classmethod
    def of(cls, camp: ReviewCampaign, counts: dict[str, int]) -> CampaignOut:
        return cls(id=camp.id, definition=camp.definition, status=camp.status,
                   trigger=camp.trigger, started_by=camp.started_by,
                   started_at=camp.started_at, deadline=camp.deadline,
                   completed_at=camp.completed_at, period_start=camp.period_start,
                   period_end=camp.period_end, resources=list(camp.spec.get("resources", [])),
                   spec=dict(camp.spec), counts=Counts(**counts))


class EntryOut(BaseModel):
    id: int
    campaign_id: int
    user: str
    resource: str
    role: str
    kind: str = Field(description="standing (a live grant at the start) or recurring")
    standing: bool
    period_grants: int = Field(description="grants held during the period under review")
    grant_ids: list[int]
    request_ids: list[int]
    evidence: list[int] = Field(description="ledger indices of the grants' grant.activated")
    reviewers: list[str]
    status: str
    decided_by: str | None
    decided_at: datetime | None
    decided_via: str | None
    note: str
    revoked_grant_ids: list[int]
    can_decide: bool = Field(description="you may certify or revoke it now")

    @classmethod
    def of(cls, e: ReviewEntry, reviewers: list[str], *, viewer: str,
           open_: bool) -> EntryOut:
        return cls(id=e.id, campaign_id=e.campaign_id, user=e.user, resource=e.resource,
                   role=e.role, kind="standing" if e.standing else "recurring",
                   standing=e.standing, period_grants=e.period_grants,
                   grant_ids=list(e.grant_ids), request_ids=list(e.request_ids),
                   evidence=list(e.evidence), reviewers=reviewers, status=e.status,
                   decided_by=e.decided_by, decided_at=e.decided_at,
                   decided_via=e.decided_via, note=e.note,
                   revoked_grant_ids=list(e.revoked_grant_ids),
                   can_decide=open_ and e.status == "pending" and viewer in reviewers
                   and viewer != e.user)


class CampaignDetail(CampaignOut):
    entries: list[EntryOut]
    next_start: datetime | None = Field(
        default=None, description="when the scheduler starts the next campaign of this review")


class CampaignPage(BaseModel):
    items: list[CampaignOut]
    next_cursor: str | None


class DefinitionOut(BaseModel):
    name: str
    description: str
    every: str
    duration: str
    remind_every: str | None
    resources: list[str]
    reviewers: list[str]
    min_grants: int | None
    next_start: datetime | None
    open_campaign: int | None
