"""A bare SSH relay on asyncssh and uvloop: no policy, no grant check, no recording.

The floor for an SSH gateway built on asyncssh, as forwarder.py is for the database
fronts: `benchmarks/ssh.py` runs its `cat` through it beside the gateway, so what the
gateway's own work costs (recording, the spool, the checks) is told apart from what
terminating SSH twice in Python costs (each byte decrypted from one side and encrypted
for the other, a packet at a time, by asyncssh).

    python benchmarks/ssh_relay.py PORT UPSTREAM_PORT USER KEY_FILE

Any password logs in; each session channel becomes a session channel upstream (one
connection per client connection, the key KEY_FILE as USER on 127.0.0.1:UPSTREAM_PORT)
running the same command, relayed both ways with the same flow control as the gateway's
(the slower side pauses the other).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import uvloop

from accord.gateway.ssh.lib import asyncssh  # the same asyncssh as the gateway's, fed alike

CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr"]


class Upstream(asyncssh.SSHClientSession):  # type: ignore[type-arg]
    def __init__(self, down: Down) -> None:
        self.down = down

    def data_received(self, data: bytes, datatype: Any) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self.down.chan.write_stderr(data)
        else:
            self.down.chan.write(data)

    def pause_writing(self) -> None:
        self.down.chan.pause_reading()

    def resume_writing(self) -> None:
        self.down.chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.down.closed()


class Down(asyncssh.SSHServerSession):  # type: ignore[type-arg]
    def __init__(self, server: Server) -> None:
        self.server = server
        self.chan: Any = None
        self.up: Any = None
        self.opening: asyncio.Future[None] | None = None

    def connection_made(self, chan: Any) -> None:
        self.chan = chan

    def exec_requested(self, command: str) -> bool:
        self.opening = asyncio.ensure_future(self._open(command))
        return True

    def shell_requested(self) -> bool:
        self.opening = asyncio.ensure_future(self._open(None))
        return True

    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        return True

    async def _open(self, command: str | None) -> None:
        conn = await self.server.upstream()
        kw: dict[str, Any] = {"encoding": None}
        if command is None:
            kw["term_type"] = "xterm"
        self.up, _ = await conn.create_session(lambda: Upstream(self), command, **kw)

    def data_received(self, data: bytes, datatype: Any) -> None:
        if self.up is not None:
            self.up.write(data)

    def eof_received(self) -> bool:
        if self.up is not None:
            self.up.write_eof()
        return True

    def pause_writing(self) -> None:
        if self.up is not None:
            self.up.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None:
            self.up.resume_reading()

    def closed(self) -> None:
        up = self.up
        status = up.get_exit_status() if up is not None else None
        if status is not None and status >= 0:
            self.chan.exit(status)
        else:
            self.chan.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up is not None:
            self.up.close()


class Server(asyncssh.SSHServer):
    def __init__(self) -> None:
        self.conn: Any = None
        self.down: Any = None

    def connection_made(self, conn: Any) -> None:
        self.down = conn

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return True

    def session_requested(self) -> Any:
        return self.down.create_server_channel(encoding=None), Down(self)  # bytes, as the gateway

    async def upstream(self) -> Any:
        if self.conn is None:
            self.conn = await asyncssh.connect(
                "127.0.0.1", int(sys.argv[2]), username=sys.argv[3],
                client_keys=[sys.argv[4]], known_hosts=None, agent_path=None, config=None,
                encryption_algs=CIPHERS)
        return self.conn

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.conn.close()


async def main() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    await asyncssh.listen("127.0.0.1", int(sys.argv[1]), server_factory=Server,
                          server_host_keys=[key], encryption_algs=CIPHERS,
                          compression_algs=None)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main())
