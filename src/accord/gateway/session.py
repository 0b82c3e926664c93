"""A database session's lifecycle, whatever protocol carries it: the part of the gateway's
core that PostgreSQL and MySQL share once.

A protocol's front authenticates a client (its own handshake), then builds
* a `Grantee` (who logged in, under which grant), and `session_info` from it: the
  `SessionInfo` every audit fact of the session carries;
* its upstream login through `Logins` (the gateway's own login for the granted role, made
  ready once per process and again when the server refuses it) and `connect_upstream`;
* a `DatabaseSession` subclass around its `Conversation` (the protocol's pure data path:
  bytes in, bytes out, with `started`, `finished` and `violations` lists), then `serve`s it.

`DatabaseSession` holds what does not depend on the protocol: relaying bytes, spooling the
statements before they go upstream (and ending the session when the audit backlog is full),
spooling outcomes on the next tick, the timer on a message left unfinished, registration
with the server (whose grant watcher calls `terminate` within `watch_interval` of the grant
ending) and the one way a session ends (`end`: tell the client in its protocol, stop what
runs upstream, close both sides, spool the close with what was in flight, count it).
A protocol supplies its error type, its error message (`farewell`), how to stop a
statement upstream (`interrupt`) and the goodbye its server expects (`GOODBYE`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from accord.gateway import tokens
from accord.gateway.link import Closed, Link
from accord.gateway.records import Finished, Run, SessionInfo, Violation
from accord.provisioning.base import ConnectorError
from accord.provisioning.secrets import SecretBox
from accord.spec.resources import ResourceSpec

if TYPE_CHECKING:
    from accord.gateway.server import GatewayServer

log = logging.getLogger("accord.gateway")
T = TypeVar("T")
L = TypeVar("L", bound="Target")
_NONE: list[Any] = []  # nothing (never appended to)
TERMINATING = "57P01"  # admin_shutdown: the SQLSTATE of a session the gateway ends


@dataclass
class Grantee:
    """Who a checked login is: the grant it stands for (a protocol adds its upstream
    target and what else its sessions need)."""

    grant_id: int
    user: str
    resource: str
    role: str


def client_address(client: Link) -> str:
    """HOST:PORT of the client (what the ledger and the refusal budget call it)."""
    peer = client.transport.get_extra_info("peername") if client.transport else None
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "local")


def session_info(srv: GatewayServer, who: Grantee, *, where: str, application: str,
                 tls: bool, upstream_role: str | None) -> SessionInfo:
    """The next session of this process: its number and what its audit facts say of it
    (an agent's session names the agent's owner)."""
    number = srv.next_number()
    return SessionInfo(
        id=f"{srv.audit.instance}-{number}", number=number, grant_id=who.grant_id,
        user=who.user, resource=who.resource, role=who.role, client=where,
        application=application[:64], tls=tls, upstream_role=upstream_role,
        owner=srv.st.policies.current.owner_of(who.user))


# -- the upstream login


class UpstreamError(Exception):
    """The upstream database could not be reached or refused the gateway."""

    def __init__(self, code: str, message: str, server_code: str | int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # The server's own code when it refused the login (an SQLSTATE, or MySQL's errno).
        self.server_code = server_code


@dataclass(frozen=True)
class Target:
    """Where and as whom the gateway logs in upstream (a protocol adds its TLS options)."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str
    role: str | None = None  # SET ROLE to this after login (shared credentials)
    # The Accord role whose gateway login this is (`Logins`): the gateway makes the login
    # exist before connecting. None: shared credentials.
    gateway_login: str | None = None


CONNECT_TIMEOUT = 10.0  # an upstream login (connect, TLS, authenticate) within this


