"""MySQL client/server protocol: packets, the v10 handshake, OK/ERR/EOF, length-encoded values.

Pure functions on bytes (no I/O but `read_packet`), so that the parser can be driven by
property tests. Every packet is a 3-byte little-endian payload length, a sequence id, and
the payload; a payload of 0xFFFFFF bytes continues in the next packet.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass, field

from accord.gateway.link import Link

MAX_PAYLOAD = 0xFFFFFF
MAX_HANDSHAKE = 64 << 10  # a handshake response (with its connect attributes) never needs more

# Capability flags.
CLIENT_LONG_PASSWORD = 1
CLIENT_FOUND_ROWS = 1 << 1
CLIENT_LONG_FLAG = 1 << 2
CLIENT_CONNECT_WITH_DB = 1 << 3
CLIENT_NO_SCHEMA = 1 << 4
CLIENT_COMPRESS = 1 << 5
CLIENT_ODBC = 1 << 6
CLIENT_LOCAL_FILES = 1 << 7
CLIENT_IGNORE_SPACE = 1 << 8
CLIENT_PROTOCOL_41 = 1 << 9
CLIENT_INTERACTIVE = 1 << 10
CLIENT_SSL = 1 << 11
CLIENT_IGNORE_SIGPIPE = 1 << 12
CLIENT_TRANSACTIONS = 1 << 13
CLIENT_SECURE_CONNECTION = 1 << 15
CLIENT_MULTI_STATEMENTS = 1 << 16
CLIENT_MULTI_RESULTS = 1 << 17
CLIENT_PS_MULTI_RESULTS = 1 << 18
CLIENT_PLUGIN_AUTH = 1 << 19
CLIENT_CONNECT_ATTRS = 1 << 20
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21
CLIENT_SESSION_TRACK = 1 << 23
CLIENT_DEPRECATE_EOF = 1 << 24

# What the gateway offers its clients (without CLIENT_SSL, added when it has TLS). Not
# offered: compression, LOCAL INFILE (refused), query attributes and optional metadata
# (they change packet layouts), and MariaDB's extensions (CLIENT_LONG_PASSWORD set says
# "not MariaDB" to MariaDB clients).
GATEWAY_CAPABILITIES = (
    CLIENT_LONG_PASSWORD | CLIENT_FOUND_ROWS | CLIENT_LONG_FLAG | CLIENT_CONNECT_WITH_DB
    | CLIENT_NO_SCHEMA | CLIENT_ODBC | CLIENT_IGNORE_SPACE | CLIENT_PROTOCOL_41
    | CLIENT_INTERACTIVE | CLIENT_IGNORE_SIGPIPE | CLIENT_TRANSACTIONS
    | CLIENT_SECURE_CONNECTION | CLIENT_MULTI_STATEMENTS | CLIENT_MULTI_RESULTS
    | CLIENT_PS_MULTI_RESULTS | CLIENT_PLUGIN_AUTH | CLIENT_CONNECT_ATTRS
    | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA | CLIENT_SESSION_TRACK | CLIENT_DEPRECATE_EOF)
# Flags that change what goes over the wire after the login: client and upstream session
# must agree on them, since the gateway relays result sets as they are.
STREAM_CAPABILITIES = (CLIENT_MULTI_STATEMENTS | CLIENT_MULTI_RESULTS | CLIENT_PS_MULTI_RESULTS
                       | CLIENT_SESSION_TRACK | CLIENT_DEPRECATE_EOF)

# Server status flags.
SERVER_STATUS_IN_TRANS = 1
SERVER_STATUS_AUTOCOMMIT = 2
SERVER_MORE_RESULTS_EXISTS = 8
SERVER_STATUS_CURSOR_EXISTS = 64

# Commands.
COM_QUIT = 0x01
COM_INIT_DB = 0x02
COM_QUERY = 0x03
COM_FIELD_LIST = 0x04
COM_STATISTICS = 0x09
COM_PING = 0x0E
COM_CHANGE_USER = 0x11
COM_STMT_PREPARE = 0x16
COM_STMT_EXECUTE = 0x17
COM_STMT_SEND_LONG_DATA = 0x18
COM_STMT_CLOSE = 0x19
COM_STMT_RESET = 0x1A
COM_SET_OPTION = 0x1B
COM_STMT_FETCH = 0x1C
COM_RESET_CONNECTION = 0x1F

CACHING_SHA2 = "caching_sha2_password"
NATIVE = "mysql_native_password"
CLEAR = "mysql_clear_password"

_HEADER = struct.Struct("<I")
_SQLSTATE = {  # PostgreSQL-style codes of the gateway's core -> (MySQL error, SQLSTATE)
    "28P01": (1045, "28000"), "28000": (1045, "28000"), "3D000": (1049, "42000"),
    "08001": (2003, "HY000"), "08004": (1045, "28000"), "08006": (2003, "HY000"),
    "08P01": (1158, "08S01"), "22023": (1115, "42000"), "53000": (1040, "08004"),
    "57P01": (1927, "70100"), "42501": (1142, "42000"),
}


class ProtocolError(Exception):
    """The peer broke the protocol; the connection ends."""


def mysql_error(code: str) -> tuple[int, str]:
    """MySQL's error number and SQLSTATE for one of the core's codes."""
    return _SQLSTATE.get(code, (1105, "HY000"))


# ------------------------------------------------------------------ packets


def packet(seq: int, payload: bytes) -> bytes:
    """One or more packets carrying `payload` (split at 0xFFFFFF bytes)."""
    if len(payload) < MAX_PAYLOAD:
        return _HEADER.pack(len(payload) | (seq & 0xFF) << 24) + payload
    out = bytearray()
    pos = 0
    while True:
        chunk = payload[pos:pos + MAX_PAYLOAD]
        out += _HEADER.pack(len(chunk) | (seq & 0xFF) << 24) + chunk
        seq += 1
        pos += len(chunk)
        if len(chunk) < MAX_PAYLOAD:
            return bytes(out)


def header(buf: bytes | bytearray, pos: int = 0) -> tuple[int, int]:
    """(payload length, sequence id) of the packet at `pos`."""
    word = _HEADER.unpack_from(buf, pos)[0]
    return word & 0xFFFFFF, word >> 24


async def read_packet(link: Link, limit: int) -> tuple[int, bytes]:
    """The next logical packet (continuations joined): (sequence id of its last part,
    payload). Longer than `limit` bytes: ProtocolError before anything is buffered."""
    out = b""
    while True:
        length, seq = header(await link.read_exactly(4))
        if len(out) + length > limit:
            raise ProtocolError(f"a packet longer than {limit} bytes")
        out += await link.read_exactly(length)
        if length < MAX_PAYLOAD:
            return seq, out


def lenenc_int(value: int) -> bytes:
    if value < 251:
        return bytes((value,))
    if value < 1 << 16:
        return b"\xfc" + value.to_bytes(2, "little")
    if value < 1 << 24:
        return b"\xfd" + value.to_bytes(3, "little")
    return b"\xfe" + value.to_bytes(8, "little")


def read_lenenc(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    """(value, position after it); ProtocolError when cut short."""
    if pos >= len(buf):
        raise ProtocolError("length-encoded integer cut short")
    first = buf[pos]
    if first < 251:
        return first, pos + 1
    size = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first)
    if size is None or pos + 1 + size > len(buf):
        raise ProtocolError("bad length-encoded integer")
    return int.from_bytes(buf[pos + 1:pos + 1 + size], "little"), pos + 1 + size


def read_lenenc_bytes(buf: bytes | bytearray, pos: int) -> tuple[bytes, int]:
    size, pos = read_lenenc(buf, pos)
    if pos + size > len(buf):
        raise ProtocolError("length-encoded string cut short")
    return bytes(buf[pos:pos + size]), pos + size


def read_nul(buf: bytes | bytearray, pos: int) -> tuple[bytes, int]:
    end = buf.find(b"\0", pos)
    if end < 0:
        raise ProtocolError("NUL-terminated string cut short")
    return bytes(buf[pos:end]), end + 1


# ------------------------------------------------------------------ server packets


def ok_packet(seq: int, *, affected: int = 0, insert_id: int = 0,
              status: int = SERVER_STATUS_AUTOCOMMIT, warnings: int = 0) -> bytes:
    return packet(seq, b"\0" + lenenc_int(affected) + lenenc_int(insert_id)
                  + struct.pack("<HH", status, warnings))


def err_packet(seq: int, errno: int, sqlstate: str, message: str) -> bytes:
    text = message.encode("utf-8", "replace")[:2000]
    return packet(seq, b"\xff" + struct.pack("<H", errno) + b"#"
                  + sqlstate.encode("ascii")[:5].ljust(5, b"0") + text)


def error_for(seq: int, code: str, message: str) -> bytes:
    """An ERR packet for one of the core's codes (`tokens.Refusal.code` and the like)."""
    errno, sqlstate = mysql_error(code)
    return err_packet(seq, errno, sqlstate, message)


