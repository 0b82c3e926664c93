"""HTTP API and web pages for the SSH gateway: a grant's recorded sessions, one channel's
recording (asciicast v2, with whether it verified against the ledger), the stored bytes of
a chunk by sha256 (for `accord audit verify`), the browser player, and users' public keys
(`accord ssh-key add`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.api.deps import Principal, db, known_id, principal, require_reader, state
from accord.errors import Conflict, Invalid, NotFound
from accord.gateway import packs
from accord.gateway.models import GatewayRecording, GatewaySSHKey
from accord.gateway.ssh import recordings
from accord.grants.models import Grant
from accord.grants.service import visible_clause
from accord.ledger import service as ledger
from accord.ledger.events import EventType, format_time
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


def packs_root(st: AppState) -> Path | None:
    """Where recordings' pack files are (None: in the database)."""
    return packs.root(st.settings.data_dir, st.policies.current.loaded.spec.gateway)


def listing(session: Session, st: AppState, grant_id: int) -> list[dict[str, Any]]:
    """A grant's recorded sessions and channels, each channel checked."""
    out = []
    for s in recordings.sessions_of(session, grant_id=grant_id):
        digests = [d["sha256"] for ch in s.channels for d in ch.chunks]
        stored = recordings.blobs(session, digests, packs_root(st))
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


def _cast(session: Session, st: AppState, rec: recordings.Session_, channel: int
          ) -> Response:
    ch = next((c for c in rec.channels if c.channel == channel), None)
    if ch is None:
        raise NotFound(f"session {rec.id} has no channel {channel}")
    stored = recordings.blobs(session, [d["sha256"] for d in ch.chunks], packs_root(st))
    data, problems = recordings.assemble(ch, stored.get)
    return Response(data, media_type=CAST, headers={
        "X-Accord-Verified": "false" if problems else "true",
        "Cache-Control": "no-store"})


@router.get("/grants/{grant_id}/ssh-sessions")
def grant_sessions(grant_id: int, who: Principal = Depends(principal),
                   session: Session = Depends(db), st: AppState = Depends(state)
                   ) -> list[dict[str, Any]]:
    """A grant's recorded SSH sessions, each channel with whether its recording verified."""
    grant = _grant(session, who.policy, who.user, known_id(grant_id, "grant"))
    return listing(session, st, grant.id)


@router.get("/ssh-sessions/{session_id}")
def session_detail(session_id: str, who: Principal = Depends(principal),
                   session: Session = Depends(db), st: AppState = Depends(state)
                   ) -> dict[str, Any]:
    rec = _session(session, who.policy, who.user, session_id)
    return next(s for s in listing(session, st, rec.grant_id) if s["session"] == rec.id)


@router.get("/ssh-sessions/{session_id}/channels/{channel}/cast")
def session_cast(session_id: str, channel: int, who: Principal = Depends(principal),
                 session: Session = Depends(db), st: AppState = Depends(state)) -> Response:
    """One channel's recording (asciicast v2); `X-Accord-Verified` says whether every chunk
    matched the ledger."""
    return _cast(session, st, _session(session, who.policy, who.user, session_id), channel)


@router.get("/recordings/{sha256}")
def recording_bytes(sha256: str, who: Principal = Depends(require_reader),
                    session: Session = Depends(db), st: AppState = Depends(state)) -> Response:
    """The stored bytes of one recording chunk (auditors and admins: `audit verify`)."""
    digest = sha256.lower()[:64]
    found = recordings.blobs(session, [digest], packs_root(st)).get(digest)
    if found is None:
        exists = session.get(GatewayRecording, digest) is not None
        raise NotFound(f"recording chunk {sha256}: its pack file is missing or short "
                       f"under gateway.ssh.recordings_dir" if exists else
                       f"no recording chunk {sha256}")
    return Response(found, media_type="application/octet-stream")


