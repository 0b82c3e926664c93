"""Policy API: reload accord.yaml (admins); replay a candidate policy (auditors, admins)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from accord.api.deps import Principal, db, require_admin, require_reader, state
from accord.api.problems import problem
from accord.db import reading, readonly_sessions
from accord.durations import DurationError, parse_duration
from accord.errors import Invalid
from accord.policy.engine import Policy
from accord.requests import policy_tests
from accord.requests import reload as reloader
from accord.requests import replay as replaying
from accord.spec.load import PolicyError, parse_policy_text
from accord.state import AppState

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])
replay_router = APIRouter(prefix="/api/v1/policy", tags=["policy"])


@router.post("/reload")
def reload(
    who: Principal = Depends(require_admin),
    session: Session = Depends(db),
    st: AppState = Depends(state),
) -> Any:
    """Re-read accord.yaml. A broken file is refused with every error, a policy whose own
    tests fail (409, naming the failing cases) too: the running policy stays."""
    try:
        result = reloader.reload(session, store=st.policies, actor=who.caller.actor,
                                 now=st.now())
    except policy_tests.PolicyTestsFailed as exc:
        session.rollback()
        policy_tests.record_refusal(session, exc=exc, actor=who.caller.actor)
        session.commit()
        return problem(exc.status, exc.detail, slug="policy-tests-failed",
                       title="Policy tests failed", instance="/api/v1/admin/reload",
                       version=exc.version, tests=exc.report.files,
                       failed_cases=[r.name for r in exc.report.failed])
    session.commit()
    reloader.install_after_commit(st.policies, result)
    return {k: v for k, v in result.items() if k != "policy"}


class ReplayIn(BaseModel):
    candidate: str = Field(description="the candidate accord.yaml, as text")
    since: str = Field("30d", description="the window: requests filed this long before now")
    name: str = Field("candidate.yaml", max_length=200,
                      description="what to call the candidate in errors and the report")


@replay_router.post("/replay")
def replay(
    body: ReplayIn,
    who: Principal = Depends(require_reader),
    st: AppState = Depends(state),
) -> Any:
    """Replay the requests filed in a window under a candidate policy: those whose outcome,
    workflow, rule or approvers would change, counted by kind (`accord policy replay` over
    the API). Reads only; nothing is loaded. A candidate that does not load is a 422 with
    every problem in `errors`; rules that cannot be evaluated on recorded requests are
    listed in the report's `errors`. For auditors and admins."""
    try:
        window = parse_duration(body.since)
    except DurationError as exc:
        raise Invalid(str(exc), field="since") from None
    try:
        loaded = parse_policy_text(body.candidate, body.name)
    except PolicyError as exc:
        return problem(422, f"{body.name} does not load: " + "; ".join(map(str, exc.problems)),
                       slug="validation", title="Invalid request",
                       instance="/api/v1/policy/replay",
                       errors=[{"loc": p.path, "msg": p.message} for p in exc.problems])
    until = st.now()
    with reading(), readonly_sessions(st.sessions)() as session:
        try:
            candidate = Policy(loaded, st.policies.directory(session))
            report = replaying.replay(session, candidate, since=until - window, until=until)
        finally:
            session.rollback()
    return report.as_dict()
