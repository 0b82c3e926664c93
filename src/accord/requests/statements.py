"""Statement reviews: one exact statement a guardrail held for a human, run once.

    statement held ─▶ request (kind statement) ─▶ pending ─▶ approved ─run once─▶ executed
                                                        └▶ denied | cancelled | expired
    approved, not run within the resource's review_window ─▶ expired

The gateway calls `claim_or_file` (in one transaction) when a `review` rule holds a
statement: an approval of exactly that statement (same sha256 of text and parameter
values, same requester, resource and role, within its window, not run yet) is used up
and the statement runs (`request.statement_executed`); otherwise a run of an approval
already used or past its window is refused and recorded on that request
(`request.statement_refused`), and a request is filed (unless one is pending already),
routed like any other (CEL sees `request.kind == "statement"` and `request.statement`).
Every transition writes its ledger event in the caller's transaction; nothing commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.errors import AccordError
from accord.identity.caller import Caller
from accord.ledger import service as ledger
from accord.ledger.events import Actor, EventType, format_time
from accord.policy.engine import Policy
from accord.requests import service
from accord.requests.models import STATEMENT, AccessRequest, StatementReview, Status


@dataclass(frozen=True)
class Held:
    """A statement a review rule held in a gateway session."""

    user: str
    grant_id: int
    resource: str
    role: str
    session: str  # the gateway session's id
    protocol: str
    text: str
    params: list[str | None] | None  # values (None: none, or redacted: see `param_count`)
    param_count: int
    sha256: str
    rule: str
    message: str  # the rule's message (the request's reason)


@dataclass(frozen=True)
class Verdict:
    """`run`: the statement may run now (request `request_id` approved it, now used up).
    Otherwise `outcome` says why not: pending (filed now or earlier), denied, error."""

    run: bool
    request_id: int | None
    outcome: str  # executed | filed | pending | denied | refused
    why: str = ""
    earlier: int | None = None  # a used-up or lapsed approval of the same statement
    earlier_reason: str = ""  # already_executed | window_over


def _record(db: Session, req: AccessRequest, type: EventType, *, actor: Actor,
            now: datetime, **data: Any) -> None:
    """One event about a statement review (as `service._record`: the request's subject)."""
    ledger.record(db, type=type, actor=actor, subject=f"request:{req.id}",
                  resource={"name": req.resource, "role": req.role},
                  data={"request_id": req.id, **data}, time=now)


def _candidates(session: Session, held: Held) -> list[AccessRequest]:
    q = (select(AccessRequest).join(StatementReview)
         .where(AccessRequest.kind == STATEMENT, AccessRequest.requester == held.user,
                AccessRequest.resource == held.resource, AccessRequest.role == held.role,
                StatementReview.sha256 == held.sha256)
         .order_by(AccessRequest.id.desc()).limit(20).with_for_update())
    return list(session.execute(q).scalars())


def claim_or_file(session: Session, *, policy: Policy, held: Held, window: timedelta,
                  now: datetime) -> Verdict:
    """Run a held statement on an approval of exactly it, or say why not (filing a request
    for it when none is pending). One transaction: claiming is atomic across gateways."""
    caller = Caller(held.user, "gateway")
    earlier: AccessRequest | None = None
    for req in _candidates(session, held):
        review = req.statement
        assert review is not None
        status = service.effective_status(req, None, now)
        if status == Status.APPROVED and review.executed_at is None:
            review.executed_at = now
            review.executed_session = held.session
            req.status = Status.EXECUTED
            _record(session, req, EventType.REQUEST_STATEMENT_EXECUTED, actor=caller.actor,
                    now=now, sha256=held.sha256, grant_id=held.grant_id,
                    session=held.session, protocol=held.protocol)
            session.flush()
            return Verdict(True, req.id, "executed")
        if status == Status.PENDING:
            return Verdict(False, req.id, "pending")
        if earlier is None and status in (Status.EXECUTED, Status.EXPIRED) \
                and review.run_by is not None:
            earlier = req
    earlier_reason = ""
    if earlier is not None:
        review = earlier.statement
        assert review is not None
        earlier_reason = "already_executed" if review.executed_at is not None \
            else "window_over"
        if earlier.status == Status.APPROVED:  # lapsed: say so once, in the ledger too
            earlier.status = Status.EXPIRED
            _record(session, earlier, EventType.REQUEST_EXPIRED, actor=caller.actor, now=now,
                    reason="the approved statement was not run within its window")
        _record(session, earlier, EventType.REQUEST_STATEMENT_REFUSED, actor=caller.actor,
                now=now, reason=earlier_reason, sha256=held.sha256, grant_id=held.grant_id,
                session=held.session,
                executed_at=format_time(review.executed_at) if review.executed_at else None,
                run_by=format_time(review.run_by) if review.run_by else None)
    new = StatementReview(
        grant_id=held.grant_id, session=held.session, protocol=held.protocol,
        statement=held.text, params=held.params, param_count=held.param_count,
        sha256=held.sha256, rule=held.rule, window_seconds=int(window.total_seconds()))
    reason = f"guardrail {held.rule}" + (f": {held.message}" if held.message else "")
    try:  # routing refuses before anything is written
        req = service.create(session, policy=policy, caller=caller, resource=held.resource,
                             role=held.role, duration=window, reason=reason, now=now,
                             statement=new)
    except AccordError as exc:  # the policy refuses to route it (no workflow, too long, ...)
        return Verdict(False, None, "refused", exc.detail, earlier.id if earlier else None,
                       earlier_reason)
    if req.status == Status.APPROVED:  # the policy approved it at once: run it now
        return claim_or_file(session, policy=policy, held=held, window=window, now=now)
    outcome = "denied" if req.status == Status.DENIED else "filed"
    return Verdict(False, req.id, outcome, req.decision_reason or "",
                   earlier.id if earlier else None, earlier_reason)
