"""PostgreSQL frontend/backend protocol v3: framing, the messages the gateway reads, and
the messages it writes. Pure functions and a small framer, no I/O.

Every parser takes untrusted bytes and either returns a value or raises `ProtocolError`
(nothing else): a truncated field, a missing NUL terminator, a length that lies, a count
that does not fit, an unknown code. Sizes are bounded before anything is buffered.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from accord.gateway.link import Link

# Startup-phase request codes (the "protocol version" field of an untyped message).
PROTOCOL_3_0 = 196608  # 3 << 16
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

MAX_STARTUP = 10_000  # what PostgreSQL itself accepts for a startup packet
MAX_AUTH_MESSAGE = 10_000  # password / SASL messages before authentication
HEADER = 5  # type byte + int32 length (the length counts itself, not the type byte)

_I32 = struct.Struct("!i")
_I16 = struct.Struct("!h")
_U16 = struct.Struct("!H")
_II = struct.Struct("!ii")


class ProtocolError(Exception):
    """The peer broke the protocol; the connection gets 08P01 and is closed."""


# ----------------------------------------------------------------- reading fields


def cstring(buf: bytes, pos: int) -> tuple[bytes, int]:
    """A NUL-terminated string at `pos`: (its bytes, the position after the NUL)."""
    end = buf.find(b"\0", pos)
    if end < 0:
        raise ProtocolError("string without terminator")
    return buf[pos:end], end + 1


def _i16(buf: bytes, pos: int) -> int:
    if pos + 2 > len(buf):
        raise ProtocolError("message too short")
    value: int = _I16.unpack_from(buf, pos)[0]
    return value


def _i32(buf: bytes, pos: int) -> int:
    if pos + 4 > len(buf):
        raise ProtocolError("message too short")
    value: int = _I32.unpack_from(buf, pos)[0]
    return value


def text(raw: bytes) -> str:
    """Protocol text as str; invalid UTF-8 is replaced, never an exception."""
    return raw.decode("utf-8", "replace")


# ----------------------------------------------------------------- startup phase


@dataclass(frozen=True)
class Startup:
    major: int
    minor: int
    params: dict[str, str]
    unknown_options: tuple[str, ...] = ()  # `_pq_.*` options we do not support


@dataclass(frozen=True)
class SSLRequest:
    pass


@dataclass(frozen=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True)
class CancelRequest:
    pid: int
    secret: bytes


StartupPacket = Startup | SSLRequest | GSSENCRequest | CancelRequest


def startup_length(head: bytes) -> int:
    """The total length of a startup packet from its first 4 bytes (checked)."""
    length = _i32(head, 0)
    if length < 8 or length > MAX_STARTUP:
        raise ProtocolError(f"invalid startup packet length {length}")
    return length


def parse_startup(packet: bytes) -> StartupPacket:
    """One whole untyped startup-phase packet (length included)."""
    if len(packet) < 8 or startup_length(packet) != len(packet):
        raise ProtocolError("invalid startup packet length")
    code = _i32(packet, 4)
    if code == SSL_REQUEST:
        if len(packet) != 8:
            raise ProtocolError("invalid SSLRequest")
        return SSLRequest()
    if code == GSSENC_REQUEST:
        if len(packet) != 8:
            raise ProtocolError("invalid GSSENCRequest")
        return GSSENCRequest()
    if code == CANCEL_REQUEST:
        # 3.0: 4-byte secret; 3.2 allows up to 256 bytes.
        if not 12 <= len(packet) <= 16 + 256:
            raise ProtocolError("invalid CancelRequest")
        return CancelRequest(pid=_i32(packet, 8), secret=bytes(packet[12:]))
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise ProtocolError(f"unsupported frontend protocol {major}.{minor}")
    params: dict[str, str] = {}
    unknown: list[str] = []
    pos = 8
    while True:
        key, pos = cstring(packet, pos)
        if not key:
            break
        value, pos = cstring(packet, pos)
        name = text(key)
        if name.startswith("_pq_."):
            unknown.append(name)
            continue
        if name in params:
            raise ProtocolError(f"duplicate startup parameter {name!r}")
        params[name] = text(value)
    if pos != len(packet):
        raise ProtocolError("trailing bytes after startup parameters")
    if "user" not in params:
        raise ProtocolError("no user in the startup packet")
    return Startup(major, minor, params, tuple(unknown))


# ----------------------------------------------------------------- framing


@dataclass
class Framer:
    """Splits a byte stream into typed messages, holding at most one partial message.

    Used where whole messages are needed (authentication, the upstream handshake). The
    proxy's data path frames in place instead (see `conversation`).
    """

    limit: int
    _buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        out: list[tuple[int, bytes]] = []
        buf = self._buf
        pos = 0
        n = len(buf)
        while n - pos >= HEADER:
            length = _I32.unpack_from(buf, pos + 1)[0]
            if length < 4 or length > self.limit:
                raise ProtocolError(f"invalid message length {length} for type "
                                    f"{chr(buf[pos])!r}")
            end = pos + 1 + length
            if end > n:
                break
            out.append((buf[pos], bytes(buf[pos + HEADER:end])))
            pos = end
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)

    def take_rest(self) -> bytes:
        """Whatever was received past the last whole message (handed to the data path)."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


