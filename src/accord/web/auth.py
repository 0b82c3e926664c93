"""Who is looking at a page (from the session cookie), and CSRF checks on every form."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote, urlsplit

from fastapi import Request
from sqlalchemy.orm import Session

from accord import logs
from accord.api.deps import Principal
from accord.db import end_read, on_sqlite
from accord.identity import sessions as service
from accord.ledger.events import Via
from accord.state import AppState

PRE_COOKIE = "accord_csrf"  # double-submit token for forms shown before login


class LoginRequired(Exception):
    """No live session: send the browser to the login page, then back to `next_url`."""

    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


class CsrfRefused(Exception):
    """A form arrived without the token its page carried (or from another site)."""


@dataclass(frozen=True)
class Viewer:
    principal: Principal
    session_id: int
    csrf: str
    method: str

    @property
    def user(self) -> str:
        return self.principal.user


@dataclass(frozen=True)
class _Cached:
    user: str
    session_id: int
    csrf: str
    method: str
    expires_at: datetime
    token_id: int | None
    at: float


class SessionCache:
    """Recently verified cookies (1 s): a page and its live updates need not each query.
    Logout, an admin ending a session and revoking its token forget the entry at once in
    this process; other replicas see the end within `ttl`."""

    def __init__(self, ttl: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._items: dict[str, _Cached] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> _Cached | None:
        with self._lock:
            hit = self._items.get(digest)
            if hit is not None and self.clock() - hit.at > self.ttl:
                del self._items[digest]
                return None
            return hit

    def put(self, digest: str, value: _Cached) -> None:
        with self._lock:
            if len(self._items) > 10_000:
                self._items.clear()
            self._items[digest] = value

    def forget(self, digest: str) -> None:
        with self._lock:
            self._items.pop(digest, None)

    def forget_token(self, token_id: int) -> None:
        """Drop the sessions opened with a token that was just revoked."""
        with self._lock:
            for key in [k for k, v in self._items.items() if v.token_id == token_id]:
                del self._items[key]


CACHE = SessionCache()


def next_target(request: Request) -> str:
    path = request.url.path
    return path + ("?" + request.url.query if request.url.query else "")


def safe_next(value: str | None) -> str:
    """Only same-site paths: an open redirect after login would be a phishing tool."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


def login_url(next_url: str) -> str:
    return "/login?next=" + quote(next_url, safe="")


def viewer_of(request: Request, session: Session, st: AppState) -> Viewer | None:
    """The logged-in viewer, or None. Policy membership is checked on every call."""
    cookie = request.cookies.get(service.COOKIE)
    if not cookie:
        return None
    digest = service.digest(cookie)
    now = st.now()
    hit = CACHE.get(digest)
    if hit is None:
        row = service.lookup(session, cookie=cookie, now=now)
        # Commit a refusal: the lookup may have ended (and recorded) a session whose token
        # is gone. On SQLite commit anyway, not to hold its write lock for a read.
        if row is None or on_sqlite(session):
            session.commit()
        if row is None:
            return None
        hit = _Cached(row.user, row.id, row.csrf, row.method, row.expires_at, row.token_id,
                      CACHE.clock())
        CACHE.put(digest, hit)
    if hit.expires_at <= now:
        return None
    if st.policies.due():
        st.policies.follow(session)
        end_read(session)
    policy = st.policies.current
    if not policy.is_user(hit.user):
        return None
    logs.set_user(hit.user)  # on every line this call logs from now on
    who = Principal(hit.user, frozenset(policy.roles_of(hit.user)), Via.WEB, policy)
    return Viewer(who, hit.session_id, hit.csrf, hit.method)


def require_viewer(request: Request, session: Session, st: AppState) -> Viewer:
    viewer = viewer_of(request, session, st)
    if viewer is None:
        raise LoginRequired(next_target(request))
    return viewer


def same_origin(request: Request) -> bool:
    """Browsers send Origin on cross-site form posts; when present it must be ours."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", request.url.netloc)


def check_csrf(request: Request, sent: str | None, expected: str) -> None:
    if not same_origin(request):
        raise CsrfRefused("the form was posted from another site")
    if not sent or not secrets.compare_digest(sent.encode(), expected.encode()):
        raise CsrfRefused("the form is missing its security token")


def forget_credentials(st: AppState, *, token_ids: list[int], digests: list[str]) -> None:
    """After a commit that revoked tokens or ended sessions (a person the identity provider
    deactivated): this process stops honouring them at once, other replicas within 1 s."""
    for token_id in token_ids:
        st.tokens.forget(token_id)
        CACHE.forget_token(token_id)
    for digest in digests:
        CACHE.forget(digest)
