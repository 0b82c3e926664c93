"""Admin API: reload accord.yaml."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from sqlalchemy.orm import Session

from accord.api.deps import Principal, db, require_admin, state
from accord.requests import reload as reloader
from accord.state import AppState

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


@router.post("/reload")
def reload(
    who: Principal = Depends(require_admin),
    session: Session = Depends(db),
    st: AppState = Depends(state),
) -> dict[str, Any]:
    """Re-read accord.yaml. A broken file is refused with every error; the running policy stays."""
    result = reloader.reload(session, store=st.policies, actor=who.caller.actor, now=st.now())
    session.commit()
    reloader.install_after_commit(st.policies, result)
    return {k: v for k, v in result.items() if k != "policy"}
