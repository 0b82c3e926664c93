"""The MySQL protocol's front on the gateway's core: greet, negotiate TLS, take the connection
token (`auth`), log in upstream, then shuttle bytes through a `Conversation` until either
side leaves or the grant ends.

The client names the Accord resource as its database and logs in as its Accord user with the
token from `accord connect` as its password.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from typing import Any

from accord.gateway import tokens
from accord.gateway.classes import role_classes
from accord.gateway.link import Closed, Link
from accord.gateway.mysql import auth, upstream
from accord.gateway.mysql import protocol as my
from accord.gateway.mysql.conversation import Conversation
from accord.gateway.mysql.scope import UNSAFE_COLLATIONS, Classifier
from accord.gateway.records import SessionInfo
from accord.gateway.server import Front, GatewayServer
from accord.provisioning.base import ConnectorError
from accord.provisioning.mariadb import MariaDBConnector

log = logging.getLogger("accord.gateway")
_NONE: list[Any] = []
TERMINATING = "57P01"


@dataclass
class Authorized:
    grant_id: int
    user: str
    resource: str
    role: str
    allowed: frozenset[str]
    target: upstream.Target


class LoginFailed(Exception):
    """A login ends with this ERR (the refusal was already counted and recorded)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class MySQLSession:
    """A live session: one client, its upstream connection, and the conversation between."""

    protocol = "mysql"
    key = None  # MySQL clients cancel with KILL QUERY on a new connection: refused (admin)

    def __init__(self, front: MySQLFront, client: Link, server: upstream.Upstream,
                 conversation: Conversation, info: SessionInfo, target: upstream.Target) -> None:
        self.front = front
        self.gateway = front.server
        self.client = client
        self.server = server.link
        self.upstream = server
        self.conv = conversation
        self.info = info
        self.target = target
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reason = ""
        self.ended = False
        self.audit = self.gateway.audit
        self._slow: asyncio.TimerHandle | None = None
        client.peer = self.server
        self.server.peer = client
        assert client.transport is not None and self.server.transport is not None
        self._to_client = client.transport.write
        self._to_server = self.server.transport.write

    def from_client(self, data: bytes) -> None:
        if self.ended:
            return
        conv = self.conv
        try:
            out = conv.client(data)
        except my.ProtocolError as exc:
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
        if conv.reply:
            self._to_client(bytes(conv.reply))
            conv.reply.clear()
        if conv.cbuf:  # a command left unfinished: a slow or stalled client
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
        except my.ProtocolError as exc:
            log.error("gateway: session %s: upstream broke the protocol: %s", self.info.id, exc)
            self.end("upstream protocol error", "08P01",
                     "Accord gateway: the upstream server broke the protocol")
            return
        finished = conv.finished
        if finished:
            conv.finished = []
            self.audit.answered(self.info, finished)
            if self.gateway.ticker is None:
                self.gateway.arm_tick()
        if out:
            self._to_client(out)

    def _too_slow(self) -> None:
        self._slow = None
        self.end("slow client", "08P01", "Accord gateway: a command was not completed within "
                                          f"{self.gateway.message_timeout:.0f}s")

    def client_lost(self) -> None:
        self.end("client terminated" if self.conv.terminated else "client disconnected")

    def server_lost(self) -> None:
        self.end("client terminated" if self.conv.terminated else
                 "server closed the connection")

    def terminate(self, reason: str, why: str) -> None:
        self.end(reason, TERMINATING, f"Accord gateway: terminating connection because {why}")

    def end(self, reason: str, code: str | None = None, message: str = "") -> None:
        """Close both sides once; with `code`, tell the client why in an ERR packet."""
        if self.ended:
            return
        self.ended = True
        self.reason = reason
        if self._slow is not None:
            self._slow.cancel()
        if code is not None and not self.client.closed:
            self.client.write(my.error_for(self.conv.error_seq(), code, message))
        if self.conv.busy and not self.server.closed:
            # What runs upstream ends now, not when the server next writes to a closed socket.
            self.gateway.spawn(upstream.kill(self.target, self.upstream.connection_id))
        if not self.server.closed:
            self.server.write(my.packet(0, bytes((my.COM_QUIT,))))
        self.server.close()
        self.client.close()
        self.audit.closed(self.info, reason, self.conv.in_flight())
        self.gateway.forget(self)
        self.done.set_result(None)


