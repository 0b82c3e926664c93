"""Notifications over HTTP: people's preferences, and Slack's Approve/Deny buttons.

`GET/PUT /api/v1/me/notifications` read and replace the caller's own preference;
`/api/v1/users/{user}/notifications` does the same for anyone (reading: admins and
auditors; changing: admins). Each change is a `notification.preferences_changed` event
committed with it.

`POST /api/v1/integrations/slack/interactions` takes Slack's button clicks.
Slack's v0 request signature is the authentication (no bearer token): a forged,
stale or replayed request is a 401 and changes nothing. The Slack user is mapped to an
Accord user through `slack:` in accord.yaml, and the decision goes through exactly the
same checks as any other, recorded with `via: slack`. The Slack message is then
updated through its response_url by a durable job, and only on a host of
`notify.slack.response_hosts`: a click naming another host is refused (422, logged),
with nothing decided and nothing queued. A request id no row can have is a 404.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from accord.api.deps import Principal, db, known_id, principal, state
from accord.errors import AccordError, Forbidden, Invalid, NotFound, Unauthorized
from accord.jobs import service as jobs
from accord.ledger.events import Via
from accord.notify import service as prefs
from accord.notify import slack
from accord.notify.channels import RecipientAddress
from accord.notify.models import SlackSeen
from accord.notify.schemas import PreferencesIn, PreferencesOut
from accord.policy.engine import Policy
from accord.requests import service
from accord.state import AppState

log = logging.getLogger("accord.notify")
router = APIRouter(prefix="/api/v1/integrations/slack", tags=["integrations"])
prefs_router = APIRouter(prefix="/api/v1", tags=["notifications"])


# ---------------------------------------------------------------- preferences


def _out(policy: Policy, found: prefs.Preferences) -> PreferencesOut:
    address = RecipientAddress.from_spec(found.user, policy.users.get(found.user))
    return PreferencesOut(**prefs.describe(found, policy.loaded.spec.notify, address))


def _read(session: Session, policy: Policy, user: str) -> PreferencesOut:
    out = _out(policy, prefs.get(session, user=user))
    # End the read now, not when the session is closed after the response: on SQLite it
    # holds the write lock, and a client's next call (a PUT) must not wait behind it.
    session.commit()
    return out


def _other(who: Principal, user: str, *, change: bool) -> str:
    """`user`, if the caller may read (or change) their preference."""
    if user != who.user:
        if change and not who.is_admin:
            raise Forbidden("only admins change other users' notification preferences")
        if not change and not who.can_read_all:
            raise Forbidden("only admins and auditors read other users' notification "
                            "preferences")
    if not who.policy.is_user(user):
        raise NotFound(f'unknown user "{user}"; users come from accord.yaml')
    return user


def _put(session: Session, st: AppState, who: Principal, user: str,
         body: PreferencesIn) -> PreferencesOut:
    found = prefs.set_preferences(session, policy=who.policy, user=user,
                                  channels=body.channels, mode=body.mode,
                                  digest_hour=body.digest_hour, actor=who.caller.actor,
                                  now=st.now())
    out = _out(who.policy, found)
    session.commit()
    return out


@prefs_router.get("/me/notifications", response_model=PreferencesOut)
def my_preferences(who: Principal = Depends(principal),
                   session: Session = Depends(db)) -> PreferencesOut:
    """Your notification channels and delivery mode (immediate or a daily digest)."""
    return _read(session, who.policy, who.user)


@prefs_router.put("/me/notifications", response_model=PreferencesOut)
def set_my_preferences(body: PreferencesIn, who: Principal = Depends(principal),
                       session: Session = Depends(db),
                       st: AppState = Depends(state)) -> PreferencesOut:
    """Replace your notification preference; the change is recorded in the audit ledger."""
    return _put(session, st, who, who.user, body)


@prefs_router.get("/users/{user}/notifications", response_model=PreferencesOut)
def user_preferences(user: str, who: Principal = Depends(principal),
                     session: Session = Depends(db)) -> PreferencesOut:
    """Anyone's notification preference (admins and auditors; others only their own)."""
    return _read(session, who.policy, _other(who, user, change=False))


