"""The reports page: pick a report, download it (auditors and admins).

The download is a POST with the page's CSRF token: generating a report writes a ledger
event (and may sign a checkpoint), so another site must not be able to cause it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from accord.api.deps import db, state
from accord.db import end_read
from accord.errors import Forbidden, Invalid
from accord.ledger import service as ledger
from accord.ledger.events import EventType
from accord.ledger.models import LedgerEntry
from accord.reports.schemas import FORMATS, KINDS
from accord.reports.views import respond
from accord.state import AppState
from accord.web.auth import Viewer, check_csrf, require_viewer
from accord.web.render import page

router = APIRouter(include_in_schema=False)


def _reader(request: Request, session: Session, st: AppState) -> Viewer:
    viewer = require_viewer(request, session, st)
    if not viewer.principal.can_read_all:
        raise Forbidden("reports need the Accord auditor or admin role")
    return viewer


def _recent(session: Session, limit: int = 10) -> list[tuple[int, dict[str, Any]]]:
    q = ledger.query_events(type=str(EventType.REPORT_GENERATED))
    q = q.order_by(None).order_by(LedgerEntry.idx.desc()).limit(limit)
    return [(int(e.idx or 0), ledger.decode(e)) for e in session.execute(q).scalars()]


def _form_page(request: Request, session: Session, st: AppState, viewer: Viewer,
               form: dict[str, str], *, error: str | None = None,
               status: int = 200) -> HTMLResponse:
    policy = viewer.principal.policy
    recent = _recent(session)
    end_read(session)
    return page(request, "reports.html", viewer, status=status, form=form, error=error,
                kinds=KINDS, formats=FORMATS, resources=sorted(policy.resources),
                users=sorted(policy.users), recent=recent)


@router.get("/reports", response_class=HTMLResponse)
def reports_page(request: Request, session: Session = Depends(db),
                 st: AppState = Depends(state)) -> HTMLResponse:
    viewer = _reader(request, session, st)
    today = st.now().date()
    form = {"kind": "access", "start": (today - timedelta(days=90)).isoformat(),
            "end": (today + timedelta(days=1)).isoformat(), "resource": "", "user": "",
            "format": "pdf"}
    return _form_page(request, session, st, viewer, form)


@router.post("/reports")
def download_report(request: Request, kind: str = Form("access"), start: str = Form(""),
                    end: str = Form(""), resource: str = Form(""), user: str = Form(""),
                    format: str = Form("pdf"), csrf: str = Form(""),
                    session: Session = Depends(db), st: AppState = Depends(state)) -> Response:
    viewer = _reader(request, session, st)
    check_csrf(request, csrf, viewer.csrf)
    form = {"kind": kind, "start": start, "end": end, "resource": resource, "user": user,
            "format": format}
    try:
        if kind == "access":
            return respond(st, viewer.principal, session, "access", start=start or None,
                           end=end or None, fmt=format, resource=resource or None)
        if kind == "user":
            if not user:
                raise Invalid("choose a user", field="user")
            return respond(st, viewer.principal, session, "user", start=start or None,
                           end=end or None, fmt=format, user=user)
        if kind == "resource":
            if not resource:
                raise Invalid("choose a resource", field="resource")
            return respond(st, viewer.principal, session, "resource", start=start or None,
                           end=end or None, fmt=format, resource=resource)
        raise Invalid(f"must be one of {', '.join(KINDS)}", field="kind")
    except Invalid as exc:
        with st.sessions() as fresh:
            return _form_page(request, fresh, st, viewer, form, status=422,
                              error=f"{exc.field}: {exc.detail}" if exc.field else exc.detail)