# ----------------------------------------------------------------- frontend messages


def parse_query(body: bytes) -> bytes:
    """Query: the SQL text (without its NUL)."""
    if not body or body[-1] != 0:
        raise ProtocolError("Query without terminator")
    return body[:-1]


@dataclass(frozen=True)
class Parse:
    name: bytes
    query: bytes
    param_types: tuple[int, ...]


def parse_parse(body: bytes) -> Parse:
    name, pos = cstring(body, 0)
    query, pos = cstring(body, pos)
    count = _i16(body, pos)
    pos += 2
    if count < 0 or pos + 4 * count != len(body):
        raise ProtocolError("Parse: parameter type count does not match the message")
    types = struct.unpack_from(f"!{count}I", body, pos) if count else ()
    return Parse(name, query, tuple(types))


@dataclass(frozen=True)
class Bind:
    portal: bytes
    statement: bytes
    formats: tuple[int, ...]
    values: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]


def bind_names(body: bytes) -> tuple[bytes, bytes]:
    """Bind: (portal, statement) only: the cheap part the data path always needs."""
    portal, pos = cstring(body, 0)
    statement, _ = cstring(body, pos)
    return portal, statement


def parse_bind(body: bytes) -> Bind:
    portal, pos = cstring(body, 0)
    statement, pos = cstring(body, pos)
    nfmt = _i16(body, pos)
    pos += 2
    if nfmt < 0 or pos + 2 * nfmt > len(body):
        raise ProtocolError("Bind: bad format count")
    formats = struct.unpack_from(f"!{nfmt}h", body, pos) if nfmt else ()
    pos += 2 * nfmt
    nparams = _i16(body, pos)
    pos += 2
    if nparams < 0 or (nfmt > 1 and nfmt != nparams):
        raise ProtocolError("Bind: parameter count does not match the formats")
    values: list[bytes | None] = []
    for _ in range(nparams):
        size = _i32(body, pos)
        pos += 4
        if size == -1:
            values.append(None)
            continue
        if size < 0 or pos + size > len(body):
            raise ProtocolError("Bind: parameter value overruns the message")
        values.append(body[pos:pos + size])
        pos += size
    nres = _i16(body, pos)
    pos += 2
    if nres < 0 or pos + 2 * nres != len(body):
        raise ProtocolError("Bind: bad result format count")
    results = struct.unpack_from(f"!{nres}h", body, pos) if nres else ()
    if any(f not in (0, 1) for f in (*formats, *results)):
        raise ProtocolError("Bind: format codes must be 0 or 1")
    return Bind(portal, statement, tuple(formats), tuple(values), tuple(results))


def bind_header(body: bytes) -> tuple[bytes, bytes, int]:
    """Bind: (portal, statement, parameter count), without copying the values."""
    portal, pos = cstring(body, 0)
    statement, pos = cstring(body, pos)
    nfmt = _i16(body, pos)
    if nfmt < 0:
        raise ProtocolError("Bind: bad format count")
    count = _i16(body, pos + 2 + 2 * nfmt)
    if count < 0:
        raise ProtocolError("Bind: bad parameter count")
    return portal, statement, count


def parse_execute(body: bytes) -> tuple[bytes, int]:
    portal, pos = cstring(body, 0)
    if pos + 4 != len(body):
        raise ProtocolError("Execute: bad length")
    return portal, _i32(body, pos)


def parse_target(body: bytes) -> tuple[int, bytes]:
    """Describe / Close: ('S' or 'P', name)."""
    if len(body) < 2 or body[0] not in (0x53, 0x50):
        raise ProtocolError("Describe/Close: expected 'S' or 'P'")
    name, pos = cstring(body, 1)
    if pos != len(body):
        raise ProtocolError("Describe/Close: trailing bytes")
    return body[0], name


def parse_password(body: bytes) -> bytes:
    return parse_query(body)


def parse_sasl_initial(body: bytes) -> tuple[str, bytes | None]:
    mechanism, pos = cstring(body, 0)
    size = _i32(body, pos)
    pos += 4
    if size == -1:
        return text(mechanism), None
    if size < 0 or pos + size != len(body):
        raise ProtocolError("SASLInitialResponse: bad length")
    return text(mechanism), body[pos:]


# ----------------------------------------------------------------- backend messages