class MySQLFront(Front):
    """The gateway for MySQL-protocol clients (mariadb, mysql, drivers) in front of MySQL
    and MariaDB servers, on its own listener beside the PostgreSQL one."""

    protocol = "mysql"

    def __init__(self, server: GatewayServer, listen: tuple[str, int],
                 version: str = "5.7.0-accord-gateway") -> None:
        super().__init__(server, listen)
        self.version = version
        self.classifier = Classifier()
        self.keys = auth.KeyPair()
        self._logins: set[tuple[str, str, str]] = set()
        self._ids = 0

    async def handle(self, client: Link) -> None:
        srv = self.server
        peer = client.transport.get_extra_info("peername") if client.transport else None
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "local")
        read = [0]  # the sequence id of the client's last packet: an ERR answers it
        try:
            async with asyncio.timeout(srv.spec.startup_timeout.total_seconds()):
                hello, tls, token = await self._login(client, read)
                auth_ = await self._authorize(hello, token, where)
                server = await self._connect_upstream(auth_, hello)
        except tokens.Refusal as exc:
            srv.refused("login", self.protocol)
            log.info("gateway: refused %s from %s: %s", exc.code, where, exc.message)
            self._fatal(client, read[0] + 1, exc.code, exc.message + (f" ({exc.hint})"
                                                                 if exc.hint else ""))
            return
        except LoginFailed as exc:
            srv.refused("login", self.protocol)
            self._fatal(client, read[0] + 1, exc.code, f"Accord gateway: {exc.message}")
            return
        except upstream.UpstreamError as exc:
            self._fatal(client, read[0] + 1, exc.code, f"Accord gateway: {exc.message}")
            return
        except my.ProtocolError as exc:
            self._fatal(client, read[0] + 1, "08P01", f"Accord gateway: {exc}")
            return
        except TimeoutError:
            self._fatal(client, read[0] + 1, "08P01",
                        "Accord gateway: login did not finish in time")
            return
        except Closed:
            client.close()
            return
        number = srv.next_number()
        info = SessionInfo(
            id=f"{srv.audit.instance}-{number}", number=number, grant_id=auth_.grant_id,
            user=auth_.user, resource=auth_.resource, role=auth_.role, client=where,
            application=(hello.attrs.get("program_name") or hello.attrs.get("_client_name")
                         or "")[:64], tls=tls,
            upstream_role=auth_.target.role or (
                auth_.target.user if auth_.target.gateway_login else None))
        conv = Conversation(allowed=auth_.allowed, classifier=self.classifier,
                            role=auth_.role, resource=auth_.resource,
                            database=auth_.target.database, capabilities=server.capabilities,
                            redact=srv.spec.redact_parameters, max_message=srv.spec.max_message)
        session = MySQLSession(self, client, server, conv, info, auth_.target)
        srv.register(session)
        srv.audit.opened(info, conv.in_flight)
        client.write(my.ok_packet(read[0] + 1))
        client.switch(session.from_client, session.client_lost)
        server.link.switch(session.from_server, session.server_lost)
        await session.done

    def _fatal(self, client: Link, seq: int, code: str, message: str) -> None:
        client.write(my.error_for(seq, code, message))
        client.close()

    async def _login(self, client: Link, read: list[int]
                     ) -> tuple[my.HandshakeResponse, bool, str]:
        """Greet, take TLS when asked, and read the token (see `auth`): (the handshake
        response, TLS or not, the token); `read[0]` follows the client's sequence ids."""

        async def packet() -> bytes:
            seq, payload = await my.read_packet(client, my.MAX_HANDSHAKE)
            read[0] = seq
            return payload

        srv = self.server
        self._ids = (self._ids + 1) & 0x7FFFFFFF
        salt = my.scramble()
        caps = my.GATEWAY_CAPABILITIES | (my.CLIENT_SSL if srv.tls is not None else 0)
        client.write(my.packet(0, my.greeting(version=self.version, connection_id=self._ids,
                                              salt=salt, capabilities=caps,
                                              plugin=my.CACHING_SHA2)))
        payload = await packet()
        hello = my.parse_handshake_response(payload)
        tls = False
        if hello.ssl_request:
            if srv.tls is None:
                raise my.ProtocolError("TLS asked for, but the gateway has no certificate")
            # What the client sent right behind its request is its TLS hello: TLS reads it.
            await client.start_tls(srv.tls, server_side=True)
            tls = True
            payload = await packet()
            hello = my.parse_handshake_response(payload)
            if hello.ssl_request:
                raise my.ProtocolError("a second SSL request")
        if srv.spec.tls.required and not tls:
            raise tokens.Refusal("28000", "Accord gateway: the gateway requires TLS",
                                 "connect with --ssl (mariadb) or ssl-mode=REQUIRED (mysql)")
        hello.capabilities &= caps
        if hello.plugin == my.CLEAR and tls:
            return hello, tls, _text(hello.auth.rstrip(b"\0"))
        if hello.plugin != my.CACHING_SHA2:
            if not hello.capabilities & my.CLIENT_PLUGIN_AUTH:
                raise LoginFailed("28000", "the client cannot switch to "
                                           "caching_sha2_password, which the gateway needs")
            client.write(my.packet(read[0] + 1, my.auth_switch(my.CACHING_SHA2, salt)))
            await packet()
        client.write(my.packet(read[0] + 1, auth.PERFORM_FULL_AUTH))
        answer = await packet()
        if answer == auth.REQUEST_PUBLIC_KEY and not tls:
            client.write(my.packet(read[0] + 1, b"\x01" + self.keys.public_pem))
            answer = await packet()
            try:
                return hello, tls, _text(self.keys.decrypt(answer, salt))
            except ValueError:
                return hello, tls, ""
        if not tls and len(answer) == self.keys.size:
            try:
                return hello, tls, _text(self.keys.decrypt(answer, salt))
            except ValueError:
                return hello, tls, ""
        return hello, tls, _text(answer.rstrip(b"\0"))

    async def _authorize(self, hello: my.HandshakeResponse, token: str,
                         where: str) -> Authorized:
        srv = self.server
        user = hello.user
        resource = hello.database
        if not resource:
            raise LoginFailed("3D000", "name the Accord resource as the database (accord "
                                       "connect prints the command)")

        def problem() -> tokens.Refusal | None:
            if hello.charset in UNSAFE_COLLATIONS:
                return tokens.Refusal(
                    "22023", f"Accord gateway: character set {hello.charset} is not "
                             f"available through the gateway (use utf8mb4)",
                    authenticated=True, escalation="encoding")
            return None

        def check() -> Authorized:
            grant, spec = srv.authorize(user=user, resource=resource, token=token,
                                        where=where, problem=problem, protocol=self.protocol)
            configured = spec.gateway.roles if spec.gateway is not None else None
            try:
                target = upstream.target_for(spec, grant.role, srv.env, srv.st.secrets)
                if target.gateway_login is not None:
                    self._ready_login(resource, target)
            except upstream.UpstreamError as exc:
                raise tokens.Refusal(exc.code, f"Accord gateway: {exc.message}") from None
            return Authorized(grant.id, user, resource, grant.role,
                              role_classes(grant.role, configured), target)

        return await srv.db(check)

    def _ready_login(self, resource: str, target: upstream.Target, *,
                     again: bool = False) -> None:
        """Make the gateway's login for the target's role exist (once per process)."""
        assert target.gateway_login is not None
        key = (resource, target.gateway_login, target.password)
        if key in self._logins and not again:
            return
        for attempt in range(3):
            try:
                connector = self.server.st.connectors().get(resource)
                if not isinstance(connector, MariaDBConnector):
                    raise ConnectorError(f"resource {resource} has no mariadb provision "
                                         f"target", retryable=False)
                connector.ensure_gateway_login(target.gateway_login, target.password)
                break
            except ConnectorError as exc:
                if exc.retryable and attempt < 2:
                    continue
                log.error("gateway: the upstream login for %s on %s is not ready: %s",
                          target.gateway_login, resource, exc)
                raise upstream.UpstreamError(
                    "08001", "the gateway cannot prepare its login to the database behind "
                             "this resource (see the gateway's log)") from None
        self._logins.add(key)

    async def _connect_upstream(self, auth_: Authorized, hello: my.HandshakeResponse
                                ) -> upstream.Upstream:
        side = upstream.ClientSide(hello.capabilities, hello.charset, hello.attrs)
        try:
            return await upstream.connect(auth_.target, side)
        except upstream.UpstreamError as exc:
            if auth_.target.gateway_login is None or exc.server_errno not in (1045, 1698):
                raise
        await self.server.db(functools.partial(self._ready_login, auth_.resource,
                                               auth_.target, again=True))
        return await upstream.connect(auth_.target, side)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")
