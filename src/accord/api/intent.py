"""What each HTTP call may do to the database, told to `accord.db` before any handler runs.

GET and HEAD only read: on SQLite their transactions begin deferred, so reads (pages,
lists, /readyz, /metrics) never queue behind writers. A GET handler that records
something wraps that work in `accord.db.writing()` (or uses `transaction()`). Every call's
writers are bounded: past the write gate's queue they get 503 with Retry-After.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from accord import db

READ_METHODS = frozenset({"GET", "HEAD"})


class DatabaseIntent:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with db.serving(reads=scope["method"] in READ_METHODS):
            await self.app(scope, receive, send)
