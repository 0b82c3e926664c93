"""The SSH protocol's front on the gateway's core.

A client logs in as `USER+RESOURCE` with the connection token from `accord connect` as its
password; the gateway checks it (`GatewayServer.authorize`: the same tokens and grant
checks as every protocol), logs in upstream with the resource's private key as the login of
the granted role (`upstream`), trusting only the pinned host key, and relays each session
channel (shell with a pty, exec, window changes, signals) to a channel of its own upstream.

What holds:
* Every channel is recorded (`cast.Recorder`, asciicast v2) in chunks through the spool: a
  chunk is cut at `gateway.ssh.chunk_bytes` or `chunk_interval` after its first event, and
  when the channel ends; the shipper puts its bytes in content-addressed storage and a
  `gateway.ssh_chunk` event (sha256, size) in the ledger, in one transaction. The header
  chunk, which names an exec's command, is spooled before the channel is opened upstream.
  An exec ends with a `gateway.ssh_exec` event (exit status or signal). Each event is in
  the spool before its bytes are forwarded (`AuditWriter.piece`): a gateway killed
  mid-session loses none of what the client received; its shipper ends each channel's
  recording with a last chunk of what was not yet cut (`recovered`).
* Local (`port_forwarding`) and remote (`remote_forwarding`) port forwarding, agent
  (`agent_forwarding`) and X11 (`x11_forwarding`) forwarding are refused unless the role's
  `ssh.allow` lists them (then they go through the upstream server and each use is a
  `gateway.ssh_forward` event), SFTP unless it lists `sftp` (then each file transfer is a
  `gateway.ssh_file` event: path, direction, size, sha256, from `sftp.Follower`), other
  subsystems always; refused attempts are `gateway.violation` events.
* When the grant ends (the core's watcher) each channel is told why on the terminal and
  closed, then the connection; a connection left open by the client is closed a second
  later.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accord.gateway import tokens
from accord.gateway.records import SessionInfo, Violation
from accord.gateway.server import Front, GatewayServer
from accord.gateway.session import Grantee
from accord.gateway.spool import stream_record
from accord.gateway.ssh import lib, upstream
from accord.gateway.ssh.cast import Recorder
from accord.gateway.ssh.lib import asyncssh
from accord.gateway.ssh.sftp import Follower
from accord.spec.gateway import GatewaySSHSpec

log = logging.getLogger("accord.gateway")
GRACE = 1.0  # after telling the client its session ends, how long before closing it
SPOOL_WAIT = 0.1  # how often a session paused for a full spool looks whether it cleared


@dataclass
class Authorized(Grantee):
    target: upstream.Target


class SSHFront(Front):
    """The gateway for SSH clients (OpenSSH's `ssh`, asyncssh, ...), on its own listener."""

    protocol = "ssh"

    def __init__(self, server: GatewayServer, listen: tuple[str, int],
                 spec: GatewaySSHSpec) -> None:
        super().__init__(server, listen)
        self.spec = spec
        self.key: asyncssh.SSHKey | None = None
        self._acceptor: asyncssh.SSHAcceptor | None = None
        # The cookies of the X11 displays forwarded through the gateway (asyncssh writes
        # the client's; the upstream side reads them there), instead of ~/.Xauthority.
        self.x11_auth = str(server.st.settings.data_dir / "gateway-x11-auth")

    def _options(self) -> asyncssh.SSHServerConnectionOptions:
        return asyncssh.SSHServerConnectionOptions(
            server_host_keys=[self.key], server_factory=lambda: _Server(self),
            # Agent and X11 requests: the gateway answers them per role itself
            # (`LiveSSH.agent_requested`, `x11_requested`), then lets asyncssh do its part.
            line_editor=False, agent_forwarding=True, x11_forwarding=True,
            x11_auth_path=self.x11_auth, encryption_algs=list(self.spec.ciphers),
            allow_scp=False, login_timeout=self.server.spec.startup_timeout.total_seconds(),
            server_version="AccordGateway")

    async def start(self) -> None:
        srv = self.server
        path = Path(self.spec.host_key_file) if self.spec.host_key_file else \
            srv.st.settings.data_dir / "gateway-ssh-host-key"
        self.key = await srv.db(functools.partial(upstream.host_key, path))
        if srv.inbox is not None:
            return
        self._acceptor = await asyncssh.listen(self.host, self.port, options=self._options(),
                                               reuse_address=True, backlog=512)
        if self.port == 0:
            self.port = self._acceptor.get_port()
        log.info("Accord gateway (ssh) listening on %s:%d", self.host, self.port)

    def accept(self, conn: socket.socket) -> None:
        self.server.spawn(self._run(conn))

    async def _run(self, conn: socket.socket) -> None:
        try:
            await asyncssh.run_server(conn, options=self._options())
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            log.info("gateway: ssh connection failed: %s", exc)

    def close(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()

    async def login(self, server: _Server, username: str, password: str) -> bool:
        """Check a login (USER+RESOURCE, a connection token), then log in upstream."""
        srv = self.server
        user, sep, resource = username.partition("+")
        if not sep or not user or not resource:
            srv.refused("login", self.protocol)
            server.banner("log in as USER+RESOURCE (`accord connect RESOURCE` prints the "
                          "command)")
            return False
        try:
            auth = await srv.db(functools.partial(self._check, user, resource, password,
                                                  server.where))
        except tokens.Refusal as exc:
            srv.refused("login", self.protocol)
            log.info("gateway: refused ssh login from %s: %s", server.where, exc.message)
            server.banner(exc.message.removeprefix("Accord gateway: ")
                          + (f" ({exc.hint})" if exc.hint else ""))
            return False
        agent = _agent_socket(auth)
        try:
            up = await upstream.connect(auth.target,
                                        srv.spec.startup_timeout.total_seconds(), agent)
        except upstream.UpstreamError as exc:
            log.error("gateway: %s on %s: %s", auth.user, auth.resource, exc)
            server.banner(f"the gateway cannot reach {auth.resource}: {exc}")
            _forget_socket(agent)
            return False
        if server.gone:
            up.close()
            _forget_socket(agent)
            return False
        self._open(server, auth, up, agent)
        return True

    def _open(self, server: _Server, auth: Authorized,
              up: asyncssh.SSHClientConnection | None, agent: str | None) -> LiveSSH:
        """Register a logged-in connection as a live session (its upstream may follow)."""
        srv = self.server
        number = srv.next_number()
        assert server.conn is not None
        info = SessionInfo(
            id=f"{srv.audit.instance}-{number}", number=number, grant_id=auth.grant_id,
            user=auth.user, resource=auth.resource, role=auth.role, client=server.where,
            application=str(server.conn.get_extra_info("client_version") or "")[:64],
            tls=False, upstream_role=auth.target.user)
        live = LiveSSH(self, server.conn, up, info, auth.target, agent)
        server.live = live
        srv.register(live)
        srv.audit.opened(info, list)
        return live

    async def check_key(self, server: _Server, username: str, key: asyncssh.SSHKey) -> bool:
        """Whether a public key the client offers may log in (`accord ssh-key add`, and an
        active grant); the session starts once the client proved it holds the key."""
        user, _, rest = username.partition("+")
        resource, _, role = rest.partition("+")
        if not user or not resource:
            return False
        fingerprint = key.get_fingerprint("sha256")
        if (username, fingerprint) in server.checked:  # asked once, then signed
            server.pending = server.checked[(username, fingerprint)]
            return server.pending is not None
        try:
            auth: Authorized | None = await self.server.db(functools.partial(
                self._check, user, resource, "", server.where, (role or None, fingerprint)))
        except tokens.Refusal as exc:
            auth = None
            if exc.authenticated:
                self.server.refused("login", self.protocol)
                server.banner(exc.message.removeprefix("Accord gateway: ")
                              + (f" ({exc.hint})" if exc.hint else ""))
        server.checked[(username, fingerprint)] = server.pending = auth
        return auth is not None

    def start_key_session(self, server: _Server) -> None:
        """After a public-key login: the session now, its upstream as soon as it answers."""
        auth = server.pending
        assert auth is not None
        live = self._open(server, auth, None, _agent_socket(auth))

        async def connect() -> None:
            try:
                up = await upstream.connect(
                    auth.target, self.server.spec.startup_timeout.total_seconds(), live.agent)
            except upstream.UpstreamError as exc:
                log.error("gateway: %s on %s: %s", auth.user, auth.resource, exc)
                live.connected(None)
                live.terminate("upstream unreachable",
                               f"the gateway cannot reach {auth.resource}")
                return
            live.connected(up)

        self.server.spawn(connect())

    def _check(self, user: str, resource: str, token: str, where: str,
               key: tuple[str | None, str] | None = None) -> Authorized:
        grant, spec = self.server.authorize(user=user, resource=resource, token=token,
                                            where=where, protocol=self.protocol, key=key)
        assert spec.ssh is not None
        try:
            target = upstream.target_for(spec.ssh, grant.role, self.server.env)
        except upstream.UpstreamError as exc:
            log.error("gateway: resource %s: %s", resource, exc)
            raise tokens.Refusal("08001", f"Accord gateway: {exc}") from None
        return Authorized(grant.id, user, resource, grant.role, target)


class _Server(asyncssh.SSHServer):
    """One client connection: its login, then its channels (`LiveSSH`)."""

    def __init__(self, front: SSHFront) -> None:
        self.front = front
        self.conn: asyncssh.SSHServerConnection | None = None
        self.where = "unknown"
        self.live: LiveSSH | None = None
        self.gone = False
        self.pending: Authorized | None = None  # a public-key login, checked
        self.checked: dict[tuple[str, str], Authorized | None] = {}

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.where = f"{peer[0]}:{peer[1]}"

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        if self.live is not None:
            self.live.end("client disconnected")

    def banner(self, text: str) -> None:
        """Tell a client why its login failed (OpenSSH prints banners)."""
        if self.conn is not None:
            self.conn.send_auth_banner(f"Accord gateway: {text}\r\n")

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        return await self.front.login(self, username, password)

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return await self.front.check_key(self, username, key)

    def auth_completed(self) -> None:
        if self.live is None and self.pending is not None and not self.gone:
            self.front.start_key_session(self)

    def session_requested(self) -> Any:
        if self.live is None or self.live.ended or self.conn is None:
            return False
        chan: Any = self.conn.create_server_channel(encoding=None)
        # asyncssh decides agent and X11 requests for the whole listener; the gateway
        # decides them per role, so it answers them on each channel itself (asyncssh looks
        # up `_process_<request>_request` on the channel).
        chan._process_auth_agent_req_at_openssh_dot_com_request = self.live.agent_requested
        chan._process_x11_req_request = functools.partial(self.live.x11_requested, chan)
        return chan, self.live.channel()

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int) -> Any:
        live = self.live
        if live is not None and "port_forwarding" in live.target.allow \
                and live.upstream is not None and not live.ended:
            # Tunnelled through the upstream server: the destination is as seen from there.
            live.audit.blob(live.info, "ssh_forward", {
                "direction": "local", "destination": f"{dest_host}:{dest_port}"[:300]})
            return live.upstream
        self._refuse("port_forwarding", f"direct-tcpip {dest_host}:{dest_port}")
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                        "Accord gateway: port forwarding is not allowed")

    def server_requested(self, listen_host: str, listen_port: int) -> Any:
        live = self.live
        if live is not None and "remote_forwarding" in live.target.allow and not live.ended:
            return live.forward_remote(listen_host, listen_port)
        self._refuse("remote_forwarding", f"tcpip-forward {listen_host}:{listen_port}")
        return False

    def unix_connection_requested(self, dest_path: str) -> Any:
        self._refuse("port_forwarding", f"direct-streamlocal {dest_path}")
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                        "Accord gateway: socket forwarding is not allowed")

    def unix_server_requested(self, listen_path: str) -> bool:
        self._refuse("port_forwarding", f"streamlocal-forward {listen_path}")
        return False

    def _refuse(self, what: str, text: str) -> None:
        if self.live is not None:
            self.live.refuse(what, text)


