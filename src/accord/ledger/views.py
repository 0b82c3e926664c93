"""HTTP API over the ledger: events, checkpoints, proofs, the verifier key, bundles.

Auditors and admins only: the ledger holds every reason and comment ever written.
"""

from __future__ import annotations

import base64
import contextlib
import io
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel, BeforeValidator
from sqlalchemy.orm import Session

from accord.api import openapi
from accord.api.deps import Principal, db, parse_cursor, require_reader, state
from accord.db import readonly_sessions, writing
from accord.errors import AccordError, Conflict, Invalid, NotFound
from accord.ledger import bundle, checkpoints, service
from accord.ledger.upkeep import catch_up
from accord.state import AppState


def _rfc3339(value: object) -> object:
    # pydantic reads a bare number as seconds since 1970: a time here is written out.
    if isinstance(value, str) and value.strip().lstrip("+-").replace(".", "", 1).isdigit():
        raise ValueError("not an RFC 3339 time, e.g. 2026-01-01T00:00:00Z")
    return value


When = Annotated[datetime | None, BeforeValidator(_rfc3339)]
router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


class EventOut(BaseModel):
    index: int
    event: dict[str, Any]
    leaf: str


class EventPage(BaseModel):
    items: list[EventOut]
    next_cursor: str | None
    size: int


class InclusionProof(BaseModel):
    index: int
    size: int
    hashes: list[str]


class BadRange(AccordError):
    status = 400
    title = "Out of range"
    slug = "out-of-range"


def _b64(values: list[bytes]) -> list[str]:
    return [base64.b64encode(v).decode() for v in values]


