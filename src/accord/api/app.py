"""The FastAPI application: routers, problem+json errors, body limit, health."""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from starlette.routing import Route

from accord import __version__, metrics
from accord.api import headers, mcp, observe, openapi, problems
from accord.api.intent import DatabaseIntent
from accord.detect import views as alert_views
from accord.directory import views as directory_views
from accord.directory.scim import views as scim_views
from accord.gateway import views as gateway_views
from accord.gateway.mcp import proxy as mcp_gateway_proxy
from accord.gateway.mcp import views as mcp_gateway_views
from accord.gateway.ssh import views as ssh_views
from accord.grants import views as grant_views
from accord.identity import views as identity_views
from accord.ledger import views as ledger_views
from accord.notify import views as slack_views
from accord.policy import views as policy_views
from accord.reports import views as report_views
from accord.requests import views as request_views
from accord.reviews import views as review_views
from accord.state import AppState
from accord.web import directory_pages, report_pages
from accord.web import pages as web_pages
from accord.web import render as web_render
from accord.worker.integrity import IntegrityMonitor, monitor_for
from accord.worker.job_runner import JobRunner
from accord.worker.ledger_jobs import LedgerWorker
from accord.worker.sweeper import Sweeper

log = logging.getLogger("accord.api")


# With SQLite, how long a thread waiting for the GIL waits before the running one must
# let go (Python's default: 5 ms). The holder of SQLite's write lock lets go of the GIL in
# every SQLite call and then waits, that long at worst, for a thread busy in Python (the
# event loop, mostly) to give it back: ~10 times a transaction, while every other writer
# waits for the lock. 0.5 ms bounds that: at 8 writers the p99 was lower in 6 of 7 paired
# runs of benchmarks/sqlite_writes.py (by 10 ms at the median). PostgreSQL keeps 5 ms.
SQLITE_SWITCH_INTERVAL = 0.0005


def before_serving(st: AppState) -> None:
    """Settle the process before it serves.

    * Collect, then hide from the garbage collector everything alive now (modules, the
      app, the policy, SQLAlchemy's mappers: ~200k objects), which lives as long as the
      process. A full collection then walks only what serving created since; over all of
      them it stopped every thread for 130-170 ms now and then under load. Frozen objects
      are still freed by reference counting; only cycles among them would stay.
    * On SQLite, hand the GIL over sooner (SQLITE_SWITCH_INTERVAL).
    """
    bind = st.sessions.kw.get("bind")
    if bind is not None and bind.dialect.name == "sqlite":
        sys.setswitchinterval(SQLITE_SWITCH_INTERVAL)
    gc.collect()
    gc.freeze()


def start_background(st: AppState) -> Callable[[], None]:
    """Start the expiry sweeper, ledger worker, job runner and (when configured) the
    gateway in this process; returns what stops them, in reverse order."""
    sinks = st.policies.current.loaded.spec.ledger.sinks
    jobs: list[Sweeper | LedgerWorker | JobRunner | IntegrityMonitor] = [
        Sweeper(st.sessions, now=st.now),
        LedgerWorker(st.sessions, st.ledger, st.now, sinks),
        JobRunner(st.sessions, st.policies, st.connectors, st.secrets, st.now)]
    monitor = monitor_for(st.sessions, st.ledger, st.now,
                          st.policies.current.loaded.spec.ledger.integrity)
    if monitor is not None:
        jobs.append(monitor)
    for job in jobs:
        job.start()
    gateway = None
    spec = st.policies.current.loaded.spec.gateway
    if spec is not None:
        # The gateway runs where the jobs run. Imported here: the proxy (and pglast, its
        # SQL parser) loads only when accord.yaml has a `gateway:` section.
        from accord.gateway.protocols import build

        if spec.processes != "auto" and spec.processes > 1:
            log.warning("gateway.processes is %d, but `accord serve` runs one gateway, in a "
                        "thread; run `accord gateway` for several processes", spec.processes)
        gateway = build(st, spec)
        try:
            gateway.start_thread()
        except BaseException:
            for job in reversed(jobs):
                job.stop()
            raise

    def stop() -> None:
        if gateway is not None:
            gateway.stop_thread()
        for job in reversed(jobs):
            job.stop()

    return stop