@web.get("/ssh-sessions/{session_id}", response_class=HTMLResponse)
def player_page(request: Request, session_id: str, session: Session = Depends(db),
                st: AppState = Depends(state)) -> HTMLResponse:
    viewer = require_viewer(request, session, st)
    p = viewer.principal
    rec = _session(session, p.policy, p.user, session_id)
    info = next(s for s in listing(session, st, rec.grant_id) if s["session"] == rec.id)
    return page(request, "ssh_session.html", viewer, s=info)


@web.get("/ssh-sessions/{session_id}/channels/{channel}.cast")
def player_cast(request: Request, session_id: str, channel: int,
                session: Session = Depends(db), st: AppState = Depends(state)) -> Response:
    viewer = require_viewer(request, session, st)
    p = viewer.principal
    return _cast(session, st, _session(session, p.policy, p.user, session_id), channel)


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    public_key: str = Field(min_length=16, max_length=16384,
                            examples=["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... alice@laptop"])
    name: str = Field(default="", max_length=128, description="default: the key's comment")


def _key_out(row: GatewaySSHKey) -> dict[str, Any]:
    return {"id": row.id, "user": row.user, "fingerprint": row.fingerprint, "name": row.name,
            "created_at": format_time(row.created_at)}


@router.post("/ssh-keys", status_code=201)
def add_key(body: KeyIn, who: Principal = Depends(principal), session: Session = Depends(db),
            st: AppState = Depends(state)) -> dict[str, Any]:
    """Register a public key of yours for the SSH gateway: log in as USER+RESOURCE with it
    instead of a connection token (an active grant is still needed)."""
    from accord.gateway.ssh.lib import asyncssh

    try:
        key = asyncssh.import_public_key(body.public_key)
    except (asyncssh.KeyImportError, ValueError):
        raise Invalid("not an OpenSSH public key", field="public_key") from None
    fingerprint = key.get_fingerprint("sha256")
    if session.execute(select(GatewaySSHKey.id).where(
            GatewaySSHKey.fingerprint == fingerprint)).first() is not None:
        raise Conflict(f"the key {fingerprint} is already registered")
    now = st.now()
    row = GatewaySSHKey(user=who.user, fingerprint=fingerprint,
                        public_key=key.export_public_key().decode().strip(),
                        name=(body.name or key.get_comment() or "")[:128], created_at=now)
    session.add(row)
    session.flush()
    ledger.record(session, type=EventType.GATEWAY_SSH_KEY_ADDED, actor=who.caller.actor,
                  subject=f"user:{who.user}", resource=None,
                  data={"user": who.user, "key_id": row.id, "fingerprint": fingerprint,
                        "name": row.name}, time=now)
    out = _key_out(row)
    session.commit()
    return out


@router.get("/ssh-keys")
def list_keys(who: Principal = Depends(principal),
              session: Session = Depends(db)) -> list[dict[str, Any]]:
    """Your public keys for the SSH gateway."""
    rows = session.execute(select(GatewaySSHKey).where(GatewaySSHKey.user == who.user)
                           .order_by(GatewaySSHKey.id)).scalars()
    return [_key_out(r) for r in rows]


@router.delete("/ssh-keys/{key_id}")
def remove_key(key_id: int, who: Principal = Depends(principal), session: Session = Depends(db),
               st: AppState = Depends(state)) -> dict[str, Any]:
    """Remove one of your public keys (admins: anyone's); logins with it stop at once."""
    row = session.get(GatewaySSHKey, known_id(key_id, "ssh key"))
    if row is None or (row.user != who.user and not who.is_admin):
        raise NotFound(f"ssh key {key_id} does not exist or is not yours")
    out = _key_out(row)
    session.delete(row)
    ledger.record(session, type=EventType.GATEWAY_SSH_KEY_REMOVED, actor=who.caller.actor,
                  subject=f"user:{row.user}", resource=None,
                  data={"user": row.user, "key_id": row.id, "fingerprint": row.fingerprint,
                        "name": row.name}, time=st.now())
    session.commit()
    return out
