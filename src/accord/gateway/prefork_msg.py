"""What a prefork parent and its gateway children say to each other (`gateway.prefork`).

Over a SOCK_SEQPACKET pair per child: the parent sends ACCEPTED with a client
connection's file descriptor attached; a child says READY once it takes connections and
STOPPING when it stops; either side sends CANCEL with a cancel key, which the parent
passes to the child whose index is in the key's top bits.
"""

from __future__ import annotations

import secrets
import struct

ACCEPTED = b"A"
CANCEL = b"C"
READY = b"R"  # child → parent: taking connections
STOPPING = b"S"  # child → parent: no more connections (it stops on its own)
_CANCEL = struct.Struct("!cI4s")
CANCEL_SIZE = _CANCEL.size
# A child's index (1-64) sits above 24 random bits of each key's process ID: still a
# positive int32, as clients expect.
KEY_INDEX_SHIFT = 24
KEY_INDEX_MASK = (1 << KEY_INDEX_SHIFT) - 1


def pack_cancel(pid: int, secret: bytes) -> bytes:
    return _CANCEL.pack(CANCEL, pid & 0xFFFFFFFF, secret[:4])


def unpack_cancel(msg: bytes) -> tuple[int, bytes]:
    _, pid, secret = _CANCEL.unpack(msg)
    return pid, secret


def key_pid(index: int) -> int:
    """A random process ID for a client's cancel key; `index` (1-64) is the prefork child
    issuing it (0: a gateway on its own, which uses all 31 bits)."""
    if index:
        return index << KEY_INDEX_SHIFT | (secrets.randbelow(KEY_INDEX_MASK) + 1)
    return secrets.randbelow(2**31 - 1) + 1


def child_of(pid: int) -> int:
    """The index of the child that issued a key's process ID (0: none)."""
    return pid >> KEY_INDEX_SHIFT