class LiveSSH:
    """A live session (one client connection) for the core: its channels and its upstream
    connection."""

    protocol = "ssh"
    key = None  # nothing cancels an SSH session from outside but the grant's end

    def __init__(self, front: SSHFront, conn: asyncssh.SSHServerConnection,
                 up: asyncssh.SSHClientConnection | None, info: SessionInfo,
                 target: upstream.Target, agent: str | None = None) -> None:
        self.front = front
        self.agent = agent  # the socket upstream sessions reach the client's agent through
        self._agent_server: asyncio.AbstractServer | None = None
        self._agent_started = False
        self._x11_followed = False
        self._listeners: list[asyncssh.SSHListener] = []  # remote forwards, upstream
        self.gateway = front.server
        self.audit = front.server.audit
        self.conn = conn
        self.upstream = up
        # The upstream connection (None: it failed), which a public-key login opens after
        # the session is registered: channels wait for it.
        self.ready: asyncio.Future[asyncssh.SSHClientConnection | None] = \
            asyncio.get_running_loop().create_future()
        if up is not None:
            self.ready.set_result(up)
        self.info = info
        self.target = target
        self.channels: dict[int, Channel] = {}
        self._count = 0
        self.ended = False
        self.last_input = time.monotonic()
        rule = front.server.st.policies.current.loaded.spec.detect.ssh_commands
        # Lines typed at a shell matching these are flagged in their chunk's event (the
        # detectors alert on them); nothing else typed goes into the ledger.
        self.patterns = [(name, re.compile(p)) for name, p in rule.patterns.items()] \
            if rule.enabled else []
        self.audit.carry[info.number] = self._carry
        self._idle: asyncio.TimerHandle | None = None
        if target.idle_timeout:
            self._idle = asyncio.get_running_loop().call_later(target.idle_timeout,
                                                               self._check_idle)

    def connected(self, up: asyncssh.SSHClientConnection | None) -> None:
        if self.ended and up is not None:
            up.close()
            up = None
        self.upstream = up
        if not self.ready.done():
            self.ready.set_result(up)

    def channel(self) -> Channel:
        self._count += 1
        ch = self.channels[self._count] = Channel(self, self._count)
        return ch

    # -- forwarding, for roles whose `ssh.allow` lists it (each use a `gateway.ssh_forward`)

    def _forward(self, data: dict[str, Any]) -> None:
        self.audit.blob(self.info, "ssh_forward", data)

    def agent_requested(self, packet: Any) -> bool:
        """`ssh -A` on a channel: the client's agent answers upstream programs (through
        `agent`, which every upstream session of the role was offered), each connection to
        it relayed to the client."""
        if self.agent is None or self.ended:
            self.refuse("agent_forwarding", "auth-agent-req@openssh.com")
            return False
        if not self._agent_started:
            self._agent_started = True
            self.gateway.spawn(self._serve_agent())
            self._forward({"direction": "agent", "destination": "the client's agent"})
        return True

    async def _serve_agent(self) -> None:
        assert self.agent is not None
        if not await self.conn.create_agent_listener():  # lets agent channels be opened
            return

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._forward({"direction": "agent", "destination": "agent connection"})
            try:
                creader, cwriter = await self.conn.open_agent_connection()
            except (asyncssh.Error, OSError):
                writer.close()
                return
            await _splice(reader, writer, creader, cwriter)

        server = await asyncio.start_unix_server(relay, self.agent)
        if self.ended:
            server.close()
        else:
            self._agent_server = server

    def x11_requested(self, chan: Any, packet: Any) -> bool | None:
        """`ssh -X` on a channel: asyncssh listens for X11 clients on a display of the
        gateway's and relays each to the client; the upstream session forwards its X11
        connections to that display (`Channel._open_upstream`)."""
        if "x11_forwarding" not in self.target.allow or self.ended:
            self.refuse("x11_forwarding", "x11-req")
            return False
        if not self._x11_followed:  # each X11 connection to the client is a use
            self._x11_followed = True
            opener = self.conn.create_x11_connection

            async def counted(*args: Any, **kwargs: Any) -> Any:
                self._forward({"direction": "x11", "destination": "the client's display"})
                return await opener(*args, **kwargs)

            self.conn.create_x11_connection = counted  # type: ignore[method-assign]
        self._forward({"direction": "x11", "destination": "the client's display"})
        result: bool | None = type(chan)._process_x11_req_request(chan, packet)
        return result

    async def forward_remote(self, host: str, port: int) -> Any:
        """`ssh -R`: the upstream server listens; each connection it accepts is relayed to
        the client as a forwarded-tcpip channel (the bytes are not recorded)."""
        up = await self.ready
        if up is None or self.ended:
            return False
        bound = port

        def accept(orig_host: str, orig_port: int) -> Any:
            async def relay(reader: Any, writer: Any) -> None:
                self._forward({"direction": "remote", "listen": f"{host}:{bound}"[:300],
                               "origin": f"{orig_host}:{orig_port}"[:300]})
                try:
                    creader, cwriter = await self.conn.open_connection(
                        host, bound, orig_host, orig_port)
                except (asyncssh.Error, OSError):
                    writer.close()
                    return
                await _splice(reader, writer, creader, cwriter)
            return relay

        try:
            listener = await up.start_server(accept, host, port)
        except (asyncssh.Error, OSError) as exc:
            log.info("gateway: remote forward %s:%d refused upstream: %s", host, port, exc)
            return False
        if self.ended:
            listener.close()
            return False
        bound = listener.get_port()
        self._listeners.append(listener)
        self._forward({"direction": "remote", "listen": f"{host}:{bound}"[:300]})
        return listener

    def _carry(self) -> list[bytes]:
        """Each recording's last chunk event and what it holds since, for a new spool
        segment."""
        return [stream_record(self.info.number, ch.number,
                              {"name": "ssh_chunk", "data": ch.last} if ch.last else None,
                              b"".join(ch.rec.parts))
                for ch in self.channels.values() if ch.rec is not None and not ch.rec.done]

    def refuse(self, what: str, text: str) -> None:
        self.audit.note(self.info, [], [], [Violation(
            text.encode(), frozenset({what}), frozenset({what}), "ssh",
            time.perf_counter_ns(), reason=f"{what.replace('_', ' ')} is not allowed")])

    def _check_idle(self) -> None:
        assert self.target.idle_timeout
        left = self.last_input + self.target.idle_timeout - time.monotonic()
        if left > 0:
            self._idle = asyncio.get_running_loop().call_later(left, self._check_idle)
            return
        self._idle = None
        self.terminate("idle", f"no input for {self.target.idle_timeout:g}s")

    def terminate(self, reason: str, why: str) -> None:
        """Tell each channel why (on its terminal), close them, then the connection."""
        if self.ended:
            return
        for ch in list(self.channels.values()):
            ch.close_with(f"\r\nAccord gateway: this session ends: {why}\r\n")
        self.end(reason, grace=GRACE)

    def end(self, reason: str, grace: float = 0.0) -> None:
        if self.ended:
            return
        self.ended = True
        if self._idle is not None:
            self._idle.cancel()
        for ch in list(self.channels.values()):
            ch.finish()
        for listener in self._listeners:
            listener.close()
        if self._agent_server is not None:
            self._agent_server.close()
        _forget_socket(self.agent)
        if self.upstream is not None:
            self.upstream.close()
        if not self.ready.done():
            self.ready.set_result(None)
        if grace:
            asyncio.get_running_loop().call_later(grace, self.conn.close)
        else:
            self.conn.close()
        self.audit.closed(self.info, reason, [])
        self.gateway.forget(self)


