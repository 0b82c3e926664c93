"""One MySQL session's data path: read the client's commands, check and record each statement,
follow the server's answers to learn how each ended. Pure: bytes in, bytes out.

The client sends one command per packet sequence and (but for pipelining clients) waits for
its answer. For each command `client()` returns the bytes to send upstream; a command the
gateway answers itself (a refusal, a command it does not relay) is queued in order behind
the answers still due from the server and reaches the client (`reply`) right after them.
`server()` relays the server's bytes unchanged and reads only packet headers and first
bytes: OK, ERR, EOF, a result set's column count and row packets, a prepared statement's
counts. Two shortcuts keep that cheap without reading less: a prepared statement's answer
that starts with the same bytes as its last result set (column count, definitions,
sequence ids) skips them at once, and rows of one length are checked a run at a time
(`_same_rows`: each header byte and first byte of the run, with strided slices). Where the
optional extension `_walk` (_walk.c) was built, the packets are walked in C and Python acts
only on what ends a result; the Python walk is the fallback, held to the same output by the
property tests.

Audit: each statement of a COM_QUERY (multi-statements are split) and each
COM_STMT_EXECUTE (with the text its COM_STMT_PREPARE had) is a `Run`, in `started` before
its bytes go upstream; how each ended is in `finished`; refusals in `violations`.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections import deque
from typing import Any

from accord.gateway.classes import READ, UNKNOWN
from accord.gateway.mysql import protocol as my
from accord.gateway.mysql.scope import Classifier, Statement
from accord.gateway.records import Finished, Run, Violation

try:  # the result walk compiled (_walk.c), built at install where a C compiler is at hand
    from accord.gateway.mysql import _walk
except ImportError:  # pragma: no cover - exercised where Accord was built without one
    _walk = None  # type: ignore[assignment]

_NONE: list[Any] = []
_HDR = struct.Struct("<I")
_EXECUTE = struct.Struct("<IB")  # COM_STMT_EXECUTE: statement id, flags
_OK_HEAD = struct.Struct("<BBH")  # OK: affected rows, insert id (when a byte each), status
_EOF_STATUS = struct.Struct("<H")
COM_STMT_EXECUTE = my.COM_STMT_EXECUTE
SERVER_MORE_RESULTS_EXISTS = my.SERVER_MORE_RESULTS_EXISTS
perf_counter_ns = time.perf_counter_ns
MAX_PAYLOAD = my.MAX_PAYLOAD
# Expected answers from the server.
K_SIMPLE = 0  # one packet: OK, ERR, EOF or a string (PING, INIT_DB, STMT_RESET, ...)
K_RESULT = 1  # OK/ERR, or result sets (COM_QUERY, COM_STMT_EXECUTE)
K_PREPARE = 2  # COM_STMT_PREPARE_OK and its parameter and column definitions
K_LIST = 3  # packets up to an EOF or ERR (COM_FIELD_LIST, COM_STMT_FETCH)
K_LOCAL = 4  # the gateway's own answer, bytes ready

# Parser states within K_RESULT / K_PREPARE.
S_FIRST, S_COLUMNS, S_COLUMNS_EOF, S_ROWS, S_PARAMS, S_PARAMS_EOF, S_DONE = range(7)
_REFUSED_COMMANDS = {
    my.COM_CHANGE_USER: "COM_CHANGE_USER (a session is its grant's; connect again instead)",
    0x08: "COM_SHUTDOWN", 0x0A: "COM_PROCESS_INFO", 0x0C: "COM_PROCESS_KILL",
    0x0D: "COM_DEBUG", 0x07: "COM_REFRESH", 0x12: "COM_BINLOG_DUMP", 0x15: "COM_REGISTER_SLAVE",
    0x1E: "COM_BINLOG_DUMP_GTID", 0xFA: "COM_STMT_BULK_EXECUTE",
}
MAX_PREPARED = 4096  # prepared statements a session keeps track of
MAX_HEAD = 2048  # the longest start of a prepared statement's answer kept (Prepared.head)
# Whether `Conversation._result` walks in C (tests turn it off to hold the Python walk, the
# fallback, to the same output).
COMPILED = _walk is not None
_WALK = _walk.walk if _walk is not None else None
EV_STOP, EV_END, EV_ERROR, EV_HEAD, EV_OTHER, EV_PYTHON = range(6)  # what the walk stops at


class Expect:
    """One answer due from the server (or queued locally), in order."""

    __slots__ = ("cursor", "kind", "left", "local", "rows", "runs", "state", "stmt")

    def __init__(self, kind: int, runs: list[Run] | None = None, local: bytes = b"",
                 stmt: Any = None, cursor: bool = False) -> None:
        self.kind = kind
        self.runs = runs if runs is not None else []
        self.local = local
        self.stmt = stmt  # K_PREPARE: the Prepared it will name; K_RESULT: the one executed
        self.cursor = cursor
        self.state = S_FIRST
        self.left = 0
        self.rows = 0


class Prepared:
    __slots__ = ("classes", "head", "head_last", "long_data", "params", "text", "types")

    def __init__(self, text: bytes, classes: frozenset[str]) -> None:
        self.text = text
        self.classes = classes
        self.params = 0
        self.types: bytes = b""
        self.long_data = False
        # The start of its last answer up to its rows, when that was a result set: the
        # column count and definitions (and EOF), the same bytes at every execution while
        # the columns stay the same (see `Conversation._result`); where its last packet is.
        self.head: bytes | None = None
        self.head_last = 0


class Infile:
    """A file the client sends for a LOAD DATA LOCAL statement: followed packet by packet
    (relayed as it comes, never held) up to the empty packet that ends it."""

    __slots__ = ("hash", "head", "left", "run", "size")

    def __init__(self, run: Run) -> None:
        self.run = run
        self.hash = hashlib.sha256()
        self.size = 0
        self.left = 0  # bytes of the current packet's payload still to come
        self.head = b""  # a packet header cut short


class Conversation:
    def __init__(self, *, allowed: frozenset[str], classifier: Classifier, role: str,
                 resource: str, database: str, capabilities: int, redact: bool = True,
                 max_message: int = 8 << 20, local_infile: bool = False) -> None:
        self.allowed = allowed
        self.local_infile = local_infile  # the role may send files (gateway.allow)
        self._infile: Infile | None = None  # the file being sent now
        self.classifier = classifier
        self.role = role
        self.resource = resource
        self.database = database
        self.deprecate_eof = bool(capabilities & my.CLIENT_DEPRECATE_EOF)
        self.redact = redact
        self.max_message = max_message
        self.cbuf = bytearray()
        self.sbuf = bytearray()
        self.pending: deque[Expect] = deque()
        self.started: list[Run] = []
        self.finished: list[Finished] = []
        self.violations: list[Violation] = []
        self.reply = bytearray()  # the gateway's own answers, due to the client now
        self.terminated = False  # the client said COM_QUIT
        self.seq = 0
        self.prepared: dict[int, Prepared] = {}
        self.sql_prepared: dict[str, frozenset[str]] = {}  # PREPARE name -> classes
        self._preparing: Prepared | None = None  # the last COM_STMT_PREPARE sent
        self._last_prepared: int | None = None
        self._scont = False  # inside a server packet of 0xFFFFFF bytes and its continuations
        self._next_server_seq = 1
        self._runs = 0  # statements numbered in the session (their `seq` in the ledger)
        self._outstanding = 0  # answers due from the server
        self._locals = 0  # the gateway's own answers in `pending`

    # -- state

    @property
    def busy(self) -> bool:
        """A command is upstream and not yet fully answered."""
        return self._outstanding > 0

    def in_flight(self) -> list[Run]:
        return [run for e in self.pending for run in e.runs]

    def error_seq(self) -> int:
        """The sequence id an ERR packet ending the session should carry now."""
        return self._next_server_seq if self.busy else 1

    # -- the client's side

    def client(self, data: bytes) -> bytes:
        """Bytes to send upstream for what the client sent (ProtocolError: end the session)."""
        if self._infile is not None:
            used = self._file(data)
            return data if used == len(data) else data[:used] + self.client(data[used:])
        buf = self.cbuf
        if not buf and len(data) >= 5:  # the common case: one whole command, alone
            word = _HDR.unpack_from(data)[0]
            length = word & 0xFFFFFF
            if len(data) == 4 + length and length < MAX_PAYLOAD:
                if length > self.max_message:
                    raise my.ProtocolError(f"a command longer than {self.max_message} bytes")
                self.seq = word >> 24
                if data[4] == COM_STMT_EXECUTE:  # sysbench's every statement: no copy
                    out1 = self._execute(data, data, 4)
                else:
                    out1 = self._command(data, data[4:])
                if self._locals:
                    self._flush_local()
                return out1
        buf += data
        out = bytearray()
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            # A command: one packet, or several when its payload is 0xFFFFFF bytes or more.
            end = pos
            total = 0
            while True:
                if n - end < 4:
                    end = -1
                    break
                length, _seq = my.header(buf, end)
                total += length
                if total > self.max_message:
                    raise my.ProtocolError(f"a command longer than {self.max_message} bytes")
                if n - end - 4 < length:
                    end = -1
                    break
                end += 4 + length
                if length < my.MAX_PAYLOAD:
                    break
            if end < 0:
                break
            raw = bytes(buf[pos:end])
            pos = end
            length, self.seq = my.header(raw)
            if len(raw) == 4 + length:
                payload = raw[4:]
            else:  # joined continuation packets
                starts = _packet_starts(raw)
                payload = b"".join(raw[p + 4:p + 4 + my.header(raw, p)[0]] for p in starts)
                self.seq = my.header(raw, starts[-1])[1]
            out += self._command(raw, payload)
        del buf[:pos]
        self._flush_local()
        return bytes(out)

    def _file(self, data: bytes) -> int:
        """Follow the file being sent (hashing it as it passes); how many bytes of `data`
        belong to it (what follows its last, empty, packet is commands again)."""
        f = self._infile
        assert f is not None
        view = memoryview(data)
        pos, n = 0, len(data)
        while pos < n:
            if f.left:
                take = min(f.left, n - pos)
                f.hash.update(view[pos:pos + take])
                f.size += take
                f.left -= take
                pos += take
                continue
            take = min(4 - len(f.head), n - pos)
            f.head += data[pos:pos + take]
            pos += take
            if len(f.head) < 4:
                break
            f.left = int.from_bytes(f.head[:3], "little")
            f.head = b""
            if not f.left:
                f.run.infile = {"bytes": f.size, "sha256": f.hash.hexdigest()}
                self._infile = None
                break
        return pos

    def _refuse(self, errno: int, sqlstate: str, message: str) -> bytes:
        """The gateway's own ERR answer to the command just read."""
        self._queue_local(my.err_packet(self.seq + 1, errno, sqlstate,
                                        f"Accord gateway: {message}"))
        return b""

    def _queue_local(self, data: bytes) -> None:
        self.pending.append(Expect(K_LOCAL, None, data))
        self._locals += 1

    def _flush_local(self) -> None:
        pending = self.pending
        while pending and pending[0].kind == K_LOCAL:
            self.reply += pending.popleft().local
            self._locals -= 1

    def _command(self, raw: bytes, payload: bytes) -> bytes:
        if not payload:
            raise my.ProtocolError("an empty command packet")
        com = payload[0]
        if com == my.COM_QUERY:
            return self._query(raw, payload[1:])
        if com == COM_STMT_EXECUTE:
            return self._execute(raw, payload, 0)
        if com == my.COM_STMT_PREPARE:
            return self._prepare(raw, payload[1:])
        if com in (my.COM_PING, my.COM_STMT_RESET, my.COM_SET_OPTION, my.COM_STATISTICS,
                   my.COM_RESET_CONNECTION):
            if com == my.COM_RESET_CONNECTION:
                self.prepared.clear()
                self.sql_prepared.clear()
            if com == my.COM_STMT_RESET and len(payload) >= 5:
                stmt = self.prepared.get(struct.unpack_from("<I", payload, 1)[0])
                if stmt is not None:
                    stmt.long_data = False
            self._expect(Expect(K_SIMPLE))
            return raw
        if com == my.COM_STMT_SEND_LONG_DATA:
            if len(payload) >= 5:
                stmt = self.prepared.get(struct.unpack_from("<I", payload, 1)[0])
                if stmt is not None:
                    stmt.long_data = True
            return raw  # no answer
        if com == my.COM_STMT_CLOSE:
            if len(payload) >= 5:
                self.prepared.pop(struct.unpack_from("<I", payload, 1)[0], None)
            return raw  # no answer
        if com == my.COM_INIT_DB:
            name = payload[1:].decode("utf-8", "replace")
            if name not in (self.database, self.resource):
                return self._refuse(1044, "42000", f"this session may use its resource's "
                                                   f"database only ({self.resource})")
            self._expect(Expect(K_SIMPLE))
            return my.packet(0, bytes((my.COM_INIT_DB,)) + self.database.encode())
        if com == my.COM_QUIT:
            self.terminated = True
            return raw
        if com == my.COM_FIELD_LIST:
            if READ not in self.allowed:
                return self._refuse(1142, "42000", f"role {self.role} may not read")
            self._expect(Expect(K_LIST))
            return raw
        if com == my.COM_STMT_FETCH:
            self._expect(Expect(K_LIST))
            return raw
        what = _REFUSED_COMMANDS.get(com, f"command 0x{com:02x}")
        return self._refuse(1047, "08S01", f"{what} is not available through the gateway")

    def _next_run(self) -> int:
        self._runs += 1
        return self._runs

    def _expect(self, e: Expect) -> None:
        if not self._outstanding:
            self._next_server_seq = self.seq + 1
        self._outstanding += 1
        self.pending.append(e)

    def _check(self, statements: tuple[Statement, ...], protocol: str, t0: int
               ) -> tuple[Statement, frozenset[str], str | None] | None:
        """The first statement the role may not run: (it, missing classes, reason)."""
        for st in statements:
            if st.local_infile and not self.local_infile:
                return st, frozenset(), (f"LOAD DATA LOCAL is not allowed for role "
                                         f"{self.role} on {self.resource}")
            classes = st.classes
            if st.executes is not None:
                classes = classes | self.sql_prepared.get(st.executes, frozenset({UNKNOWN}))
            missing = classes - self.allowed
            if missing:
                return st, frozenset(missing), None
            if st.uses is not None and st.uses not in (self.database,):
                return st, frozenset(), (f"this session may use its resource's database "
                                         f"only ({self.database or self.resource})")
        return None

    def _violation(self, text: bytes, st: Statement, missing: frozenset[str],
                   reason: str | None, protocol: str, t0: int) -> bytes:
        self.violations.append(Violation(text, st.classes, missing, protocol, t0,
                                         escalation=st.escalation if missing else (
                                             "server" if st.local_infile else None),
                                         reason=reason))
        if reason is not None:
            return self._refuse(1148 if st.local_infile else 1044, "42000", reason)
        what = st.text.decode("utf-8", "replace")[:200]
        return self._refuse(1142, "42000", f"role {self.role} on {self.resource} may not run "
                                           f"this statement ({', '.join(sorted(missing))}): "
                                           f"{what}")

    def _query(self, raw: bytes, text: bytes) -> bytes:
        t0 = time.perf_counter_ns()
        verdict = self.classifier(text)
        statements = verdict.statements
        refused = self._check(statements, "text", t0)
        if refused is not None:
            st, missing, reason = refused
            return self._violation(text, st, missing, reason, "text", t0)
        runs: list[Run] = []
        if len(statements) <= 1:
            runs.append(Run(self._next_run(), "text", text, None, t0))
        else:
            runs.extend(Run(self._next_run(), "text", st.text, None, t0) for st in statements)
        for st in statements:
            if st.prepares is not None:
                self.sql_prepared[st.prepares] = st.classes
                if len(self.sql_prepared) > MAX_PREPARED:
                    self.sql_prepared.pop(next(iter(self.sql_prepared)))
            elif st.forgets is not None:
                self.sql_prepared.pop(st.forgets, None)
        self.started.extend(runs)
        self._expect(Expect(K_RESULT, runs))
        return raw

    def _prepare(self, raw: bytes, text: bytes) -> bytes:
        t0 = time.perf_counter_ns()
        verdict = self.classifier(text)
        statements = verdict.statements
        refused = self._check(statements, "binary", t0)
        if refused is not None:
            st, missing, reason = refused
            self._preparing = None
            return self._violation(text, st, missing, reason, "binary", t0)
        classes: frozenset[str] = frozenset().union(*(st.classes for st in statements)) \
            if statements else frozenset({UNKNOWN})
        stmt = Prepared(text, classes)
        self._preparing = stmt
        self._expect(Expect(K_PREPARE, stmt=stmt))
        return raw

    def _execute(self, raw: bytes, payload: bytes, at: int) -> bytes:
        """COM_STMT_EXECUTE, its payload in `payload` from `at` (the command byte)."""
        t0 = perf_counter_ns()
        if len(payload) - at < 10:
            raise my.ProtocolError("COM_STMT_EXECUTE cut short")
        stmt_id, flags = _EXECUTE.unpack_from(payload, at + 1)
        if stmt_id == 0xFFFFFFFF:
            if self._last_prepared is not None:
                stmt = self.prepared.get(self._last_prepared)  # MariaDB: the last one prepared
            else:
                stmt = self._preparing  # pipelined behind its prepare
        else:
            stmt = self.prepared.get(stmt_id)
        if stmt is None:
            return self._refuse(1243, "HY000", f"unknown prepared statement handler "
                                               f"({stmt_id}) given to EXECUTE")
        params: object = stmt.params if self.redact else self._params(stmt, payload[at:])
        self._runs = number = self._runs + 1
        run = Run(number, "binary", stmt.text, params, t0)
        self.started.append(run)
        e = Expect(K_RESULT, [run], b"", stmt) if not flags & 0x0F else \
            Expect(K_RESULT, [run], b"", None, True)  # a cursor: its head is not kept
        if not self._outstanding:
            self._next_server_seq = self.seq + 1
        self._outstanding += 1
        self.pending.append(e)
        return raw

    def _params(self, stmt: Prepared, payload: bytes) -> object:
        """The parameter values (text, or \\x hex for bytes); the count when they cannot be
        read (sent as long data, or a type this reader does not know)."""
        n = stmt.params
        if n == 0:
            return []
        if stmt.long_data:
            return n
        try:
            values, stmt.types = decode_params(payload, n, stmt.types)
        except (IndexError, ValueError, struct.error, my.ProtocolError):
            return n
        return values

    # -- the server's side

    def server(self, data: bytes) -> bytes:
        """Bytes for the client (the server's, with the gateway's own answers in order)."""
        pending = self.pending
        if pending and not self.sbuf and not self._scont:
            head = pending[0]
            if head.kind == K_RESULT:  # the common case: an answer's end, alone
                n = len(data)
                pos = self._result(head, data, 0, n)
                if pos == n and head.state == S_DONE and len(pending) == 1:
                    pending.popleft()
                    self._outstanding -= 1
                    return data
                return self._server(data, pos, head.state == S_DONE)
        return self._server(data, 0, False)

    def _server(self, data: bytes, pos: int, done: bool | None) -> bytes:
        """`server` from `pos`, where the answer at the head of `pending` is `done` or not
        (the packets before were followed)."""
        buf = self.sbuf
        if buf:
            buf += data
            data = bytes(buf)
            buf.clear()
        n = len(data)
        out: list[bytes] = []
        start = 0
        pending = self.pending
        if done:
            done = None
            pending.popleft()
            self._outstanding -= 1
            if self._locals and pending[0].kind == K_LOCAL:
                out.append(data[:pos])
                start = pos
                while pending and pending[0].kind == K_LOCAL:
                    out.append(pending.popleft().local)
                    self._locals -= 1
        while n - pos >= 4:
            head = pending[0] if pending else None
            done = None
            if head is not None and head.kind == K_RESULT and not self._scont:
                # A result (every query's and execution's answer): its whole packets in a
                # walk of their own, up to its end, the data's, or a long packet.
                at = pos
                pos = self._result(head, data, pos, n)
                if head.state == S_DONE:
                    done = True
                elif pos != at:
                    continue
            if done is None:  # one packet of any answer, of any length
                done = self._packet(head, data, pos, n)
                if done is None:  # cut short: wait for its rest
                    break
                pos += 4 + (_HDR.unpack_from(data, pos)[0] & 0xFFFFFF)
            if not done:
                continue
            pending.popleft()
            self._outstanding -= 1
            if self._locals and pending[0].kind == K_LOCAL:
                out.append(data[start:pos])
                start = pos
                while pending and pending[0].kind == K_LOCAL:
                    out.append(pending.popleft().local)
                    self._locals -= 1
        if pos < n:
            self.sbuf += data[pos:]
        if start == 0 and pos == n:
            if not out:
                return data
            out.append(data)
            return b"".join(out)
        out.append(data[start:pos])
        return b"".join(out) if len(out) > 1 else out[0]

    def _packet(self, head: Expect | None, data: bytes, pos: int, n: int) -> bool | None:
        """Follow the one server packet at `pos` (any answer, any length): whether it
        completed the answer `head`; None when it is not whole yet."""
        word = _HDR.unpack_from(data, pos)[0]
        length = word & 0xFFFFFF
        if pos + 4 + length > n:
            return None
        self._next_server_seq = (word >> 24) + 1
        if self._scont:  # the rest of a long packet: data, not a header
            self._scont = length == MAX_PAYLOAD
            return False
        first = data[pos + 4] if length else -1
        if head is None or head.kind == K_LOCAL:
            if first == 0xFF:  # the server says why it is closing the connection
                return False
            raise my.ProtocolError("the server sent a packet nobody asked for")
        done = self._answer(head, data, pos + 4, length, first)
        self._scont = length == MAX_PAYLOAD
        return done

    def _result(self, e: Expect, data: bytes, pos: int, n: int) -> int:
        """Follow a K_RESULT answer through the whole packets of `data` from `pos`; where it
        stopped: at the answer's end (`e.state` S_DONE), the data's, a packet cut short, or
        a long packet (left to `_packet`). The server's every answer to a query or
        execution comes through here.

        Only what ends the answer is read: column definitions and rows are counted. A
        prepared statement's result set starts with the same bytes at each execution
        (its column count, definitions and sequence ids), kept from the last one
        (`Prepared.head`): when the answer starts with them, they are skipped at once;
        then `_walk.walk` (C) counts the packets up to what Python must act on, or, without
        it, the loop below does, rows of one length a run at a time (`_same_rows`)."""
        state = e.state
        last = -1  # the last packet followed (its sequence id is the client's last)
        begin = -1  # where the result set of a prepared statement's answer began (its head
        stmt = e.stmt  # is kept when its column definitions end)
        if stmt is not None and state == S_FIRST:
            head = stmt.head
            if head is not None and data.startswith(head, pos):
                last = pos + stmt.head_last
                pos += len(head)
                state = S_ROWS
            else:
                begin = pos
        rows = e.rows
        left = e.left
        unpack = _HDR.unpack_from
        if COMPILED:  # the walk in C (_walk.c): Python acts on what it stops at
            walk: Any = _WALK
            deprecate_eof = self.deprecate_eof
            cursor = e.cursor
            while True:
                event, pos, at, state, rows, left, status = walk(
                    data, pos, n, state, rows, left, deprecate_eof, cursor, begin >= 0)
                if at >= 0:
                    last = at
                if event == EV_END:  # a result set ended: the packet from `last` to `pos`
                    if status < 0:
                        status = my.eof_status(data[last + 4:pos], deprecate_eof)
                    state = self._rows_done(e, rows, status)
                    rows = 0
                    e.stmt = stmt = None  # more results: a head is the first result's only
                    begin = -1
                    if state == S_DONE:
                        break
                    continue
                if event == EV_STOP:
                    break
                if event == EV_ERROR:
                    self._result_error(e, data[last + 4:pos])
                    state = S_DONE
                    break
                if event == EV_HEAD:
                    self._keep_head(stmt, data, begin, last, pos)
                    continue
                if event == EV_PYTHON:  # counts beyond 64 bits: the loop below takes them
                    break
                # EV_OTHER: OK, ERR, a file asked for, a long column count, a cursor's EOF
                length = unpack(data, pos)[0] & 0xFFFFFF
                e.state, e.rows, e.left = state, rows, left
                done = self._answer(e, data, pos + 4, length, data[pos + 4] if length else -1)
                last = pos
                pos += 4 + length
                if done:
                    state = S_DONE
                    break
                if state == S_COLUMNS_EOF and e.state == S_ROWS and begin >= 0 and \
                        not cursor:
                    self._keep_head(stmt, data, begin, last, pos)
                state, rows, left = e.state, e.rows, e.left
                if state == S_FIRST:  # more results: a head is the first result's only
                    e.stmt = stmt = None
                    begin = -1
                if self._infile is not None:  # the client sends a file now
                    break
            if event != EV_PYTHON:
                if last >= 0:
                    self._next_server_seq = data[last + 3] + 1
                e.state, e.rows, e.left = state, rows, left
                return pos
        stride = True  # rows of one length may be counted a run at a time
        while n - pos >= 4:
            length = unpack(data, pos)[0] & 0xFFFFFF
            end = pos + 4 + length
            if end > n or length >= MAX_PAYLOAD:
                break
            first = data[pos + 4] if length else -1
            if state == S_ROWS:
                if first != 0xFE and first != 0xFF:
                    # Rows, the commonest packets: counted in a loop of their own up to
                    # what is not plainly a row (read here, and followed below when it is
                    # the result's end).
                    while True:
                        rows += 1
                        last = pos
                        pos = end
                        if n - pos < 4:
                            break
                        size = length
                        length = unpack(data, pos)[0] & 0xFFFFFF
                        end = pos + 4 + length
                        if end > n or length >= MAX_PAYLOAD:
                            break
                        first = data[pos + 4] if length else -1
                        if first == 0xFE or first == 0xFF:
                            break
                        if length == size and length and stride:
                            # Two rows of one length (fixed-width columns): the rest of
                            # the run counted at once, then on one by one.
                            same = _same_rows(data, pos, n, length + 4)
                            if same > 1:
                                pos += (same - 1) * (length + 4)
                                end = pos + 4 + length
                                rows += same - 1
                            if same < 8:  # lengths that vary: not tried again here
                                stride = False
                    if first != 0xFE and first != 0xFF:
                        break  # the data ends, or a long packet
                last = pos
                pos = end
                if first == 0xFF:
                    self._result_error(e, data[last + 4:end])
                    state = S_DONE
                    break
                if length < 5:
                    status = my.eof_status(data[last + 4:end], self.deprecate_eof)
                elif self.deprecate_eof:  # an OK packet: affected rows, insert id, status
                    affected, insert_id, status = _OK_HEAD.unpack_from(data, last + 5)
                    if affected >= 251 or insert_id >= 251:  # longer than a byte
                        status = my.eof_status(data[last + 4:end], True)
                else:  # EOF: warnings, status
                    status = _EOF_STATUS.unpack_from(data, last + 7)[0]
                state = self._rows_done(e, rows, status)
                rows = 0
                e.stmt = stmt = None  # more results: a head is the first result's only
                if state == S_DONE:
                    break
                continue
            if state == S_COLUMNS:  # column definitions: counted
                left -= 1
                last = pos
                pos = end
                while left and n - pos >= 4:
                    length = unpack(data, pos)[0] & 0xFFFFFF
                    end = pos + 4 + length
                    if end > n or length >= MAX_PAYLOAD:
                        break
                    left -= 1
                    last = pos
                    pos = end
                if not left:
                    if self.deprecate_eof and not e.cursor:
                        state = S_ROWS
                        if begin >= 0 and stmt is not None:
                            self._keep_head(stmt, data, begin, last, pos)
                    else:
                        state = S_COLUMNS_EOF
                continue
            if state == S_FIRST and 0 < first < 0xFB:  # a column count: a result set
                left = first
                rows = 0
                state = S_COLUMNS
                last = pos
                pos = end
                continue
            # OK, ERR, a file asked for, a long column count, the EOF after the columns
            e.state, e.rows, e.left = state, rows, left
            done = self._answer(e, data, pos + 4, length, first)
            last = pos
            pos = end
            if done:
                state = S_DONE
                break
            if state == S_COLUMNS_EOF and e.state == S_ROWS and begin >= 0 and \
                    stmt is not None and not e.cursor:
                self._keep_head(stmt, data, begin, last, pos)
            state, rows, left = e.state, e.rows, e.left
            if state == S_FIRST:  # more results: a head is the first result's only
                e.stmt = stmt = None
            if self._infile is not None:  # the client sends a file now
                break
        if last >= 0:
            self._next_server_seq = data[last + 3] + 1
        e.state, e.rows, e.left = state, rows, left
        return pos

    @staticmethod
    def _keep_head(stmt: Prepared, data: bytes, begin: int, last: int, end: int) -> None:
        """Keep the start of a prepared statement's answer up to its rows (when short)."""
        if end - begin <= MAX_HEAD:
            stmt.head = data[begin:end]
            stmt.head_last = last - begin

    def _rows_done(self, e: Expect, rows: int, status: int) -> int:
        """A result set ended well: the state its answer is in now (S_DONE: the last)."""
        runs = e.runs
        if status & SERVER_MORE_RESULTS_EXISTS:
            if runs:
                if len(runs) == 1:  # more results for the same statement (CALL)
                    runs[0].rows += rows
                else:
                    run = runs.pop(0)
                    self.finished.append((run, "ROWS", run.rows + rows,
                                          perf_counter_ns() - run.t0, None, "ok"))
            return S_FIRST
        if runs:
            run = runs.pop(0)
            self.finished.append((run, "ROWS", run.rows + rows, perf_counter_ns() - run.t0,
                                  None, "ok"))
            if runs:
                self._skip_rest(e)
        return S_DONE

    def _answer(self, e: Expect, data: bytes, at: int, length: int, first: int) -> bool:
        """Follow one server packet; True when it completed the expected answer."""
        kind = e.kind
        state = e.state
        if kind == K_RESULT:
            if state == S_ROWS:
                if first == 0xFE and length < my.MAX_PAYLOAD:
                    status = my.eof_status(data[at:at + length], self.deprecate_eof)
                    return self._result_done(e, "ROWS", e.rows, status)
                if first == 0xFF:
                    return self._result_error(e, data[at:at + length])
                e.rows += 1
                return False
            if state == S_FIRST:
                if first == 0x00:
                    if length >= 5 and data[at + 1] < 251 and data[at + 2] < 251:
                        affected, status = data[at + 1], data[at + 3] | data[at + 4] << 8
                    else:
                        affected, status = my.ok_status(data[at:at + length])
                    return self._result_done(e, "OK", affected, status)
                if first == 0xFF:
                    return self._result_error(e, data[at:at + length])
                if first == 0xFB:  # the server asks for the file LOAD DATA LOCAL names
                    if not self.local_infile or not e.runs:
                        raise my.ProtocolError("the server asked for a LOCAL INFILE")
                    self._infile = Infile(e.runs[0])
                    return False  # then OK or ERR, once the file is sent
                if length == 0:
                    raise my.ProtocolError("an empty result packet")
                e.left, _ = my.read_lenenc(data[at:at + length], 0)
                e.rows = 0
                e.state = S_COLUMNS if e.left else S_ROWS
                return False
            if state == S_COLUMNS:
                e.left -= 1
                if e.left == 0:
                    e.state = S_ROWS if self.deprecate_eof and not e.cursor else S_COLUMNS_EOF
                return False
            if state == S_COLUMNS_EOF:  # the EOF after the column definitions
                if first == 0xFF:
                    return self._result_error(e, data[at:at + length])
                status = my.eof_status(data[at:at + length], self.deprecate_eof)
                if e.cursor and status & my.SERVER_STATUS_CURSOR_EXISTS:
                    return self._result_done(e, "CURSOR", 0, status)
                if e.cursor and self.deprecate_eof and first != 0xFE:
                    e.rows = 1  # no EOF after all: that was a row
                e.state = S_ROWS
                return False
            raise my.ProtocolError("confused result state")
        if kind == K_SIMPLE:
            return True
        if kind == K_LIST:
            return first == 0xFF or (first == 0xFE and length < my.MAX_PAYLOAD)
        if kind == K_PREPARE:
            return self._prepare_answer(e, data, at, length, first)
        raise my.ProtocolError("unexpected server packet")

    def _prepare_answer(self, e: Expect, data: bytes, at: int, length: int,
                        first: int) -> bool:
        if e.state == S_FIRST:
            if first == 0xFF:
                return True
            if first != 0x00 or length < 12:
                raise my.ProtocolError("bad COM_STMT_PREPARE answer")
            stmt_id, columns, params = struct.unpack_from("<IHH", data, at + 1)
            stmt: Prepared = e.stmt
            stmt.params = params
            self.prepared[stmt_id] = stmt
            self._last_prepared = stmt_id
            if len(self.prepared) > MAX_PREPARED:  # the server limits them too
                self.prepared.pop(next(iter(self.prepared)))
            e.left, e.rows = params, columns  # rows: columns still to come after params
            if params:
                e.state = S_PARAMS
                return False
            return self._prepare_columns(e)
        if e.state == S_PARAMS:
            e.left -= 1
            if e.left == 0:
                if self.deprecate_eof:
                    return self._prepare_columns(e)
                e.state = S_PARAMS_EOF
            return False
        if e.state == S_PARAMS_EOF:
            return self._prepare_columns(e)
        if e.state == S_COLUMNS:
            e.left -= 1
            if e.left == 0:
                if self.deprecate_eof:
                    return True
                e.state = S_COLUMNS_EOF
            return False
        return True  # S_COLUMNS_EOF

    def _prepare_columns(self, e: Expect) -> bool:
        if e.rows == 0:
            return True
        e.left, e.rows = e.rows, 0
        e.state = S_COLUMNS
        return False

    def _result_done(self, e: Expect, tag: str, rows: int, status: int) -> bool:
        """A result ended well; True when it was the last of the command's."""
        more = bool(status & my.SERVER_MORE_RESULTS_EXISTS)
        runs = e.runs
        if runs:
            if more and len(runs) == 1:  # more results for the same statement (CALL)
                runs[0].rows += rows
            else:
                run = runs.pop(0)
                self.finished.append((run, tag, run.rows + rows,
                                      time.perf_counter_ns() - run.t0, None, "ok"))
        if more:
            e.state = S_FIRST
            return False
        if e.runs:
            self._skip_rest(e)
        return True

    def _result_error(self, e: Expect, payload: bytes) -> bool:
        err = my.parse_err(payload)
        if e.runs:
            run = e.runs.pop(0)
            self.finished.append((run, None, None, time.perf_counter_ns() - run.t0,
                                  (err.sqlstate, f"({err.errno}) {err.message}"), "error"))
        self._skip_rest(e)
        return True

    def _skip_rest(self, e: Expect) -> None:
        now = time.perf_counter_ns()
        for run in e.runs:
            self.finished.append((run, None, None, now - run.t0, None, "skipped"))
        e.runs = []


