"""/scim/v2: the SCIM 2.0 service provider (RFC 7643, RFC 7644) an identity provider pushes
people and groups to.

One catch-all route hands each call to scim2-server's handler (routing, validation, PUT
and PATCH semantics, ETags, discovery) over `SqlStorage`. Each call is one transaction:
its directory changes, their ledger events and their consequences commit together.
Every answer, errors included, is SCIM's: `/scim/v2` answers 404 unless accord.yaml says
`identity: {scim: true}`, and 401 without a live token from `accord scim token issue`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus

import orjson
from fastapi import APIRouter, Request, Response
from scim2_models import (
    Error,
    NotFoundException,
    SCIMException,
    UnauthorizedException,
)
from scim2_server.handler import ScimHandler
from scim2_server.requests import ScimRequest
from scim2_server.responses import ScimResponse
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from accord.api.problems import lock_contention
from accord.db import end_read, reading
from accord.directory import tokens
from accord.directory.scim.protocol import SERVICE
from accord.directory.scim.storage import SqlStorage, scim_exception
from accord.errors import AccordError, Busy, Unauthorized
from accord.identity.service import hash_token
from accord.ledger.events import Actor
from accord.state import AppState

log = logging.getLogger("accord.scim")

router = APIRouter(tags=["scim"])
ROOT = "/scim/v2"
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
READS = frozenset({"GET", "HEAD"})
MAX_BODY = 2 * 1024 * 1024  # a PATCH of a few thousand members (the API's limit is 64 KiB)
# SCIM calls run on threads of their own: concurrent.futures hands work over through a C
# queue, where anyio's to_thread (run_in_threadpool) takes a Python Condition each way, a
# tenth of a worker's CPU in an identity provider's push (py-spy --gil).
_POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="accord-scim")


def _error(status: int, detail: str, scim_type: str | None = None) -> ScimResponse:
    body = Error(status=status, scim_type=scim_type, detail=detail).model_dump()
    return ScimResponse(HTTPStatus(status), body)


def _client(session: Session, authorization: str | None) -> str:
    """The name of the SCIM client whose live token the call carries (Unauthorized else)."""
    scheme, _, token = (authorization or "").partition(" ")
    if not authorization:
        raise UnauthorizedException(detail="missing bearer token; send "
                                    "'Authorization: Bearer <token>'")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthorizedException(detail="malformed Authorization header; expected "
                                    "'Bearer <token>'")
    digest = hash_token(token.strip())
    if (name := tokens.VERIFIED.get(digest)) is not None:
        return name
    with reading():  # on SQLite, a read of its own: no wait behind writers
        try:
            client = tokens.authenticate(session, token.strip())
        except Unauthorized as exc:
            raise UnauthorizedException(detail=exc.detail) from exc
        finally:
            end_read(session)
    tokens.VERIFIED.put(digest, client.name)
    return client.name




def _handle(st: AppState, request: ScimRequest) -> ScimResponse:
    storage: SqlStorage | None = None
    with st.sessions() as session:
        try:
            if st.policies.due():
                with reading():
                    st.policies.follow(session)
                    end_read(session)
            if not st.policies.current.loaded.spec.identity.scim:
                raise NotFoundException(
                    detail="SCIM is off: accord.yaml enables it with identity: {scim: true}")
            client = _client(session, request.header("Authorization"))
            storage = SqlStorage(session, store=st.policies, actor=Actor.scim(client),
                                 now=st.now(), write=request.method.upper() not in READS)
            response = ScimHandler(SERVICE, storage).handle(request)
            if storage.change is not None and storage.wrote:
                storage.change.finish()
            session.commit()
        except SCIMException as exc:
            session.rollback()
            return SERVICE.error_response(exc)
        except Busy as exc:
            session.rollback()
            return _busy(exc)
        except AccordError as exc:  # a consequence refused to apply: nothing is kept
            session.rollback()
            return SERVICE.error_response(scim_exception(exc))
        except (sa_exc.OperationalError, sa_exc.TimeoutError) as exc:
            session.rollback()
            busy = lock_contention(exc)
            if busy is None:
                raise
            log.warning("%s %s: 503, %s", request.method, request.path, busy.detail)
            return _busy(busy)
        except sa_exc.DataError:
            # A value the database cannot hold that the storage's checks let through.
            session.rollback()
            log.warning("%s %s: data error", request.method, request.path, exc_info=True)
            return _error(400, "a value cannot be stored (too long, or a character the "
                          "database refuses)", "invalidValue")
        except sa_exc.IntegrityError:
            # Directory writers take turns, so only a bug or a writer outside Accord gets
            # here: the same answer as the directory's own uniqueness check.
            session.rollback()
            log.warning("%s %s: integrity error", request.method, request.path, exc_info=True)
            return _error(409, "the directory changed meanwhile; try again", "uniqueness")
    if storage is not None and storage.change is not None and storage.wrote:
        storage.change.after_commit()
    return response


def _busy(exc: Busy) -> ScimResponse:
    response = _error(503, exc.detail)
    response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _serve(st: AppState, request: ScimRequest) -> ScimResponse:
    try:
        return _handle(st, request)
    except Exception:
        log.exception("SCIM %s %s failed", request.method, request.path)
        return _error(500, "internal error; the operator can find it in the server log")


@router.api_route(ROOT, methods=METHODS, include_in_schema=False)
@router.api_route(ROOT + "/{path:path}", methods=METHODS, include_in_schema=False)
async def scim(request: Request, path: str = "") -> Response:
    st: AppState = request.app.state.accord
    base = str(request.base_url).rstrip("/") + ROOT
    scim_request = ScimRequest(
        method=request.method, base_url=base, path="/" + path,
        query=dict(request.query_params), headers=list(request.headers.items()),
        body=await request.body())
    context = contextvars.copy_context()  # the request id the logs carry, as to_thread would
    result = await asyncio.get_running_loop().run_in_executor(
        _POOL, context.run, _serve, st, scim_request)
    content = b"" if result.body is None else orjson.dumps(result.body)
    return Response(content=content, status_code=int(result.status), headers=result.headers)