@dataclass(frozen=True)
class ErrInfo:
    errno: int
    sqlstate: str
    message: str


def parse_err(payload: bytes | bytearray) -> ErrInfo:
    """An ERR packet (0xFF, errno, '#', SQLSTATE, message)."""
    if len(payload) < 3 or payload[0] != 0xFF:
        raise ProtocolError("not an error packet")
    errno = payload[1] | payload[2] << 8
    if len(payload) >= 9 and payload[3:4] == b"#":
        state = bytes(payload[4:9]).decode("ascii", "replace")
        text = bytes(payload[9:])
    else:
        state, text = "HY000", bytes(payload[3:])
    return ErrInfo(errno, state, text.decode("utf-8", "replace"))


def ok_status(payload: bytes | bytearray) -> tuple[int, int]:
    """(affected rows, status flags) of an OK packet (0x00, or 0xFE ending a result set
    under CLIENT_DEPRECATE_EOF)."""
    affected, pos = read_lenenc(payload, 1)
    _, pos = read_lenenc(payload, pos)
    if pos + 2 > len(payload):
        return affected, 0
    return affected, payload[pos] | payload[pos + 1] << 8


def eof_status(payload: bytes | bytearray, deprecate_eof: bool) -> int:
    """Status flags of the packet ending a result set (EOF, or OK under DEPRECATE_EOF)."""
    if deprecate_eof:
        return ok_status(payload)[1]
    if len(payload) >= 5:
        return payload[3] | payload[4] << 8
    return 0


