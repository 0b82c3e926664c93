"""The MCP gateway's live sessions, on the gateway's core: its grant checks, its crash-safe
spool and shipper, its refused-login budget.

An MCP client speaks stateless HTTP, a call a request; what it holds is a connection token.
The first call with a token checks it in the database (`tokens.authenticate`) and opens a
*session* for it in this process: a `gateway.session_opened` event, then every call made
with that token is a fact of that session. Later calls check the session in memory: its
resource still an MCP resource, its principal still in accord.yaml, the token and grant not
past their end. The watcher (every `gateway.watch_interval`) reads the state of every live
session's grant in one query: a grant revoked or ended closes its sessions
(`gateway.session_closed`) and stops the calls they are running, so within 2 s; a session
idle for IDLE seconds closes too (its next call opens a new one).

Audit facts go through the `AuditWriter` as the other gateways' do (what holds is in
`gateway.audit`): a tool call's `gateway.tool_call` and a refusal's `gateway.violation`
are in the spool (memory-mapped, in the page cache) before the agent gets its answer, and
a shipper process puts them in the ledger every `flush_interval`, so a process that dies
after answering loses none of them. The writer and its shipper start with the first call
(most apps built by `create_app` never serve one), and stop, shipping what is left, with
the app.

Everything here runs on the event loop's thread (the writer wants one thread); database
reads go to worker threads.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio

from accord.db import transaction
from accord.gateway import tokens
from accord.gateway.audit import AuditWriter
from accord.gateway.records import SessionInfo
from accord.gateway.server import RefusalBudget, spool_root
from accord.grants.models import GrantStatus
from accord.spec.gateway import GatewaySpec
from accord.state import AppState

log = logging.getLogger("accord.gateway")
IDLE = 600.0  # seconds without a call before a session closes
# Spool fact names (`recording.BLOB_FACTS`) of a call that passed and of one refused.
TOOL_CALL = "mcp_tool_call"
VIOLATION = "mcp_violation"
DEFAULTS = GatewaySpec()  # the `gateway:` section's, when accord.yaml has none


@dataclass(frozen=True)
class Granted:
    """The grant an HTTP call was let in on."""

    grant_id: int
    user: str
    resource: str
    role: str


@dataclass
class Live:
    """A connection token in use in this process: its grant and its session."""

    granted: Granted
    until: datetime  # the token's end (never past the grant's)
    info: SessionInfo
    last: float  # time.monotonic() of its last call
    calls: set[anyio.CancelScope] = field(default_factory=set)  # running upstream calls
    ended: str | None = None  # why it was closed, once it is


class Sessions:
    """Live sessions by token, their grant watch, and their audit facts."""

    def __init__(self, st: AppState) -> None:
        self.st = st
        self.writer: AuditWriter | None = None
        self.by_token: dict[str, Live] = {}  # the token's sha256 → its session
        self._starting = anyio.Lock()
        self._count = 0
        self._instance = ""
        spec = self.spec
        self.refusals = RefusalBudget(spec.max_refused_logins)

    @property
    def spec(self) -> GatewaySpec:
        """The `gateway:` section (its defaults when accord.yaml has none)."""
        return self.st.policies.current.loaded.spec.gateway or DEFAULTS

    # ------------------------------------------------------------ lifecycle

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await self._stop()

    async def _writer(self) -> AuditWriter:
        """The audit writer, started at the first call (its shipper is a process)."""
        if self.writer is not None:
            return self.writer
        async with self._starting:
            if self.writer is None:
                spec = self.spec
                writer = AuditWriter(
                    self.st.sessions, spool_root(self.st, spec),
                    interval=spec.flush_interval.total_seconds(), batch=spec.flush_batch,
                    max_backlog=spec.max_backlog)
                await anyio.to_thread.run_sync(writer.start)
                self._instance = writer.instance
                self.writer = writer
        return self.writer

    async def _stop(self) -> None:
        writer = self.writer
        if writer is None:
            return
        for live in list(self.by_token.values()):
            self.end(live, "gateway stopped")
        self.writer = None
        await anyio.to_thread.run_sync(writer.stop)

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every fact spooled so far is in the ledger (tests, benchmarks)."""
        writer = self.writer
        return writer is None or writer.drain(timeout)

    # ------------------------------------------------------------ sessions

    def find(self, token_hash: str, resource: str) -> Live | None:
        """The live session of this token on `resource`, if it may still call (checked in
        memory; None: check the token in the database)."""
        live = self.by_token.get(token_hash)
        if live is None or live.granted.resource != resource:
            return None
        policy = self.st.policies.current
        spec = policy.resources.get(resource)
        if spec is None or spec.mcp is None or not policy.is_principal(live.granted.user) \
                or self.st.now() >= live.until:
            self.end(live, "grant expired" if self.st.now() >= live.until else "policy changed")
            return None
        live.last = time.monotonic()
        return live

    async def open(self, token_hash: str, granted: Granted, until: datetime,
                   client: str) -> Live:
        """The session of a token the database just accepted (a new one unless another
        call with it opened one meanwhile)."""
        writer = await self._writer()
        old = self.by_token.get(token_hash)
        if old is not None:  # opened by a call that came at the same time
            return old
        self._count += 1
        info = SessionInfo(
            id=f"{self._instance}-{self._count}", number=self._count,
            grant_id=granted.grant_id, user=granted.user, resource=granted.resource,
            role=granted.role, client=client, application="mcp", tls=False,
            upstream_role=None, owner=self.st.policies.current.owner_of(granted.user))
        writer.opened(info, list)
        live = self.by_token[token_hash] = Live(granted, until, info, time.monotonic())
        return live

    def end(self, live: Live, reason: str) -> None:
        """Close a session: its running calls stop, its close goes in the spool."""
        if live.ended is not None:
            return
        live.ended = reason
        for scope in live.calls:
            scope.cancel()
        for key, other in list(self.by_token.items()):
            if other is live:
                del self.by_token[key]
        if self.writer is not None:
            self.writer.closed(live.info, reason, [])

    def fact(self, live: Live, name: str, data: dict[str, Any], at: datetime) -> None:
        """Spool a call's fact (`TOOL_CALL` or `VIOLATION`) before its answer goes back."""
        writer = self.writer
        if writer is None:  # the gateway is stopping: its sessions were closed
            raise RuntimeError("the MCP gateway is stopping")
        writer.blob(live.info, name, data, at_ns=int(at.timestamp() * 1e9))
        if name == VIOLATION:
            live.info.violations += 1
            writer.violations += 1
        else:
            live.info.statements += 1
            writer.statements += 1

    @contextlib.contextmanager
    def call(self, live: Live) -> Any:
        """A running upstream call of `live`: cancelled when its session ends."""
        with anyio.CancelScope() as scope:
            live.calls.add(scope)
            try:
                yield scope
            finally:
                live.calls.discard(scope)

    # ------------------------------------------------------------ refusals

    def refused(self, *, user: str, resource: str, refusal: tokens.Refusal,
                client: str) -> None:
        """Record a refused call within the budget of refusals per client address
        (a database thread)."""
        st = self.st
        if not self.refusals.admit(client, st.now()):
            return
        with transaction(st.sessions) as s:
            tokens.record_refusal(s, policy=st.policies.current, user=user,
                                  resource=resource[:64], refusal=refusal, client=client,
                                  now=st.now())

    # ------------------------------------------------------------ the watch

    async def _watch(self) -> None:
        while True:
            await anyio.sleep(self.spec.watch_interval.total_seconds())
            try:
                await self._tick()
            except Exception:  # the database is briefly unavailable: check again next tick
                log.exception("gateway (mcp): grant check failed")

    async def _tick(self) -> None:
        writer = self.writer
        if writer is not None:
            writer.ensure_shipper()
            writer.check()
        suppressed = self.refusals.due()
        if suppressed:
            await anyio.to_thread.run_sync(self._record_suppressed, suppressed)
        if not self.by_token:
            return
        idle = time.monotonic() - IDLE
        for live in list(self.by_token.values()):
            if live.last < idle and not live.calls:
                self.end(live, "idle")
        ids = sorted({live.granted.grant_id for live in self.by_token.values()})
        states = await anyio.to_thread.run_sync(self._states, ids)
        now = self.st.now()
        for live in list(self.by_token.values()):
            status, ends = states.get(live.granted.grant_id, ("missing", now))
            if status == GrantStatus.ACTIVE and ends > now:
                continue
            why = "expired" if status in (GrantStatus.ACTIVE, GrantStatus.EXPIRED) else status
            self.end(live, f"grant {why}")

    def _states(self, ids: list[int]) -> dict[int, tuple[str, datetime]]:
        with self.st.sessions() as session:
            return tokens.grant_states(session, ids=ids)

    def _record_suppressed(self, suppressed: list[tuple[str, int, datetime]]) -> None:
        with transaction(self.st.sessions) as s:
            for address, count, since in suppressed:
                tokens.record_suppressed(s, client=address, count=count, since=since,
                                         now=self.st.now())
