"""The PostgreSQL protocol's server on the gateway's core: negotiate TLS, authenticate with a
connection token, log in upstream, then shuttle bytes through a `Conversation` until either
side leaves or the grant ends."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
from collections.abc import Coroutine
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
from accord.gateway.session import (
    DatabaseSession,
    Grantee,
    Logins,
    client_address,
    session_info,
)
from accord.provisioning.postgres import PostgresConnector

log = logging.getLogger("accord.gateway")


@dataclass
class Authorized(Grantee):
    allowed: frozenset[str]
    target: upstream.Target
    guard: Guard | None = field(default=None)
    masker: Masker | None = field(default=None)


class ProxySession(DatabaseSession):
    """A PostgreSQL session on the core's lifecycle; a review rule can hold a statement."""

    protocol = "postgres"
    ProtocolError = pq.ProtocolError
    GOODBYE = pq.TERMINATE

    def __init__(self, gateway: PostgresGateway, client: Link, server: upstream.Upstream,
                 conversation: Conversation, info: SessionInfo, target: upstream.Target) -> None:
        super().__init__(gateway, client, server.link, conversation, info)
        self.gateway: PostgresGateway = gateway
        self.conv: Conversation = conversation
        self.upstream = server
        self.target = target
        # In a prefork child the key's top bits say which child holds the session, so a
        # sibling that gets the cancel request can pass it on.
        self.key = (prefork_msg.key_pid(gateway.index), secrets.token_bytes(4))
        self._asking = False  # a review decision is being looked up (client input waits)

    # -- data path

    def from_client(self, data: bytes) -> None:
        if self._asking and not self.ended:  # behind a held statement: waits for its decision
            self.conv.hold(data)
            return
        super().from_client(data)

    def spool(self, conv: Any) -> bool:
        if conv.hits:  # guardrail matches: in the spool before what follows is forwarded
            self.audit.guardrails(self.info, conv.hits)
            conv.hits = []
        return super().spool(conv)

    def client_read(self, conv: Any) -> None:
        if conv.awaiting is not None:
            self._ask(conv.awaiting)
        else:
            self.pace(bool(conv.cbuf))

    def upstream_broke(self, exc: Exception) -> None:
        if not isinstance(exc, PinnedSettingChanged):
            super().upstream_broke(exc)
            return
        log.error("gateway: session %s: %s", self.info.id, exc)
        conv = self.conv
        if conv.finished:  # what completed before the report (the SET itself)
            self.audit.answered(self.info, conv.finished)
            conv.finished = []
        self.end("pinned setting changed upstream", "08P01",
                 f"Accord gateway: terminating connection: {exc}")

    def _ask(self, ask: ReviewAsk) -> None:
        """A review rule holds a statement: stop reading the client until the decision is
        known (on a database thread), then carry on with the held bytes."""
        self._asking = True
        self.pace(False)
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

    # -- ending

    def farewell(self, code: str, message: str) -> bytes | None:
        if not self.conv.at_boundary:  # inside a message the client would misread it
            return None
        return pq.error_response(code, message, severity="FATAL")

    def interrupt(self) -> Coroutine[Any, Any, None] | None:
        if not self.upstream.pid:
            return None
        return upstream.cancel(self.target, self.upstream.pid, self.upstream.secret)


class PostgresGateway(GatewayServer):
    """The gateway for PostgreSQL clients (psql, drivers) in front of PostgreSQL servers."""

    protocol = "postgres"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.classifier = Classifier()
        self.logins = Logins(self, PostgresConnector, "postgres", frozenset({"28P01", "28000"}))
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
        where = client_address(client)
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
        info = session_info(self, auth, where=where, tls=tls,
                            application=startup.params.get("application_name", ""),
                            upstream_role=auth.target.role or (
                                auth.target.user if auth.target.gateway_login else None))
        conv = Conversation(allowed=auth.allowed, classifier=self.classifier, role=auth.role,
                            resource=auth.resource, redact=self.spec.redact_parameters,
                            max_message=self.spec.max_message,
                            auto_prepare=self.spec.auto_prepare, guard=auth.guard,
                            mask=mask)
        session = ProxySession(self, client, server, conv, info, auth.target)
        hello = [pq.auth_request(pq.AUTH_OK)]
        hello += [pq.parameter_status(k, v) for k, v in server.params.items()]
        hello += [pq.backend_key_data(*session.key), pq.ready_for_query(b"I")]
        await session.serve(b"".join(hello))

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
            target = self.logins.target_for(spec, grant.role, upstream.target_for)
            return Authorized(grant.id, user, resource, grant.role,
                              role_classes(grant.role, configured), target,
                              self.guard_for(spec, grant.role), self.masker_for(spec, grant.role))

        return await self.db(check)

    async def _connect_upstream(self, auth: Authorized, startup: pq.Startup
                                ) -> upstream.Upstream:
        return await self.logins.connect(auth.resource, auth.target, functools.partial(
            upstream.connect, auth.target, startup.params))
