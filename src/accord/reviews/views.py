"""HTTP API for access reviews. Each handler is one unit of work and commits it.

`GET /api/v1/reviews` (admins and auditors see every campaign, reviewers theirs),
`GET /api/v1/reviews/definitions`, `GET /api/v1/reviews/{id}` (entries with status),
`POST /api/v1/reviews` {definition} (admins start one now),
`POST /api/v1/reviews/{id}/entries/{entry_id}/certify|revoke` {note},
`GET /api/v1/reviews/{id}/report?format=json|csv|html` (auditors and admins).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.api import openapi
from accord.api.deps import (
    Principal,
    db,
    known_id,
    parse_cursor,
    principal,
    require_admin,
    require_reader,
    state,
)
from accord.api.headers import DOCUMENT_POLICY
from accord.durations import format_duration
from accord.errors import Invalid, NotFound
from accord.reviews import report, service
from accord.reviews.models import CampaignStatus, EntryStatus, ReviewCampaign
from accord.reviews.schemas import (
    CampaignDetail,
    CampaignOut,
    CampaignPage,
    DecisionIn,
    DefinitionOut,
    EntryOut,
    StartIn,
)
from accord.state import AppState

router = APIRouter(prefix="/api/v1/reviews", tags=["reviews"])


def _json(model: Any, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")


def detail(session: Session, who: Principal, camp: ReviewCampaign, now: datetime, *,
           status: str | None = None, mine: bool = False) -> CampaignDetail:
    """A campaign with the entries `who` may see (shared with the web pages)."""
    rows = service.entries(session, policy=who.policy, user=who.user, camp=camp,
                           status=status, mine=mine)
    people = service.reviewers_of(session, entry_ids=[e.id for e in rows])
    open_ = camp.status == CampaignStatus.OPEN and now < camp.deadline
    tally = service.counts(session, campaign_ids=[camp.id], user=who.user)[camp.id]
    base = CampaignOut.of(camp, tally)
    return CampaignDetail(
        **base.model_dump(),
        entries=[EntryOut.of(e, people[e.id], viewer=who.user, open_=open_) for e in rows],
        next_start=service.next_start(session, name=camp.definition))


@router.get("", response_model=CampaignPage)
def list_reviews(
    who: Principal = Depends(principal),
    session: Session = Depends(db),
    status: CampaignStatus | None = None,
    definition: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> CampaignPage:
    """Review campaigns, newest first: all for admins and auditors, else those you review."""
    rows = service.list_campaigns(session, policy=who.policy, user=who.user, status=status,
                                  definition=definition, before_id=parse_cursor(cursor),
                                  limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    tally = service.counts(session, campaign_ids=[c.id for c in rows], user=who.user)
    return CampaignPage(items=[CampaignOut.of(c, tally[c.id]) for c in rows],
                        next_cursor=str(rows[-1].id) if more and rows else None)


@router.get("/definitions", response_model=list[DefinitionOut])
def list_definitions(who: Principal = Depends(require_reader),
                     session: Session = Depends(db)) -> list[DefinitionOut]:
    """The reviews in accord.yaml, when each next starts and which campaign is open."""
    out = []
    for name, spec in sorted(service.definitions(who.policy).items()):
        resources, _errors = service.covered(who.policy, spec)
        running = session.execute(
            select(ReviewCampaign.id).where(ReviewCampaign.definition == name,
                                            ReviewCampaign.status == CampaignStatus.OPEN)
        ).scalar_one_or_none()
        out.append(DefinitionOut(
            name=name, description=spec.description, every=format_duration(spec.every),
            duration=format_duration(spec.duration),
            remind_every=format_duration(spec.remind_every) if spec.remind_every else None,
            resources=resources, reviewers=list(spec.reviewers),
            min_grants=spec.recurring.min_grants if spec.recurring else None,
            next_start=service.next_start(session, name=name), open_campaign=running))
    return out


@router.post("", status_code=201, response_model=CampaignDetail)
def start_review(body: StartIn, who: Principal = Depends(require_admin),
                 session: Session = Depends(db), st: AppState = Depends(state)) -> Response:
    """Start a campaign of a review definition now (admins). 409 while one is open."""
    now = st.now()
    camp = service.start(session, policy=who.policy, name=body.definition,
                         actor=who.caller.actor, now=now)
    out = detail(session, who, camp, now)
    session.commit()
    return _json(out, 201)


@router.get("/{campaign_id}", response_model=CampaignDetail)
def get_review(
    campaign_id: int,
    who: Principal = Depends(principal),
    session: Session = Depends(db),
    st: AppState = Depends(state),
    status: EntryStatus | None = None,
    mine: Annotated[bool, Query(description="only entries you review")] = False,
) -> CampaignDetail:
    """A campaign and its entries (admins and auditors: all; reviewers: theirs)."""
    camp = service.get_campaign(session, policy=who.policy, user=who.user,
                                campaign_id=known_id(campaign_id, "review"))
    return detail(session, who, camp, st.now(), status=status, mine=mine)


def _decision(verb: str) -> None:
    def handler(
        campaign_id: int,
        entry_id: int,
        body: Annotated[DecisionIn | None, Body()] = None,
        who: Principal = Depends(principal),
        session: Session = Depends(db),
        st: AppState = Depends(state),
    ) -> Response:
        now = st.now()
        try:
            entry = service.decide(session, policy=who.policy, caller=who.caller,
                                   campaign_id=known_id(campaign_id, "review"),
                                   entry_id=known_id(entry_id, "entry"), decision=verb,
                                   note=body.note if body else "", now=now)
        except service.SelfReview as exc:
            session.rollback()
            service.record_self_review(session, exc=exc, caller=who.caller, now=now)
            session.commit()
            raise
        people = service.reviewers_of(session, entry_ids=[entry.id])[entry.id]
        out = EntryOut.of(entry, people, viewer=who.user, open_=False)
        session.commit()
        return _json(out)

    handler.__name__ = f"{verb}_entry"
    handler.__doc__ = ("Keep this access (the entry's reviewers; never your own)."
                       if verb == "certify" else
                       "Take this access away: ends the user's live grants of the resource "
                       "and role, deprovisioning the target (a note is required).")
    router.post("/{campaign_id}/entries/{entry_id}/" + verb, response_model=EntryOut)(handler)


_decision("certify")
_decision("revoke")


@router.get("/{campaign_id}/report", responses=openapi.files(
    "The completion report, in the format asked for", report.MEDIA_TYPES.values()))
def review_report(
    campaign_id: int,
    who: Principal = Depends(require_reader),
    session: Session = Depends(db),
    st: AppState = Depends(state),
    fmt: Annotated[str, Query(alias="format", description="json | csv | html",
                              json_schema_extra={"enum": list(report.FORMATS)})] = "json",
) -> Response:
    """The completion report: every entry, its decision (who, when, note), revocations,
    expired entries and the ledger index range, checked against the ledger (auditors and
    admins)."""
    if fmt not in report.FORMATS:
        raise Invalid(f"must be one of {', '.join(report.FORMATS)}", field="format")
    camp = session.get(ReviewCampaign, known_id(campaign_id, "review"))
    if camp is None:
        raise NotFound(f"review {campaign_id} does not exist")
    data = report.build(session, camp=camp, now=st.now())
    name = f"review-{camp.definition}-{camp.id}.{fmt}"
    return Response(report.render(data, fmt), media_type=report.MEDIA_TYPES[fmt],
                    headers={"Content-Disposition": f'attachment; filename="{name}"',
                             "Cache-Control": "no-store",
                             "Content-Security-Policy": DOCUMENT_POLICY})
