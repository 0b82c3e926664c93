"""HTTP API for access requests. Each handler is one unit of work and commits it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Response
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.api.deps import Principal, db, known_id, parse_cursor, principal, state
from accord.detect import service as detect
from accord.durations import parse_duration
from accord.errors import AccordError, Forbidden, Invalid
from accord.grants.models import Grant
from accord.requests import explain as explaining
from accord.requests import service
from accord.requests.models import AccessRequest, Status
from accord.requests.schemas import CommentIn, ExtendIn, RequestCreate, RequestOut, ReviewIn
from accord.state import AppState

router = APIRouter(prefix="/api/v1/requests", tags=["requests"])


class RequestPage(BaseModel):
    items: list[RequestOut]
    next_cursor: str | None


def _json(model: BaseModel, status: int = 200) -> Any:
    # Already validated while building it: skip FastAPI's second pass over the response.
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")


def render(session: Session, reqs: list[AccessRequest], now: datetime) -> list[RequestOut]:
    grant_ids = {r.grant_id for r in reqs if r.grant_id}
    grants: dict[int, Grant] = {}
    if len(grant_ids) == 1:  # usually already in the session: no query
        g = session.get(Grant, next(iter(grant_ids)))
        grants = {g.id: g} if g else {}
    elif grant_ids:
        q = select(Grant).where(Grant.id.in_(grant_ids))
        grants = {g.id: g for g in session.execute(q).scalars()}
    pending = [r.id for r in reqs if r.status == Status.PENDING or r.plan.get("steps")]
    eligible = service.step_approvers(session, pending)
    out = []
    for r in reqs:
        g = grants.get(r.grant_id) if r.grant_id else None
        out.append(
            RequestOut.of(r, status=service.effective_status(r, g, now), grant=g,
                          eligible=eligible.get(r.id, {}), now=now)
        )
    return out


@router.post("", status_code=201, response_model=RequestOut)
def create_request(
    body: RequestCreate,
    who: Principal = Depends(principal),
    session: Session = Depends(db),
    st: AppState = Depends(state),
) -> Any:
    """Ask for access for yourself. The response tells whether it is pending, active or denied."""
    now = st.now()
    req = service.create(
        session, policy=who.policy, caller=who.caller, resource=body.resource, role=body.role,
        duration=body.timedelta, reason=body.reason, now=now, emergency=body.emergency,
    )
    out = render(session, [req], now)[0]
    session.commit()
    return _json(out, 201)


@router.get("", response_model=RequestPage)
def list_requests(
    who: Principal = Depends(principal),
    session: Session = Depends(db),
    st: AppState = Depends(state),
    status: Annotated[Status | None, Query()] = None,
    resource: str | None = None,
    requester: str | None = None,
    role: str | None = None,
    awaiting: Annotated[str | None, Query(description="'me': pending on my decision",
                                          json_schema_extra={"enum": ["me"]})] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> RequestPage:
    """Requests you may see, newest first."""
    if awaiting not in (None, "me"):
        raise Invalid("only 'me' is supported", field="awaiting")
    now = st.now()
    reqs = service.list_requests(
        session, policy=who.policy, user=who.user, now=now, status=status, resource=resource,
        requester=requester, role=role, awaiting_me=awaiting == "me",
        before_id=parse_cursor(cursor), limit=limit + 1,
    )
    more = len(reqs) > limit
    reqs = reqs[:limit]
    return RequestPage(
        items=render(session, reqs, now),
        next_cursor=str(reqs[-1].id) if more and reqs else None,
    )


@router.get("/{request_id}", response_model=RequestOut)
def get_request(
    request_id: int,
    who: Principal = Depends(principal),
    session: Session = Depends(db),
    st: AppState = Depends(state),
) -> RequestOut:
    now = st.now()
    req = service.get_request(session, policy=who.policy, user=who.user,
                              request_id=known_id(request_id, "request"))
    return render(session, [req], now)[0]


@router.get("/{request_id}/explain")
def explain_request(
    request_id: int,
    who: Principal = Depends(principal),
    session: Session = Depends(db),
    st: AppState = Depends(state),
) -> Any:
    """Why the request was decided as it was: its decision reproduced under the policy
    version that made it, from the inputs the ledger recorded, with each workflow's match,
    each rule evaluated with its inputs, the steps and eligible people. `mismatch` lists
    every way the reproduction differs from the record (empty: reproduced). For the
    requester, admins and auditors."""
    req = service.get_request(session, policy=who.policy, user=who.user,
                              request_id=known_id(request_id, "request"))
    if not explaining.may_explain(who.policy, who.user, req):
        raise Forbidden("a request's explanation is for its requester, admins and auditors")
    return explaining.explain(session, req=req, directory=st.policies.directory(session),
                              in_force=who.policy.version)


def _command(name: str, fn: service.Command, summary: str) -> None:
    def handler(
        request_id: int,
        body: Annotated[CommentIn | None, Body()] = None,
        who: Principal = Depends(principal),
        session: Session = Depends(db),
        st: AppState = Depends(state),
    ) -> Any:
        now = st.now()
        try:
            req = fn(session, policy=who.policy, caller=who.caller,
                     request_id=known_id(request_id, "request"),
                     comment=body.comment if body else "", now=now)
        except AccordError as exc:
            service.after_refusal(session, exc=exc, caller=who.caller, now=now)
            session.commit()
            raise
        out = render(session, [req], now)[0]
        session.commit()
        return _json(out)

    handler.__name__ = f"{name}_request"
    handler.__doc__ = summary
    router.post(f"/{{request_id}}/{name}", response_model=RequestOut)(handler)


_command("approve", service.approve,
         "Approve the current step (eligible approvers only; never your own request).")
_command("deny", service.deny, "Deny the request (eligible approvers of the current step).")
_command("cancel", service.cancel, "Withdraw your own pending request.")
_command("relinquish", service.relinquish, "Give up your active access early.")
_command("revoke", service.revoke, "End active access (approvers of the resource, admins).")


@router.post("/{request_id}/extend", status_code=201, response_model=RequestOut)
def extend_request(
    request_id: int,
    body: ExtendIn,
    who: Principal = Depends(principal),
    session: Session = Depends(db),
    st: AppState = Depends(state),
) -> Any:
    """Ask for more time on your active grant: a new request through the same workflows."""
    now = st.now()
    req = service.extend(
        session, policy=who.policy, caller=who.caller,
        request_id=known_id(request_id, "request"), duration=parse_duration(body.duration),
        reason=body.reason, now=now,
    )
    out = render(session, [req], now)[0]
    session.commit()
    return _json(out, 201)


@router.post("/{request_id}/review", response_model=RequestOut)
def review_request(
    request_id: int,
    body: ReviewIn,
    who: Principal = Depends(principal),
    session: Session = Depends(db),
    st: AppState = Depends(state),
) -> Any:
    """Review a break-glass request after the fact (the `break_glass.reviewers` groups).
    `unjustified` ends access still running; either verdict resolves its alert."""
    now = st.now()
    req = detect.review_break_glass(session, policy=who.policy, caller=who.caller,
                                    request_id=known_id(request_id, "request"),
                                    verdict=body.verdict, note=body.note, now=now)
    out = render(session, [req], now)[0]
    session.commit()
    return _json(out)
