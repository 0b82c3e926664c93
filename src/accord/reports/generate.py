"""Generating a report end to end, for the API, the web page and the CLI (the outer layer).

Three short units of work, so a long report never holds a write lock (SQLite) or the
ledger's head lock (PostgreSQL) while it is built or rendered:

1. build the model in a read-only session;
2. sign a checkpoint over the current tree (it then covers every event the report read)
   and read it back as the evidence;
3. render into `out`, hashing what is written, then record `report.generated` with the
   parameters and the output's sha256, and commit.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, cast

from accord.db import readonly_sessions, transaction
from accord.errors import Conflict
from accord.ledger import checkpoints
from accord.ledger.events import Actor
from accord.ledger.note import NoteError
from accord.ledger.service import LedgerCorruption
from accord.ledger.upkeep import catch_up
from accord.reports import render_csv, render_html, render_json, render_pdf, service
from accord.reports.schemas import Params, Report
from accord.reports.service import Progress
from accord.state import AppState

RENDERERS: dict[str, Callable[[Report, BinaryIO, Progress | None], None]] = {
    "pdf": render_pdf.render,
    "csv": render_csv.render,
    "json": render_json.render,
    "html": render_html.render,
}


@dataclass(frozen=True)
class Generated:
    report: Report
    sha256: str
    size: int
    event: dict[str, object]

    def filename(self, fmt: str) -> str:
        p = self.report.params
        name = {"access": p.resource or "all", "user": p.user or "",
                "resource": p.resource or ""}[p.kind]
        stamp = self.report.generated_at.strftime("%Y%m%dT%H%M%SZ")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return f"accord-{p.kind}-report-{safe}-{stamp}.{fmt}"


class _Hashing(io.RawIOBase):
    """Pass writes through to `out`, hashing and counting them."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: object) -> int:
        data = bytes(cast(bytes, b))
        self.out.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)


def generate(st: AppState, *, p: Params, fmt: str, out: BinaryIO, actor: Actor,
             generated_by: str, progress: Progress | None = None) -> Generated:
    """Build, sign, render into `out` and record the report; raises before recording if
    anything fails (the caller then discards what was written)."""
    now = st.now()
    catch_up(st.sessions)  # committed events still waiting for an index belong in the count
    with readonly_sessions(st.sessions)() as session:
        service.check_subject(session, policy=st.policies.current, p=p)
        report = service.build(session, p=p, policy=st.policies.current, now=now,
                               generated_by=generated_by, progress=progress)
    try:
        with transaction(st.sessions) as session:
            cp = checkpoints.sign(session, st.ledger, now=now, force=True)
            report.evidence = service.evidence(session, cfg=st.ledger)
    except LedgerCorruption as exc:
        raise Conflict(f"refusing to sign the report's checkpoint: {exc}") from None
    except NoteError as exc:  # the newest checkpoint is not this server's key's
        raise Conflict(f"the newest checkpoint does not verify with this server's key: "
                       f"{exc}") from None
    checkpoints.after_commit(st.ledger, cp)
    sink = _Hashing(out)
    RENDERERS[fmt](report, cast(BinaryIO, sink), progress)
    digest = sink.sha.hexdigest()
    with transaction(st.sessions) as session:
        event = service.record_generated(session, report=report, fmt=fmt, sha256=digest,
                                         size=sink.size, actor=actor, now=now)
    return Generated(report=report, sha256=digest, size=sink.size, event=event)
