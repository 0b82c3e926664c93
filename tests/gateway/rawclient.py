"""A minimal blocking PostgreSQL client speaking raw protocol v3, for what drivers will not do
(garbage, half messages, idling until the server speaks)."""

from __future__ import annotations

import socket
import struct

from accord.gateway.postgres import protocol as pq


class Raw:
    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self.buf += chunk
        return True

    def message(self) -> tuple[str, bytes] | None:
        """The next message, or None when the server closed the connection."""
        if not self._fill(5):
            return None
        length = struct.unpack("!i", self.buf[1:5])[0]
        if not self._fill(1 + length):
            return None
        kind, body = chr(self.buf[0]), self.buf[5:1 + length]
        self.buf = self.buf[1 + length:]
        return kind, body

    def until(self, *kinds: str) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        while True:
            msg = self.message()
            if msg is None:
                return out
            out.append(msg)
            if msg[0] in kinds:
                return out

    def login(self, user: str, database: str, password: str) -> list[tuple[str, bytes]]:
        self.send(pq.startup_message({"user": user, "database": database}))
        first = self.message()
        assert first is not None
        if first[0] == "R" and pq.parse_auth(first[1])[0] == pq.AUTH_CLEARTEXT:
            self.send(pq.password_message(password.encode()))
            return self.until("Z", "E")
        return [first, *self.until("Z", "E")]

    def query(self, sql: str) -> list[tuple[str, bytes]]:
        self.send(pq.query(sql))
        return self.until("Z")


def error_of(messages: list[tuple[str, bytes]]) -> dict[str, str] | None:
    for kind, body in messages:
        if kind == "E":
            return pq.parse_fields(body)
    return None
