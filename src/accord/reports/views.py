"""HTTP API for reports: auditors and admins download them; each one is a ledger event.

`GET /api/v1/reports/access?from=&to=&resource=&format=`,
`GET /api/v1/reports/user/{user}` and `GET /api/v1/reports/resource/{name}` (both with
optional `from`/`to`). The file is rendered into a temporary file, recorded in the
ledger with its sha256 (the response's `X-Accord-Report-SHA256`), then sent.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import IO, Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from accord.api import openapi
from accord.api.deps import Principal, db, require_reader, state
from accord.api.headers import DOCUMENT_POLICY
from accord.errors import Invalid
from accord.reports import service
from accord.reports.generate import generate
from accord.reports.schemas import FORMATS, MEDIA_TYPES, Kind
from accord.state import AppState

router = APIRouter(prefix="/api/v1/reports", tags=["reports"])

FromQ = Annotated[str | None, Query(alias="from", description="2026-07-01 or an RFC 3339 time",
                                    max_length=40)]
ToQ = Annotated[str | None, Query(alias="to", description="exclusive end of the period",
                                  max_length=40)]
FormatQ = Annotated[str, Query(alias="format", description="pdf | csv | json | html",
                                json_schema_extra={"enum": list(FORMATS)})]
REPORT = openapi.files("The report, in the format asked for", MEDIA_TYPES.values())


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise Invalid(f"must be one of {', '.join(FORMATS)}", field="format")
    return fmt


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    try:
        f.seek(0)
        while chunk := f.read(1 << 16):
            yield chunk
    finally:
        f.close()


def respond(st: AppState, who: Principal, session: Session, kind: Kind, *, start: str | None,
            end: str | None, fmt: str, resource: str | None = None,
            user: str | None = None) -> StreamingResponse:
    """Generate, record and send a report for `who` (already checked as a reader)."""
    session.close()  # the caller's check is done: the report runs its own units of work
    check_format(fmt)
    p = service.params(kind, start=start, end=end, now=st.now(), resource=resource, user=user)
    f = tempfile.TemporaryFile(prefix="accord-report-")  # noqa: SIM115 - closed by _chunks
    try:
        done = generate(st, p=p, fmt=fmt, out=f, actor=who.caller.actor,
                        generated_by=f"{who.user} ({who.via})")
    except BaseException:
        f.close()
        raise
    headers = {
        "Content-Disposition": f'attachment; filename="{done.filename(fmt)}"',
        "X-Accord-Report-SHA256": done.sha256,
        "Content-Length": str(done.size),
        "Cache-Control": "no-store",
        "Content-Security-Policy": DOCUMENT_POLICY,  # an HTML report's <style>, no script
    }
    return StreamingResponse(_chunks(f), media_type=MEDIA_TYPES[fmt], headers=headers)


@router.get("/access", responses=REPORT)
async def access_report(
    who: Principal = Depends(require_reader),
    st: AppState = Depends(state),
    session: Session = Depends(db),
    start: FromQ = None,
    end: ToQ = None,
    resource: Annotated[str | None, Query(max_length=64)] = None,
    fmt: FormatQ = "pdf",
) -> StreamingResponse:
    """Who had access to each resource in [from, to), why, who approved and how, usage,
    alerts, and the signed checkpoint that covers it all."""
    return await run_in_threadpool(respond, st, who, session, "access", start=start,
                                   end=end, fmt=fmt, resource=resource)


@router.get("/user/{user}", responses=REPORT)
async def user_report(
    user: str,
    who: Principal = Depends(require_reader),
    st: AppState = Depends(state),
    session: Session = Depends(db),
    start: FromQ = None,
    end: ToQ = None,
    fmt: FormatQ = "pdf",
) -> StreamingResponse:
    """One person's requests, access and decisions (all time unless from/to are given)."""
    return await run_in_threadpool(respond, st, who, session, "user", start=start,
                                   end=end, fmt=fmt, user=user)


@router.get("/resource/{name}", responses=REPORT)
async def resource_report(
    name: str,
    who: Principal = Depends(require_reader),
    st: AppState = Depends(state),
    session: Session = Depends(db),
    start: FromQ = None,
    end: ToQ = None,
    fmt: FormatQ = "pdf",
) -> StreamingResponse:
    """One resource's requests and access (all time unless from/to are given)."""
    return await run_in_threadpool(respond, st, who, session, "resource", start=start, end=end,
                                   fmt=fmt, resource=name)
