"""RFC 9457 problem details for every error, and the request body size limit."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import exc as sa_exc
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from accord.asgi import read_body
from accord.errors import AccordError, Busy

HtmlErrors = Callable[[Request, int, str, str], Response]

log = logging.getLogger("accord.api")
MAX_BODY = 64 * 1024
PROBLEM = "application/problem+json"
_TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
           405: "Method not allowed", 409: "Conflict", 413: "Content too large",
           415: "Unsupported media type", 422: "Invalid request", 500: "Internal error",
           503: "Service busy"}


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# Paths that only ever answer machines; everything else is a page a browser may ask for.
_MACHINE = ("/api/", "/docs", "/redoc", "/openapi.json", "/healthz", "/readyz", "/metrics")


def wants_html(request: Request) -> bool:
    """A browser navigating the dashboard gets an HTML error page, never JSON."""
    path = request.url.path
    return not path.startswith(_MACHINE) and "text/html" in request.headers.get("accept", "")


def problem(status: int, detail: str, *, slug: str | None = None, title: str | None = None,
            instance: str | None = None, headers: Mapping[str, str] | None = None,
            **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://accord.dev/problems/{slug or status}",
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    out = dict(headers or {})  # an exception's own (a 405's Allow, RFC 9110 15.5.6)
    if status == 401:
        out["WWW-Authenticate"] = 'Bearer realm="accord"'
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=out or None)


def lock_contention(exc: BaseException) -> Busy | None:
    """The database was too busy to answer (not broken): a Busy saying so, else None.

    SQLite's "database is locked" comes when another process holds the write lock past
    busy_timeout, or at once when a read transaction tries to write; a full connection
    pool times out the same way. Both pass: the client should come back, not see a 500.
    """
    if isinstance(exc, sa_exc.TimeoutError):
        return Busy("no database connection came free in time; try again shortly")
    if isinstance(exc, sa_exc.OperationalError):
        text = str(exc.orig).lower()
        if "database is locked" in text or "database table is locked" in text:
            return Busy("the database is busy with other writes; try again shortly")
    return None


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


def _message(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "is required"
    msg = str(err.get("msg", "invalid"))
    return msg.removeprefix("Value error, ")


def install(app: FastAPI, html: HtmlErrors | None = None) -> None:
    """Problem+json for every error; `html` renders the same errors as pages for browsers."""

    async def page(request: Request, status: int, title: str, detail: str) -> Response | None:
        if html is None or not wants_html(request):
            return None
        return await run_in_threadpool(html, request, status, title, detail)

    @app.exception_handler(AccordError)
    async def _accord(request: Request, exc: AccordError) -> Response:
        shown = await page(request, exc.status, exc.title, exc.detail)
        if shown is None:
            extra: dict[str, Any] = dict(exc.extra)
            if exc.field:
                extra["errors"] = [{"loc": exc.field, "msg": exc.detail}]
            detail = f"{exc.field}: {exc.detail}" if exc.field else exc.detail
            shown = problem(exc.status, detail, slug=exc.slug, title=exc.title,
                            instance=request.url.path, **extra)
        if isinstance(exc, Busy):
            shown.headers["Retry-After"] = str(exc.retry_after)
        return shown

    @app.exception_handler(sa_exc.OperationalError)
    @app.exception_handler(sa_exc.TimeoutError)
    async def _database(request: Request, exc: Exception) -> Response:
        busy = lock_contention(exc)
        if busy is None:
            return await _unexpected(request, exc)
        # The driver's message only: SQLAlchemy's own text carries the statement's parameters.
        cause = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
        log.warning("%s %s: 503, %s (%s)", request.method, request.url.path, busy.detail, cause)
        return await _accord(request, busy)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        errors = [{"loc": _loc(e.get("loc", ())), "msg": _message(e)} for e in exc.errors()]
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            first = next(e for e in exc.errors() if e.get("type") == "json_invalid")
            ctx = first.get("ctx") or {}
            return problem(400, f"malformed JSON: {ctx.get('error', 'cannot parse body')}",
                           slug="malformed-json", instance=request.url.path)
        detail = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors)
        if (shown := await page(request, 422, "Invalid request", detail)) is not None:
            return shown
        return problem(422, detail, slug="validation", instance=request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else _TITLES.get(exc.status_code, "")
        headers = dict(exc.headers or {})
        if exc.status_code == 405 and (allowed := _allowed(request)):
            headers["Allow"] = allowed  # Starlette names the first matching route's only
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path}"
            shown = await page(request, 404, "Not found",
                               f"There is no page at {request.url.path}.")
        else:
            shown = await page(request, exc.status_code, _TITLES.get(exc.status_code, "Error"),
                               detail)
        if shown is None:
            return problem(exc.status_code, detail, instance=request.url.path, headers=headers)
        shown.headers.update(headers)
        return shown

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        try:
            shown = await page(request, 500, "Something went wrong",
                               "An internal error stopped this page. Nothing was changed by "
                               "it; the operator can find the details in the server log.")
        except Exception:  # the error page itself failed: fall back to plain problem+json
            log.exception("the error page failed too")
            shown = None
        if shown is not None:
            return shown
        return problem(500, "internal error; the operator can find it in the server log",
                       instance=request.url.path)


def _allowed(request: Request) -> str:
    """Every method some route takes at this path (RFC 9110: a 405 says which). Each is
    tried against the routes: Starlette names only the first matching route's methods.
    A mount (static files) matches whatever the method: it is not asked."""
    routes = [r for r in request.app.router.routes if not isinstance(r, Mount)]
    return ", ".join(method for method in _METHODS if any(
        route.matches({**request.scope, "method": method})[0] == Match.FULL
        for route in routes))


def _control_characters(scope: Scope) -> str | None:
    """Where the URL carries a control character (NUL breaks PostgreSQL text), if anywhere."""
    path = scope.get("path", "")
    if any(ord(c) < 32 or c == "\x7f" for c in path):
        return "the path"
    query = scope.get("query_string", b"")
    if query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if any(ord(c) < 32 or c == "\x7f" for c in name + value):
                return f"query parameter {name!r}"
    return None


class BodyLimit:
    """Refuse bodies over MAX_BODY with 413 before a handler reads them, chunked ones included.
    `larger`: path prefixes allowed a larger body, and how large."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY,
                 larger: dict[str, int] | None = None) -> None:
        self.app = app
        self.default = limit
        self.larger = larger or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit = next((n for prefix, n in self.larger.items() if path.startswith(prefix)),
                     self.default)
        bad = _control_characters(scope)
        if bad:
            await problem(422, f"{bad} must not contain control characters",
                          slug="validation")(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > limit
                except ValueError:
                    too_big = False
                if too_big:
                    await self._refuse(scope, receive, send, limit)
                    return
        # Buffer the body (at most `limit` bytes) so chunked uploads are capped as well.
        body = await read_body(receive, limit)
        if body is None:
            await self._refuse(scope, receive, send, limit)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = problem(413, f"request body is over the {limit // 1024} KiB limit",
                           slug="too-large")
        await response(scope, receive, send)
