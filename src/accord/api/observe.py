"""What operators watch: each HTTP call's metrics and log context, and `/metrics`.

`Observe` (pure ASGI, outside everything else, 500s included) gives each call a request
id (`X-Request-Id`, and every log line logged while it runs), counts it by route template,
method and status and times it. The route template is the route FastAPI matched
(`/api/v1/requests/{request_id}`), never the path: ids do not make new series. Calls no
route matched count as `unmatched`.

`DatabaseGauges` reads what the database knows at scrape time: queue depth and lag by job
kind, the ledger's size, backlog and last checkpoint, pending requests, active grants.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from fastapi import FastAPI
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import case, func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from accord import __version__, logs, metrics
from accord.grants.models import Grant, GrantStatus
from accord.jobs.models import Job
from accord.ledger.models import LedgerCheckpoint, LedgerEntry
from accord.ledger.service import pending_count, tree_size
from accord.requests.models import AccessRequest, Status
from accord.state import AppState

log = logging.getLogger("accord.api")
access = logging.getLogger("accord.access")

UNMATCHED = "unmatched"


def route_of(scope: Scope) -> str:
    """The template of the route that served `scope` (set by the router as it matched)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class Observe:
    """Request id, log context, request metrics and (with `access_log`) a line per call."""

    def __init__(self, app: ASGIApp, *, access_log: bool = False) -> None:
        self.app = app
        self.access_log = access_log
        m = metrics.get()
        self._requests = m.http_requests
        self._duration = m.http_duration
        # (route, method, status) -> (counter, histogram) children: labels() validates and
        # locks on every call, a dict lookup does not.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = logs.RequestContext(scope=scope)
        header = (b"x-request-id", ctx.id.encode())
        status = 500  # unless a response starts: an exception no handler answered

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = logs.begin(ctx)
        began = time.perf_counter()
        try:
            await self.app(scope, receive, send_observed)
        finally:
            elapsed = time.perf_counter() - began
            key = (route_of(scope), scope["method"], status)
            children = self._children.get(key)
            if children is None:
                children = self._child(key)
            children[0].inc()
            children[1].observe(elapsed)
            if self.access_log:
                access.info("%s %s %d %.1f ms", key[1], key[0], status, elapsed * 1000,
                            extra={"fields": {"method": key[1], "status": status,
                                              "duration_ms": round(elapsed * 1000, 3)}})
            logs.end(token)

    def _child(self, key: tuple[str, str, int]) -> tuple[Any, Any]:
        route, method, status = key
        children = (self._requests.labels(route, method, str(status)),
                    self._duration.labels(route, method))
        if len(self._children) < 10_000:  # bounded, whatever clients send as methods
            self._children[key] = children
        return children


def install(app: FastAPI, *, access_log: bool = False) -> None:
    """Observe every call, outside Starlette's ServerErrorMiddleware (500s counted too)."""
    build = app.build_middleware_stack
    app.build_middleware_stack = (  # type: ignore[method-assign]
        lambda: Observe(build(), access_log=access_log))


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class DatabaseGauges:
    """Gauges read from the database at each scrape (a scrape never fails for want of
    it: `accord_database_up` says 0 and the others are left out)."""

    def __init__(self, st: AppState) -> None:
        self.st = st
        self.kinds: set[str] = set()  # job kinds seen: they stay, at 0, once drained

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("accord_info", "Accord's version and the policy it runs",
                                 labels=["version", "policy"])
        info.add_metric([__version__, self.st.policies.current.version[:12]], 1)
        yield info
        try:
            with self.st.sessions() as session:
                found = list(self._read(session, self.st.now()))
        except Exception:  # a scrape must not fail because the database is down
            log.exception("metrics: database unavailable")
            yield _gauge("accord_database_up", "Whether the scrape could read the database", 0)
            return
        yield _gauge("accord_database_up", "Whether the scrape could read the database", 1)
        yield from found

    def _read(self, session: Any, now: datetime) -> Iterator[Metric]:
        def count(q: Any) -> int:
            return int(session.execute(q).scalar_one())

        yield _gauge("accord_ledger_size", "Entries integrated into the audit ledger (the "
                     "tree size)", tree_size(session))
        yield _gauge("accord_ledger_pending", "Events recorded and waiting for integration "
                     "into the ledger", pending_count(session))
        oldest = session.execute(select(func.min(LedgerEntry.time))
                                 .where(LedgerEntry.idx.is_(None))).scalar_one()
        yield _gauge("accord_ledger_pending_age_seconds", "Age of the oldest event waiting "
                     "for integration (0: none)",
                     max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
        last = session.execute(select(LedgerCheckpoint.size, LedgerCheckpoint.signed_at)
                               .order_by(LedgerCheckpoint.size.desc()).limit(1)).first()
        if last is not None:
            yield _gauge("accord_ledger_checkpoint_size", "Tree size of the latest signed "
                         "checkpoint", last.size)
            yield _gauge("accord_ledger_checkpoint_age_seconds", "Seconds since the latest "
                         "checkpoint was signed", max(0.0, (now - last.signed_at).total_seconds()))
        yield _gauge("accord_requests_pending", "Requests waiting for a decision", count(
            select(func.count()).select_from(AccessRequest)
            .where(AccessRequest.status == Status.PENDING)))
        yield _gauge("accord_grants_active", "Active grants", count(
            select(func.count()).select_from(Grant).where(Grant.status == GrantStatus.ACTIVE)))
        yield from self._jobs(session, now)

    def _jobs(self, session: Any, now: datetime) -> Iterator[Metric]:
        is_due = Job.run_at <= now
        rows = session.execute(
            select(Job.kind, func.count(), func.sum(case((is_due, 1), else_=0)),
                   func.min(case((is_due, Job.run_at))),
                   func.sum(case((Job.attempts > 0, 1), else_=0)))
            .where(Job.done_at.is_(None)).group_by(Job.kind)).all()
        queued = GaugeMetricFamily("accord_jobs_queued", "Jobs not yet done (due or "
                                   "scheduled), by kind", labels=["kind"])
        due = GaugeMetricFamily("accord_jobs_due", "Jobs due and not yet done, by kind",
                                labels=["kind"])
        lag = GaugeMetricFamily("accord_jobs_lag_seconds", "How long the oldest due job "
                                "has waited past its time, by kind (0: none due)",
                                labels=["kind"])
        retrying = GaugeMetricFamily("accord_jobs_retrying", "Jobs not done that have "
                                     "failed at least once, by kind", labels=["kind"])
        seen: set[str] = set()
        for kind, n, n_due, first, n_retrying in rows:
            seen.add(kind)
            queued.add_metric([kind], n)
            due.add_metric([kind], n_due or 0)
            lag.add_metric([kind], max(0.0, (now - first).total_seconds()) if first else 0.0)
            retrying.add_metric([kind], n_retrying or 0)
        for kind in sorted(self.kinds - seen):
            for family in (queued, due, lag, retrying):
                family.add_metric([kind], 0)
        self.kinds |= seen
        yield from (queued, due, lag, retrying)
