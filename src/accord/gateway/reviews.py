"""One-statement reviews, whatever the protocol: what the gateway does when a `review`
guardrail holds a statement (on a database thread, one transaction): run it on an
approval of exactly it, or refuse it naming the request that reviews it
(`requests.statements.claim_or_file`), and the words the client gets either way."""

from __future__ import annotations

import logging
from datetime import timedelta

from accord.db import transaction
from accord.durations import format_duration
from accord.gateway.records import SessionInfo
from accord.gateway.rules import ReviewAsk, ReviewDecision
from accord.requests import statements
from accord.spec.guardrails import DEFAULT_REVIEW_WINDOW
from accord.state import AppState

log = logging.getLogger("accord.gateway")


def decide(st: AppState, info: SessionInfo, ask: ReviewAsk, *, redact: bool) -> ReviewDecision:
    """The decision for a held statement (never raises: a failure refuses it)."""
    try:
        text = ask.text.decode("utf-8")
    except UnicodeDecodeError:
        return ReviewDecision(False, None, "Accord gateway: a statement that is not UTF-8 "
                              "cannot be reviewed", outcome="refused")
    policy = st.policies.current
    spec = policy.resources.get(info.resource)
    window = spec.gateway.review_window if spec is not None and spec.gateway is not None \
        else DEFAULT_REVIEW_WINDOW
    params = list(ask.params) if ask.params is not None else None
    held = statements.Held(
        user=info.user, grant_id=info.grant_id, resource=info.resource, role=info.role,
        session=info.id, protocol=ask.protocol, text=text,
        params=None if redact else params, param_count=len(params or ()), sha256=ask.hash,
        rule=ask.rule, message=ask.message)
    try:
        with transaction(st.sessions) as s:
            verdict = statements.claim_or_file(s, policy=policy, held=held, window=window,
                                               now=st.now())
    except Exception:
        log.exception("gateway: session %s: the review of a statement failed", info.id)
        return ReviewDecision(False, None, "Accord gateway: this statement needs a review, "
                              "and the review could not be checked now; try again",
                              outcome="error")
    return words(verdict, ask, info, window.total_seconds())


def words(v: statements.Verdict, ask: ReviewAsk, info: SessionInfo,
          window_seconds: float) -> ReviewDecision:
    """What the client is told about a verdict."""
    rule = f"guardrail {ask.rule}" + (f": {ask.message}" if ask.message else "")
    if v.run:
        return ReviewDecision(True, v.request_id, "", outcome="executed")
    earlier = ""
    if v.earlier is not None:
        earlier = (f"request {v.earlier} approved this statement once and it already ran; "
                   if v.earlier_reason == "already_executed" else
                   f"request {v.earlier} approved this statement, but its window to run it "
                   f"ended; ")
    run = (f"once approved, send exactly the same statement again within "
           f"{_window(window_seconds)} of the approval, or run: accord exec {v.request_id}")
    if v.outcome == "pending":
        return ReviewDecision(
            False, v.request_id, f"Accord gateway: this statement waits for approval in "
            f"request {v.request_id} ({rule})", detail=f"{earlier}request {v.request_id}: "
            f"the statement runs once after approval", hint=run, outcome="pending")
    if v.outcome == "filed":
        return ReviewDecision(
            False, v.request_id, f"Accord gateway: this statement needs approval; filed "
            f"request {v.request_id} ({rule})", detail=f"{earlier}request {v.request_id} "
            f"asks for this statement to run once", hint=run, outcome="filed")
    if v.outcome == "denied":
        return ReviewDecision(
            False, v.request_id, f"Accord gateway: request {v.request_id} for this statement "
            f"was denied ({rule})", detail=f"{earlier}{v.why}", outcome="denied")
    return ReviewDecision(
        False, None, f"Accord gateway: this statement needs approval, and no request could "
        f"be filed for it ({rule})", detail=f"{earlier}{v.why}", outcome="refused")


def _window(seconds: float) -> str:
    return format_duration(timedelta(seconds=seconds))