async def log_in(login: Awaitable[T], broken: type[Exception] | tuple[type[Exception], ...]
                 ) -> T:
    """`login` (a protocol's upstream login) within CONNECT_TIMEOUT, whatever stops it as
    an `UpstreamError` (`broken`: the protocol's errors for a server that breaks it)."""
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            return await login
    except (OSError, Closed, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (
            "connection closed" if isinstance(exc, Closed) else exc.strerror or str(exc))
        raise UpstreamError("08006", f"the database behind this resource is unavailable "
                                     f"({reason})") from None
    except broken as exc:
        raise UpstreamError("08P01", f"upstream protocol error: {exc}") from None


def uses_gateway_login(spec: ResourceSpec, role: str, provision_type: type) -> bool:
    """Whether sessions of `role` log in as the gateway's own login for that role (the
    resource's provision target is a `provision_type` that provisions the role, and no
    shared credentials are configured); else as the shared credentials, the ceiling of
    every grant on the resource."""
    g = spec.gateway
    shared = g is not None and bool(g.dsn_env or g.dsn_file)
    return not shared and isinstance(spec.provision, provision_type) \
        and role in spec.provision.roles  # type: ignore[union-attr]


class Logins:
    """The gateway's own upstream logins (one per provisioned role), made to exist through
    the resource's connector before their first session in this process."""

    def __init__(self, srv: GatewayServer, connector: type[Any], kind: str,
                 refused: frozenset[str | int]) -> None:
        self.srv = srv
        self.connector = connector  # the provisioning connector that can make them
        self.kind = kind  # its provision target type, for the message
        self.refused = refused  # the server's codes for a login it does not know
        self._ready: set[tuple[str, str, str]] = set()

    def ready(self, resource: str, target: Target, *, again: bool = False) -> None:
        """Make the login for the target's role exist (once per process; `again` after the
        server refused it, e.g. its password was changed by hand). On a database thread."""
        assert target.gateway_login is not None
        key = (resource, target.gateway_login, target.password)
        if key in self._ready and not again:
            return
        for attempt in range(3):
            try:
                connector = self.srv.st.connectors().get(resource)
                if not isinstance(connector, self.connector):
                    raise ConnectorError(f"resource {resource} has no {self.kind} provision "
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
                raise UpstreamError(
                    "08001", "the gateway cannot prepare its login to the database behind "
                             "this resource (see the gateway's log)") from None
        self._ready.add(key)

    def target_for(self, spec: ResourceSpec, role: str,
                   target_for: Callable[[ResourceSpec, str, Mapping[str, str], SecretBox], L]
                   ) -> L:
        """The protocol's `target_for` the grant's role, its gateway login made ready (on a
        database thread); a `tokens.Refusal` when the gateway has no login to serve it."""
        try:
            target = target_for(spec, role, self.srv.env, self.srv.st.secrets)
            if target.gateway_login is not None:
                self.ready(spec.name, target)
        except UpstreamError as exc:
            raise tokens.Refusal(exc.code, f"Accord gateway: {exc.message}") from None
        return target

    async def connect(self, resource: str, target: Target,
                      connect: Callable[[], Awaitable[T]]) -> T:
        """`connect()`; when the server refuses the gateway's own login (its password
        changed, or it was dropped by hand since this process made it ready), make it
        ready again and try once more."""
        try:
            return await connect()
        except UpstreamError as exc:
            if target.gateway_login is None or exc.server_code not in self.refused:
                raise
        await self.srv.db(lambda: self.ready(resource, target, again=True))
        return await connect()


# -- the live session


class Conversation(Protocol):
    """What `DatabaseSession` needs of a protocol's data path."""

    started: list[Run]
    finished: list[Finished]
    violations: list[Violation]
    terminated: bool

    @property
    def cbuf(self) -> bytes | bytearray: ...  # a message's start, waiting for its rest

    @property
    def busy(self) -> bool: ...

    def client(self, data: bytes) -> bytes: ...

    def server(self, data: bytes) -> bytes: ...

    def in_flight(self) -> list[Run]: ...


class DatabaseSession:
    """A live session: one client, its upstream connection, and the conversation between,
    from the moment both are logged in until either side leaves or the grant ends."""

    protocol = "unknown"
    key: Any = None  # how a cancel request names it (None: it cannot be cancelled)
    ProtocolError: ClassVar[type[Exception]] = Exception  # the conversation's broken stream
    GOODBYE = b""  # what the upstream server is told as the session ends
    unit = "message"  # what a client leaves unfinished when it is too slow

    def __init__(self, gateway: GatewayServer, client: Link, server: Link,
                 conversation: Conversation, info: SessionInfo) -> None:
        self.gateway = gateway
        self.client = client
        self.server = server
        self.conv = conversation
        self.info = info
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reason = ""
        self.ended = False
        self.audit = gateway.audit
        self._slow: asyncio.TimerHandle | None = None
        client.peer = server
        server.peer = client
        assert client.transport is not None and server.transport is not None
        self._to_client = client.transport.write
        self._to_server = server.transport.write

    async def serve(self, hello: bytes) -> None:
        """Register the session, spool its start, greet the client with `hello` and relay
        until the session ends."""
        self.gateway.register(self)
        self.audit.opened(self.info, self.conv.in_flight)
        self.client.write(hello)
        self.client.switch(self.from_client, self.client_lost)
        self.server.switch(self.from_server, self.server_lost)
        await self.done

    # -- the data path

    def from_client(self, data: bytes) -> None:
        if self.ended:
            return
        conv = self.conv
        try:
            out = conv.client(data)
        except self.ProtocolError as exc:
            self.end("protocol violation", "08P01", f"Accord gateway: {exc}")
            return
        if not self.spool(conv):
            return
        if out:
            self._to_server(out)
        self.client_read(conv)

    def spool(self, conv: Any) -> bool:
        """Spool what the client just started or was refused, before any of it goes
        upstream; False when the session ended instead (the audit backlog is full)."""
        started = conv.started
        violations = conv.violations
        if started or violations:
            audit = self.audit
            if audit.overloaded and audit.check():
                self.end("audit backlog full", "53000",
                         "Accord gateway: the audit ledger is behind; try again shortly")
                return False
            conv.started = []
            if violations:
                conv.violations = []
                audit.note(self.info, started, _NONE, violations)
            elif len(started) == 1:
                audit.sent(self.info.number, started[0])
            else:
                audit.note(self.info, started, _NONE, _NONE)
        return True

    def client_read(self, conv: Any) -> None:
        """After the client's bytes were relayed (a protocol adds its own answers)."""
        self.pace(bool(conv.cbuf))

    def pace(self, unfinished: bool) -> None:
        """A message left unfinished (a slow or stalled client) must be completed within
        `message_timeout`."""
        if unfinished:
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
        except self.ProtocolError as exc:
            self.upstream_broke(exc)
            return
        finished = conv.finished
        if finished:
            conv.finished = []
            self.audit.answered(self.info, finished)
            if self.gateway.ticker is None:  # the outcomes reach the spool within TICK
                self.gateway.arm_tick()
        if out:
            self._to_client(out)

    def upstream_broke(self, exc: Exception) -> None:
        log.error("gateway: session %s: upstream broke the protocol: %s", self.info.id, exc)
        self.end("upstream protocol error", "08P01",
                 "Accord gateway: the upstream server broke the protocol")

    def _too_slow(self) -> None:
        self._slow = None
        self.end("slow client", "08P01", f"Accord gateway: a {self.unit} was not completed "
                                          f"within {self.gateway.message_timeout:.0f}s")

    def client_lost(self) -> None:
        self.end("client terminated" if self.conv.terminated else "client disconnected")

    def server_lost(self) -> None:
        # A client that said goodbye may see the server close first.
        self.end("client terminated" if self.conv.terminated else
                 "server closed the connection")

    # -- ending

    def farewell(self, code: str, message: str) -> bytes | None:
        """The protocol's error telling the client why its session ends (None: the client
        cannot be told now)."""
        return None

    def interrupt(self) -> Coroutine[Any, Any, None] | None:
        """Stop what runs upstream now (not when the server next writes to a closed
        socket): the protocol's cancel or kill, on a connection of its own."""
        return None

    def terminate(self, reason: str, why: str) -> None:
        """End the session now, telling the client `why` (the grant watcher's call)."""
        self.end(reason, TERMINATING, f"Accord gateway: terminating connection because {why}")

    def end(self, reason: str, code: str | None = None, message: str = "") -> None:
        """Close both sides once; with `code`, tell the client why (when it can be told)."""
        if self.ended:
            return
        self.ended = True
        self.reason = reason
        if self._slow is not None:
            self._slow.cancel()
        if code is not None and not self.client.closed:
            farewell = self.farewell(code, message)
            if farewell is not None:
                self.client.write(farewell)
        if not self.server.closed:
            if self.conv.busy:
                stop = self.interrupt()
                if stop is not None:
                    self.gateway.spawn(stop)
            self.server.write(self.GOODBYE)
        self.server.close()
        self.client.close()
        self.audit.closed(self.info, reason, self.conv.in_flight())
        self.gateway.forget(self)
        self.done.set_result(None)
