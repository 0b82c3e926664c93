"""The wire protocol and the data path, driven by hypothesis: arbitrary bytes, arbitrary splits.

No database here: `Conversation` is sans-IO, so these run in milliseconds per example.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from accord.gateway.postgres import conversation as conversation_module
from accord.gateway.postgres import protocol as pq
from accord.gateway.postgres.conversation import REFUSED_SQL, Conversation
from accord.gateway.postgres.scope import CLASSES, DEFAULT_ROLES, IDENTITY, Classifier

ADMIN = frozenset(c for c in CLASSES if c != IDENTITY)
READ = DEFAULT_ROLES["read"]
FAST = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def conv(allowed: frozenset[str] = ADMIN, *, max_message: int = 1 << 16,
         redact: bool = True) -> Conversation:
    return Conversation(allowed=allowed, classifier=Classifier(), role="read", resource="db",
                        redact=redact, max_message=max_message)


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


# ------------------------------------------------------------------ message builders


def parse(name: bytes, sql: bytes) -> bytes:
    return pq.message(b"P", name + b"\0" + sql + b"\0" + struct.pack("!h", 0))


def bind(portal: bytes, name: bytes, values: list[bytes | None]) -> bytes:
    body = portal + b"\0" + name + b"\0" + struct.pack("!hh", 0, len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return pq.message(b"B", body + struct.pack("!h", 0))


def execute(portal: bytes = b"") -> bytes:
    return pq.message(b"E", portal + b"\0" + struct.pack("!i", 0))


SYNC = pq.message(b"S")
FLUSH = pq.message(b"H")


def describe(kind: bytes = b"P", name: bytes = b"") -> bytes:
    return pq.message(b"D", kind + name + b"\0")


def complete(tag: str) -> bytes:
    return pq.message(b"C", tag.encode() + b"\0")


def row(*values: bytes) -> bytes:
    body = struct.pack("!h", len(values)) + b"".join(struct.pack("!i", len(v)) + v
                                                    for v in values)
    return pq.message(b"D", body)


ROWDESC = pq.message(b"T", struct.pack("!h", 1) + b"x\0" + bytes(18))
READY = pq.ready_for_query(b"I")


def error(code: str, msg: str = "boom") -> bytes:
    return pq.error_response(code, msg)


# ------------------------------------------------------------------ parsers


@FAST
@given(st.binary(max_size=300))
def test_every_parser_raises_only_protocol_errors(data: bytes) -> None:
    parsers = [pq.parse_startup, pq.parse_query, pq.parse_parse, pq.parse_bind,
               pq.bind_header, pq.parse_execute, pq.parse_target,
               pq.parse_fields, pq.parse_auth, pq.parse_parameter_status,
               pq.parse_backend_key, pq.sasl_mechanisms, pq.parse_sasl_initial]
    for fn in parsers:
        with contextlib.suppress(pq.ProtocolError):
            fn(data)


@FAST
@given(st.binary(max_size=2000), st.lists(st.integers(0, 4000), max_size=6))
def test_framer_on_arbitrary_bytes_is_bounded(data: bytes, cuts: list[int]) -> None:
    framer = pq.Framer(limit=256)
    try:
        for piece in chunks(data, cuts):
            for kind, body in framer.feed(piece):
                assert 0 <= kind < 256 and len(body) <= 256
            assert framer.pending <= len(data)
    except pq.ProtocolError:
        pass


@given(st.dictionaries(st.text(st.characters(min_codepoint=1, max_codepoint=0x2FF),
                               min_size=1, max_size=10).filter(lambda k: not k.startswith("_")),
                       st.text(st.characters(min_codepoint=1, max_codepoint=0x2FF),
                               max_size=20), max_size=5))
def test_startup_round_trip(params: dict[str, str]) -> None:
    params = {"user": "alice", **params}
    packet = pq.startup_message(params)
    parsed = pq.parse_startup(packet)
    assert isinstance(parsed, pq.Startup)
    assert parsed.params == params and (parsed.major, parsed.minor) == (3, 0)


def test_startup_requests_and_limits() -> None:
    assert isinstance(pq.parse_startup(pq.ssl_request()), pq.SSLRequest)
    cancel = pq.parse_startup(pq.cancel_request(42, b"abcd"))
    assert cancel == pq.CancelRequest(42, b"abcd")
    with pytest.raises(pq.ProtocolError):
        pq.startup_length(struct.pack("!i", pq.MAX_STARTUP + 1))
    with pytest.raises(pq.ProtocolError):
        pq.parse_startup(struct.pack("!ii", 8, 2 << 16))  # protocol 2
    with pytest.raises(pq.ProtocolError, match="no user"):
        pq.parse_startup(pq.startup_message({"database": "x"}))
    pq32 = struct.pack("!i", (3 << 16) | 2) + b"user\0a\0_pq_.x\0y\0\0"
    parsed = pq.parse_startup(struct.pack("!i", len(pq32) + 4) + pq32)
    assert isinstance(parsed, pq.Startup)
    assert (parsed.minor, parsed.unknown_options) == (2, ("_pq_.x",))


def test_bind_round_trip() -> None:
    body = bind(b"p", b"s", [b"1", None, b"\x00\x01"])[5:]
    parsed = pq.parse_bind(body)
    assert (parsed.portal, parsed.statement, parsed.values) == (b"p", b"s", (b"1", None,
                                                                              b"\x00\x01"))
    assert pq.bind_header(body) == (b"p", b"s", 3)
    assert pq.rows_of("INSERT 0 12") == 12 and pq.rows_of("BEGIN") is None
    assert pq.rows_of("SELECT \u00b2") is None  # a digit to str.isdigit, not to int()


# ------------------------------------------------------------------ the data path


@FAST
@given(st.binary(max_size=3000), st.lists(st.integers(0, 6000), max_size=8))
def test_client_bytes_never_crash_the_conversation(data: bytes, cuts: list[int]) -> None:
    c = conv(READ, max_message=512)
    try:
        for piece in chunks(data, cuts):
            out = c.client(piece)
            assert isinstance(out, bytes)
            assert len(c.cbuf) <= 512 + 5  # never buffers more than one allowed message
    except pq.ProtocolError:
        pass


@FAST
@given(st.binary(max_size=3000), st.lists(st.integers(0, 6000), max_size=8))
def test_server_bytes_never_crash_the_conversation(data: bytes, cuts: list[int]) -> None:
    c = conv()
    c.client(pq.query("select 1; select 2") + parse(b"", b"select $1") + bind(b"", b"", [b"1"])
             + execute() + SYNC)
    try:
        for piece in chunks(data, cuts):
            assert isinstance(c.server(piece), bytes)
    except pq.ProtocolError:
        pass


SQL = st.sampled_from([b"select 1", b"select * from t where id = 42", b"insert into t values (1)",
                       b"select 1; select 2", b"begin", b"commit", b"", b"not sql at all",
                       b"update t set x = 1", b"show search_path", b"select 'a;b'"])


@st.composite
def frontend_stream(draw: st.DrawFn) -> list[bytes]:
    """Valid client messages: simple queries and extended-protocol batches."""
    out: list[bytes] = []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.booleans()):
            out.append(pq.query(draw(SQL).decode()))
        else:
            name = draw(st.sampled_from([b"", b"s1", b"s2"]))
            out.append(parse(name, draw(SQL)))
            values = st.one_of(st.none(), st.text(max_size=4).map(str.encode))  # UTF-8 text
            out.append(bind(b"", name, draw(st.lists(values, max_size=3))))
            if draw(st.booleans()):
                out.append(describe())
            out.append(execute())
            out.append(draw(st.sampled_from([SYNC, FLUSH + SYNC])))
        if draw(st.booleans()):
            out.append(pq.message(b"d", draw(st.binary(max_size=40))))
    return out


@FAST
@given(frontend_stream(), st.lists(st.integers(0, 10_000), max_size=10))
def test_allowed_traffic_passes_byte_for_byte_however_split(messages: list[bytes],
                                                             cuts: list[int]) -> None:
    data = b"".join(messages)
    c = conv(ADMIN)
    sent = b"".join(c.client(piece) for piece in chunks(data, cuts))
    assert sent == data
    executes = sum(1 for m in messages if m[:1] == b"E")
    queries = sum(max(1, len(Classifier()(pq.parse_query(m[5:])).statements))
                  for m in messages if m[:1] == b"Q")
    assert len(c.started) == executes + queries
    assert not c.violations


@FAST
@given(st.lists(st.sampled_from(["select 1", "delete from t", "select 1; drop table t",
                                 "update t set x = 1", "set role postgres",
                                 "select set_config('role', 'postgres', false)"]),
                min_size=1, max_size=5),
       st.lists(st.integers(0, 2000), max_size=6))
def test_refused_statements_never_reach_the_server(queries: list[str], cuts: list[int]) -> None:
    data = b"".join(pq.query(q) for q in queries)
    c = conv(READ)
    sent = b"".join(c.client(piece) for piece in chunks(data, cuts))
    for q in queries:
        if q != "select 1":
            assert q.encode() not in sent
    assert len(c.violations) == sum(1 for q in queries if q != "select 1")
    assert sent.count(REFUSED_SQL) == len(c.violations)


@FAST
@given(st.lists(st.integers(0, 3), min_size=1, max_size=6),
       st.lists(st.integers(0, 5000), max_size=10))
def test_results_are_matched_to_statements_however_split(rows: list[int],
                                                         cuts: list[int]) -> None:
    c = conv()
    client = b""
    server = b""
    for i, n in enumerate(rows):
        if i % 2:
            client += pq.query(f"select {i}")
            server += ROWDESC + b"".join(row(b"v" * 300) for _ in range(n))
            server += complete(f"SELECT {n}") + READY
        else:
            client += parse(b"", f"select {i}".encode()) + bind(b"", b"", [b"7"]) + \
                describe() + execute() + SYNC
            server += pq.message(b"1") + pq.message(b"2") + ROWDESC
            server += b"".join(row(b"w" * 300) for _ in range(n)) + complete(f"SELECT {n}")
            server += READY
    c.client(client)
    out = b"".join(c.server(piece) for piece in chunks(server, cuts))
    assert out == server
    assert [f[2] for f in c.finished] == rows
    assert [f[0].text for f in c.finished] == [f"select {i}".encode() for i in range(len(rows))]
    assert all(f[5] == "ok" for f in c.finished) and not c.busy


def test_an_error_in_a_pipeline_blames_its_execute_and_skips_the_rest() -> None:
    c = conv()
    c.client(parse(b"", b"select 1/0") + bind(b"", b"", []) + execute()
             + parse(b"", b"select 2") + bind(b"", b"", []) + execute() + SYNC)
    c.server(pq.message(b"1") + pq.message(b"2") + error("22012", "division by zero")
             + READY)
    assert [(f[0].text, f[4], f[5]) for f in c.finished] == [
        (b"select 1/0", ("22012", "division by zero"), "error")]
    assert not c.busy


def test_a_refused_parse_gets_42501_in_place_of_the_servers_error() -> None:
    c = conv(READ)
    sent = c.client(parse(b"s", b"delete from t") + bind(b"", b"s", []) + execute() + SYNC)
    assert b"delete" not in sent and REFUSED_SQL in sent
    out = c.server(error("42601", "syntax error at or near ACCORD") + READY)
    fields = pq.parse_fields(out[5:out.index(READY)])
    assert fields["C"] == "42501" and "write" in fields["M"]
    assert len(c.violations) == 1 and c.finished == []  # the Execute never ran


def test_a_text_parameter_that_is_not_utf8_is_refused_with_22021() -> None:
    c = conv(ADMIN)  # whatever the role: the server would refuse it too, unrecorded
    sent = c.client(parse(b"s", b"select $1") + bind(b"", b"s", [b"ok", b"\x81\\"])
                    + describe() + execute() + SYNC)
    assert b"\x81" not in sent and c._gone in sent  # a Bind the server fails
    (v,) = c.violations
    assert v.text == b"select $1" and v.reason is not None and "$2" in v.reason
    assert c.started == []  # the Execute behind it is discarded by the server, never run
    out = c.server(pq.message(b"1") + error("26000", f"prepared statement "
                                                     f"\"{c._gone.decode()}\" does not exist")
                   + READY)
    fields = pq.parse_fields(out[10:out.index(READY)])
    assert fields["C"] == "22021" and "$2 is not valid UTF-8" in fields["M"]
    assert not c.busy and c.finished == []
    # the session goes on: the next segment runs
    c.client(bind(b"", b"s", [b"\xc3\xa9"]) + execute() + SYNC)
    assert [r.text for r in c.started] == [b"select $1"]


def test_binary_parameters_and_utf8_text_pass_unchanged() -> None:
    c = conv(READ)
    binary = pq.message(b"B", b"\0s\0" + struct.pack("!hhh", 1, 1, 1) + struct.pack("!i", 2)
                        + b"\x81\\" + struct.pack("!h", 0))
    utf8 = bind(b"", b"", ["é€😀".encode()])
    data = parse(b"s", b"select $1::bytea") + binary + execute() + parse(b"", b"select $1") \
        + utf8 + execute() + SYNC
    assert c.client(data) == data and not c.violations and len(c.started) == 2


def test_simple_query_statements_each_get_a_result() -> None:
    c = conv()
    c.client(pq.query("select 1; select 2; select 3"))
    c.server(ROWDESC + row(b"1") + complete("SELECT 1") + error("XX000", "oops") + READY)
    assert [(f[0].text, f[5]) for f in c.finished] == [
        (b"select 1", "ok"), (b"select 2", "error"), (b"select 3", "skipped")]


def test_parameters_are_redacted_or_shown() -> None:
    for redact, expected in ((True, 2), (False, ["42", None])):
        c = conv(redact=redact)
        c.client(parse(b"", b"select $1, $2") + bind(b"", b"", [b"42", None]) + execute()
                 + SYNC)
        assert c.started[0].params == expected


def _utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@FAST
@given(values=st.lists(st.none() | st.binary(max_size=8), max_size=5),
       how=st.sampled_from(["none", "one", "each"]), codes=st.lists(st.sampled_from([0, 1]),
                                                                    min_size=5, max_size=5),
       portal=st.sampled_from([b"", b"p1"]), name=st.sampled_from([b"", b"s1"]),
       redact=st.booleans())
def test_the_bind_fast_path_agrees_with_the_parser(values: list[bytes | None], how: str,
                                                  codes: list[int], portal: bytes,
                                                  name: bytes, redact: bool) -> None:
    """The inline Bind of an unnamed portal (the common case) and `pq.parse_bind` see the
    same statement and parameters, whatever the format codes; a text parameter that is not
    UTF-8 (as `pq.parse_bind` reads the formats) is refused on either path."""
    formats = {"none": [], "one": codes[:1], "each": codes[:len(values)]}[how]
    body = portal + b"\0" + name + b"\0" + struct.pack(f"!h{len(formats)}h", len(formats),
                                                       *formats)
    body += struct.pack("!h", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    body += struct.pack("!h", 0)
    c = conv(redact=redact)
    c.client(parse(name, b"select 1") + pq.message(b"B", body) + execute(portal) + SYNC)
    bind_ = pq.parse_bind(body)
    formats_ = bind_.formats
    if any(v is not None and (formats_[0] if len(formats_) == 1 else
                              formats_[i] if formats_ else 0) == 0
           and not _utf8(v) for i, v in enumerate(bind_.values)):
        assert len(c.violations) == 1 and c.started == []
        return
    run = c.started[0]
    assert run.text == b"select 1"
    if redact:
        assert run.params == len(pq.parse_bind(body).values) == len(values)
    else:
        assert isinstance(run.params, list) and len(run.params) == len(values)


_ANSWER_PARTS = st.sampled_from([
    ROWDESC, row(b"1"), row(b"22", b"x"), complete("SELECT 1"), complete("SELECT 2"),
    complete("SHOW"), complete("INSERT 0 3"), READY, pq.ready_for_query(b"T"),
    error("22012", "division by zero"), pq.message(b"N", b"SNOTICE\0Mhi\0\0"),
    pq.message(b"S", b"a\0b\0"), pq.message(b"I"), b"C\x00\x00\x00\x05X"])


@FAST
@given(parts=st.lists(_ANSWER_PARTS, max_size=7), cut=st.integers(min_value=0, max_value=80))
def test_the_one_result_fast_path_agrees_with_the_general_loop(parts: list[bytes],
                                                              cut: int) -> None:
    """Whatever the server sends after one simple query, whole or cut, the fast path and
    the general loop forward the same bytes and note the same outcome."""
    data = b"".join(parts)
    chunks = [data[:cut], data[cut:]] if 0 < cut < len(data) else [data]
    seen = []
    for fast in (True, False):
        c = conv()
        if not fast:
            c._one_result = lambda head, data: False  # type: ignore[method-assign]
        c.client(pq.query("select 1"))
        out = b""
        try:
            for chunk in chunks:
                out += c.server(chunk)
            got: object = (out, [(f[0].text, f[1], f[2], f[4], f[5]) for f in c.finished],
                           c.status, c.busy)
        except pq.ProtocolError as exc:
            got = ("error", str(exc))
        seen.append(got)
    assert seen[0] == seen[1]


_EXTENDED_PARTS = st.sampled_from([
    b"1\0\0\0\x04", b"2\0\0\0\x04", ROWDESC, pq.message(b"n"), row(b"1"),
    row(b"22", b"x"), complete("SELECT 1"), complete("UPDATE 2"), READY,
    pq.ready_for_query(b"T"), error("22012", "division by zero"), pq.message(b"s"),
    pq.message(b"N", b"SNOTICE\0Mhi\0\0"), b"C\x00\x00\x00\x05X"])


_BOUND = b"2\0\0\0\x04"


@FAST
@given(parts=st.lists(_EXTENDED_PARTS, max_size=8), cut=st.integers(min_value=0, max_value=80),
       parsed=st.booleans())
@example(parts=[_BOUND, ROWDESC, row(b"1"), complete("SELECT 1"), READY], cut=0, parsed=False)
@example(parts=[b"1\0\0\0\x04", _BOUND, ROWDESC, row(b"1"), row(b"2"), complete("SELECT 2"),
                READY], cut=0, parsed=True)
@example(parts=[_BOUND, pq.message(b"n"), complete("UPDATE 2"), pq.ready_for_query(b"T")],
         cut=0, parsed=False)
def test_the_one_execution_fast_path_agrees_with_the_general_loop(
        parts: list[bytes], cut: int, parsed: bool) -> None:
    """Whatever the server sends after (Parse,) Bind, Describe, Execute, Sync, whole or
    cut, the fast path and the general loop forward the same bytes, note the same."""
    data = b"".join(parts)
    chunks = [data[:cut], data[cut:]] if 0 < cut < len(data) else [data]
    sent = (parse(b"", b"select $1") if parsed else b"") + bind(b"", b"", [b"1"]) + \
        describe() + execute() + SYNC
    seen = []
    for fast in (True, False):
        c = conv()
        c.client(parse(b"", b"select $1") + SYNC)  # known: the next Parse takes the inline path
        c.server(b"1\0\0\0\x04" + READY)
        c.drain()
        if not fast:
            c._one_execution = lambda data: False  # type: ignore[method-assign]
        c.client(sent)
        out = b""
        try:
            for chunk in chunks:
                out += c.server(chunk)
            got: object = (out, [(f[0].text, f[1], f[2], f[4], f[5]) for f in c.finished],
                           c.status, c.busy, len(c._pending))
        except pq.ProtocolError as exc:
            got = ("error", str(exc))
        seen.append(got)
    assert seen[0] == seen[1]


def test_oversized_and_unexpected_messages_are_protocol_errors() -> None:
    with pytest.raises(pq.ProtocolError, match="exceeds"):
        conv(max_message=1024).client(pq.query("select '" + "x" * 2000 + "'"))
    with pytest.raises(pq.ProtocolError, match="unexpected"):
        conv().client(pq.message(b"p", b"secret\0"))
    with pytest.raises(pq.ProtocolError):
        conv().client(b"Q\x00\x00\x00\x02")  # a length shorter than itself
    # CopyData streams through whatever its size, a byte at a time if need be.
    c = conv(max_message=1024)
    big = pq.message(b"d", b"x" * 5000)
    assert b"".join(c.client(big[i:i + 1]) for i in range(len(big))) == big


def test_a_partial_message_is_held_until_complete() -> None:
    c = conv()
    q = pq.query("select 1")
    assert c.client(q[:7]) == b"" and c.cbuf
    assert c.client(q[7:]) == q and not c.cbuf


# ------------------------------------------------------------------ the rows walk, two ways

@contextlib.contextmanager
def rows_walk(compiled: bool) -> Iterator[None]:
    saved = conversation_module.WALK
    conversation_module.WALK = saved if compiled else None
    try:
        yield
    finally:
        conversation_module.WALK = saved


SERVER_PIECE = st.one_of(
    st.lists(st.binary(max_size=40), max_size=3).map(lambda vs: row(*vs)),
    st.binary(max_size=60).map(lambda b: pq.message(b"d", b)),  # CopyData
    st.sampled_from([ROWDESC, complete("SELECT 2"), complete("COPY 1"), READY,
                     pq.message(b"D", b"\0"), pq.message(b"D", b""), error("42501")]),
    st.binary(min_size=1, max_size=12).map(lambda b: b"D" + b))  # lengths that lie


@pytest.mark.skipif(conversation_module.WALK is None,
                    reason="the compiled row walk was not built")
@FAST
@given(st.lists(SERVER_PIECE, max_size=12), st.lists(st.integers(0, 4000), max_size=6))
def test_the_row_walk_answers_as_the_python_loop(pieces: list[bytes], cuts: list[int]) -> None:
    """Rows only counted (an unmasked session) are walked in C where it was built: against
    the Python loop on the same server bytes, cut anywhere, the client gets the same bytes,
    the statements finish with the same row counts, and the same bytes are refused."""
    data = b"".join(pieces)

    def run(walk: bool) -> tuple[list[bytes], list[tuple[Any, ...]], str | None]:
        c = conv()
        c.client(pq.query("select 1; select 2") + parse(b"", b"select $1")
                 + bind(b"", b"", [b"1"]) + execute() + SYNC)
        out: list[bytes] = []
        failure = None
        with rows_walk(walk):
            try:
                for piece in chunks(data, cuts):
                    out.append(c.server(piece))
            except pq.ProtocolError as e:
                failure = str(e)
        finished = [(r.text, r.rows, tag, rows, error, outcome)
                    for r, tag, rows, _, error, outcome in c.finished]
        return out, finished, failure

    assert run(True) == run(False)
