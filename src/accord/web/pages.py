"""The web dashboard's pages. Each handler is one unit of work, like the API's.

Pages call the same services as the API, so every permission check and every ledger event
is the same whichever way a person acts; only `via` says "web".
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import secrets
import signal
import threading
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from accord.api.deps import db, state
from accord.db import end_read, writing
from accord.detect import service as detect
from accord.directory import oidc as oidc_sync
from accord.directory.service import Change, key
from accord.durations import DurationError, format_duration, parse_duration
from accord.errors import AccordError, Conflict, Forbidden, Invalid, NotFound
from accord.gateway import views as gateway_views
from accord.gateway.protocols import connection_info
from accord.gateway.ssh import views as ssh_views
from accord.grants.models import Grant, GrantStatus
from accord.grants.service import visible_clause as visible_grants
from accord.identity import service as identity
from accord.identity import sessions
from accord.identity.models import ApiToken
from accord.ledger import service as ledger
from accord.ledger.events import EventType
from accord.ledger.models import LedgerEntry
from accord.reports import charts
from accord.requests import explain as explaining
from accord.requests import service as requests
from accord.requests.models import AccessRequest, Status
from accord.requests.schemas import GrantOut
from accord.requests.views import render as render_requests
from accord.state import AppState
from accord.web import evidence, flash, oidc, review_pages, stats
from accord.web.auth import (
    CACHE,
    PRE_COOKIE,
    CsrfRefused,
    LoginRequired,
    Viewer,
    check_csrf,
    login_url,
    require_viewer,
    safe_next,
    viewer_of,
)
from accord.web.render import MESSAGES, back_to, error_page, ledger_stamp, page, stamp_page

HERE = Path(__file__).parent
router = APIRouter(include_in_schema=False, dependencies=[Depends(stamp_page)])
streams = APIRouter(include_in_schema=False)  # /live: it reads the stamp every second itself
STAMP = re.compile(r"\d{1,19}\.\d{1,19}")  # a ledger stamp as `ledger_stamp` writes it
PAGE = 25
STREAM_SECONDS = 60
# Set when this process is asked to stop (SIGINT, SIGTERM): open live streams end within a
# second, before the server's grace period runs out and it cancels them (which uvicorn
# logs as "Exception in ASGI application", a traceback for every page left open).
STOPPING = threading.Event()
ACTIONS = ("approve", "deny", "cancel", "relinquish", "revoke")


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _login_refused(request: Request, st: AppState, text: str, next_url: str) -> Response:
    """Back to the sign-in form (a page that can be reloaded, not the post's URL), saying
    why, for this browser only (bound to its login form's token)."""
    response = RedirectResponse(login_url(safe_next(next_url)), status_code=303)
    pre = request.cookies.get(PRE_COOKIE)
    if pre:
        flash.put(response, request, st.secrets, binding=f"pre:{pre}",
                  flash=flash.Flash(text=text, error=True))
    return response


def _done(target: str, action: str) -> str:
    """`target` with `done=<action>` (replacing an earlier one) for the page after a form."""
    path, _, query = target.partition("?")
    kept = [part for part in query.split("&") if part and not part.startswith("done=")]
    return path + "?" + "&".join([*kept, f"done={action}"])


def _problem(exc: AccordError) -> str:
    return f"{exc.field}: {exc.detail}" if exc.field else exc.detail


def _set_session_cookie(response: Response, request: Request, value: str,
                        ttl: timedelta) -> None:
    response.set_cookie(sessions.COOKIE, value, max_age=math.ceil(ttl.total_seconds()),
                        httponly=True, secure=_secure(request), samesite="lax", path="/")


def _pre_token(request: Request) -> str:
    return request.cookies.get(PRE_COOKIE) or secrets.token_urlsafe(32)


# ---------------------------------------------------------------- login


def _login_page(request: Request, st: AppState, *, error: str | None = None,
                status: int = 200) -> HTMLResponse:
    spec = st.policies.current.loaded.spec.web
    token = _pre_token(request)
    users = sorted(st.policies.current.users) if spec.local_login else []
    response = page(request, "login.html", None, status=status, error=error, pre=token,
                    users=users, web=spec, next=safe_next(request.query_params.get("next")))
    response.set_cookie(PRE_COOKIE, token, httponly=True, secure=_secure(request),
                        samesite="strict", path="/login")
    return response


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, st: AppState = Depends(state)) -> HTMLResponse:
    return _login_page(request, st)


def _check_pre(request: Request, sent: str) -> None:
    check_csrf(request, sent, request.cookies.get(PRE_COOKIE) or secrets.token_urlsafe())


def _logged_in(request: Request, session: Session, st: AppState, *, user: str, method: str,
               next_url: str, details: dict[str, Any] | None = None,
               token: ApiToken | None = None) -> Response:
    ttl, now = st.policies.current.loaded.spec.web.session_ttl, st.now()
    started = sessions.start(session, user=user, method=method, now=now, ttl=ttl,
                             details=details, token=token)
    session.commit()
    response = RedirectResponse(safe_next(next_url), status_code=303)
    # The cookie lasts as long as the session: a token's session may be shorter than the TTL.
    _set_session_cookie(response, request, started.cookie, started.row.expires_at - now)
    response.delete_cookie(PRE_COOKIE, path="/login")
    return response


@router.post("/login/token")
def login_token(request: Request, token: str = Form(""), csrf: str = Form(""),
                next: str = Form("/"), session: Session = Depends(db),
                st: AppState = Depends(state)) -> Response:
    _check_pre(request, csrf)
    if not st.policies.current.loaded.spec.web.token_login:
        raise Forbidden("token login is turned off in accord.yaml (web.token_login)")
    if not token.strip():
        return _login_refused(request, st, "Paste an API token to sign in.", next)
    try:
        row = identity.authenticate(session, policy=st.policies.current, token=token.strip(),
                                    now=st.now())
        if row.kind == identity.AGENT:  # an agent acts through the API and MCP, never here
            raise Forbidden(f'that is a token of agent "{row.user}"; agents do not sign in '
                            "to the web")
    except AccordError as exc:
        session.rollback()
        sessions.refuse(session, user=None, method="token", reason=exc.detail, now=st.now())
        session.commit()
        return _login_refused(request, st, f"That token does not sign you in: {exc.detail}.",
                              next)
    return _logged_in(request, session, st, user=row.user, method="token", next_url=next,
                      details={"token": row.prefix, "token_id": row.id}, token=row)


@router.post("/login/demo")
def login_demo(request: Request, user: str = Form(""), csrf: str = Form(""),
               next: str = Form("/"), session: Session = Depends(db),
               st: AppState = Depends(state)) -> Response:
    _check_pre(request, csrf)
    if not st.policies.current.loaded.spec.web.local_login:
        raise Forbidden("demo login is turned off (web.local_login in accord.yaml)")
    if not st.policies.current.is_user(user):
        return _login_refused(request, st, "Pick one of the listed users.", next)
    return _logged_in(request, session, st, user=user, method="local", next_url=next)


def _provider(request: Request, st: AppState) -> oidc.Provider:
    spec = st.policies.current.loaded.spec.web.oidc
    if spec is None:
        raise NotFound("single sign-on is not configured (web.oidc in accord.yaml)")
    cached: oidc.Provider | None = getattr(request.app.state, "oidc_provider", None)
    if cached is None or cached.spec != spec:
        if cached is not None:
            cached.close()
        cached = oidc.Provider(spec)
        request.app.state.oidc_provider = cached
    return cached


def _callback_url(request: Request) -> str:
    base = str(request.base_url).rstrip("/")
    return base + "/login/oidc/callback"


@router.get("/login/oidc")
def login_oidc(request: Request, st: AppState = Depends(state)) -> Response:
    provider = _provider(request, st)
    try:
        url, flow = oidc.begin(provider, box=st.secrets, redirect_uri=_callback_url(request),
                               next_url=safe_next(request.query_params.get("next")))
    except oidc.OidcError as exc:
        return _login_page(request, st, error=str(exc), status=502)
    response = RedirectResponse(url, status_code=303)
    response.set_cookie(oidc.FLOW_COOKIE, flow, max_age=oidc.FLOW_TTL, httponly=True,
                        secure=_secure(request), samesite="lax", path="/login/oidc")
    return response


@router.get("/login/oidc/callback")
def login_oidc_callback(request: Request, session: Session = Depends(db),
                        st: AppState = Depends(state)) -> Response:
    with writing():  # a GET that records the login (web.login or web.login_refused)
        return _oidc_callback(request, session, st)


def _oidc_callback(request: Request, session: Session, st: AppState) -> Response:
    provider = _provider(request, st)
    q = request.query_params
    spec = provider.spec
    details: dict[str, Any] = {"issuer": spec.issuer}
    user: str | None = None
    synced: Change | None = None
    try:
        if q.get("error"):
            raise oidc.OidcError(f"the identity provider said: {q.get('error')}")
        flow = oidc.open_flow(request.cookies.get(oidc.FLOW_COOKIE), box=st.secrets)
        secret = os.environ.get(spec.client_secret_env) if spec.client_secret_env else None
        who = oidc.finish(provider, flow=flow, code=q.get("code", ""), state=q.get("state", ""),
                          client_secret=secret, now=st.now())
        user = who.username
        details.update(subject=who.subject, groups=who.groups)
        policy = st.policies.current
        if spec.allowed_groups and not set(spec.allowed_groups) & set(who.groups):
            raise oidc.OidcError("your identity provider groups do not allow you to use Accord")
        if policy.loaded.spec.identity.oidc_groups == "sync":
            try:
                synced = oidc_sync.sync(session, store=st.policies, issuer=spec.issuer,
                                        username=who.username, groups=who.groups, now=st.now())
            except AccordError as exc:
                raise oidc.OidcError(exc.detail) from None
            policy, user = synced.policy_now(), key(who.username)
        if not policy.is_user(user):
            raise oidc.OidcError(f'"{who.username}" is not a user in accord.yaml; ask an admin '
                                 "to add you")
    except oidc.OidcError as exc:
        session.rollback()
        sessions.refuse(session, user=user, method="oidc", reason=str(exc), now=st.now(),
                        details=details)
        session.commit()
        refused = _login_page(request, st, error=str(exc), status=401)
        refused.delete_cookie(oidc.FLOW_COOKIE, path="/login/oidc")
        return refused
    response = _logged_in(request, session, st, user=user, method="oidc",
                          next_url=flow["next"], details=details)
    if synced is not None:
        synced.after_commit()
    response.delete_cookie(oidc.FLOW_COOKIE, path="/login/oidc")
    return response


@router.post("/logout")
def logout(request: Request, csrf: str = Form(""), session: Session = Depends(db),
           st: AppState = Depends(state)) -> Response:
    viewer = require_viewer(request, session, st)
    check_csrf(request, csrf, viewer.csrf)
    cookie = request.cookies.get(sessions.COOKIE, "")
    row = sessions.lookup(session, cookie=cookie, now=st.now())
    if row is not None:
        sessions.end(session, row=row, now=st.now())
    session.commit()
    CACHE.forget(sessions.digest(cookie))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(sessions.COOKIE, path="/")
    return response


# ---------------------------------------------------------------- overview


@router.get("/", response_class=HTMLResponse)
def overview(request: Request, session: Session = Depends(db),
             st: AppState = Depends(state)) -> HTMLResponse:
    viewer = require_viewer(request, session, st)
    data = stats.overview(session, policy=viewer.principal.policy, user=viewer.user,
                          now=st.now())
    waiting = requests.list_requests(session, policy=viewer.principal.policy, user=viewer.user,
                                     now=st.now(), awaiting_me=True, limit=100)
    end_read(session)
    labels = [d.strftime("%d %b") for d in data.days]
    return page(
        request, "overview.html", viewer, data=data, waiting=len(waiting),
        per_day_chart=charts.stacked_bars(labels, data.per_day,
                                          title="Requests per day by outcome"),
        decision_chart=charts.hbars(data.decision_buckets,
                                    title="Time to a human decision"),
        resources_chart=charts.hbars(data.top_resources, title="Most requested resources"),
        auto_chart=charts.hbars([("automatic", data.automatic), ("human", data.human)],
                                title="Automatic and human decisions"),
        labels=labels,
    )


# ---------------------------------------------------------------- new request


def _catalog(viewer: Viewer) -> list[dict[str, Any]]:
    policy = viewer.principal.policy
    return [{"name": r.name, "description": r.description, "roles": list(r.roles),
             "labels": dict(r.labels)} for r in sorted(policy.resources.values(),
                                                       key=lambda r: r.name)]


FIELDS = ("resource", "role", "duration", "reason", "emergency", "form")
PROBE = timedelta(minutes=1)  # a duration every workflow accepts, to judge the other fields


def _decide(viewer: Viewer, now: datetime, form: dict[str, str], duration: timedelta
            ) -> Any:
    """The policy's verdict on the form (break-glass or routed); raises Invalid/Forbidden."""
    policy = viewer.principal.policy
    if form.get("emergency") == "on":
        return requests.break_glass(policy, requester=viewer.user, resource=form["resource"],
                                    role=form["role"], duration=duration,
                                    reason=form.get("reason", "")), []
    return requests.route(policy, requester=viewer.user, resource=form["resource"],
                          role=form["role"], duration=duration,
                          reason=form.get("reason", ""), now=now)


def _form_errors(viewer: Viewer, now: datetime, form: dict[str, str]
                 ) -> tuple[dict[str, str], timedelta | None]:
    """Every field's problem at once, judged as the server will judge the request: the
    form shows each next to its field as people type, and a post is refused with all of
    them (not one at a time: a reason the workflow requires is asked for even while the
    duration is also wrong)."""
    errors: dict[str, str] = {}
    reason = form.get("reason", "")
    if not form.get("resource"):
        errors["resource"] = "Choose a resource."
    if not form.get("role"):
        errors["role"] = "Choose a role."
    if any(ord(c) < 32 and c not in "\t\n\r" for c in reason) or len(reason) > 2000:
        errors["reason"] = "Keep the reason under 2000 characters of plain text."
    duration: timedelta | None = None
    try:
        duration = parse_duration(form.get("duration", ""))
    except DurationError as exc:
        errors["duration"] = f"{exc} (for example 30m, 2h, 1h30m)."
    if "resource" in errors or "role" in errors:
        return errors, duration
    # With the duration refused (or unreadable), ask again with one every workflow takes,
    # so the other fields are judged too.
    for attempt in ([duration, PROBE] if duration is not None else [PROBE]):
        try:
            _decide(viewer, now, form, attempt)
        except (Invalid, Forbidden) as exc:
            field = exc.field if exc.field in FIELDS else "form"
            if attempt is PROBE and field == "duration":
                continue
            errors.setdefault(field, exc.detail)
            if field == "duration":
                continue  # and judge the rest with the probe
        break
    return errors, duration


def _preview(viewer: Viewer, now: datetime, form: dict[str, str]) -> dict[str, Any]:
    """Which workflow applies and who will approve; `errors` per field (the script puts
    each beside its field once that field was touched) and an `error` to read here."""
    errors, duration = _form_errors(viewer, now, form)
    if not form.get("resource") or not form.get("role") or not form.get("duration"):
        return {"incomplete": True, "errors": errors}
    if errors or duration is None:
        return {"errors": errors, "error": "; ".join(
            f"{k}: {v}" if k != "form" else v for k, v in errors.items())}
    try:
        decision, eligible = _decide(viewer, now, form, duration)
    except (Invalid, Forbidden) as exc:  # judged above; kept for safety
        return {"errors": {exc.field or "form": exc.detail}, "error": _problem(exc)}
    if form.get("emergency") == "on":
        return {"outcome": "approve", "workflow": "break-glass", "rule": decision.rule,
                "reason": decision.reason, "steps": [], "emergency": True, "errors": {}}
    steps = [{"name": s.name or f"step {i + 1}", "min": s.min_approvals,
              "elevated": s.elevated, "people": sorted(eligible[i])}
             for i, s in enumerate(decision.steps) if i < len(eligible)]
    return {"outcome": decision.outcome, "workflow": decision.workflow, "rule": decision.rule,
            "reason": decision.reason, "steps": steps, "errors": {}}


@router.get("/requests/new", response_class=HTMLResponse)
def new_request(request: Request, session: Session = Depends(db),
                st: AppState = Depends(state)) -> HTMLResponse:
    viewer = require_viewer(request, session, st)
    form = {k: request.query_params.get(k, "") for k in ("resource", "role", "duration",
                                                           "reason")}
    form["duration"] = form["duration"] or "1h"
    return page(request, "request_new.html", viewer, catalog=_catalog(viewer), form=form,
                preview=_preview(viewer, st.now(), form), errors={}, submitted=False,
                glass=requests.may_break_glass(viewer.principal.policy, viewer.user))


@router.get("/requests/preview", response_class=HTMLResponse)
def preview(request: Request, session: Session = Depends(db),
            st: AppState = Depends(state)) -> HTMLResponse:
    viewer = require_viewer(request, session, st)
    form = {k: request.query_params.get(k, "") for k in ("resource", "role", "duration",
                                                           "reason", "emergency")}
    return page(request, "_preview.html", viewer, preview=_preview(viewer, st.now(), form))


@router.post("/requests/new")
def create_request(request: Request, resource: str = Form(""), role: str = Form(""),
                   duration: str = Form(""), reason: str = Form(""), csrf: str = Form(""),
                   emergency: str = Form(""), session: Session = Depends(db),
                   st: AppState = Depends(state)) -> Response:
    viewer = require_viewer(request, session, st)
    check_csrf(request, csrf, viewer.csrf)
    form = {"resource": resource, "role": role, "duration": duration, "reason": reason,
            "emergency": emergency}
    errors, span_ = _form_errors(viewer, st.now(), form)
    if not errors and span_ is not None:
        try:
            req = requests.create(session, policy=viewer.principal.policy,
                                  caller=viewer.principal.caller, resource=resource, role=role,
                                  duration=span_, reason=reason, now=st.now(),
                                  emergency=emergency == "on")
            text = "Request filed. " + _next_step(render_requests(session, [req], st.now())[0])
            session.commit()
            return back_to(request, viewer, f"/requests/{req.id}?done=created", text)
        except (Invalid, Forbidden) as exc:
            session.rollback()
            errors[exc.field if exc.field in FIELDS else "form"] = exc.detail
    return page(request, "request_new.html", viewer, status=422, catalog=_catalog(viewer),
                form=form, preview=_preview(viewer, st.now(), form), errors=errors,
                submitted=True,
                glass=requests.may_break_glass(viewer.principal.policy, viewer.user))


# ---------------------------------------------------------------- lists


def _page_of(session: Session, viewer: Viewer, now: datetime, *, before: int | None,
             **filters: Any) -> tuple[list[Any], int | None]:
    reqs = requests.list_requests(session, policy=viewer.principal.policy, user=viewer.user,
                                  now=now, before_id=before, limit=PAGE + 1, **filters)
    more = len(reqs) > PAGE
    reqs = reqs[:PAGE]
    return render_requests(session, reqs, now), (reqs[-1].id if more and reqs else None)


def _digits(value: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts "²", which int() refuses."""
    return value.isascii() and value.isdigit()


def _cursor(value: str | None) -> int | None:
    if value and _digits(value) and len(value) < 12:
        return int(value)
    return None


def _day(value: str, field: str) -> datetime | None:
    """A calendar day (UTC midnight) from a date input."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value[:10] + "T00:00:00+00:00")
    except ValueError:
        raise Invalid("use a date such as 2026-11-27", field=field) from None


def _through(value: str) -> datetime | None:
    """The end of the day a date input names: `until` includes that day."""
    day = _day(value, "until")
    try:
        return day + timedelta(days=1) if day else None
    except OverflowError:  # 9999-12-31: the end of time is as good as no bound
        return None


@router.get("/my", response_class=HTMLResponse)
def my_requests(request: Request, session: Session = Depends(db),
                st: AppState = Depends(state)) -> HTMLResponse:
    viewer = require_viewer(request, session, st)
    before = _cursor(request.query_params.get("before"))
    items, more = _page_of(session, viewer, st.now(), before=before, requester=viewer.user)
    end_read(session)
    return page(request, "my.html", viewer, items=items, more=more)


@router.get("/inbox", response_class=HTMLResponse)
def inbox(request: Request, session: Session = Depends(db),
          st: AppState = Depends(state)) -> HTMLResponse:
    viewer = require_viewer(request, session, st)
    now = st.now()
    reqs = requests.list_requests(session, policy=viewer.principal.policy, user=viewer.user,
                                  now=now, awaiting_me=True, limit=200)
    items = render_requests(session, list(reversed(reqs)), now)  # oldest first: longest wait
    history: dict[str, list[Any]] = {}
    for r in items:
        if r.requester not in history:
            rows = session.execute(
                select(AccessRequest).where(AccessRequest.requester == r.requester)
                .order_by(AccessRequest.id.desc()).limit(6)).scalars().all()
            history[r.requester] = [h for h in rows]
    end_read(session)
    return page(request, "inbox.html", viewer, items=items, history=history)


@router.get("/requests", response_class=HTMLResponse)
def all_requests(request: Request, session: Session = Depends(db),
                 st: AppState = Depends(state)) -> HTMLResponse:
    viewer = require_viewer(request, session, st)
    q = request.query_params
    f = {k: q.get(k, "") for k in ("status", "resource", "requester", "approver", "since",
                                   "until")}
    error = None
    items: list[Any] = []
    more = None
    try:
        if f["status"] and f["status"] not in {s.value for s in Status}:
            raise Invalid("unknown status", field="status")
        items, more = _page_of(
            session, viewer, st.now(), before=_cursor(q.get("before")),
            status=f["status"] or None, resource=f["resource"] or None,
            requester=f["requester"] or None, approver=f["approver"] or None,
            since=_day(f["since"], "since"), until=_through(f["until"]))
    except Invalid as exc:
        error = f"{exc.field}: {exc.detail}" if exc.field else exc.detail
    end_read(session)
    keep = {k: v for k, v in f.items() if v}
    return page(request, "requests.html", viewer, items=items, more=more, filters=f,
                error=error, statuses=[s.value for s in Status],
                resources=sorted(viewer.principal.policy.resources),
                more_url="/requests?" + urlencode({**keep, "before": more}) if more else None,
                status=422 if error else 200)


# ---------------------------------------------------------------- one request


def _either(names: list[str]) -> str:
    """carol / carol or erin / bob, carol or erin."""
    if len(names) <= 1:
        return names[0] if names else "nobody"
    return ", ".join(names[:-1]) + " or " + names[-1]


def _next_step(out: Any) -> str:
    """What happens to a request next, in words: who must approve now, or what it got."""
    if out.status == "pending" and out.current_step is not None:
        step = out.steps[out.current_step]
        decided = {a.approver for s in out.steps for a in s.approvals}
        got = len({a.approver for a in step.approvals if a.decision == "approve"})
        left = max(step.min_approvals - got, 1)
        name = f"step {out.current_step + 1} of {len(out.steps)}" + (
            f" ({step.name})" if step.name else "")
        who = _either(sorted(set(step.eligible) - decided))
        if left == 1:
            return f"Request #{out.id} now waits for {name}: {who} must approve it."
        return f"Request #{out.id} now waits for {name}: {left} of {who} must approve it."
    grant = out.grant
    if grant is not None and grant.status == "provisioning":
        return (f"Request #{out.id} is approved; Grant #{grant.id} is being set up on "
                f"{out.resource} and turns active when the target confirms.")
    if grant is not None and grant.status == "active":
        return (f"{out.requester} has {out.role} on {out.resource} until "
                f"{grant.ends_at.strftime('%H:%M UTC')} (Grant #{grant.id}).")
    if out.status == "denied":
        return f"Request #{out.id} is denied: {out.decision_reason}."
    return f"Request #{out.id} is {out.status.replace('_', ' ')}."


def _waiting(out: Any) -> str | None:
    """The request page's standing line for a pending request (who must act now)."""
    return _next_step(out) if out.status == "pending" else None


def _allowed(viewer: Viewer, session: Session, req: AccessRequest, grant: Grant | None,
             now: datetime) -> list[str]:
    """The actions to offer: exactly those the server's own checks allow (the same
    functions the commands call), so nobody is shown a button that can only fail."""
    return requests.allowed_actions(session, policy=viewer.principal.policy, user=viewer.user,
                                    req=req, grant=grant, now=now)


def _connectable(viewer: Viewer, out: Any) -> dict[str, Any] | None:
    """How the grantee reaches an active grant through the gateway (no secret: the token
    comes from the Connect form), when the resource is served by it."""
    st_policy = viewer.principal.policy
    spec = st_policy.loaded.spec.gateway
    resource = st_policy.resources.get(out.resource)
    if spec is None or resource is None or not resource.gateway_reachable \
            or out.grant is None or out.grant.status != "active" \
            or out.grant.user != viewer.user:
        return None
    info = connection_info(spec, user=viewer.user, resource=out.resource,
                           protocol=resource.gateway_protocol)
    if info is None:
        return None
    return {"client": info.client, "host": info.host, "port": info.port, "database": info.database,
            "user": info.user, "sslmode": info.sslmode,
            "ttl": format_duration(spec.token_ttl)}


@router.get("/requests/{request_id}", response_class=HTMLResponse)
def request_detail(request: Request, request_id: str, session: Session = Depends(db),
                   st: AppState = Depends(state)) -> HTMLResponse:
    viewer = require_viewer(request, session, st)
    return _detail(request, session, st, viewer, request_id)


def _detail(request: Request, session: Session, st: AppState, viewer: Viewer, request_id: str,
            *, status: int = 200) -> HTMLResponse:
    if not _digits(request_id) or not 0 < int(request_id) < 2**31:
        raise NotFound(f"request {request_id} does not exist")
    req = requests.get_request(session, policy=viewer.principal.policy, user=viewer.user,
                               request_id=int(request_id))
    now = st.now()
    out = render_requests(session, [req], now)[0]
    # The timeline's entries are each re-hashed and proven: no need to re-hash them all.
    ledger_state = evidence.state(session, st.ledger, rehash_limit=0)
    subjects = [f"request:{req.id}"] + ([f"grant:{req.grant_id}"] if req.grant_id else [])
    events = evidence.timeline(session, ledger_state, subjects)
    grant = session.get(Grant, req.grant_id) if req.grant_id else None
    acts = _allowed(viewer, session, req, grant, now)
    glass = viewer.principal.policy.loaded.spec.break_glass
    if req.emergency and req.reviewed_at is None and glass is not None \
            and viewer.user != req.requester \
            and viewer.user in requests.members(viewer.principal.policy, glass.reviewers):
        acts.append("review")
    # Why it was decided so, reproduced from the ledger: for those the API shows it to.
    policy = viewer.principal.policy
    explanation = explaining.explain(
        session, req=req, directory=st.policies.directory(session), in_force=policy.version,
    ) if explaining.may_explain(policy, viewer.user, req) else None
    recorded = ssh_views.listing(session, st, grant.id) if grant is not None else []
    end_read(session)
    # A statement review's execution, as the ledger holds it (binds the run to the hash).
    executed = next((e for e in events
                     if e.event.get("type") == str(EventType.REQUEST_STATEMENT_EXECUTED)), None)
    return page(request, "request_detail.html", viewer, r=out, events=events,
                ledger=ledger_state, actions=acts, status=status, waiting=_waiting(out),
                connect=_connectable(viewer, out), explanation=explanation,
                ssh_sessions=recorded,
                executed=executed)


def _request_id(value: str) -> int:
    if not _digits(value) or not 0 < int(value) < 2**31:
        raise NotFound(f"request {value} does not exist")
    return int(value)


@router.post("/requests/{request_id}/review")
def review(request: Request, request_id: str, csrf: str = Form(""), verdict: str = Form(""),
           note: str = Form(""), session: Session = Depends(db),
           st: AppState = Depends(state)) -> Response:
    viewer = require_viewer(request, session, st)
    check_csrf(request, csrf, viewer.csrf)
    rid = _request_id(request_id)
    try:
        detect.review_break_glass(session, policy=viewer.principal.policy,
                                  caller=viewer.principal.caller, request_id=rid,
                                  verdict=verdict, note=note[:2000], now=st.now())
        session.commit()
    except AccordError as exc:
        session.rollback()
        return back_to(request, viewer, f"/requests/{rid}", _problem(exc), error=True,
                       form={"note": note, "verdict": verdict}, form_name="review")
    return back_to(request, viewer, f"/requests/{rid}?done=review", MESSAGES["review"])


# Destructive actions need a reason, and a page's form asks for it before confirming.
NEEDS_REASON = {"deny": "deny it", "cancel": "withdraw it", "relinquish": "give it up",
                "revoke": "revoke it"}


def _outcome(action: str, out: Any, *, late: bool = False) -> str:
    """What the page after a successful action says."""
    if action == "approve":
        if late:
            return (f"Your approval was recorded; request #{out.id} had already been "
                    "approved by someone else.")
        return "Approved. " + _next_step(out)
    grant = out.grant
    g = f"Grant #{grant.id}" if grant else "the grant"
    return {
        "deny": f"Denied. Request #{out.id} is closed; {out.requester} sees your reason.",
        "cancel": f"Request withdrawn. Request #{out.id} will not be decided.",
        "relinquish": f"Access given up. {g} ({out.role} on {out.resource}) has ended.",
        "revoke": f"Access revoked. {g} ({out.requester}, {out.role} on {out.resource}) has "
                  "ended.",
    }.get(action, MESSAGES.get(action, "Done."))


@router.post("/requests/{request_id}/connect")
def connect(request: Request, request_id: str, csrf: str = Form(""),
            session: Session = Depends(db), st: AppState = Depends(state)) -> Response:
    """A connection token for the viewer's own active grant, shown once on the request's
    page (the same token `POST /api/v1/grants/{id}/connect` returns). It rides the flash
    cookie, encrypted with the server's key, that the next page reads and deletes."""
    viewer = require_viewer(request, session, st)
    check_csrf(request, csrf, viewer.csrf)
    rid = _request_id(request_id)
    try:
        req = requests.get_request(session, policy=viewer.principal.policy, user=viewer.user,
                                   request_id=rid)
        grant = session.get(Grant, req.grant_id) if req.grant_id else None
        if grant is None or grant.user != viewer.user:
            raise Conflict(f"request {rid} has no grant of yours to connect with")
        issued = gateway_views.issue(session, st, viewer.principal.caller.actor, grant)
        session.commit()
    except AccordError as exc:
        session.rollback()
        if isinstance(exc, NotFound):
            return back_to(request, viewer, "/my", _problem(exc), error=True)
        return back_to(request, viewer, f"/requests/{rid}#connect", _problem(exc), error=True)
    return back_to(request, viewer, f"/requests/{rid}#connect",
                   f"Connection token issued for Grant #{issued.grant_id}; it is shown once, "
                   "below.", form_name="connect",
                   form={"psql": issued.command, "dsn": issued.dsn,
                         # ssh asks for the token as the password: no DSN carries it
                         "password": issued.token if issued.protocol == "ssh" else "",
                         "expires": issued.expires_at.strftime("%H:%M UTC")})


@router.post("/requests/{request_id}/{action}")
def act(request: Request, request_id: str, action: str, csrf: str = Form(""),
        comment: str = Form(""), duration: str = Form(""), reason: str = Form(""),
        back: str = Form(""), session: Session = Depends(db),
        st: AppState = Depends(state)) -> Response:
    viewer = require_viewer(request, session, st)
    check_csrf(request, csrf, viewer.csrf)
    if action not in (*ACTIONS, "extend"):
        raise NotFound(f"no such action: {action}")
    rid, now = _request_id(request_id), st.now()
    # Where the person came from (a list or the request); refusals go back there too.
    home = f"/requests/{rid}"
    target = safe_next(back) if back else home
    why = (reason or comment).strip()
    if action in NEEDS_REASON and not why:
        return back_to(request, viewer, target,
                       f"Say why you {NEEDS_REASON[action]}: the reason is recorded in the "
                       "audit ledger.", error=True)
    try:
        if action == "extend":
            try:
                span_ = parse_duration(duration)
            except DurationError as exc:
                raise Invalid(f"{exc} (for example 30m or 1h)", field="duration") from None
            new = requests.extend(session, policy=viewer.principal.policy,
                                  caller=viewer.principal.caller, request_id=rid,
                                  duration=span_, reason=reason, now=now)
            text = "Extension requested. " + _next_step(render_requests(session, [new],
                                                                          now)[0])
            session.commit()
            return back_to(request, viewer, f"/requests/{new.id}?done=extend", text)
        fn = getattr(requests, action)
        req = fn(session, policy=viewer.principal.policy, caller=viewer.principal.caller,
                 request_id=rid, comment=why[:2000], now=now)
        out = render_requests(session, [req], now)[0]
        # A late approval (another approver completed the last step first) was recorded
        # without deciding anything: the request was decided before now.
        late = action == "approve" and req.decided_at is not None and req.decided_at < now
        text = _outcome(action, out, late=late)
        session.commit()
    except AccordError as exc:
        requests.after_refusal(session, exc=exc, caller=viewer.principal.caller, now=now)
        session.commit()
        if isinstance(exc, NotFound):
            target = safe_next(back) if back else "/my"
        keep = {"duration": duration, "reason": reason} if action == "extend" else {}
        return back_to(request, viewer, target, _problem(exc), error=True, form=keep,
                       form_name=action)
    return back_to(request, viewer, _done(target, action), text)


# ---------------------------------------------------------------- grants


@router.get("/grants", response_class=HTMLResponse)
def grants_page(request: Request, session: Session = Depends(db),
                st: AppState = Depends(state)) -> HTMLResponse:
    viewer = require_viewer(request, session, st)
    now = st.now()
    q = (select(Grant).where(Grant.status == GrantStatus.ACTIVE, Grant.ends_at > now)
         .order_by(Grant.ends_at).limit(200))
    visible = visible_grants(viewer.principal.policy, viewer.principal.user)
    if visible is not None:
        q = q.where(visible)
    grants = list(session.execute(q).scalars())
    reqs = {r.id: r for r in session.execute(select(AccessRequest).where(
        AccessRequest.id.in_([g.request_id for g in grants]))).scalars()} if grants else {}
    rows = []
    for g in grants:
        req = reqs.get(g.request_id)
        acts = _allowed(viewer, session, req, g, now) if req is not None else []
        rows.append((GrantOut.of(g, now), acts))
    # Open alerts about each grant (its gateway sessions' refusals), for those who read alerts.
    alerts = detect.open_alert_counts(session, subjects=[f"grant:{g.id}" for g in grants]) \
        if viewer.principal.can_read_all else {}
    gw = viewer.principal.policy.loaded.spec.gateway
    reachable = {name for name, spec in viewer.principal.policy.resources.items()
                 if gw is not None and spec.gateway_reachable}
    end_read(session)
    return page(request, "grants.html", viewer, grants=rows, alerts=alerts,
                reachable=reachable)


# ---------------------------------------------------------------- alerts


@router.get("/alerts", response_class=HTMLResponse)
def alerts_page(request: Request, session: Session = Depends(db),
                st: AppState = Depends(state)) -> HTMLResponse:
    viewer = require_viewer(request, session, st)
    if not viewer.principal.can_read_all:
        raise Forbidden("alerts need the Accord auditor or admin role")
    q = request.query_params
    status = q.get("status", "open")
    if status not in {"open", "acknowledged", "resolved", "all"}:
        raise Invalid("status must be open, acknowledged, resolved or all", field="status")
    rule = q.get("rule", "")[:64]
    # Grouped by rule unless one rule is asked for: eleven alerts of a kind are one line.
    view = q.get("view") or ("each" if rule else "groups")
    if view not in ("groups", "each"):
        raise Invalid("view must be groups or each", field="view")
    which = None if status == "all" else status
    groups: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    more_url = None
    if view == "groups":
        by_user: dict[str, list[tuple[str, int]]] = {}
        for g in detect.group_alerts(session, by="user", status=which, limit=500):
            by_user.setdefault(g.rule, []).append((g.user or "-", g.count))
        for g in detect.group_alerts(session, status=which, limit=100):
            groups.append({"rule": g.rule, "count": g.count, "severity": g.severity,
                           "newest": detect.as_dict(g.newest), "since": g.oldest_opened_at,
                           "who": sorted(by_user.get(g.rule, []), key=lambda p: -p[1])})
    else:
        before = _cursor(q.get("before"))
        rows = detect.list_alerts(session, status=which, rule=rule or None, before_id=before,
                                  limit=PAGE + 1)
        more = rows[PAGE - 1].id if len(rows) > PAGE else None
        # No buttons on an alert about the viewer: the service refuses them anyway.
        items = [{**detect.as_dict(a), "mine": viewer.user in detect.about(a)}
                 for a in rows[:PAGE]]
        if more:
            more_url = "/alerts?" + urlencode({"status": status, "view": "each",
                                               **({"rule": rule} if rule else {}),
                                               "before": more})
    end_read(session)
    return page(request, "alerts.html", viewer, items=items, groups=groups, current=status,
                view=view, rule=rule, more_url=more_url)


@router.post("/alerts/{alert_id}/{action}")
def alert_action(request: Request, alert_id: str, action: str, csrf: str = Form(""),
                 note: str = Form(""), back: str = Form(""), session: Session = Depends(db),
                 st: AppState = Depends(state)) -> Response:
    viewer = require_viewer(request, session, st)
    check_csrf(request, csrf, viewer.csrf)
    if action not in ("acknowledge", "resolve") or not _digits(alert_id) \
            or not 0 < int(alert_id) < 2**31:
        raise NotFound(f"no such action: {action}")
    target = safe_next(back) if back else "/alerts"
    try:
        if not viewer.principal.is_admin:
            raise Forbidden("acknowledging and resolving alerts needs the Accord admin role")
        fn = detect.acknowledge if action == "acknowledge" else detect.resolve
        fn(session, alert_id=int(alert_id), actor=viewer.principal.caller.actor,
           note=note[:2000], now=st.now())
        session.commit()
    except AccordError as exc:
        session.rollback()
        return back_to(request, viewer, target, f"Alert #{alert_id}: {_problem(exc)}",
                       error=True)
    done = "acknowledged" if action == "acknowledge" else "resolved"
    return back_to(request, viewer, _done(target, action), f"Alert #{alert_id} {done}.")


# ---------------------------------------------------------------- sessions


@router.get("/sessions", response_class=HTMLResponse)
def sessions_page(request: Request, session: Session = Depends(db),
                  st: AppState = Depends(state)) -> HTMLResponse:
    viewer = require_viewer(request, session, st)
    if not viewer.principal.is_admin:
        raise Forbidden("the sessions page needs the Accord admin role")
    before = _cursor(request.query_params.get("before"))
    rows = sessions.list_sessions(session, now=st.now(), before_id=before, limit=PAGE + 1)
    more = rows[PAGE - 1].id if len(rows) > PAGE else None
    end_read(session)
    return page(request, "sessions.html", viewer, items=rows[:PAGE],
                more_url=f"/sessions?before={more}" if more else None)


@router.post("/sessions/{session_id}/end")
def end_session(request: Request, session_id: str, csrf: str = Form(""),
                session: Session = Depends(db), st: AppState = Depends(state)) -> Response:
    viewer = require_viewer(request, session, st)
    check_csrf(request, csrf, viewer.csrf)
    if not _digits(session_id) or not 0 < int(session_id) < 2**31:
        raise NotFound(f"session {session_id} does not exist")
    if not viewer.principal.is_admin:  # a form only admins are shown
        return back_to(request, viewer, "/", "ending sessions needs the Accord admin role",
                       error=True)
    try:
        row = sessions.end_by_admin(session, session_id=int(session_id),
                                    actor=viewer.principal.caller.actor, now=st.now())
        session.commit()
    except AccordError as exc:
        session.rollback()
        return back_to(request, viewer, "/sessions", _problem(exc), error=True)
    CACHE.forget(row.digest)
    return back_to(request, viewer, "/sessions?done=end",
                   f"Session ended. Session #{session_id} ({row.user}) is signed out.")


# ---------------------------------------------------------------- audit


@router.get("/audit", response_class=HTMLResponse)
def audit(request: Request, session: Session = Depends(db),
          st: AppState = Depends(state)) -> HTMLResponse:
    viewer = require_viewer(request, session, st)
    if not viewer.principal.can_read_all:
        raise Forbidden("the audit log needs the Accord auditor or admin role")
    q = request.query_params
    f = {k: q.get(k, "") for k in ("type", "subject", "actor", "resource")}
    ledger_state = evidence.state(session, st.ledger)
    query = ledger.query_events(type=f["type"] or None, subject=f["subject"] or None,
                                actor=f["actor"] or None, resource=f["resource"] or None)
    before = _cursor(q.get("before"))
    query = query.order_by(None).order_by(LedgerEntry.idx.desc())
    if before is not None:
        query = query.where(LedgerEntry.idx < before)
    rows = list(session.execute(query.limit(PAGE + 1)).scalars())
    more = rows[PAGE - 1].idx if len(rows) > PAGE else None
    marks = evidence.badges(session, ledger_state, rows[:PAGE])
    events = [(int(e.idx or 0), ledger.decode(e), marks.get(int(e.idx or 0), "pending"))
              for e in rows[:PAGE]]
    types = [t for (t,) in session.execute(
        select(LedgerEntry.type).group_by(LedgerEntry.type).order_by(LedgerEntry.type))]
    pending = int(session.execute(select(func.count()).select_from(LedgerEntry)
                                  .where(LedgerEntry.idx.is_(None))).scalar_one())
    end_read(session)
    keep = {k: v for k, v in f.items() if v}
    return page(request, "audit.html", viewer, ledger=ledger_state, events=events, filters=f,
                types=types, pending=pending, key=st.ledger.signer.verifier.encode(),
                more_url="/audit?" + urlencode({**keep, "before": more}) if more else None)


# ---------------------------------------------------------------- live updates


@streams.get("/live")
async def live(request: Request) -> Response:
    """Server-sent events: `change` whenever the ledger grows (every page shows something
    the ledger records), so open pages refresh their live parts without a reload."""
    st: AppState = request.app.state.accord

    def check() -> tuple[Viewer | None, str]:
        with st.sessions() as s:
            v = viewer_of(request, s, st)
            size = ledger_stamp(s)
            s.commit()
            return v, size

    viewer, size = await run_in_threadpool(check)
    if viewer is None:
        return Response(status_code=401)
    # What the browser last saw: on a reconnect the last event's id; on the first connect
    # the stamp of the page it rendered (`stamp_page`). A change in between is reported at
    # once: the checkpoint signed while the page loaded must not wait for the next change.
    seen = request.headers.get("last-event-id") or request.query_params.get("seen", "")
    if not STAMP.fullmatch(seen):
        seen = size

    async def stream() -> AsyncIterator[bytes]:
        last, quiet = seen, 0
        yield f"retry: 2000\nid: {size}\n\n".encode()
        if last != size:
            last = size
            yield f"event: change\nid: {size}\ndata: {size}\n\n".encode()
        # Streams end after a while and the browser reconnects: no connection outlives a
        # logout, a deploy or a stopping server by more than that.
        for _ in range(STREAM_SECONDS):
            if STOPPING.is_set() or await request.is_disconnected():
                return
            await asyncio.sleep(1)
            v, now_size = await run_in_threadpool(check)
            if v is None:
                yield b"event: logout\ndata: {}\n\n"
                return
            if now_size != last:
                last, quiet = now_size, 0
                yield f"event: change\nid: {now_size}\ndata: {now_size}\n\n".encode()
            else:
                quiet += 1
                if quiet >= 15:
                    quiet = 0
                    yield b": keep-alive\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


# ---------------------------------------------------------------- errors


def end_streams_on_signals() -> None:
    """Chain onto the SIGINT/SIGTERM handlers the server installed (call it from the
    app's startup, inside the server): the server still stops as before, and live
    streams see STOPPING first. Outside the main thread (tests) there is nothing to do."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def handler(signum: int, frame: Any, previous: Any = previous) -> None:
            STOPPING.set()
            previous(signum, frame)

        signal.signal(sig, handler)


def install(app: Any) -> None:
    """Routes, static files and the two exceptions only pages raise."""
    app.include_router(router)
    app.include_router(streams)
    app.include_router(review_pages.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    async def favicon() -> Response:  # for clients that ask for it without reading a page
        return FileResponse(HERE / "static" / "favicon.svg", media_type="image/svg+xml",
                            headers={"Cache-Control": "max-age=86400"})

    app.add_api_route("/favicon.ico", favicon, include_in_schema=False)

    async def _login(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        if request.headers.get("x-accord-live"):
            return Response(status_code=401)
        return RedirectResponse(login_url(exc.next_url), status_code=303)

    async def _csrf(request: Request, exc: Exception) -> Response:
        return await run_in_threadpool(
            error_page, request, 403, "Form refused",
            f"{exc}. Reload the page and try again; if you did not just submit a form "
            "in Accord, someone else's site may have tried to act for you.")

    app.add_exception_handler(LoginRequired, _login)
    app.add_exception_handler(CsrfRefused, _csrf)