class Channel(asyncssh.SSHServerSession):  # type: ignore[type-arg]
    """A client's session channel and its twin upstream, recorded."""

    def __init__(self, live: LiveSSH, number: int) -> None:
        self.live = live
        self.number = number
        self.chan: Any = None
        self.up: Any = None
        self.term: str | None = None
        self.size: tuple[int, int, int, int] = (80, 24, 0, 0)
        self.modes: Any = None
        self.command: str | None = None
        self.rec: Recorder | None = None
        self.last: dict[str, Any] | None = None  # its recording's last chunk event
        self.pending: list[bytes] = []
        # What one read of either connection brings, recorded and sent on in one piece:
        self.out_held = lib.Held(self._output)  # the server's output
        self.in_held = lib.Held(self._typed_in)  # the client's input
        self.eof = False
        self.started_ns = 0
        self.done = False
        self.exited = False  # the client's channel was told to close
        self._tick: asyncio.TimerHandle | None = None
        self._line: list[str] = []  # what is being typed at a shell (for `_typed`)
        self._escape = False
        self.flags: list[dict[str, str]] = []  # typed lines matching a pattern, not yet spooled
        self.sftp: Follower | None = None  # an SFTP subsystem's file transfers, followed
        self.client_slow = False  # the client's window is full: upstream paused for it
        self._spool_wait: asyncio.TimerHandle | None = None  # paused for the spool

    # -- the client's side

    def connection_made(self, chan: Any) -> None:
        self.chan = chan

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int],
                      term_modes: Any) -> bool:
        self.term, self.size, self.modes = term_type, term_size, term_modes
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self.command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem == "sftp" and "sftp" in self.live.target.allow:
            self.sftp = Follower(self._file)
            return True
        self.live.refuse("subsystem", f"subsystem {subsystem}")
        return False

    def _file(self, data: dict[str, Any]) -> None:
        self.live.audit.blob(self.live.info, "ssh_file", {"channel": self.number, **data})

    def session_started(self) -> None:
        live = self.live
        info = live.info
        self.started_ns = time.perf_counter_ns()
        if self.sftp is not None:  # binary: its file transfers are recorded instead
            live.gateway.spawn(self._open_upstream())
            return
        self.rec = Recorder(self._piece, self._emit, width=self.size[0], height=self.size[1],
                            term=self.term, command=self.command,
                            title=f"{info.user} on {info.resource} ({info.role})",
                            chunk_bytes=live.front.spec.chunk_bytes)
        live.gateway.spawn(self._open_upstream())

    async def _open_upstream(self) -> None:
        kw: dict[str, Any] = {"encoding": None}
        if self.sftp is not None:
            kw["subsystem"] = "sftp"
        elif self.command is not None:
            kw["command"] = self.command
        display = self.chan.get_x11_display() if self.chan is not None else None
        if display:  # `ssh -X`, allowed and set up (`LiveSSH.x11_requested`)
            kw.update(x11_forwarding=True, x11_display=display,
                      x11_auth_path=self.live.front.x11_auth)
        if self.term is not None:
            kw.update(request_pty="force", term_type=self.term, term_size=self.size,
                      term_modes=self.modes or {})
        else:
            kw["request_pty"] = False
        up = await self.live.ready
        if up is None:
            self.close_with("Accord gateway: the server behind this resource is not "
                            "reachable\r\n")
            return
        try:
            self.up, _ = await up.create_session(functools.partial(_Upstream, self), **kw)
        except (asyncssh.Error, OSError) as exc:
            self.close_with(f"Accord gateway: the server refused the channel: {exc}\r\n")
            return
        for data in self.pending:
            self.up.write(data)
        self.pending.clear()
        if self.eof:
            self.up.write_eof()

    def data_received(self, data: bytes, datatype: Any) -> None:
        self.live.last_input = time.monotonic()
        if self.sftp is None:
            # As the server's output (`output`): the packets of one read of the client's
            # connection (an upload, a paste) are recorded as one event and go upstream
            # together once the read is handled. A keystroke is a read of its own.
            self.in_held.add(data)
            return
        self.sftp.client(data)
        self._input(data)

    def take(self) -> None:
        """Record and forward the input held back (`data_received`)."""
        self.in_held.flush()

    def _typed_in(self, data: bytes) -> None:
        if self.command is None and self.live.patterns:
            self._typed(data)  # before the recorder may cut the chunk holding this input
        self._input(data)

    def _input(self, data: bytes) -> None:
        if self.rec is not None:
            self.rec.input(data)
            self._arm()
        if self.up is not None:
            with contextlib.suppress(BrokenPipeError):  # the server's side closed meanwhile
                self.up.write(data)
        else:
            self.pending.append(data)

    def eof_received(self) -> bool:
        self.take()
        if self.up is not None:
            self.up.write_eof()
        else:
            self.eof = True
        return True

    def terminal_size_changed(self, width: int, height: int, pixwidth: int,
                              pixheight: int) -> None:
        self.take()  # what was typed before the resize is recorded before it
        self.size = (width, height, pixwidth, pixheight)
        if self.rec is not None:
            self.rec.resize(width, height)
        if self.up is not None:
            self.up.change_terminal_size(width, height, pixwidth, pixheight)

    def break_received(self, msec: int) -> bool:
        self.take()
        if self.up is not None:
            self.up.send_break(msec)
        return True

    def signal_received(self, signal: str) -> None:
        self.take()
        if self.up is not None:
            self.up.send_signal(signal)

    def pause_writing(self) -> None:  # the client reads slower than the server writes
        self.client_slow = True
        if self.up is not None:
            self.up.pause_reading()

    def resume_writing(self) -> None:
        self.client_slow = False
        if self.up is not None and self._spool_wait is None:
            self.up.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.take()  # what came with the close goes upstream first
        if self.up is not None:
            self.up.close()
        self.finish()

    # -- the server's side (`_Upstream` calls these)

    def output(self, data: bytes, stderr: bool) -> None:
        if self.sftp is None and not stderr:
            # The packets of one read of the server's connection (up to eight of 32 KiB)
            # are recorded and forwarded together once it is handled: one event, one write
            # to the spool, before the packets go on (`lib.defer`).
            self.out_held.add(data)
            return
        self.release()
        if self.sftp is not None and not stderr:
            self.sftp.server(data)
        self._relay(data, stderr)

    def release(self) -> None:
        """Record and forward the output held back (`output`)."""
        self.out_held.flush()

    def _output(self, data: bytes) -> None:
        self._relay(data, False)

    def _relay(self, data: bytes, stderr: bool) -> None:
        if self.rec is not None:  # spooled before it is forwarded
            self.rec.output(data)
            self._arm()
        with contextlib.suppress(BrokenPipeError):  # the client left: recorded all the same
            if stderr:
                self.chan.write_stderr(data)
            else:
                self.chan.write(data)
        if self.live.audit.spool_full and self._spool_wait is None and self.up is not None \
                and self.live.audit.spool_check():  # not what an ended episode left
            # The shipper is far behind (a long burst of output): no more output until it
            # has caught up, rather than a spool that fills the disk.
            self.up.pause_reading()
            self._spool_wait = asyncio.get_running_loop().call_later(SPOOL_WAIT,
                                                                     self.spool_waited)

    def spool_waited(self) -> None:
        """Output resumes once the spool is below `max_spool_bytes` (and the client reads)."""
        self._spool_wait = None
        if self.done or self.up is None:
            return
        if self.live.audit.spool_check():
            self._spool_wait = asyncio.get_running_loop().call_later(SPOOL_WAIT,
                                                                     self.spool_waited)
        elif not self.client_slow:
            self.up.resume_reading()

    def upstream_closed(self) -> None:
        self.release()
        up = self.up
        status = up.get_exit_status() if up is not None else None
        signal = up.get_exit_signal() if up is not None else None
        if self.command is not None and not self.done:
            self.live.audit.blob(self.live.info, "ssh_exec", {
                "channel": self.number, "command": self.command[:16384],
                "exit_status": status if status is not None and status >= 0 else None,
                "exit_signal": signal[0] if signal else None,
                "duration_us": (time.perf_counter_ns() - self.started_ns) // 1000})
        self.finish()
        if self.chan is None or self.exited:
            return
        self.exited = True
        if signal:
            self.chan.exit_with_signal(*signal)
        elif status is not None and status >= 0:
            self.chan.exit(status)
        else:
            self.chan.close()

    def _typed(self, data: bytes) -> None:
        """Follow the line being typed (backspace, ^U and ^C understood, escape sequences
        such as arrow keys skipped) and flag a finished line matching a pattern."""
        line = self._line
        for c in data.decode("utf-8", "replace"):
            if self._escape:
                if c.isalpha() or c == "~":
                    self._escape = False
            elif c == "\x1b":
                self._escape = True
            elif c in "\r\n":
                text = "".join(line).strip()
                line.clear()
                for name, pattern in self.live.patterns if text else ():
                    if pattern.search(text):
                        self.flags.append({"pattern": name, "line": text[:500]})
                        break
            elif c in "\x7f\b":
                if line:
                    line.pop()
            elif c in "\x15\x03":
                line.clear()
            elif c >= " " and len(line) < 4096:
                line.append(c)

    # -- recording and ending

    def _piece(self, *parts: bytes) -> None:
        self.live.audit.piece(self.live.info.number, self.number, *parts)

    def _emit(self, index: int, final: bool) -> None:
        """A chunk ends: its event takes the lines spooled since the last (`spool.R_PIECE`)."""
        meta: dict[str, Any] = {"channel": self.number, "index": index, "final": final,
                                "kind": "exec" if self.command is not None else "shell"}
        if self.flags:
            meta["flagged"], self.flags = self.flags, []
        self.live.audit.blob(self.live.info, "ssh_chunk", {**meta, "stream": self.number})
        self.last = meta

    def _arm(self) -> None:
        if self._tick is None and self.rec is not None and self.rec.pending:
            self._tick = asyncio.get_running_loop().call_later(
                self.live.front.spec.chunk_interval.total_seconds(), self._cut)

    def _cut(self) -> None:
        self._tick = None
        if self.rec is not None:
            self.rec.flush()

    def close_with(self, message: str) -> None:
        """Tell the client `message` on its terminal (stderr without one), then close."""
        if self.chan is None or self.exited:
            return
        self.release()
        self.exited = True
        data = message.encode()
        if self.rec is not None:
            self.rec.output(data)
        if self.term is not None:
            self.chan.write(data)
        else:
            self.chan.write_stderr(data)
        self.finish()
        self.chan.exit(255)

    def finish(self) -> None:
        """The recording's last chunk (once)."""
        if self.done:
            return
        self.take()
        self.release()
        self.done = True
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        if self._spool_wait is not None:
            self._spool_wait.cancel()
            self._spool_wait = None
        if self.rec is not None:
            self.rec.flush(final=True)
        if self.sftp is not None:
            self.sftp.finish()
        self.live.channels.pop(self.number, None)


class _Upstream(asyncssh.SSHClientSession):  # type: ignore[type-arg]
    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def data_received(self, data: bytes, datatype: Any) -> None:
        self.channel.output(data, datatype == asyncssh.EXTENDED_DATA_STDERR)

    def eof_received(self) -> bool:
        self.channel.release()
        if self.channel.chan is not None and not self.channel.done:
            self.channel.chan.write_eof()
        return True

    def pause_writing(self) -> None:  # the server reads slower than the client writes
        if self.channel.chan is not None:
            self.channel.chan.pause_reading()

    def resume_writing(self) -> None:
        if self.channel.chan is not None:
            self.channel.chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.channel.upstream_closed()


def _agent_socket(auth: Authorized) -> str | None:
    """A private path for the socket that stands for a session's forwarded agent, when its
    role may forward one."""
    if "agent_forwarding" not in auth.target.allow:
        return None
    return str(Path(tempfile.mkdtemp(prefix="accord-agent-")) / "agent.sock")


def _forget_socket(path: str | None) -> None:
    if path is not None:
        shutil.rmtree(Path(path).parent, ignore_errors=True)


async def _pipe(reader: Any, writer: Any) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (asyncssh.Error, OSError):
        pass


async def _splice(reader: Any, writer: Any, creader: Any, cwriter: Any) -> None:
    """Relay two streams both ways until both ends are done, then close them."""
    try:
        await asyncio.gather(_pipe(reader, cwriter), _pipe(creader, writer))
    finally:
        writer.close()
        cwriter.close()