def parse_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse / NoticeResponse: field code → value."""
    out: dict[str, str] = {}
    pos = 0
    n = len(body)
    while pos < n:
        code = body[pos]
        if code == 0:
            if pos + 1 != n:
                raise ProtocolError("error fields: trailing bytes")
            return out
        value, pos = cstring(body, pos + 1)
        out[chr(code)] = text(value)
    raise ProtocolError("error fields without terminator")


def parse_tag(body: bytes) -> str:
    """CommandComplete: the command tag."""
    return text(parse_query(body))


def rows_of(tag: str) -> int | None:
    """The row count a command tag reports (`SELECT 5`, `INSERT 0 5`, `COPY 3`), if any."""
    last = tag.rpartition(" ")[2]
    return int(last) if last.isascii() and last.isdigit() else None


def parse_auth(body: bytes) -> tuple[int, bytes]:
    """Authentication*: (code, rest)."""
    return _i32(body, 0), body[4:]


def parse_parameter_status(body: bytes) -> tuple[str, str]:
    name, pos = cstring(body, 0)
    value, pos = cstring(body, pos)
    if pos != len(body):
        raise ProtocolError("ParameterStatus: trailing bytes")
    return text(name), text(value)


def parse_backend_key(body: bytes) -> tuple[int, bytes]:
    if not 8 <= len(body) <= 4 + 256:
        raise ProtocolError("BackendKeyData: bad length")
    return _i32(body, 0), bytes(body[4:])


def sasl_mechanisms(rest: bytes) -> list[str]:
    out: list[str] = []
    pos = 0
    while True:
        name, pos = cstring(rest, pos)
        if not name:
            return out
        out.append(text(name))


# ----------------------------------------------------------------- writing


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + _I32.pack(len(body) + 4) + body


def _fields(fields: dict[str, str]) -> bytes:
    parts = [code.encode() + value.encode("utf-8", "replace").replace(b"\0", b"") + b"\0"
             for code, value in fields.items() if value]
    return b"".join(parts) + b"\0"


def error_response(code: str, msg: str, *, severity: str = "ERROR", detail: str = "",
                   hint: str = "") -> bytes:
    """ErrorResponse (or, with severity NOTICE/WARNING, use `notice_response`)."""
    return message(b"E", _fields({"S": severity, "V": severity, "C": code, "M": msg,
                                  "D": detail, "H": hint}))


def notice_response(code: str, msg: str, *, severity: str = "NOTICE", detail: str = "") -> bytes:
    return message(b"N", _fields({"S": severity, "V": severity, "C": code, "M": msg,
                                  "D": detail}))


def ready_for_query(status: bytes = b"I") -> bytes:
    return message(b"Z", status)


def auth_request(code: int, extra: bytes = b"") -> bytes:
    return message(b"R", _I32.pack(code) + extra)


AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", name.encode() + b"\0" + value.encode() + b"\0")


def backend_key_data(pid: int, secret: bytes) -> bytes:
    return message(b"K", _I32.pack(pid) + secret)


def negotiate_protocol_version(minor: int, unsupported: tuple[str, ...]) -> bytes:
    body = _II.pack(minor, len(unsupported)) + b"".join(o.encode() + b"\0" for o in unsupported)
    return message(b"v", body)


def startup_message(params: dict[str, str]) -> bytes:
    body = _I32.pack(PROTOCOL_3_0) + b"".join(
        k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return _I32.pack(len(body) + 4) + body


def ssl_request() -> bytes:
    return _II.pack(8, SSL_REQUEST)


def cancel_request(pid: int, secret: bytes) -> bytes:
    body = _II.pack(CANCEL_REQUEST, pid) + secret
    return _I32.pack(len(body) + 4) + body


def password_message(password: bytes) -> bytes:
    return message(b"p", password + b"\0")


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return message(b"p", mechanism.encode() + b"\0" + _I32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return message(b"p", data)


def query(sql: str) -> bytes:
    return message(b"Q", sql.encode() + b"\0")


def parse_message(name: bytes, sql: bytes) -> bytes:
    return message(b"P", name + b"\0" + sql + b"\0" + _U16.pack(0))


TERMINATE = message(b"X")


# ------------------------------------------------------------------ reading a handshake


async def read_startup(link: Link) -> bytes:
    """A startup packet (or SSLRequest, GSSENCRequest, CancelRequest), whole."""
    head = await link.read_exactly(4)
    length = startup_length(head)
    return head + await link.read_exactly(length - 4)


async def read_message(link: Link, limit: int) -> tuple[int, bytes]:
    """One message (type byte and body) of at most `limit` bytes, during a handshake."""
    head = await link.read_exactly(5)
    length = int.from_bytes(head[1:5], "big", signed=True)
    if length < 4 or length > limit:
        raise ProtocolError(f"invalid message length {length}")
    return head[0], await link.read_exactly(length - 4)
