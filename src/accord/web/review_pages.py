"""The access review pages: the campaigns you may see, and a campaign's entries with
certify / revoke forms. The same services as the API, so the same checks and ledger
events; only `via` says "web".

Include with `app.include_router(review_pages.router)` (see docs/reviews.md).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.api.deps import db, state
from accord.api.headers import DOCUMENT_POLICY
from accord.db import end_read
from accord.errors import AccordError, Forbidden, Invalid, NotFound
from accord.reviews import report, service
from accord.reviews.models import CampaignStatus, ReviewCampaign
from accord.reviews.schemas import CampaignOut
from accord.reviews.views import detail
from accord.state import AppState
from accord.web.auth import Viewer, check_csrf, require_viewer
from accord.web.render import back_to, page, stamp_page

router = APIRouter(include_in_schema=False, dependencies=[Depends(stamp_page)])
PAGE = 25
FLASH = {"review-certify": "Access certified.",
         "review-revoke": "Access revoked; its grants are ended and the target deprovisioned.",
         "review-start": "Review started."}
TABS = ("open", "completed", "all")


def _id(value: str, what: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 2**31:
        raise NotFound(f"{what} {value} does not exist")
    return int(value)


@router.get("/reviews", response_class=HTMLResponse)
def reviews_page(request: Request, session: Session = Depends(db),
                 st: AppState = Depends(state)) -> HTMLResponse:
    viewer = require_viewer(request, session, st)
    who = viewer.principal
    status = request.query_params.get("status", "open")
    if status not in TABS:
        raise Invalid(f"status must be one of {', '.join(TABS)}", field="status")
    before = request.query_params.get("before")
    rows = service.list_campaigns(
        session, policy=who.policy, user=who.user,
        status=None if status == "all" else status,
        before_id=_id(before, "page") if before else None, limit=PAGE + 1)
    more = rows[PAGE - 1].id if len(rows) > PAGE else None
    rows = rows[:PAGE]
    tally = service.counts(session, campaign_ids=[c.id for c in rows], user=who.user)
    items = [CampaignOut.of(c, tally[c.id]) for c in rows]
    startable = []
    if who.is_admin:
        running = set(session.execute(select(ReviewCampaign.definition).where(
            ReviewCampaign.status == CampaignStatus.OPEN)).scalars())
        startable = [n for n in sorted(service.definitions(who.policy)) if n not in running]
    end_read(session)
    return page(request, "reviews.html", viewer, items=items, current=status,
                startable=startable, configured=bool(service.definitions(who.policy)),
                flash=FLASH.get(request.query_params.get("done", "")),
                more_url=f"/reviews?status={status}&before={more}" if more else None)


@router.post("/reviews")
def start_review(request: Request, definition: str = Form(""), csrf: str = Form(""),
                 session: Session = Depends(db), st: AppState = Depends(state)) -> Response:
    viewer = require_viewer(request, session, st)
    check_csrf(request, csrf, viewer.csrf)
    try:
        if not viewer.principal.is_admin:
            raise Forbidden("starting a review needs the Accord admin role")
        camp = service.start(session, policy=viewer.principal.policy, name=definition[:64],
                             actor=viewer.principal.caller.actor, now=st.now())
        session.commit()
    except AccordError as exc:
        session.rollback()
        why = f"{exc.field}: {exc.detail}" if exc.field else exc.detail
        return back_to(request, viewer, "/reviews", why, error=True)
    return RedirectResponse(f"/reviews/{camp.id}?done=review-start", status_code=303)


def _printable(text: str) -> str:
    """Free text without control characters (PostgreSQL text cannot hold NUL)."""
    return "".join(ch for ch in text if (ch >= " " or ch in "\t\n\r") and ch != "\x7f")


def _campaign_page(request: Request, session: Session, st: AppState, viewer: Viewer,
                   campaign_id: int, *, error: str | None = None,
                   status: int = 200) -> HTMLResponse:
    who = viewer.principal
    camp = service.get_campaign(session, policy=who.policy, user=who.user,
                                campaign_id=campaign_id)
    mine = request.query_params.get("mine") == "1"
    out = detail(session, who, camp, st.now(), mine=mine)
    end_read(session)
    return page(request, "review.html", viewer, status=status, c=out, mine=mine,
                error=error, flash=FLASH.get(request.query_params.get("done", "")))


@router.get("/reviews/{campaign_id}", response_class=HTMLResponse)
def review_page(request: Request, campaign_id: str, session: Session = Depends(db),
                st: AppState = Depends(state)) -> HTMLResponse:
    viewer = require_viewer(request, session, st)
    return _campaign_page(request, session, st, viewer, _id(campaign_id, "review"))


@router.post("/reviews/{campaign_id}/entries/{entry_id}/{action}")
def decide(request: Request, campaign_id: str, entry_id: str, action: str,
           csrf: str = Form(""), note: str = Form(""), session: Session = Depends(db),
           st: AppState = Depends(state)) -> Response:
    viewer = require_viewer(request, session, st)
    check_csrf(request, csrf, viewer.csrf)
    if action not in service.DECISIONS:
        raise NotFound(f"no such action: {action}")
    cid = _id(campaign_id, "review")
    try:
        service.decide(session, policy=viewer.principal.policy,
                       caller=viewer.principal.caller, campaign_id=cid,
                       entry_id=_id(entry_id, "entry"), decision=action,
                       note=_printable(note)[:2000], now=st.now())
        session.commit()
    except AccordError as exc:  # shown on the campaign's page, which stays as it was
        session.rollback()
        if isinstance(exc, NotFound):
            raise
        if isinstance(exc, service.SelfReview):
            service.record_self_review(session, exc=exc, caller=viewer.principal.caller,
                                       now=st.now())
            session.commit()
        why = f"{exc.field}: {exc.detail}" if exc.field else exc.detail
        # Back to the campaign's page (never left on the post's URL), saying why.
        return back_to(request, viewer, f"/reviews/{cid}#entry-{entry_id}",
                       f"Entry #{entry_id}: {why}", error=True)
    return RedirectResponse(f"/reviews/{cid}?done=review-{action}#entry-{entry_id}",
                            status_code=303)


@router.get("/reviews/{campaign_id}/report")
def review_report(request: Request, campaign_id: str, session: Session = Depends(db),
                  st: AppState = Depends(state)) -> Response:
    viewer = require_viewer(request, session, st)
    if not viewer.principal.can_read_all:
        raise Forbidden("review reports need the Accord auditor or admin role")
    fmt = request.query_params.get("format", "html")
    if fmt not in report.FORMATS:
        raise Invalid(f"must be one of {', '.join(report.FORMATS)}", field="format")
    camp = session.get(ReviewCampaign, _id(campaign_id, "review"))
    if camp is None:
        raise NotFound(f"review {campaign_id} does not exist")
    data = report.build(session, camp=camp, now=st.now())
    end_read(session)
    # The HTML report is shown in the browser: its own <style>, and no script.
    headers = {"Cache-Control": "no-store", "Content-Security-Policy": DOCUMENT_POLICY}
    if fmt != "html":
        headers["Content-Disposition"] = \
            f'attachment; filename="review-{camp.definition}-{camp.id}.{fmt}"'
    return Response(report.render(data, fmt), media_type=report.MEDIA_TYPES[fmt],
                    headers=headers)
