"""Reading SSH recordings back: a session's channels from the ledger's `gateway.ssh_chunk`
and `gateway.ssh_exec` events, their bytes from content-addressed storage, and the checks
that make a replaced or edited chunk fail (each chunk's sha256 and size against its event,
the indices of a channel contiguous from 0 and ended by a final chunk). Never commits."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.gateway import packs
from accord.gateway.models import GatewayRecording
from accord.ledger.events import EventType
from accord.ledger.models import LedgerEntry

CHUNK = str(EventType.GATEWAY_SSH_CHUNK)
EXEC = str(EventType.GATEWAY_SSH_EXEC)


@dataclass
class Channel:
    session: str
    channel: int
    kind: str = "shell"
    chunks: list[dict[str, Any]] = field(default_factory=list)  # event data, by index
    command: str | None = None
    exit_status: int | None = None
    started: str = ""  # the first chunk's event time
    size: int = 0

    @property
    def key(self) -> str:
        return f"{self.session}/{self.channel}"


@dataclass
class Session_:
    id: str
    grant_id: int
    user: str
    resource: str
    started: str
    channels: list[Channel] = field(default_factory=list)


def _events(session: Session, types: Sequence[str], *, grant_id: int | None = None,
            session_id: str | None = None) -> Iterable[dict[str, Any]]:
    q = select(LedgerEntry.leaf).where(LedgerEntry.type.in_(list(types)))
    if grant_id is not None:
        q = q.where(LedgerEntry.subject == f"grant:{grant_id}")
    if session_id is not None:  # canonical JSON: the pair appears exactly so
        pair = json.dumps({"session": session_id}, separators=(",", ":"))[1:-1]
        q = q.where(LedgerEntry.leaf.contains(pair.encode()))
    for leaf in session.execute(q.order_by(LedgerEntry.id)).scalars():
        yield json.loads(leaf)


def sessions_of(session: Session, *, grant_id: int | None = None,
                session_id: str | None = None) -> list[Session_]:
    """Recorded SSH sessions of a grant (or one session), oldest first."""
    out: dict[str, Session_] = {}
    channels: dict[tuple[str, int], Channel] = {}
    for event in _events(session, (CHUNK, EXEC), grant_id=grant_id, session_id=session_id):
        data = event["data"]
        sid = data["session"]
        if session_id is not None and sid != session_id:
            continue
        s = out.get(sid)
        if s is None:
            s = out[sid] = Session_(sid, data["grant_id"], event["actor"]["id"],
                                    (event.get("resource") or {}).get("name", ""),
                                    event["time"])
        ch = channels.get((sid, data["channel"]))
        if ch is None:
            ch = channels[(sid, data["channel"])] = Channel(sid, data["channel"],
                                                          started=event["time"])
            s.channels.append(ch)
        if event["type"] == CHUNK:
            ch.kind = data.get("kind", ch.kind)
            ch.chunks.append(data)
            ch.size += int(data["size"])
        else:
            ch.command = data.get("command")
            ch.exit_status = data.get("exit_status")
    for ch in channels.values():
        ch.chunks.sort(key=lambda d: d["index"])
    return list(out.values())


def blobs(session: Session, digests: Iterable[str], packs_root: Path | None = None
          ) -> dict[str, bytes]:
    """The stored bytes of these chunks: from their rows, or from pack files under
    `packs_root` (`gateway.ssh.recordings_dir`); a chunk whose bytes are not there is left
    out (verification then says they are missing)."""
    rows = session.execute(select(GatewayRecording.sha256, GatewayRecording.size,
                                  GatewayRecording.data, GatewayRecording.location)
                           .where(GatewayRecording.sha256.in_(list(digests)))).all()
    out: dict[str, bytes] = {}
    for digest, size, data, location in rows:
        blob = bytes(data) if data is not None else \
            packs.read(packs_root, location, size) if location else None
        if blob is not None:
            out[digest] = blob
    return out


def check_chunk(data: dict[str, Any], blob: bytes | None) -> str | None:
    """What is wrong with one chunk's stored bytes (None: they are what the ledger says)."""
    where = f"recording {data['session']} channel {data['channel']} chunk {data['index']}"
    if blob is None:
        return f"{where}: its bytes are missing"
    if len(blob) != data["size"] or hashlib.sha256(blob).hexdigest() != data["sha256"]:
        return f"{where}: its bytes do not match the ledger (sha256 {data['sha256'][:12]}…)"
    return None


def assemble(channel: Channel, fetch: Callable[[str], bytes | None]
             ) -> tuple[bytes, list[str]]:
    """A channel's whole recording and what is wrong with it (nothing: verified)."""
    problems: list[str] = []
    out = bytearray()
    for want, data in enumerate(channel.chunks):
        if data["index"] != want:
            problems.append(f"recording {channel.key}: chunk {want} is missing from the ledger")
            break
        blob = fetch(data["sha256"])
        problem = check_chunk(data, blob)
        if problem is not None:
            problems.append(problem)
        if blob is not None:
            out += blob
    if not channel.chunks or not channel.chunks[-1].get("final"):
        problems.append(f"recording {channel.key}: it has no final chunk (the session is "
                        f"live, or the gateway stopped mid-session)")
    return bytes(out), problems