def create_app(st: AppState, *, background: bool = False) -> FastAPI:
    """Build the app around `st`. `background` runs the expiry sweeper in this process."""

    tools = mcp.Endpoint(st)  # /mcp: Accord's tools for agents (MCP, streamable HTTP)
    mcp_gateway = mcp_gateway_proxy.McpGateway(st)  # /gateway/mcp/<resource>: MCP servers

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        web_pages.end_streams_on_signals()  # the server's handlers are in place by now
        stop = start_background(st) if background else None
        try:
            async with tools.running(), mcp_gateway.running():
                yield
        finally:
            if stop is not None:
                stop()
            metrics.process_exiting()  # a worker leaves: its live gauges stop counting

    app = FastAPI(
        title="Accord",
        version=__version__,
        description="Self-service access requests with a tamper-evident audit ledger.",
        lifespan=lifespan,
        docs_url=None, redoc_url=None,  # /docs is headers.install_docs: no CDN
    )
    app.state.accord = st
    app.state.mcp_gateway = mcp_gateway
    problems.install(app, html=web_render.error_page)
    openapi.install(app)  # errors, tokens and URL rules in /openapi.json
    # An identity provider's SCIM calls may carry hundreds of group members.
    app.add_middleware(problems.BodyLimit, larger={scim_views.ROOT + "/": scim_views.MAX_BODY})
    # MCP clients' calls to the gateway skip what follows (inside request metrics and ids).
    mcp_gateway_proxy.install(app, mcp_gateway)
    # Security headers on every response (500s too); Swagger UI from installed files.
    headers.secure_everything(app)
    headers.install_docs(app)
    # Outside everything (500s too): request ids, log context, request metrics.
    database_gauges = observe.DatabaseGauges(st)
    observe.install(app, access_log=st.settings.access_log)
    app.add_middleware(DatabaseIntent)  # GET/HEAD read without waiting for SQLite's writers
    # /scim/v2 first: an identity provider's push is tens of thousands of calls, and each
    # one tried every other route before it (about 0.1 ms a call); its prefix shadows none.
    app.include_router(scim_views.router)
    for module in (request_views, grant_views, identity_views, ledger_views, policy_views,
                   alert_views, directory_views,
                   slack_views, gateway_views, ssh_views):
        app.include_router(module.router)
    app.include_router(ssh_views.web)  # the SSH recordings' player pages
    app.include_router(slack_views.prefs_router)  # notification preferences
    app.include_router(report_views.router)  # reports (auditors and admins)
    app.include_router(policy_views.replay_router)  # replaying a candidate (auditors, admins)
    app.include_router(review_views.router)  # access review campaigns

    # An ASGI app of its own (Starlette calls a route's non-function endpoint as one).
    app.router.routes.append(Route("/mcp", tools, methods=["GET", "POST", "DELETE"],
                                   include_in_schema=False))
    app.include_router(mcp_gateway_views.router)

    web_pages.install(app)  # the dashboard: "/", /login, /requests, ... (HTML)
    app.include_router(report_pages.router)
    app.include_router(directory_pages.router)

    # async: the process answers even when every worker thread waits on the database.
    @app.get("/healthz", tags=["ops"], include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], include_in_schema=False)
    def readyz(request: Request) -> JSONResponse:
        try:
            with st.sessions() as s:
                s.execute(text("SELECT 1"))
        except Exception as exc:  # the database being down is exactly what this reports
            return problems.problem(503, f"database unreachable: {type(exc).__name__}")
        return JSONResponse({"status": "ready", "policy": st.policies.current.version})

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    def metrics_page() -> Response:
        """Prometheus text format: every process's counters, and the database's gauges
        read now (docs/operations.md)."""
        return Response(metrics.exposition([database_gauges]), media_type=metrics.CONTENT_TYPE)

    return app
