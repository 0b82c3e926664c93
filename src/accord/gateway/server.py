"""The gateway's protocol-neutral server: listen (or take connections from a prefork
parent), keep the live sessions, end them when their grant ends, spool their audit facts,
and check connection tokens, whatever protocol the sessions speak.

A protocol subclasses `GatewayServer` and implements `handle` (one connection, from the
first byte to the end of its session), using `authorize` to check the client's connection
token and registering each live session, which implements `LiveSession`. Another protocol
served by the same process, on a listener of its own, is a `Front` added to the server
(`add_front`): it shares the server's audit writer (one spool, one shipper), session
registry, grant watcher, refused-login budget and database threads. Everything runs on
one event loop (uvloop when installed); database work (token checks, the grant watcher)
goes to a small thread pool; audit facts go to the `AuditWriter`, which never makes the
data path wait. `postgres.proxy.PostgresGateway` is the PostgreSQL protocol's server.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from accord import metrics
from accord.db import transaction
from accord.gateway import memory, packs, prefork_msg, tokens
from accord.gateway.audit import AuditWriter
from accord.gateway.link import Link
from accord.gateway.records import SessionInfo
from accord.grants.models import Grant, GrantStatus
from accord.spec.gateway import GatewaySpec
from accord.spec.resources import ResourceSpec
from accord.state import AppState

log = logging.getLogger("accord.gateway")
T = TypeVar("T")
SWITCH_INTERVAL = 0.0005
TICK = 0.01  # how often waiting statement outcomes are written to the spool


class LiveSession(Protocol):
    """What the server needs of a live session, whatever its protocol."""

    info: SessionInfo
    key: Any  # how a sibling's cancel request names it (None: cannot be cancelled)
    protocol: str  # which protocol serves it (a label of the gateway's metrics)

    def terminate(self, reason: str, why: str) -> None:
        """End the session now, telling the client `why` the way its protocol can."""


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency of uvicorn[standard]
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def spool_root(st: AppState, spec: GatewaySpec) -> Path:
    """Where gateway processes keep their spools, a directory each."""
    return Path(spec.spool_dir) if spec.spool_dir else st.settings.data_dir / "gateway-spool"


def run(gw: GatewayServer, on_ready: Callable[[], object] | None = None) -> None:
    """Serve on this thread until SIGTERM or SIGINT (`accord gateway` and each of its
    prefork children)."""
    # The data path allocates small short-lived objects; collecting the startup heap over
    # and over is wasted work in a process that does nothing else.
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    memory.keep_freed_memory()
    loop = new_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        loop.run_until_complete(gw.serve_forever(stop, on_ready))
    finally:
        loop.close()


def set_priority(nice: int | None) -> int | None:
    """Give the calling thread (the data path's: Linux keeps a nice value per thread, and
    threads and processes started from it inherit it) the nice value `nice`; returns the
    one it had, or None when nothing changed."""
    if nice is None or not hasattr(os, "setpriority"):
        return None
    before = os.getpriority(os.PRIO_PROCESS, 0)
    if nice == before:
        return None
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except PermissionError:
        log.warning("gateway.priority %d needs CAP_SYS_NICE (or root); the gateway keeps "
                    "nice %d", nice, before)
        return None
    log.info("gateway: data path at nice %d (was %d)", nice, before)
    return before


class RefusalBudget:
    """How many refused logins per client address are recorded one by one each minute.

    An unauthenticated client can be refused as fast as it can connect; past the budget its
    refusals are counted, and each address's count goes into the ledger once its minute is
    over (`gateway.logins_suppressed`), so a flood cannot grow the ledger or the alerts.
    """

    WINDOW = 60.0

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock
        self._seen: dict[str, list[Any]] = {}  # address -> [window start, count, since]
        self._over: list[tuple[str, int, datetime]] = []  # ended windows past the budget

    def _close(self, address: str, entry: list[Any]) -> None:
        del self._seen[address]
        if entry[1] > self.limit:
            self._over.append((address, entry[1] - self.limit, entry[2]))

    def admit(self, address: str, now: datetime) -> bool:
        """Whether to record this refusal (False: counted for the summary)."""
        t = self.clock()
        entry = self._seen.get(address)
        if entry is not None and t - entry[0] >= self.WINDOW:
            self._close(address, entry)
            entry = None
        if entry is None:
            if len(self._seen) >= 10_000:  # bounded memory
                for old in list(self._seen):
                    self._close(old, self._seen[old])
            entry = self._seen[address] = [t, 0, now]
        entry[1] += 1
        return bool(entry[1] <= self.limit)

    def due(self) -> list[tuple[str, int, datetime]]:
        """Windows that ended with refusals past the budget: (address, how many were not
        recorded, since when)."""
        t = self.clock()
        for address, entry in list(self._seen.items()):
            if t - entry[0] >= self.WINDOW:
                self._close(address, entry)
        out, self._over = self._over, []
        return out


class Front:
    """Another protocol on a gateway process, on a listener of its own: it serves each
    connection accepted there (`handle`) with its server's core."""

    protocol = "unknown"

    def __init__(self, server: GatewayServer, listen: tuple[str, int]) -> None:
        self.server = server
        self.host, self.port = listen
        self._listener: asyncio.base_events.Server | None = None

    async def handle(self, client: Link) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        """Listen (a prefork child takes its connections from the parent instead)."""
        srv = self.server
        if srv.inbox is not None:
            return
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(lambda: _Accepted(srv, self.handle),
                                                  self.host, self.port, reuse_address=True,
                                                  backlog=512)
        if self.port == 0:
            self.port = self._listener.sockets[0].getsockname()[1]
        log.info("Accord gateway (%s) listening on %s:%d", self.protocol, self.host, self.port)

    def accept(self, conn: socket.socket) -> None:
        """Serve a connection a prefork parent accepted (a protocol with a library of its
        own for the connection, such as SSH's, takes the socket instead)."""
        loop = asyncio.get_running_loop()
        self.server.spawn(loop.connect_accepted_socket(
            functools.partial(_Accepted, self.server, self.handle), conn))

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()


