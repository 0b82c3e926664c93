"""The PostgreSQL protocol's server on the gateway's core: negotiate TLS, authenticate with a
connection token, log in upstream, then shuttle bytes through a `Conversation` until either
side leaves or the grant ends."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any, cast

from accord.gateway import prefork_msg, reviews, tokens
from accord.gateway.classes import role_classes
from accord.gateway.link import Closed, Link
from accord.gateway.masking import Masker
from accord.gateway.postgres import protocol as pq
from accord.gateway.postgres import upstream
from accord.gateway.postgres.conversation import Conversation, PinnedSettingChanged
from accord.gateway.postgres.guard import Guard
from accord.gateway.postgres.mask import SessionMask, lookup
from accord.gateway.postgres.scope import Classifier
from accord.gateway.records import SessionInfo
from accord.gateway.rules import ReviewAsk, ReviewDecision, RuleSet
from accord.gateway.server import GatewayServer
from accord.provisioning.base import ConnectorError
from accord.provisioning.postgres import PostgresConnector

log = logging.getLogger("accord.gateway")
_NONE: list[Any] = []  # nothing (never appended to)
TERMINATING = "57P01"  # admin_shutdown: what PostgreSQL says when it ends a session


@dataclass
class Authorized:
    grant_id: int
    user: str
    resource: str
    role: str
    allowed: frozenset[str]
    target: upstream.Target
    guard: Guard | None = field(default=None)
    masker: Masker | None = field(default=None)


class ProxySession:
    """A live session: the conversation between one client and its upstream connection."""

    protocol = "postgres"

    def __init__(self, gateway: PostgresGateway, client: Link, server: upstream.Upstream,
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
        self._asking = False  # a review decision is being looked up (client input waits)
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
        if self._asking:  # behind a held statement: waits for its decision
            conv.hold(data)
            return
        try:
            out = conv.client(data)
        except pq.ProtocolError as exc:
            self.end("protocol violation", "08P01", f"Accord gateway: {exc}")
            return
        if conv.hits:  # guardrail matches: in the spool before what follows is forwarded
            self.audit.guardrails(self.info, conv.hits)
            conv.hits = []
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
        if conv.awaiting is not None:
            self._ask(conv.awaiting)
        elif conv.cbuf:  # a message left unfinished: a slow or stalled client
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

    def _ask(self, ask: ReviewAsk) -> None:
        """A review rule holds a statement: stop reading the client until the decision is
        known (on a database thread), then carry on with the held bytes."""
        self._asking = True
        if self._slow is not None:
            self._slow.cancel()
            self._slow = None
        if self.client.transport is not None:
            self.client.transport.pause_reading()
        self.gateway.spawn(self._review(ask))

    async def _review(self, ask: ReviewAsk) -> None:
        try:
            decision = await self.gateway.db(functools.partial(
                reviews.decide, self.gateway.st, self.info, ask,
                redact=self.gateway.spec.redact_parameters))
        except Exception:  # pragma: no cover - decide() catches what it can
            log.exception("gateway: session %s: review lookup failed", self.info.id)
            decision = ReviewDecision(False, None, "Accord gateway: the review of this "
                                      "statement could not be checked; try again",
                                      outcome="error")
        if self.ended:
            return
        self.conv.resolve(decision)
        self._asking = False
        if self.client.transport is not None and not self.client.closed:
            self.client.transport.resume_reading()
        self.from_client(b"")

    def _too_slow(self) -> None:
        self._slow = None
        self.end("slow client", "08P01", "Accord gateway: a message was not completed within "
                                          f"{self.gateway.message_timeout:.0f}s")

    def client_lost(self) -> None:
        self.end("client terminated" if self.conv.terminated else "client disconnected")

    def server_lost(self) -> None:
        self.end("server closed the connection")

    # -- ending

    def terminate(self, reason: str, why: str) -> None:
        self.end(reason, TERMINATING, f"Accord gateway: terminating connection because {why}")

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


class PostgresGateway(GatewayServer):
    """The gateway for PostgreSQL clients (psql, drivers) in front of PostgreSQL servers."""

    protocol = "postgres"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.classifier = Classifier()
        self._logins: set[tuple[str, str, str]] = set()  # gateway logins made ready here
        # (resource, role) → (the rules they came from, the guard and its caches)
        self._guards: dict[tuple[str, str], tuple[Any, Guard]] = {}
        self._maskers: dict[tuple[str, str], tuple[Any, Masker | None]] = {}

    def guard_for(self, spec: Any, role: str) -> Guard | None:
        """The guardrails of a role of a resource (None: none); sessions with the same
        rules share one guard and its caches, until the policy changes them."""
        rules = spec.gateway.guardrails if spec.gateway is not None else []
        if not rules:
            return None
        key = (spec.name, role)
        known = self._guards.get(key)
        if known is not None and known[0] == rules:
            return known[1]
        ruleset = RuleSet.of(rules, role)
        guard = Guard(ruleset) if ruleset else None
        if guard is not None:
            self._guards[key] = (rules, guard)
        return guard

    def masker_for(self, spec: Any, role: str) -> Masker | None:
        """The masking rules of a role of a resource (None: none), compiled once per
        policy."""
        rules = spec.gateway.masking if spec.gateway is not None else []
        if not rules:
            return None
        key = (spec.name, role)
        known = self._maskers.get(key)
        if known is not None and known[0] == rules:
            return known[1]
        masker = Masker.of(rules, role)
        self._maskers[key] = (rules, masker)
        return masker

    def from_sibling(self, msg: bytes) -> None:
        if msg[:1] == prefork_msg.CANCEL and len(msg) == prefork_msg.CANCEL_SIZE:
            self.spawn(self._cancel(*prefork_msg.unpack_cancel(msg)))

    async def _cancel(self, pid: int, secret: bytes) -> bool:
        """Cancel what the session with this key runs upstream; False: no such session."""
        target = self.keys.get((pid, secret))
        if not isinstance(target, ProxySession):
            return False
        if target.upstream.pid:
            await upstream.cancel(target.target, target.upstream.pid, target.upstream.secret)
        return True

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
                mask = None
                if auth.masker is not None:  # which stored columns the rules name
                    try:
                        mask = SessionMask(auth.masker, await lookup(server.link, auth.masker))
                    except BaseException:
                        server.link.close()
                        raise
        except tokens.Refusal as exc:
            self.refused("login")
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
        number = self.next_number()
        info = SessionInfo(
            id=f"{self.audit.instance}-{number}", number=number, grant_id=auth.grant_id,
            user=auth.user, resource=auth.resource, role=auth.role, client=where,
            application=startup.params.get("application_name", "")[:64], tls=tls,
            upstream_role=auth.target.role or (
                auth.target.user if auth.target.gateway_login else None),
            owner=self.st.policies.current.owner_of(auth.user))
        conv = Conversation(allowed=auth.allowed, classifier=self.classifier, role=auth.role,
                            resource=auth.resource, redact=self.spec.redact_parameters,
                            max_message=self.spec.max_message,
                            auto_prepare=self.spec.auto_prepare, guard=auth.guard,
                            mask=mask)
        session = ProxySession(self, client, server, conv, info, auth.target)
        hello = [pq.auth_request(pq.AUTH_OK)]
        hello += [pq.parameter_status(k, v) for k, v in server.params.items()]
        hello += [pq.backend_key_data(*session.key), pq.ready_for_query(b"I")]
        self.register(session)
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
            packet = pq.parse_startup(await pq.read_startup(client))
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
        kind, body = await pq.read_message(client, pq.MAX_AUTH_MESSAGE)
        if kind != ord("p"):
            raise pq.ProtocolError("expected a password message")
        token = pq.text(pq.parse_password(body))

        def problem() -> tokens.Refusal | None:
            found = upstream.startup_problem(params)
            if found is None:
                return None
            code, message, attempt = found
            return tokens.Refusal(code, f"Accord gateway: {message}", authenticated=True,
                                  escalation=attempt)

        def check() -> Authorized:
            grant, spec = self.authorize(user=user, resource=resource, token=token,
                                         where=where, problem=problem)
            configured = spec.gateway.roles if spec.gateway is not None else None
            try:
                target = upstream.target_for(spec, grant.role, self.env, self.st.secrets)
                if target.gateway_login is not None:
                    self._ready_login(resource, target)
            except upstream.UpstreamError as exc:
                raise tokens.Refusal(exc.code, f"Accord gateway: {exc.message}") from None
            return Authorized(grant.id, user, resource, grant.role,
                              role_classes(grant.role, configured), target,
                              self.guard_for(spec, grant.role), self.masker_for(spec, grant.role))

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