# ------------------------------------------------------------------ handshake


def scramble() -> bytes:
    """20 random printable bytes (no NUL: some clients read the second part up to one)."""
    return bytes(33 + b % 94 for b in secrets.token_bytes(20))


def greeting(*, version: str, connection_id: int, salt: bytes, capabilities: int,
             plugin: str, charset: int = 45) -> bytes:
    """The server's HandshakeV10 payload."""
    return (b"\x0a" + version.encode() + b"\0" + struct.pack("<I", connection_id)
            + salt[:8] + b"\0" + struct.pack("<HBHH", capabilities & 0xFFFF, charset,
                                              SERVER_STATUS_AUTOCOMMIT, capabilities >> 16)
            + bytes((len(salt) + 1,)) + b"\0" * 10 + salt[8:] + b"\0" + plugin.encode() + b"\0")


@dataclass
class Greeting:
    version: str
    connection_id: int
    salt: bytes
    capabilities: int
    charset: int
    plugin: str


def parse_greeting(payload: bytes) -> Greeting:
    """A server's HandshakeV10 (an upstream's)."""
    try:
        if payload[:1] == b"\xff":
            err = parse_err(payload)
            raise ProtocolError(f"the server refused the connection: {err.message}")
        if payload[:1] != b"\x0a":
            raise ProtocolError("not a v10 handshake")
        version, pos = read_nul(payload, 1)
        conn_id = struct.unpack_from("<I", payload, pos)[0]
        salt = payload[pos + 4:pos + 12]
        pos += 13
        caps_lo, charset, _status, caps_hi = struct.unpack_from("<HBHH", payload, pos)
        pos += 7
        salt_len = payload[pos]
        pos += 11
        caps = caps_lo | caps_hi << 16
        plugin = NATIVE
        if caps & CLIENT_SECURE_CONNECTION:
            rest = max(13, salt_len - 8)
            salt += payload[pos:pos + rest].rstrip(b"\0")
            pos += rest
        if caps & CLIENT_PLUGIN_AUTH and pos < len(payload):
            name, _ = read_nul(payload + b"\0", pos)
            plugin = name.decode("ascii", "replace") or NATIVE
    except (struct.error, IndexError) as exc:
        raise ProtocolError(f"handshake cut short ({exc})") from None
    return Greeting(version.decode("utf-8", "replace"), conn_id, bytes(salt), caps, charset,
                    plugin)


