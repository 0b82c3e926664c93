"""asyncssh, imported without its warning about DSA (cryptography warns on import; the
gateway never offers or accepts DSA keys), fed its input a packet's worth at a time, and
sending what a read made in one write per connection once the read is handled."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="DSA is deprecated")
    import asyncssh
    from asyncssh.connection import SSHConnection
    from asyncssh.constants import MSG_IGNORE

# asyncssh keeps the input it has not parsed yet as one bytes object and slices off each
# packet (and each packet's header) as it goes: the rest of a read is copied twice per
# packet. A read of uvloop's 256 KiB held eight 32 KiB packets and was copied about eight
# times over (a tenth of the SSH gateway's CPU on a recorded `cat`). Handing it the read in
# steps of about two packets keeps what it copies small; the bytes and their order are
# the same, so is everything it does with them.
FEED_BYTES = 64 << 10
_data_received = SSHConnection.data_received


def _in_steps(self: Any, data: bytes, datatype: Any = None) -> None:
    global _corked
    if _corked is not None:  # within another connection's read: that one sends
        _fed(self, data, datatype)
        return
    corked: dict[Any, tuple[Any, list[bytes]]] = {}
    _corked = corked
    try:
        _fed(self, data, datatype)
    except Exception:  # as asyncssh treats an error in its handlers: this connection closes
        self.internal_error()
    finally:
        while _deferred:  # every one, whatever another raised: each holds a channel's output
            try:
                _deferred.pop(0)()
            except Exception:
                self.internal_error()
        _corked = None
        for transport, packets in corked.values():
            with contextlib.suppress(ConnectionError, RuntimeError):  # closed meanwhile
                transport.writelines(packets)


def _fed(self: Any, data: bytes, datatype: Any) -> None:
    if len(data) <= FEED_BYTES:
        _data_received(self, data, datatype)
        return
    view = memoryview(data)
    for start in range(0, len(data), FEED_BYTES):
        if start and not self._transport:  # it closed (a protocol error): as asyncssh would
            return
        # a view: asyncssh appends it to what it holds (bytes + a buffer makes bytes)
        _data_received(self, view[start:start + FEED_BYTES], datatype)  # type: ignore[arg-type]


SSHConnection.data_received = _in_steps  # type: ignore[method-assign]

# What a read makes connections send (a relayed read is a few packets to the other side,
# and window adjusts back) goes out in one writev per connection once the read is handled,
# not in one write per packet: each write to a socket wakes its reader. A packet is held
# with the transport it was for (after a disconnect asyncssh drops its reference at once
# and aborts the transport on the next turn of the loop: the disconnect still goes first).
_corked: dict[Any, tuple[Any, list[bytes]]] | None = None  # connection: transport, packets
_deferred: list[Callable[[], None]] = []


def defer(callback: Callable[[], None]) -> bool:
    """Call `callback` once the read being handled is, before anything it made is sent
    (and before anything `callback` sends); False outside a read: the caller acts now."""
    if _corked is None:
        return False
    _deferred.append(callback)
    return True


class Held:
    """The data one read brings for one stream, passed to `then` in one piece once the read
    is handled (at once outside a read): recorded as one event, sent on together."""

    __slots__ = ("armed", "parts", "then")

    def __init__(self, then: Callable[[bytes], None]) -> None:
        self.parts: list[bytes] = []
        self.armed = False  # `flush` is to be called when the read is handled
        self.then = then

    def add(self, data: bytes) -> None:
        self.parts.append(data)
        if not self.armed:
            self.armed = defer(self.flush)
            if not self.armed:  # not within a read: nothing else will come with it
                self.flush()

    def flush(self) -> None:
        """Pass on what is held now (what must not overtake it calls this first)."""
        self.armed = False
        parts = self.parts
        if parts:
            self.parts = []
            self.then(parts[0] if len(parts) == 1 else b"".join(parts))


def _send(self: Any, data: bytes) -> None:
    transport = self._transport
    if not transport:
        return
    corked = _corked
    if corked is None:
        with contextlib.suppress(ConnectionError):
            transport.write(data)
        return
    held = corked.get(self)
    if held is None:
        corked[self] = (transport, [data])
    else:
        held[1].append(data)


SSHConnection._send = _send  # type: ignore[method-assign]

# asyncssh sends an empty MSG_IGNORE ahead of every packet once encrypting: RFC 4251's
# defence (9.3.1) against predicting CBC's next IV. The gateway's ciphers are AES-GCM, CTR
# and ChaCha20-Poly1305, which it does nothing for (OpenSSH does not send them); each cost
# the sender an encryption and a write, and the receiver a decryption, per packet: half of
# the packets of a session. Sent as asyncssh does where a CBC cipher was negotiated.
NOT_CBC = frozenset(("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr",
                     "aes192-ctr", "aes256-ctr", "chacha20-poly1305@openssh.com"))
_EMPTY = (b"\0\0\0\0",)  # the ignore's one field, an empty string
_send_packet = SSHConnection.send_packet


def _no_empty_ignore(self: Any, pkttype: int, *args: bytes, handler: Any = None) -> None:
    if pkttype == MSG_IGNORE and args == _EMPTY and \
            self.get_extra_info("send_cipher") in NOT_CBC:
        return
    _send_packet(self, pkttype, *args, handler=handler)


SSHConnection.send_packet = _no_empty_ignore  # type: ignore[method-assign]

__all__ = ["Held", "asyncssh", "defer"]
