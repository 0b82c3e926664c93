"""asyncssh, imported without its warning about DSA (cryptography warns on import; the
gateway never offers or accepts DSA keys), and fed its input a packet's worth at a time."""

from __future__ import annotations

import warnings
from typing import Any

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="DSA is deprecated")
    import asyncssh
    from asyncssh.connection import SSHConnection

# asyncssh keeps the input it has not parsed yet as one bytes object and slices off each
# packet (and each packet's header) as it goes: the rest of a read is copied twice per
# packet. A read of uvloop's 256 KiB held eight 32 KiB packets and was copied about eight
# times over (a tenth of the SSH gateway's CPU on a recorded `cat`). Handing it the read in
# steps of about two packets keeps what it copies small; the bytes and their order are
# the same, so is everything it does with them.
FEED_BYTES = 64 << 10
_data_received = SSHConnection.data_received


def _in_steps(self: Any, data: bytes, datatype: Any = None) -> None:
    if len(data) <= FEED_BYTES:
        _data_received(self, data, datatype)
        return
    view = memoryview(data)
    for start in range(0, len(data), FEED_BYTES):
        if start and not self._transport:  # it closed (a protocol error): as asyncssh would
            return
        _data_received(self, view[start:start + FEED_BYTES], datatype)


SSHConnection.data_received = _in_steps  # type: ignore[method-assign]

__all__ = ["asyncssh"]
