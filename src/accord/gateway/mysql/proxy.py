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
from collections.abc import Coroutine
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
from accord.gateway.session import (
    DatabaseSession,
    Grantee,
    Logins,
    client_address,
    session_info,
)
from accord.provisioning.mariadb import MariaDBConnector

log = logging.getLogger("accord.gateway")


@dataclass
class Authorized(Grantee):
    allowed: frozenset[str]
    target: upstream.Target
    local_infile: bool = False  # LOAD DATA LOCAL allowed (the resource's gateway.allow)


class LoginFailed(Exception):
    """A login ends with this ERR (the refusal was already counted and recorded)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class MySQLSession(DatabaseSession):
    """A MySQL session on the core's lifecycle."""

    protocol = "mysql"
    key = None  # MySQL clients cancel with KILL QUERY on a new connection: refused (admin)
    ProtocolError = my.ProtocolError
    GOODBYE = my.packet(0, bytes((my.COM_QUIT,)))
    unit = "command"

    def __init__(self, front: MySQLFront, client: Link, server: upstream.Upstream,
                 conversation: Conversation, info: SessionInfo, target: upstream.Target) -> None:
        super().__init__(front.server, client, server.link, conversation, info)
        self.front = front
        self.conv: Conversation = conversation
        self.upstream = server
        self.target = target

    def client_read(self, conv: Any) -> None:
        if conv.reply:  # the gateway's own answers, in order behind the server's
            self._to_client(bytes(conv.reply))
            conv.reply.clear()
        if conv.cbuf or self._slow is not None:  # else `pace` has nothing to do
            self.pace(bool(conv.cbuf))

    def farewell(self, code: str, message: str) -> bytes | None:
        return my.error_for(self.conv.error_seq(), code, message)

    def interrupt(self) -> Coroutine[Any, Any, None] | None:
        return upstream.kill(self.target, self.upstream.connection_id)


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
        self.logins = Logins(server, MariaDBConnector, "mariadb", frozenset({1045, 1698}))
        self._ids = 0

    async def handle(self, client: Link) -> None:
        srv = self.server
        where = client_address(client)
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
        info = session_info(srv, auth_, where=where, tls=tls,
                            application=hello.attrs.get("program_name")
                            or hello.attrs.get("_client_name") or "",
                            upstream_role=auth_.target.role or (
                                auth_.target.user if auth_.target.gateway_login else None))
        conv = Conversation(allowed=auth_.allowed, classifier=self.classifier,
                            role=auth_.role, resource=auth_.resource,
                            database=auth_.target.database, capabilities=server.capabilities,
                            redact=srv.spec.redact_parameters, max_message=srv.spec.max_message,
                            local_infile=auth_.local_infile)
        session = MySQLSession(self, client, server, conv, info, auth_.target)
        await session.serve(my.ok_packet(read[0] + 1))

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
        # Files are offered to every client: whose role may send them is known later, and
        # the others' LOAD DATA LOCAL is refused before it goes upstream.
        caps = my.GATEWAY_CAPABILITIES | my.CLIENT_LOCAL_FILES \
            | (my.CLIENT_SSL if srv.tls is not None else 0)
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
            target = self.logins.target_for(spec, grant.role, upstream.target_for)
            allow = spec.gateway.allow.get(grant.role, []) if spec.gateway is not None else []
            return Authorized(grant.id, user, resource, grant.role,
                              role_classes(grant.role, configured), target,
                              local_infile="local_infile" in allow)

        return await srv.db(check)

    async def _connect_upstream(self, auth_: Authorized, hello: my.HandshakeResponse
                                ) -> upstream.Upstream:
        side = upstream.ClientSide(hello.capabilities, hello.charset, hello.attrs,
                                   local_files=auth_.local_infile)
        return await self.logins.connect(auth_.resource, auth_.target,
                                         functools.partial(upstream.connect, auth_.target, side))


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")