class GatewayServer:
    """The listening server and its live sessions; a protocol implements `handle`."""

    protocol = "unknown"  # the protocol's name, a label of the gateway's metrics

    def __init__(self, st: AppState, spec: GatewaySpec, *, env: dict[str, str] | None = None,
                 listen: tuple[str, int] | None = None, inbox: socket.socket | None = None,
                 index: int = 0) -> None:
        """`inbox`: instead of listening, take connections that a parent process accepted
        (`gateway.prefork`); `index` (1-64) then names this process in its cancel keys."""
        self.st = st
        self.inbox = inbox
        self.index = index
        self.spec = spec
        self.env = dict(os.environ if env is None else env)
        self.host, self.port = listen or spec.host_port
        self.audit = AuditWriter(
            st.sessions, spool_root(st, spec), interval=spec.flush_interval.total_seconds(),
            batch=spec.flush_batch, max_backlog=spec.max_backlog,
            statements_per_event=spec.statements_per_event,
            max_statement_bytes=spec.max_statement_bytes,
            max_spool_bytes=spec.max_spool_bytes,
            recordings_dir=packs.root(st.settings.data_dir, spec))
        self.message_timeout = spec.message_timeout.total_seconds()
        self.sessions: dict[int, LiveSession] = {}
        self.keys: dict[Any, LiveSession] = {}
        self.tls = self._tls_context()
        self.executor = ThreadPoolExecutor(4, thread_name_prefix="accord-gateway-db")
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self.ticker: asyncio.TimerHandle | None = None
        self._count = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None  # set: serve_forever returns
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.refusals = RefusalBudget(spec.max_refused_logins)
        m = metrics.get()
        self._statements = m.gateway_statements.labels(self.protocol)
        self._refused_statements = m.gateway_refusals.labels(self.protocol, "statement")
        self._reported = (0, 0)  # the audit writer's statements and violations counted
        self.fronts: list[Front] = []

    def add_front(self, front: Front) -> None:
        """Serve another protocol too, on its own listener (before `start`)."""
        self.fronts.append(front)

    def front_for(self, port: int) -> Callable[[Link], Any]:
        """Who serves a connection accepted on local `port` (a prefork child's)."""
        for front in self.fronts:
            if front.port == port:
                return front.handle
        return self.handle
    def _tls_context(self) -> ssl.SSLContext | None:
        tls = self.spec.tls
        if not tls.cert or not tls.key:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(tls.cert, tls.key)
        return ctx

    # -- plumbing

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def db(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    def register(self, session: LiveSession) -> None:
        self.sessions[session.info.number] = session
        if session.key is not None:
            self.keys[session.key] = session
        m = metrics.get()
        m.gateway_sessions.labels(session.protocol).inc()
        m.gateway_sessions_open.labels(session.protocol).inc()

    def next_number(self) -> int:
        self._count += 1
        return self._count

    def forget(self, session: LiveSession) -> None:
        if self.sessions.pop(session.info.number, None) is not None:
            metrics.get().gateway_sessions_open.labels(session.protocol).dec()
        self.keys.pop(session.key, None)
        self.report()

    def refused(self, kind: str = "login", protocol: str | None = None) -> None:
        """Count a refusal on /metrics (a protocol's `handle` calls this for logins)."""
        metrics.get().gateway_refusals.labels(protocol or self.protocol, kind).inc()

    def report(self) -> None:
        """Add the statements answered and refused since the last report to the counters
        (the data path only counts in ints; this runs as sessions end and each watch)."""
        statements, violations = self.audit.statements, self.audit.violations
        done, refused = self._reported
        if statements > done:
            self._statements.inc(statements - done)
        if violations > refused:
            self._refused_statements.inc(violations - refused)
        self._reported = (statements, violations)

    # -- lifecycle

    async def start(self) -> None:
        """Replay dead spools, open ours, listen, watch grants."""
        # Logins and the grant watcher query the database on threads; with the default
        # 5 ms switch interval each of them could stall the data path that long.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        self.audit.shipper_nice = set_priority(self.spec.priority)
        # A prefork child leaves dead gateways' spools to its parent, which looks for them
        # whenever a child dies.
        await self.db(functools.partial(self.audit.start, replay=self.inbox is None))
        loop = asyncio.get_running_loop()
        if self.inbox is not None:
            self.inbox.setblocking(False)
            loop.add_reader(self.inbox.fileno(), self._from_parent)
        else:
            self._server = await loop.create_server(lambda: _Accepted(self, self.handle),
                                                    self.host, self.port, reuse_address=True,
                                                    backlog=512)
            if self.port == 0:
                self.port = self._server.sockets[0].getsockname()[1]
        for front in self.fronts:
            await front.start()
        self._watcher = asyncio.ensure_future(self._watch())
        tls = "required" if self.spec.tls.required else ("offered" if self.tls else "off")
        if self.inbox is None:
            log.info("Accord gateway listening on %s:%d (TLS %s)", self.host, self.port, tls)
        else:
            log.info("Accord gateway process %d serving its parent's connections (TLS %s)",
                     self.index, tls)

    def arm_tick(self) -> None:
        """Write waiting outcomes after TICK. Armed only while some wait: an idle gateway
        does not wake up a hundred times a second."""
        self.ticker = asyncio.get_running_loop().call_later(TICK, self._tick)

    def _tick(self) -> None:
        self.ticker = None
        self.audit.tick()

    def from_sibling(self, msg: bytes) -> None:
        """A message from the prefork parent that is not a connection (a protocol's, such as
        a cancel request for one of our sessions that reached a sibling)."""

    def _from_parent(self) -> None:
        """Connections (and a protocol's messages from siblings) from the parent."""
        assert self.inbox is not None
        try:
            msg, fds, _, _ = socket.recv_fds(self.inbox, 64, 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            msg, fds = b"", []
        if not msg:  # the parent is gone: stop as on SIGTERM
            asyncio.get_running_loop().remove_reader(self.inbox.fileno())
            if self._stop is not None:
                self._stop.set()
            return
        if msg != prefork_msg.ACCEPTED:
            self.from_sibling(msg)
        loop = asyncio.get_running_loop()
        for fd in fds:
            os.set_inheritable(fd, False)  # recvmsg without MSG_CMSG_CLOEXEC
            conn = socket.socket(fileno=fd)
            conn.setblocking(False)
            try:
                port = conn.getsockname()[1]
            except OSError:
                port = -1
            front = next((f for f in self.fronts if f.port == port), None)
            if front is not None:
                front.accept(conn)
            else:
                self.spawn(loop.connect_accepted_socket(
                    functools.partial(_Accepted, self, self.handle), conn))

    async def close(self) -> None:
        """Stop listening, end every session, flush the audit trail."""
        if self._server is not None:
            self._server.close()
        for front in self.fronts:
            front.close()
        if self.inbox is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self.inbox.fileno())
            with contextlib.suppress(OSError):  # the parent may be gone
                self.inbox.send(prefork_msg.STOPPING)  # no more connections for us
        if self._watcher is not None:
            self._watcher.cancel()
        if self.ticker is not None:
            self.ticker.cancel()
        for session in list(self.sessions.values()):
            session.terminate("gateway shutting down", "the gateway is shutting down")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.audit.tick()
        self.report()
        await self.db(self.audit.stop)
        self.executor.shutdown(wait=True)

    async def serve_forever(self, stop: asyncio.Event,
                            on_ready: Callable[[], object] | None = None) -> None:
        self._stop = stop
        await self.start()
        self.ready.set()
        if on_ready is not None:
            on_ready()
        try:
            await stop.wait()
        finally:
            await self.close()

    def start_thread(self) -> None:
        """Run on a thread of its own with its own loop (inside `accord serve`)."""

        def run() -> None:
            loop = self._loop = new_loop()
            stop = asyncio.Event()
            try:
                loop.run_until_complete(self.serve_forever(stop))
            except BaseException as exc:
                self.error = exc
                log.exception("the gateway stopped")
                self.ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="accord-gateway", daemon=True)
        self._thread.start()
        self.ready.wait(30)
        if self.error is not None:
            raise RuntimeError(f"the gateway did not start: {self.error}")

    def stop_thread(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=60)

    # -- the grant watcher

    async def _watch(self) -> None:
        interval = self.spec.watch_interval.total_seconds()
        while True:
            await asyncio.sleep(interval)
            self.report()
            self.audit.ensure_shipper()
            self.audit.check()  # the backlog may have drained while no outcome came
            suppressed = self.refusals.due()
            if suppressed:
                try:
                    await self.db(functools.partial(self._record_suppressed, suppressed))
                except Exception:
                    log.exception("gateway: recording suppressed refusals failed")
            if not self.sessions:
                continue
            ids = sorted({s.info.grant_id for s in self.sessions.values()})
            try:
                states = await self.db(functools.partial(self._grant_states, ids))
            except Exception:  # the database is briefly unavailable: check again next tick
                log.exception("gateway: grant check failed")
                continue
            now = self.st.now()
            for session in list(self.sessions.values()):
                status, ends = states.get(session.info.grant_id, ("missing", now))
                if status == GrantStatus.ACTIVE and ends > now:
                    continue
                why = "expired" if status in (GrantStatus.ACTIVE, GrantStatus.EXPIRED) else status
                session.terminate(f"grant {why}", f"grant {session.info.grant_id} on "
                                                  f"{session.info.resource} {why}")

    def _record_suppressed(self, suppressed: list[tuple[str, int, datetime]]) -> None:
        with transaction(self.st.sessions) as s:
            for address, count, since in suppressed:
                tokens.record_suppressed(s, client=address, count=count, since=since,
                                          now=self.st.now())

    def _grant_states(self, ids: list[int]) -> dict[int, tuple[str, Any]]:
        with self.st.sessions() as session:
            return tokens.grant_states(session, ids=ids)

    # -- one connection

    async def handle(self, client: Link) -> None:
        """Serve one accepted connection (the protocol's)."""
        raise NotImplementedError

    def authorize(self, *, user: str, resource: str, token: str, where: str,
                  problem: Callable[[], tokens.Refusal | None] = lambda: None,
                  protocol: str = "postgres", key: tuple[str | None, str] | None = None,
                  ) -> tuple[Grant, ResourceSpec]:
        """Check a client's connection token (on a database thread): the active grant it
        stands for and its resource, or a `tokens.Refusal`, recorded within the budget of
        refusals per client address. `problem`: the protocol's own reason to refuse a
        client that proved who it is (a startup parameter, say). `key`: (role or None, the
        fingerprint of a public key the client holds) instead of a token (SSH); a key that is
        not the user's is refused without a record (clients offer every key they have)."""
        st = self.st
        address = where.rsplit(":", 1)[0] if ":" in where else where
        if st.policies.due():
            with st.sessions() as s:
                st.policies.follow(s)
        policy = st.policies.current
        grant: Grant | None = None
        try:
            with transaction(st.sessions) as s:
                if key is not None:
                    grant = tokens.authenticate_key(
                        s, policy=policy, user=user, resource=resource, role=key[0],
                        fingerprint=key[1], now=st.now(), protocol=protocol)
                else:
                    grant = tokens.authenticate(s, policy=policy, user=user,
                                                resource=resource, token=token, now=st.now(),
                                                protocol=protocol)
            refusal = problem()
            if refusal is not None:
                raise refusal
        except tokens.Refusal as refusal:
            if key is not None and not refusal.authenticated:
                raise
            if self.refusals.admit(address, st.now()):
                with transaction(st.sessions) as s:
                    tokens.record_refusal(s, policy=policy, user=user, resource=resource,
                                          refusal=refusal, client=where, now=st.now(),
                                          grant=grant if refusal.escalation else None)
            raise
        return grant, policy.resources[resource]


class _Accepted(Link):
    def __init__(self, gateway: GatewayServer, handler: Callable[[Link], Any]) -> None:
        super().__init__()
        self.gateway = gateway
        self.handler = handler

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.gateway.spawn(self._run())

    async def _run(self) -> None:
        try:
            await self.handler(self)
        except Exception:  # one connection's failure must not reach the server
            log.exception("gateway: session failed")
            self.close()