@prefs_router.put("/users/{user}/notifications", response_model=PreferencesOut)
def set_user_preferences(user: str, body: PreferencesIn,
                         who: Principal = Depends(principal),
                         session: Session = Depends(db),
                         st: AppState = Depends(state)) -> PreferencesOut:
    """Replace anyone's notification preference (admins; others only their own)."""
    return _put(session, st, who, _other(who, user, change=True), body)


# ---------------------------------------------------------------- Slack


@router.post("/interactions")
async def interactions(request: Request, session: Session = Depends(db),
                       st: AppState = Depends(state)) -> dict[str, Any]:
    """An Approve or Deny click from a Slack message, signed by Slack."""
    body = await request.body()
    secret = st.settings.slack_signing_secret
    verdict = slack.verify_request(secret.get() if secret else "", dict(request.headers), body,
                                   now=st.now().timestamp())
    if not verdict.ok:
        raise Unauthorized(f"Slack signature refused: {verdict.reason}")
    slack_spec = st.policies.current.loaded.spec.notify.slack
    hosts = slack_spec.response_hosts if slack_spec else slack.RESPONSE_HOSTS
    try:
        click = slack.parse_interaction(body, response_hosts=hosts)
    except slack.UntrustedResponseUrl as exc:
        # Signed, yet it asks us to call a host that is not Slack's: a leaked signing
        # secret or a missing notify.slack.response_hosts entry. Say so where operators look.
        log.warning("Slack click refused: %s", exc)
        raise Invalid(f"not a Slack interaction: {exc}") from None
    except ValueError as exc:
        raise Invalid(f"not a Slack interaction: {exc}") from None
    known_id(click.request_id, "request")  # past the id column: nothing to decide
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(_decide, session, st, request.headers, click)


def _decide(session: Session, st: AppState, headers: Any, click: slack.Interaction
            ) -> dict[str, Any]:
    now = st.now()
    # One use per signature: within the 5-minute window a replay is refused.
    digest = hashlib.sha256(headers.get(slack.SIGNATURE_HEADER, "").encode()).hexdigest()
    session.execute(delete(SlackSeen).where(SlackSeen.seen_at < now - timedelta(minutes=10)))
    try:
        with session.begin_nested():
            session.add(SlackSeen(signature=digest, seen_at=now))
    except IntegrityError:
        raise Unauthorized("Slack signature refused: this request was already handled "
                           "(a replay)") from None
    session.commit()  # the replay guard holds even if the decision below is refused
    policy = st.policies.current
    user = next((u for u, spec in policy.users.items() if spec.slack == click.user_id), None)
    if user is None:
        raise Forbidden(f"Slack user {click.user_id} is not mapped to an Accord user "
                        "(set `slack:` for them in accord.yaml)")
    command = service.approve if click.action == "approve" else service.deny
    try:
        req = command(session, policy=policy, caller=service.Caller(user, Via.SLACK),
                      request_id=click.request_id, comment="from Slack", now=now)
    except AccordError as exc:
        service.after_refusal(session, exc=exc, caller=service.Caller(user, Via.SLACK), now=now)
        _respond(session, click, f"{user} could not {click.action}: {exc.detail}", now)
        session.commit()
        raise
    text = f"Request #{req.id} ({req.resource}/{req.role} for {req.requester}): " \
           f"{click.action}d by {user}; now {req.status}"
    _respond(session, click, text, now)
    session.commit()
    return {"ok": True, "request_id": req.id, "status": req.status}


def _respond(session: Session, click: slack.Interaction, text: str, now: Any) -> None:
    if click.response_url:
        key = f"slack:{click.request_id}:{click.user_id}:{click.action}:{now.isoformat()}"
        jobs.enqueue(session, kind=slack.RESPOND, key=key[:200], run_at=now, now=now,
                     payload={"url": click.response_url, "text": text})