@dataclass
class HandshakeResponse:
    capabilities: int
    max_packet: int
    charset: int
    user: str = ""
    auth: bytes = b""
    database: str = ""
    plugin: str = ""
    attrs: dict[str, str] = field(default_factory=dict)
    ssl_request: bool = False  # only the SSLRequest's first 32 bytes: TLS comes next


def parse_handshake_response(payload: bytes) -> HandshakeResponse:
    """A client's HandshakeResponse41 (or SSLRequest)."""
    if len(payload) < 32:
        raise ProtocolError("handshake response cut short")
    caps, max_packet, charset = struct.unpack_from("<IIB", payload, 0)
    if not caps & CLIENT_PROTOCOL_41:
        raise ProtocolError("the client does not speak protocol 4.1")
    out = HandshakeResponse(caps, max_packet, charset)
    if len(payload) == 32:
        if not caps & CLIENT_SSL:
            raise ProtocolError("handshake response cut short")
        out.ssl_request = True
        return out
    try:
        user, pos = read_nul(payload, 32)
        out.user = user.decode("utf-8")
        if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
            out.auth, pos = read_lenenc_bytes(payload, pos)
        elif caps & CLIENT_SECURE_CONNECTION:
            size = payload[pos]
            out.auth, pos = bytes(payload[pos + 1:pos + 1 + size]), pos + 1 + size
        else:
            out.auth, pos = read_nul(payload, pos)
        if caps & CLIENT_CONNECT_WITH_DB and pos < len(payload):
            db, pos = read_nul(payload + b"\0", pos)
            out.database = db.decode("utf-8")
        if caps & CLIENT_PLUGIN_AUTH and pos < len(payload):
            name, pos = read_nul(payload + b"\0", pos)
            out.plugin = name.decode("ascii")
        if caps & CLIENT_CONNECT_ATTRS and pos < len(payload):
            total, pos = read_lenenc(payload, pos)
            end = min(pos + total, len(payload))
            while pos < end and len(out.attrs) < 64:
                key, pos = read_lenenc_bytes(payload, pos)
                value, pos = read_lenenc_bytes(payload, pos)
                out.attrs[key.decode("utf-8", "replace")[:64]] = \
                    value.decode("utf-8", "replace")[:256]
    except (IndexError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"bad handshake response ({exc})") from None
    return out


def handshake_response(*, capabilities: int, charset: int, user: str, auth: bytes,
                       database: str, plugin: str, attrs: dict[str, str],
                       max_packet: int = 1 << 24) -> bytes:
    """A HandshakeResponse41 payload (the gateway logging in upstream)."""
    out = struct.pack("<IIB", capabilities, max_packet, charset) + b"\0" * 23
    out += user.encode() + b"\0"
    if capabilities & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        out += lenenc_int(len(auth)) + auth
    else:
        out += bytes((len(auth),)) + auth
    if capabilities & CLIENT_CONNECT_WITH_DB:
        out += database.encode() + b"\0"
    if capabilities & CLIENT_PLUGIN_AUTH:
        out += plugin.encode() + b"\0"
    if capabilities & CLIENT_CONNECT_ATTRS:
        body = b"".join(lenenc_int(len(k.encode())) + k.encode()
                        + lenenc_int(len(v.encode())) + v.encode() for k, v in attrs.items())
        out += lenenc_int(len(body)) + body
    return out


def ssl_request(capabilities: int, charset: int, max_packet: int = 1 << 24) -> bytes:
    return struct.pack("<IIB", capabilities | CLIENT_SSL, max_packet, charset) + b"\0" * 23


def auth_switch(plugin: str, salt: bytes) -> bytes:
    return b"\xfe" + plugin.encode() + b"\0" + salt + b"\0"
