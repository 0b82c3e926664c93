"""HTTP API and web pages for SSH recordings: a grant's recorded sessions, one channel's
recording (asciicast v2, with whether it verified against the ledger), the stored bytes of
a chunk by sha256 (for `accord audit verify`), and the browser player."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.api.deps import Principal, db, known_id, principal, require_reader, state
from accord.errors import NotFound
from accord.gateway.models import GatewayRecording
from accord.gateway.ssh import recordings
from accord.grants.models import Grant
from accord.grants.service import visible_clause
from accord.policy.engine import Policy
from accord.state import AppState
from accord.web.auth import require_viewer
from accord.web.render import page

router = APIRouter(prefix="/api/v1", tags=["gateway"])
web = APIRouter(include_in_schema=False)
CAST = "application/x-asciicast"


def _grant(session: Session, policy: Policy, user: str, grant_id: int) -> Grant:
    q = select(Grant).where(Grant.id == grant_id)
    visible = visible_clause(policy, user)
    if visible is not None:
        q = q.where(visible)
    grant = session.execute(q).scalar_one_or_none()
    if grant is None:
        raise NotFound(f"grant {grant_id} does not exist or is not visible to you")
    return grant


def _session(session: Session, policy: Policy, user: str, session_id: str
             ) -> recordings.Session_:
    found = recordings.sessions_of(session, session_id=session_id[:64])
    if not found:
        raise NotFound(f"no recorded SSH session {session_id}")
    _grant(session, policy, user, found[0].grant_id)
    return found[0]


def listing(session: Session, grant_id: int) -> list[dict[str, Any]]:
    """A grant's recorded sessions and channels, each channel checked."""
    out = []
    for s in recordings.sessions_of(session, grant_id=grant_id):
        digests = [d["sha256"] for ch in s.channels for d in ch.chunks]
        stored = recordings.blobs(session, digests)
        channels = []
        for ch in s.channels:
            _, problems = recordings.assemble(ch, stored.get)
            channels.append({"channel": ch.channel, "kind": ch.kind, "command": ch.command,
                             "exit_status": ch.exit_status, "started": ch.started,
                             "chunks": len(ch.chunks), "size": ch.size,
                             "verified": not problems, "problems": problems})
        out.append({"session": s.id, "grant_id": s.grant_id, "user": s.user,
                    "resource": s.resource, "started": s.started, "channels": channels})
    return out


def _cast(session: Session, rec: recordings.Session_, channel: int) -> Response:
    ch = next((c for c in rec.channels if c.channel == channel), None)
    if ch is None:
        raise NotFound(f"session {rec.id} has no channel {channel}")
    stored = recordings.blobs(session, [d["sha256"] for d in ch.chunks])
    data, problems = recordings.assemble(ch, stored.get)
    return Response(data, media_type=CAST, headers={
        "X-Accord-Verified": "false" if problems else "true",
        "Cache-Control": "no-store"})


@router.get("/grants/{grant_id}/ssh-sessions")
def grant_sessions(grant_id: int, who: Principal = Depends(principal),
                   session: Session = Depends(db)) -> list[dict[str, Any]]:
    """A grant's recorded SSH sessions, each channel with whether its recording verified."""
    grant = _grant(session, who.policy, who.user, known_id(grant_id, "grant"))
    return listing(session, grant.id)


@router.get("/ssh-sessions/{session_id}")
def session_detail(session_id: str, who: Principal = Depends(principal),
                   session: Session = Depends(db)) -> dict[str, Any]:
    rec = _session(session, who.policy, who.user, session_id)
    return next(s for s in listing(session, rec.grant_id) if s["session"] == rec.id)


@router.get("/ssh-sessions/{session_id}/channels/{channel}/cast")
def session_cast(session_id: str, channel: int, who: Principal = Depends(principal),
                 session: Session = Depends(db)) -> Response:
    """One channel's recording (asciicast v2); `X-Accord-Verified` says whether every chunk
    matched the ledger."""
    return _cast(session, _session(session, who.policy, who.user, session_id), channel)


@router.get("/recordings/{sha256}")
def recording_bytes(sha256: str, who: Principal = Depends(require_reader),
                    session: Session = Depends(db)) -> Response:
    """The stored bytes of one recording chunk (auditors and admins: `audit verify`)."""
    row = session.get(GatewayRecording, sha256.lower()[:64])
    if row is None:
        raise NotFound(f"no recording chunk {sha256}")
    return Response(bytes(row.data), media_type="application/octet-stream")


@web.get("/ssh-sessions/{session_id}", response_class=HTMLResponse)
def player_page(request: Request, session_id: str, session: Session = Depends(db),
                st: AppState = Depends(state)) -> HTMLResponse:
    viewer = require_viewer(request, session, st)
    p = viewer.principal
    rec = _session(session, p.policy, p.user, session_id)
    info = next(s for s in listing(session, rec.grant_id) if s["session"] == rec.id)
    return page(request, "ssh_session.html", viewer, s=info)


@web.get("/ssh-sessions/{session_id}/channels/{channel}.cast")
def player_cast(request: Request, session_id: str, channel: int,
                session: Session = Depends(db), st: AppState = Depends(state)) -> Response:
    viewer = require_viewer(request, session, st)
    p = viewer.principal
    return _cast(session, _session(session, p.policy, p.user, session_id), channel)
