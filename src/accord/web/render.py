"""What every dashboard page shares: the template environment, `page()` that renders one,
`back_to()` that redirects after a form, and the HTML error page.

The page modules (`pages.py`, `review_pages.py`, `report_pages.py`) build on it; it knows
none of them.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from accord.db import readonly_sessions
from accord.detect import service as detect
from accord.durations import format_duration, span
from accord.identity import sessions
from accord.ledger.models import LedgerCheckpoint, LedgerEntry
from accord.state import AppState
from accord.web import flash
from accord.web.auth import PRE_COOKIE, Viewer, viewer_of

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
# Event data as people read it: indented, non-ASCII and quotes as they are (Jinja's
# autoescape still escapes it for HTML); `tojson` would show \u0027 for every apostrophe.
templates.env.filters["pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False,
                                                        sort_keys=False)
templates.env.globals["format_duration_seconds"] = \
    lambda s: format_duration(timedelta(seconds=int(s)))

MESSAGES = {  # what a redirect after a successful form says (never text from the URL)
    "approve": "Approved.", "deny": "Denied.", "cancel": "Request withdrawn.",
    "relinquish": "Access given up.", "revoke": "Access revoked.",
    "extend": "Extension requested.", "created": "Request filed.",
    "acknowledge": "Alert acknowledged.", "resolve": "Alert resolved.",
    "review": "Review recorded.", "end": "Session ended.",
}


def _ago(value: datetime | None, now: datetime) -> str:
    if value is None:
        return ""
    seconds = int((now - value).total_seconds())
    if seconds < 0:  # time left: two units, never rounded up (1h29m59s is "in 1h29m")
        return "in " + span(timedelta(seconds=-seconds))
    if seconds < 60:
        return "just now"
    return span(timedelta(seconds=seconds)) + " ago"


def ledger_stamp(session: Session) -> str:
    """Where the ledger stands: its newest entry (pending ones included) and the size of
    its newest checkpoint (a new signature turns "awaiting checkpoint" badges into
    "verified" ones). Both are index lookups."""
    entries = session.execute(select(func.max(LedgerEntry.id))).scalar_one()
    signed = session.execute(select(func.max(LedgerCheckpoint.size))).scalar_one()
    return f"{entries or 0}.{signed or 0}"


def _stamp(st: AppState) -> str:
    with readonly_sessions(st.sessions)() as s:
        return ledger_stamp(s)


async def stamp_page(request: Request) -> None:
    """Dependency of the page routers: the ledger's stamp, read before the handler reads
    what the page shows. The page hands it to its live stream (`/live?seen=`), which
    reports any change made after it, also one made before the browser connected. A live
    refresh (`X-Accord-Live`) swaps regions only, not the stream's source: it needs none."""
    if request.method == "GET" and not request.headers.get("x-accord-live"):
        request.state.ledger_seen = await run_in_threadpool(_stamp, request.app.state.accord)


def page(request: Request, name: str, viewer: Viewer | None, *, status: int = 200,
         **ctx: Any) -> HTMLResponse:
    """Render template `name` with what every page shows (who, the flash, alarms)."""
    st: AppState = request.app.state.accord
    now = st.now()
    alarms: list[dict[str, Any]] = []
    if viewer is not None and viewer.principal.can_read_all:
        # Until resolved, everyone who answers for the evidence sees it on every page.
        with readonly_sessions(st.sessions)() as s:
            alarms = [{"id": a.id, "title": a.title}
                      for a in detect.unresolved(s, rule="ledger_integrity")]
    said = flash.take(request, st.secrets, binding=_binding(request, viewer))
    ctx.update(request=request, viewer=viewer, now=now, ago=lambda v: _ago(v, now),
               ledger_seen=getattr(request.state, "ledger_seen", ""),
               integrity_alarms=alarms,
               csrf=viewer.csrf if viewer else "",
               roles=sorted(viewer.principal.roles - {"requester"}) if viewer else [],
               message=(said.text if said and not said.error else
                        None if said else MESSAGES.get(request.query_params.get("done", ""))),
               flash_error=said.text if said and said.error else None,
               refill=said.form if said else {}, refill_for=said.target if said else "")
    response = templates.TemplateResponse(request, name, ctx, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    if request.cookies.get(flash.COOKIE):
        response.delete_cookie(flash.COOKIE, path="/")  # said once
    return response


def back_to(request: Request, viewer: Viewer, target: str, text: str, *, error: bool = False,
            form: dict[str, str] | None = None, form_name: str = "") -> RedirectResponse:
    """Redirect (303) to `target` saying `text` there: after a post the person is always
    on a page they can reload, with the outcome or the refusal in words."""
    response = RedirectResponse(target, status_code=303)
    st: AppState = request.app.state.accord
    flash.put(response, request, st.secrets, binding=f"session:{viewer.session_id}",
              flash=flash.Flash(text=text, error=error, form=form or {}, target=form_name))
    return response


def _binding(request: Request, viewer: Viewer | None) -> str | None:
    """Whose flash a page may show: the session's, or before sign-in the login form's."""
    if viewer is not None:
        return f"session:{viewer.session_id}"
    pre = request.cookies.get(PRE_COOKIE)
    return f"pre:{pre}" if pre else None


def error_page(request: Request, status: int, title: str, detail: str) -> HTMLResponse:
    """The HTML error page, as the signed-in viewer (if any) would see any page."""
    st: AppState | None = getattr(request.app.state, "accord", None)
    viewer = None
    if st is not None and request.cookies.get(sessions.COOKIE):
        try:
            with st.sessions() as s:
                viewer = viewer_of(request, s, st)
        except Exception:  # an error page must render even when the database is down
            viewer = None
    return page(request, "error.html", viewer, status=status, title=title, detail=detail)
