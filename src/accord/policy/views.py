"""Admin API: reload accord.yaml."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from sqlalchemy.orm import Session

from accord.api.deps import Principal, db, require_admin, state
from accord.api.problems import problem
from accord.requests import policy_tests
from accord.requests import reload as reloader
from accord.state import AppState

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


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