def _same_rows(data: bytes, pos: int, n: int, step: int) -> int:
    """How many packets from `pos` on are rows of the same length as the one there (`step`
    bytes with its header, at least 5): whole, with the same three length bytes, and a
    first byte that is neither 0xFE (EOF, OK) nor 0xFF (ERR). Read a byte column at a time
    with strided slices: a few C calls for a run of any length."""
    stop = pos + (n - pos) // step * step
    for i in range(3):  # each length byte of each header: all as the first's
        column = data[pos + i:stop:step]
        same = len(column) - len(column.lstrip(column[:1]))
        stop = pos + same * step
    firsts = data[pos + 4:stop:step]
    end = firsts.find(b"\xfe")
    if end >= 0:
        firsts = firsts[:end]
    end = firsts.find(b"\xff")
    return end if end >= 0 else len(firsts)


def _packet_starts(raw: bytes) -> list[int]:
    out = []
    pos = 0
    while pos + 4 <= len(raw):
        out.append(pos)
        pos += 4 + my.header(raw, pos)[0]
    return out


# -------------------------------------------------------------- binary parameters

_FIXED = {1: "<b", 2: "<h", 13: "<h", 3: "<i", 9: "<i", 8: "<q", 4: "<f", 5: "<d"}
_TEMPORAL = frozenset({7, 10, 11, 12})  # timestamp, date, time, datetime
MAX_PARAM_TEXT = 1024