@router.get("/events", response_model=EventPage)
def events(
    who: Principal = Depends(require_reader),
    session: Session = Depends(db),
    type: str | None = None,
    subject: str | None = None,
    resource: str | None = None,
    actor: str | None = None,
    since: When = None,
    until: When = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> EventPage:
    """Integrated events in ledger order, each with its index and exact leaf bytes (base64)."""
    start = parse_cursor(cursor, largest=2**62)
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise Invalid("needs a timezone, e.g. 2026-01-01T00:00:00Z", field=name)
    q = service.query_events(
        type=type, subject=subject, resource=resource, actor=actor, since=since, until=until,
        start=start,
    ).limit(limit + 1)
    rows = list(session.execute(q).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    return EventPage(
        items=[
            EventOut(index=r.idx or 0, event=service.decode(r),
                     leaf=base64.b64encode(r.leaf).decode())
            for r in rows
        ],
        next_cursor=str((rows[-1].idx or 0) + 1) if more and rows else None,
        size=service.tree_size(session),
    )


def _latest_note(session: Session, st: AppState, *, sign_now: bool) -> str:
    """Sign if due (or asked), commit, remember and publish; return the newest note."""
    signed = checkpoints.sign(session, st.ledger, now=st.now(), force=sign_now)
    cp = signed or checkpoints.latest(session)
    note = cp.note if cp is not None else None
    session.commit()
    checkpoints.after_commit(st.ledger, signed)
    if note is None:
        raise NotFound("no checkpoint has been signed yet")
    return note


@router.get("/checkpoint", response_class=PlainTextResponse)
def checkpoint(
    who: Principal = Depends(require_reader),
    session: Session = Depends(db),
    st: AppState = Depends(state),
    fresh: Annotated[bool, Query(description="sign the current tree first if it grew")] = False,
) -> PlainTextResponse:
    """The latest signed checkpoint (a C2SP signed note)."""
    if fresh:  # events committed before this call are in it
        catch_up(st.sessions)
    try:
        with writing():  # it signs the grown tree when one is due
            note = _latest_note(session, st, sign_now=fresh)
    except service.LedgerCorruption as exc:
        raise Conflict(f"refusing to sign: {exc}") from None
    return PlainTextResponse(note, media_type="text/plain; charset=utf-8")


@router.get("/key", response_class=PlainTextResponse)
def key(who: Principal = Depends(require_reader), st: AppState = Depends(state)) -> str:
    """The verifier key for checkpoints: pin it for `accord audit verify --key`."""
    return st.ledger.signer.verifier.encode() + "\n"


@router.get("/keys")
def keys(who: Principal = Depends(require_reader), st: AppState = Depends(state)
         ) -> dict[str, Any]:
    """Every key that signed checkpoints, oldest first: each signs the checkpoints from
    `since` (the cosigned checkpoint that introduced it) to `until` (the one that
    introduced its successor; null while in force)."""
    ring = st.ledger.ring()
    return {"key": ring.signer.verifier.encode(),
            "rotating": ring.previous is not None,
            "keys": [{"key": e.verifier.encode(), "since": e.since, "until": e.until}
                     for e in ring.epochs()]}


@router.get("/proof/inclusion", response_model=InclusionProof)
def inclusion(
    index: int,
    size: int,
    who: Principal = Depends(require_reader),
    session: Session = Depends(db),
) -> InclusionProof:
    """RFC 9162 inclusion proof of leaf `index` in the tree of `size` leaves."""
    try:
        hashes = service.inclusion_proof(session, index, size)
    except service.ProofRangeError as exc:
        raise BadRange(str(exc)) from None
    return InclusionProof(index=index, size=size, hashes=_b64(hashes))


@router.get("/proof/consistency")
def consistency(
    who: Principal = Depends(require_reader),
    session: Session = Depends(db),
    from_: Annotated[int, Query(alias="from")] = 0,
    to: Annotated[int, Query()] = 0,
) -> dict[str, Any]:
    """RFC 9162 consistency proof between the trees of sizes `from` and `to`."""
    try:
        hashes = service.consistency_proof(session, from_, to)
    except service.ProofRangeError as exc:
        raise BadRange(str(exc)) from None
    return {"from": from_, "to": to, "hashes": _b64(hashes)}


@router.get("/bundle", response_class=StreamingResponse,  # never JSON
            responses=openapi.files("The export bundle", ["application/octet-stream"]))
def export_bundle(
    who: Principal = Depends(require_reader),
    session: Session = Depends(db),
    st: AppState = Depends(state),
) -> StreamingResponse:
    """The whole ledger as an export bundle (see `accord audit verify --url`), freshly signed."""
    try:
        with writing():  # it signs the tree first: a write, queued as one
            _latest_note(session, st, sign_now=True)
    except service.LedgerCorruption as exc:
        raise Conflict(f"refusing to sign: {exc}") from None
    disposition = {"Content-Disposition": 'attachment; filename="ledger.bundle"'}
    return StreamingResponse(_stream(st), media_type="application/octet-stream",
                             headers=disposition)


class _Abandoned(Exception):
    """The client went away: stop exporting and let go of the database."""


def _stream(st: AppState) -> Iterator[bytes]:
    # A thread writes into a small bounded pipe, so memory stays constant; if the client
    # stops reading, the writer gives up instead of holding its session forever.
    import queue

    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
    gone = threading.Event()

    class Pipe(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            data = bytes(b)
            while True:
                if gone.is_set():
                    raise _Abandoned
                try:
                    chunks.put(data, timeout=1)
                    return len(data)
                except queue.Full:
                    continue

    def produce() -> None:
        try:
            with readonly_sessions(st.sessions)() as session:
                ring = st.ledger.ring()
                # Up to the checkpoint just signed: an event integrated meanwhile (the
                # server's own jobs write some) would be a tail no checkpoint covers.
                signed = checkpoints.latest(session)
                bundle.write(session, Pipe(), origin=st.ledger.origin,  # type: ignore[arg-type]
                             key=ring.signer.verifier.encode(), exported_at=st.now(),
                             keys=[v.encode() for v in ring.chain],
                             upto=signed.size if signed is not None else 0)
        except _Abandoned:
            return
        finally:
            with contextlib.suppress(queue.Full):  # nobody is reading any more
                chunks.put(None, timeout=5)

    threading.Thread(target=produce, name="accord-bundle", daemon=True).start()
    try:
        while (chunk := chunks.get()) is not None:
            yield chunk
    finally:
        gone.set()
