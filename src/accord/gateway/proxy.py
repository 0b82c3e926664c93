"""The gateway server: accept, negotiate TLS, authenticate with a connection token, log in
upstream, then shuttle bytes through a `Conversation` until either side leaves or the
grant ends.

Everything runs on one event loop (uvloop when installed). Database work (token checks,
the grant watcher) goes to a small thread pool; audit facts go to the `AuditWriter`,
which never makes the data path wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from accord.api.deps import AppState
from accord.config import GatewaySpec
from accord.db import transaction
from accord.gateway import prefork_msg, tokens
from accord.gateway.audit import AuditWriter
from accord.gateway.link import Closed, Link
from accord.gateway.postgres import protocol as pq
from accord.gateway.postgres import upstream
from accord.gateway.postgres.conversation import Conversation, PinnedSettingChanged
from accord.gateway.postgres.scope import Classifier, role_classes
from accord.gateway.records import SessionInfo
from accord.grants.models import Grant, GrantStatus
from accord.provisioning.base import ConnectorError
from accord.provisioning.postgres import PostgresConnector

log = logging.getLogger("accord.gateway")
T = TypeVar("T")
_NONE: list[Any] = []  # nothing (never appended to)
SWITCH_INTERVAL = 0.0005
TICK = 0.01  # how often waiting statement outcomes are written to the spool


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


def run(gw: Gateway, on_ready: Callable[[], object] | None = None) -> None:
    """Serve on this thread until SIGTERM or SIGINT (`accord gateway` and each of its
    prefork children)."""
    # The data path allocates small short-lived objects; collecting the startup heap over
    # and over is wasted work in a process that does nothing else.
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
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


@dataclass
class Authorized:
    grant_id: int
    user: str
    resource: str
    role: str
    allowed: frozenset[str]
    target: upstream.Target


class ProxySession:
    """A live session: the conversation between one client and its upstream connection."""

    def __init__(self, gateway: Gateway, client: Link, server: upstream.Upstream,
                 conversation: Conversation, info: SessionInfo, target: upstream.Target) -> None:
        self.gateway = gateway
        self.client = client
        self.server = server.link
        self.upstream = server
        self.conv = conversation
        self.info = info
        self.target = target
        # In a prefork child the key's top bits say which child holds the session, so a
        # sibling that gets the cancel request can pass it on.
        self.key = (prefork_msg.key_pid(gateway.index), secrets.token_bytes(4))
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reason = ""
        self.ended = False
        self.audit = gateway.audit
        self._slow: asyncio.TimerHandle | None = None
        client.peer = self.server
        self.server.peer = client
        assert client.transport is not None and self.server.transport is not None
        self._to_client = client.transport.write
        self._to_server = self.server.transport.write

    # -- data path

    def from_client(self, data: bytes) -> None:
        if self.ended:
            return
        conv = self.conv
        try:
            out = conv.client(data)
        except pq.ProtocolError as exc:
            self.end("protocol violation", "08P01", f"Accord gateway: {exc}")
            return
        started = conv.started
        violations = conv.violations
        if started or violations:
            audit = self.audit
            if audit.overloaded and audit.check():
                self.end("audit backlog full", "53000",
                         "Accord gateway: the audit ledger is behind; try again shortly")
                return
            conv.started = []
            if violations:
                conv.violations = []
                audit.note(self.info, started, _NONE, violations)
            elif len(started) == 1:
                audit.sent(self.info.number, started[0])
            else:
                audit.note(self.info, started, _NONE, _NONE)
        if out:
            self._to_server(out)
        if conv.cbuf:  # a message left unfinished: a slow or stalled client
            if self._slow is None:
                self._slow = asyncio.get_running_loop().call_later(
                    self.gateway.message_timeout, self._too_slow)
        elif self._slow is not None:
            self._slow.cancel()
            self._slow = None

    def from_server(self, data: bytes) -> None:
        if self.ended:
            return
        conv = self.conv
        try:
            out = conv.server(data)
        except PinnedSettingChanged as exc:
            log.error("gateway: session %s: %s", self.info.id, exc)
            if conv.finished:  # what completed before the report (the SET itself)
                self.audit.answered(self.info, conv.finished)
                conv.finished = []
            self.end("pinned setting changed upstream", "08P01",
                     f"Accord gateway: terminating connection: {exc}")
            return
        except pq.ProtocolError as exc:
            log.error("gateway: session %s: upstream broke the protocol: %s", self.info.id, exc)
            self.end("upstream protocol error", "08P01",
                     "Accord gateway: the upstream server broke the protocol")
            return
        finished = conv.finished
        if finished:
            conv.finished = []
            self.audit.answered(self.info, finished)
            if self.gateway.ticker is None:  # the outcomes reach the spool within TICK
                self.gateway.arm_tick()
        if out:
            self._to_client(out)

    def _too_slow(self) -> None:
        self._slow = None
        self.end("slow client", "08P01", "Accord gateway: a message was not completed within "
                                          f"{self.gateway.message_timeout:.0f}s")

    def client_lost(self) -> None:
        self.end("client terminated" if self.conv.terminated else "client disconnected")

    def server_lost(self) -> None:
        self.end("server closed the connection")

    # -- ending

    def end(self, reason: str, code: str | None = None, message: str = "") -> None:
        """Close both sides once; with `code`, tell the client why (when it can be told)."""
        if self.ended:
            return
        self.ended = True
        self.reason = reason
        if self._slow is not None:
            self._slow.cancel()
        if code is not None and not self.client.closed and self.conv.at_boundary:
            self.client.write(pq.error_response(code, message, severity="FATAL"))
        if self.conv.busy and not self.server.closed and self.upstream.pid:
            self.gateway.spawn(upstream.cancel(self.target, self.upstream.pid,
                                               self.upstream.secret))
        if not self.server.closed:
            self.server.write(pq.TERMINATE)
        self.server.close()
        self.client.close()
        self.gateway.audit.closed(self.info, reason, self.conv.in_flight())
        self.gateway.forget(self)
        self.done.set_result(None)


class Gateway:
    """The listening server and its live sessions."""

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
        self.classifier = Classifier()
        self.audit = AuditWriter(
            st.sessions, spool_root(st, spec), interval=spec.flush_interval.total_seconds(),
            batch=spec.flush_batch, max_backlog=spec.max_backlog,
            statements_per_event=spec.statements_per_event,
            max_statement_bytes=spec.max_statement_bytes)
        self.message_timeout = spec.message_timeout.total_seconds()
        self.sessions: dict[int, ProxySession] = {}
        self.keys: dict[tuple[int, bytes], ProxySession] = {}
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
        self._logins: set[tuple[str, str, str]] = set()  # gateway logins made ready here

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

    def forget(self, session: ProxySession) -> None:
        self.sessions.pop(session.info.number, None)
        self.keys.pop(session.key, None)

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
            self._server = await loop.create_server(lambda: _Accepted(self), self.host,
                                                    self.port, reuse_address=True, backlog=512)
            if self.port == 0:
                self.port = self._server.sockets[0].getsockname()[1]
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

    def _from_parent(self) -> None:
        """Connections (and cancel requests of siblings' sessions) from the parent."""
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
        if msg[:1] == prefork_msg.CANCEL and len(msg) == prefork_msg.CANCEL_SIZE:
            self.spawn(self._cancel(*prefork_msg.unpack_cancel(msg)))
        loop = asyncio.get_running_loop()
        for fd in fds:
            os.set_inheritable(fd, False)  # recvmsg without MSG_CMSG_CLOEXEC
            conn = socket.socket(fileno=fd)
            conn.setblocking(False)
            self.spawn(loop.connect_accepted_socket(lambda: _Accepted(self), conn))

    async def _cancel(self, pid: int, secret: bytes) -> bool:
        """Cancel what the session with this key runs upstream; False: no such session."""
        target = self.keys.get((pid, secret))
        if target is None:
            return False
        if target.upstream.pid:
            await upstream.cancel(target.target, target.upstream.pid, target.upstream.secret)
        return True

    async def close(self) -> None:
        """Stop listening, end every session, flush the audit trail."""
        if self._server is not None:
            self._server.close()
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
            session.end("gateway shutting down", "57P01",
                        "Accord gateway: terminating connection because the gateway is "
                        "shutting down")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.audit.tick()
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
                session.end(f"grant {why}", "57P01",
                            f"Accord gateway: terminating connection because grant "
                            f"{session.info.grant_id} on {session.info.resource} {why}")

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
        peer = client.transport.get_extra_info("peername") if client.transport else None
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "local")
        try:
            async with asyncio.timeout(self.spec.startup_timeout.total_seconds()):
                started = await self._startup(client)
                if started is None:
                    return
                startup, tls = started
                auth = await self._authenticate(client, startup, tls, where)
                server = await self._connect_upstream(auth, startup)
        except tokens.Refusal as exc:
            log.info("gateway: refused %s from %s: %s", exc.code, where, exc.message)
            self._fatal(client, exc.code, exc.message, exc.hint)
            return
        except upstream.UpstreamError as exc:
            self._fatal(client, exc.code, f"Accord gateway: {exc.message}")
            return
        except pq.ProtocolError as exc:
            self._fatal(client, "08P01", f"Accord gateway: {exc}")
            return
        except TimeoutError:
            self._fatal(client, "08P01", "Accord gateway: startup did not finish in time")
            return
        except Closed:
            client.close()
            return
        self._count += 1
        number = self._count
        info = SessionInfo(
            id=f"{self.audit.instance}-{number}", number=number, grant_id=auth.grant_id,
            user=auth.user, resource=auth.resource, role=auth.role, client=where,
            application=startup.params.get("application_name", "")[:64], tls=tls,
            upstream_role=auth.target.role or (
                auth.target.user if auth.target.gateway_login else None))
        conv = Conversation(allowed=auth.allowed, classifier=self.classifier, role=auth.role,
                            resource=auth.resource, redact=self.spec.redact_parameters,
                            max_message=self.spec.max_message,
                            auto_prepare=self.spec.auto_prepare)
        session = ProxySession(self, client, server, conv, info, auth.target)
        hello = [pq.auth_request(pq.AUTH_OK)]
        hello += [pq.parameter_status(k, v) for k, v in server.params.items()]
        hello += [pq.backend_key_data(*session.key), pq.ready_for_query(b"I")]
        self.sessions[number] = session
        self.keys[session.key] = session
        self.audit.opened(info, conv.in_flight)
        client.write(b"".join(hello))
        client.switch(session.from_client, session.client_lost)
        server.link.switch(session.from_server, session.server_lost)
        await session.done

    def _fatal(self, client: Link, code: str, message: str, hint: str = "") -> None:
        client.write(pq.error_response(code, message, severity="FATAL", hint=hint))
        client.close()

    async def _startup(self, client: Link) -> tuple[pq.Startup, bool] | None:
        tls = False
        while True:
            packet = pq.parse_startup(await client.read_startup())
            if isinstance(packet, pq.SSLRequest):
                if tls:
                    raise pq.ProtocolError("SSLRequest inside TLS")
                if self.tls is None:
                    client.write(b"N")
                    continue
                if client.buffered:  # bytes sent before the handshake could be injected
                    raise pq.ProtocolError("data received before the TLS handshake")
                client.write(b"S")
                assert client.transport is not None
                loop = asyncio.get_running_loop()
                transport = await loop.start_tls(client.transport, client, self.tls,
                                                 server_side=True)
                client.transport = cast(asyncio.Transport, transport)
                tls = True
                continue
            if isinstance(packet, pq.GSSENCRequest):
                client.write(b"N")
                continue
            if isinstance(packet, pq.CancelRequest):
                ours = await self._cancel(packet.pid, packet.secret)
                if (not ours and self.inbox is not None and len(packet.secret) == 4
                        and prefork_msg.child_of(packet.pid) != self.index):
                    # Another child's session: the parent passes it on (no answer either way).
                    with contextlib.suppress(OSError):
                        self.inbox.send(prefork_msg.pack_cancel(packet.pid, packet.secret))
                client.close()
                return None
            if self.spec.tls.required and not tls:
                raise tokens.Refusal("28000", "the Accord gateway requires TLS",
                                      "connect with sslmode=require")
            if packet.minor > 0 or packet.unknown_options:
                client.write(pq.negotiate_protocol_version(0, packet.unknown_options))
            return packet, tls

    async def _authenticate(self, client: Link, startup: pq.Startup, tls: bool,
                            where: str) -> Authorized:
        params = startup.params
        user = params["user"]
        resource = params.get("database") or user
        client.write(pq.auth_request(pq.AUTH_CLEARTEXT))
        kind, body = await client.read_message(pq.MAX_AUTH_MESSAGE)
        if kind != ord("p"):
            raise pq.ProtocolError("expected a password message")
        token = pq.text(pq.parse_password(body))
        address = where.rsplit(":", 1)[0] if ":" in where else where

        def check() -> Authorized:
            st = self.st
            if st.policies.due():
                with st.sessions() as s:
                    st.policies.follow(s)
            policy = st.policies.current
            grant: Grant | None = None
            try:
                with transaction(st.sessions) as s:
                    grant = tokens.authenticate(s, policy=policy, user=user,
                                                 resource=resource, token=token,
                                                 now=st.now())
                    gid, role = grant.id, grant.role
                problem = upstream.startup_problem(params)
                if problem is not None:
                    code, message, attempt = problem
                    raise tokens.Refusal(code, f"Accord gateway: {message}",
                                          authenticated=True, escalation=attempt)
            except tokens.Refusal as refusal:
                if self.refusals.admit(address, st.now()):
                    with transaction(st.sessions) as s:
                        tokens.record_refusal(s, policy=policy, user=user, resource=resource,
                                               refusal=refusal, client=where, now=st.now(),
                                               grant=grant if refusal.escalation else None)
                raise
            spec = policy.resources[resource]
            configured = spec.gateway.roles if spec.gateway is not None else None
            try:
                target = upstream.target_for(spec, role, self.env, st.secrets)
                if target.gateway_login is not None:
                    self._ready_login(resource, target)
            except upstream.UpstreamError as exc:
                raise tokens.Refusal(exc.code, f"Accord gateway: {exc.message}") from None
            return Authorized(gid, user, resource, role, role_classes(role, configured), target)

        return await self.db(check)

    def _ready_login(self, resource: str, target: upstream.Target, *,
                     again: bool = False) -> None:
        """Make the gateway's login for the target's role exist (once per process; `again`
        after the server refused it, e.g. its password was changed by hand)."""
        assert target.gateway_login is not None
        key = (resource, target.gateway_login, target.password)
        if key in self._logins and not again:
            return
        for attempt in range(3):
            try:
                connector = self.st.connectors().get(resource)
                if not isinstance(connector, PostgresConnector):
                    raise ConnectorError(f"resource {resource} has no postgres provision "
                                         f"target", retryable=False)
                connector.ensure_gateway_login(target.gateway_login, target.password)
                break
            except ConnectorError as exc:
                # Sibling processes making the same login ready at once may collide
                # ("tuple concurrently updated"): retryable, and the next try finds it.
                if exc.retryable and attempt < 2:
                    continue
                log.error("gateway: the upstream login for %s on %s is not ready: %s",
                          target.gateway_login, resource, exc)
                raise upstream.UpstreamError(
                    "08001", "the gateway cannot prepare its login to the database behind "
                             "this resource (see the gateway's log)") from None
        self._logins.add(key)

    async def _connect_upstream(self, auth: Authorized, startup: pq.Startup
                                ) -> upstream.Upstream:
        try:
            return await upstream.connect(auth.target, startup.params)
        except upstream.UpstreamError as exc:
            # The gateway's own login refused (its password changed, or it was dropped by
            # hand since this process made it ready): make it ready again, once.
            if auth.target.gateway_login is None or exc.server_code not in ("28P01", "28000"):
                raise
        await self.db(functools.partial(self._ready_login, auth.resource, auth.target,
                                        again=True))
        return await upstream.connect(auth.target, startup.params)


class _Accepted(Link):
    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self.gateway = gateway

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.gateway.spawn(self._run())

    async def _run(self) -> None:
        try:
            await self.gateway.handle(self)
        except Exception:  # one connection's failure must not reach the server
            log.exception("gateway: session failed")
            self.close()