def decode_params(payload: bytes, n: int, types: bytes) -> tuple[list[str | None], bytes]:
    """A COM_STMT_EXECUTE's parameter values as text (None for NULL), and the types in
    force (sent with this execution, or the ones sent before)."""
    pos = 10
    bitmap = payload[pos:pos + (n + 7) // 8]
    pos += (n + 7) // 8
    if pos < len(payload) and payload[pos] == 1:
        types = payload[pos + 1:pos + 1 + 2 * n]
        pos += 1 + 2 * n
    else:
        pos += 1
    if len(types) != 2 * n:
        raise ValueError("parameter types unknown")
    out: list[str | None] = []
    for i in range(n):
        if bitmap[i // 8] & (1 << (i % 8)):
            out.append(None)
            continue
        kind, flags = types[2 * i], types[2 * i + 1]
        fmt = _FIXED.get(kind)
        if fmt is not None:
            if flags & 0x80:
                fmt = fmt.upper() if fmt[1] in "bhiq" else fmt
            value = struct.unpack_from(fmt, payload, pos)[0]
            pos += struct.calcsize(fmt)
            out.append(repr(value) if isinstance(value, float) else str(value))
        elif kind in _TEMPORAL:
            size = payload[pos]
            out.append("\\x" + payload[pos + 1:pos + 1 + size].hex())
            pos += 1 + size
        else:
            raw, pos = my.read_lenenc_bytes(payload, pos)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = "\\x" + raw.hex()
            out.append(text[:MAX_PARAM_TEXT])
    return out, types
