"""The MySQL data path's parser, pure: whatever bytes a client or server sends, cut
anywhere, it relays, answers or raises ProtocolError (that session ends), never anything
else; results are followed to the right statement."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import struct
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accord.gateway.classes import DEFAULT_ROLES
from accord.gateway.mysql import conversation as myconv
from accord.gateway.mysql import protocol as my
from accord.gateway.mysql.conversation import Conversation, decode_params
from accord.gateway.mysql.scope import Classifier

CLASSIFIER = Classifier()
EOF_CAPS = my.CLIENT_DEPRECATE_EOF
# The result walk both ways: compiled (_walk.c, where it was built) and the Python one it
# falls back to. The tests that follow answers run with each.
WALKS = [pytest.param(False, id="python"),
         pytest.param(True, id="compiled", marks=pytest.mark.skipif(
             myconv._walk is None, reason="the compiled walk was not built"))]


@contextlib.contextmanager
def result_walk(compiled: bool) -> Iterator[None]:
    saved = myconv.COMPILED
    myconv.COMPILED = compiled
    try:
        yield
    finally:
        myconv.COMPILED = saved


def conv(role: str = "read", caps: int = EOF_CAPS, max_message: int = 1 << 16) -> Conversation:
    return Conversation(allowed=DEFAULT_ROLES[role], classifier=CLASSIFIER, role=role,
                        resource="shop", database="shop_db", capabilities=caps,
                        max_message=max_message)


def query(text: str) -> bytes:
    return my.packet(0, b"\x03" + text.encode())


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return [c for c in out if c]


def result_set(rows: int, seq: int = 1, status: int = my.SERVER_STATUS_AUTOCOMMIT,
               deprecate_eof: bool = True) -> bytes:
    out = [my.packet(seq, b"\x01"), my.packet(seq + 1, b"\x03def" + b"\x00" * 20)]
    seq += 2
    if not deprecate_eof:
        out.append(my.packet(seq, b"\xfe\x00\x00" + struct.pack("<H", status)))
        seq += 1
    for i in range(rows):
        out.append(my.packet(seq, b"\x01" + str(i % 10).encode()))
        seq += 1
    if deprecate_eof:
        out.append(my.packet(seq, b"\xfe\x00\x00" + struct.pack("<HH", status, 0)))
    else:
        out.append(my.packet(seq, b"\xfe\x00\x00" + struct.pack("<H", status)))
    return b"".join(out)


@pytest.mark.parametrize("compiled", WALKS)
def test_a_query_and_its_result_set_are_followed_cut_anywhere(compiled: bool) -> None:
    with result_walk(compiled):
        for cut in range(1, 40):
            c = conv()
            sent = query("SELECT id FROM orders")
            assert c.client(sent[:cut]) + c.client(sent[cut:]) == sent
            [run] = c.started
            answer = result_set(3)
            out = b"".join(c.server(part) for part in (answer[:cut], answer[cut:]))
            assert out == answer
            [(done, tag, rows, _, error, outcome)] = c.finished
            assert (done is run, tag, rows, error, outcome) == (True, "ROWS", 3, None, "ok")
            assert not c.busy


@pytest.mark.parametrize("compiled", WALKS)
def test_old_style_eof_packets_and_multi_results(compiled: bool) -> None:
    with result_walk(compiled):
        c = conv(caps=0)
        c.client(query("SELECT 1; SELECT 2"))
        assert [r.text for r in c.started] == [b"SELECT 1", b"SELECT 2"]
        more = my.SERVER_STATUS_AUTOCOMMIT | my.SERVER_MORE_RESULTS_EXISTS
        answer = result_set(1, status=more, deprecate_eof=False)
        answer += result_set(2, seq=6, deprecate_eof=False)
        assert c.server(answer) == answer
        assert [(f[1], f[2], f[5]) for f in c.finished] == [("ROWS", 1, "ok"),
                                                            ("ROWS", 2, "ok")]


def test_an_error_skips_the_rest_of_a_multi_statement() -> None:
    c = conv("write")
    c.client(query("UPDATE orders SET total = 1; SELECT 1; SELECT 2"))
    c.server(my.err_packet(1, 1146, "42S02", "Table 'orders' doesn't exist"))
    assert [f[5] for f in c.finished] == ["error", "skipped", "skipped"]
    assert c.finished[0][4] == ("42S02", "(1146) Table 'orders' doesn't exist")


def test_a_refusal_waits_for_the_answers_due_before_it() -> None:
    c = conv()
    c.client(query("SELECT 1") + query("DELETE FROM orders"))  # pipelined
    assert not c.reply  # the refusal must not overtake SELECT 1's answer
    [v] = c.violations
    assert v.missing == frozenset({"write"})
    out = c.server(my.ok_packet(1))
    assert out.startswith(my.ok_packet(1)) and b"may not run" in out


def test_prepare_and_execute_record_the_prepared_text() -> None:
    c = conv()
    text = "SELECT total FROM orders WHERE id = ?"
    c.client(my.packet(0, b"\x16" + text.encode()))
    prepared = my.packet(1, b"\x00" + struct.pack("<IHHBH", 7, 1, 1, 0, 0))
    prepared += my.packet(2, b"\x03def") + my.packet(3, b"\x03def")
    assert c.server(prepared) == prepared
    assert not c.busy
    execute = b"\x17" + struct.pack("<IBI", 7, 0, 1) + b"\x00\x01" + b"\x08\x00" + \
        struct.pack("<q", 42)
    c.client(my.packet(0, execute))
    [run] = c.started
    assert (run.text, run.protocol, run.params) == (text.encode(), "binary", 1)
    assert decode_params(execute, 1, b"")[0] == ["42"]
    c.server(my.ok_packet(1))
    assert c.finished[0][5] == "ok" and not c.busy
    c.client(my.packet(0, b"\x17" + struct.pack("<IBI", 99, 0, 1)))
    assert b"unknown prepared statement" in bytes(c.reply)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=6),
       st.sampled_from(["read", "write", "admin"]))
def test_arbitrary_client_bytes_relay_or_raise_protocol_error(data: bytes, cuts: list[int],
                                                               role: str) -> None:
    c = conv(role, max_message=128)
    try:
        for part in chunks(data, cuts):
            c.client(part)
    except my.ProtocolError:
        return
    assert len(c.cbuf) < 4 + 128 + 4  # never more than one unfinished command buffered


@pytest.mark.parametrize("compiled", WALKS)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=6),
       st.sampled_from(["SELECT 1", "SELECT 1; SELECT 2", "PREPARE"]))
def test_arbitrary_server_bytes_relay_or_raise_protocol_error(
        compiled: bool, data: bytes, cuts: list[int], command: str) -> None:
    with result_walk(compiled):
        c = conv()
        if command == "PREPARE":
            c.client(my.packet(0, b"\x16SELECT ?"))
        else:
            c.client(query(command))
        try:
            for part in chunks(data, cuts):
                c.server(part)
        except my.ProtocolError:
            return


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 3 * my.MAX_PAYLOAD // 2), st.integers(1, 7))
def test_an_oversized_command_is_refused_before_it_is_buffered(size: int, cut: int) -> None:
    c = conv(max_message=1 << 16)
    head = struct.pack("<I", min(size, my.MAX_PAYLOAD))
    body = b"\x03" + b"x" * (min(size, 64) - 1)
    try:
        c.client(head[:cut % 4 + 1])
        c.client(head[cut % 4 + 1:] + body)
    except my.ProtocolError:
        assert size > 1 << 16
        return
    assert size <= 1 << 16
    assert len(c.cbuf) <= 4 + 64


def test_handshake_response_round_trip_and_truncation() -> None:
    payload = my.handshake_response(
        capabilities=my.GATEWAY_CAPABILITIES, charset=45, user="alice", auth=b"x" * 32,
        database="shop", plugin=my.CACHING_SHA2, attrs={"program_name": "t"})
    hello = my.parse_handshake_response(payload)
    assert (hello.user, hello.database, hello.plugin, hello.attrs) == (
        "alice", "shop", my.CACHING_SHA2, {"program_name": "t"})
    for n in range(len(payload)):
        with contextlib.suppress(my.ProtocolError):
            my.parse_handshake_response(payload[:n])


@st.composite
def results(draw: st.DrawFn, deprecate: bool, count: int, varied: bool = True
            ) -> tuple[bytes, list[tuple[str | None, int, bool]]]:
    """A server's answer of `count` results as MariaDB sends it: each an OK, an ERR, or a
    result set (column definitions, rows of lengths that vary or repeat, sometimes an ERR
    among them), with old-style EOF packets or without; and what each was (its tag, None
    for an error; its rows or affected rows; whether it ended the answer). `varied` false:
    result sets from a few shapes only (a prepared statement's, executed again)."""
    out: list[bytes] = []
    found: list[tuple[str | None, int, bool]] = []
    seq = 1

    def add(payload: bytes) -> None:
        nonlocal seq
        out.append(my.packet(seq, payload))
        seq += 1

    for i in range(count):
        status = my.SERVER_STATUS_AUTOCOMMIT | (
            my.SERVER_MORE_RESULTS_EXISTS if i < count - 1 else 0)
        kind = draw(st.sampled_from(["ok", "err", "rows", "rows", "rows_err"]))
        if kind == "ok":
            affected = draw(st.sampled_from([0, 1, 250, 251, 70000]))
            add(my.ok_packet(0, affected=affected, status=status)[4:])
            found.append(("OK", affected, i == count - 1))
            continue
        if kind == "err":
            add(my.err_packet(0, 1146, "42S02", "no such table")[4:])
            found.append((None, 0, True))
            break
        columns = draw(st.sampled_from([1, 2, 3, 251] if varied else [1, 2]))
        add(my.lenenc_int(columns))
        for _ in range(columns):
            add(b"\x03def" + b"c" * draw(st.integers(0, 40) if varied else st.integers(5, 6))
                + draw(st.sampled_from([b"x", b"y"])))  # as a column's name or type
        if not deprecate:
            add(b"\xfe\x00\x00" + struct.pack("<H", status | draw(st.sampled_from([0, 1]))))
        rows = 0
        for length, repeat in draw(st.lists(st.tuples(st.integers(0, 300), st.integers(1, 30)),
                                            max_size=5)):
            for _ in range(repeat):
                first = bytes((draw(st.integers(0, 0xFD)),)) if length else b""
                add(first + b"r" * (length - 1 if length else 0))
                rows += 1
        if kind == "rows_err":
            add(my.err_packet(0, 1317, "70100", "interrupted")[4:])
            found.append((None, 0, True))
            break
        if deprecate:
            affected = draw(st.sampled_from([0, 300]))  # 300: a length-encoded count
            add(b"\xfe" + my.lenenc_int(affected) + b"\x00" + struct.pack("<HH", status, 0))
        else:
            add(b"\xfe\x00\x00" + struct.pack("<H", status))
        found.append(("ROWS", rows, i == count - 1))
    return b"".join(out), found


@st.composite
def answers(draw: st.DrawFn) -> tuple[bool, int, bytes, list[tuple[str | None, int | None, str]]]:
    """A multi-statement query's answer (a result per statement) and the outcomes the
    conversation must find in it."""
    deprecate = draw(st.booleans())
    statements = draw(st.integers(1, 3))
    data, found = draw(results(deprecate, statements))
    expected: list[tuple[str | None, int | None, str]] = [
        (tag, count, "ok") if tag else (None, None, "error") for tag, count, _ in found]
    expected += [(None, None, "skipped")] * (statements - len(expected))
    return deprecate, statements, data, expected


def last_whole_seq(data: bytes) -> int | None:
    """The sequence id of the last whole packet in `data`."""
    pos, seq = 0, None
    while len(data) - pos >= 4:
        length, s = my.header(data, pos)
        if pos + 4 + length > len(data):
            break
        pos, seq = pos + 4 + length, s
    return seq


@pytest.mark.parametrize("compiled", WALKS)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answers(), st.lists(st.integers(0, 1 << 16), max_size=8))
def test_any_answer_cut_anywhere_is_relayed_whole_and_each_outcome_found(
        compiled: bool, answer: tuple[bool, int, bytes, list[tuple[str | None, int | None, str]]],
        cuts: list[int]) -> None:
    with result_walk(compiled):
        deprecate, statements, data, expected = answer
        c = conv("admin", caps=EOF_CAPS if deprecate else 0)
        c.client(query("; ".join(f"SELECT {i}" for i in range(statements))))
        runs = list(c.started)
        out, fed = b"", b""
        for part in chunks(data, cuts):
            out += c.server(part)
            fed += part
            if c.busy:  # an ERR ending the session now follows the last packet relayed
                seq = last_whole_seq(fed)
                assert c.error_seq() == (seq + 1 if seq is not None else 1)
        assert out == data
        assert not c.busy and not c.sbuf
        assert [(f[1], f[2], f[5]) for f in c.finished] == expected
        assert [f[0] for f in c.finished] == runs


@pytest.mark.parametrize("compiled", WALKS)
def test_a_long_row_among_rows_of_one_length_is_counted_once(compiled: bool) -> None:
    with result_walk(compiled):
        c = conv()
        c.client(query("SELECT c FROM t"))
        row = my.packet(0, b"\x05hello")
        head = my.packet(1, b"\x01") + my.packet(2, b"\x03def")
        long_row = my.packet(3, b"\x00" + b"x" * my.MAX_PAYLOAD)  # a packet and its continuation
        answer = head + row * 20 + long_row + row * 20 \
            + my.packet(5, b"\xfe\x00\x00" + struct.pack("<HH", my.SERVER_STATUS_AUTOCOMMIT, 0))
        out = b"".join(c.server(answer[i:i + 70000]) for i in range(0, len(answer), 70000))
        assert out == answer
        assert [(f[1], f[2], f[5]) for f in c.finished] == [("ROWS", 41, "ok")]


@pytest.mark.parametrize("compiled", WALKS)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.data(), st.lists(st.integers(0, 1 << 16), max_size=4))
def test_a_prepared_statement_executed_again_and_again_is_followed_each_time(
        compiled: bool, deprecate: bool, data: st.DataObject, cuts: list[int]) -> None:
    """Each execution's answer is followed whole, whatever the last one was: the same
    columns (their bytes kept and skipped at once), others, an OK, several results."""
    with result_walk(compiled):
        c = conv("admin", caps=EOF_CAPS if deprecate else 0)
        c.client(my.packet(0, b"\x16CALL p(?)"))
        c.server(my.packet(1, b"\x00" + struct.pack("<IHHBH", 7, 0, 1, 0, 0))
                 + my.packet(2, b"\x03def") + (b"" if deprecate else my.packet(3, b"\xfe\0\0\2\0")))
        for _ in range(data.draw(st.integers(1, 6))):
            answer, found = data.draw(results(deprecate, data.draw(st.sampled_from([1, 1, 1, 2])),
                                              varied=False))
            c.client(my.packet(0, b"\x17" + struct.pack("<IBI", 7, 0, 1) + b"\x00\x01\x08\x00"
                               + struct.pack("<q", 42)))
            [run] = c.started
            c.started.clear()
            out, fed = b"", b""
            for part in chunks(answer, cuts):
                out += c.server(part)
                fed += part
                if c.busy:
                    seq = last_whole_seq(fed)
                    assert c.error_seq() == (seq + 1 if seq is not None else 1)
            assert out == answer and not c.busy and not c.sbuf
            [(done, tag, rows, _, error, outcome)] = c.finished
            c.finished.clear()
            *before, (last_tag, last_count, _) = found
            assert done is run and (error is None) == (outcome == "ok")
            if last_tag is None:
                assert (tag, rows, outcome) == (None, None, "error")
            else:  # the results of one statement (a CALL's): their rows together
                assert (tag, rows, outcome) == (last_tag, last_count + sum(
                    n for _, n, _ in before), "ok")


def test_the_result_walk_is_compiled_where_it_can_be() -> None:
    """Where a C compiler and Python's headers are at hand, the install built the walk: a
    build that failed there would otherwise fall back to Python unnoticed."""
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    if os.environ.get("ACCORD_PURE_PYTHON") == "1" or not shutil.which("cc") \
            or not headers.exists():
        pytest.skip("no C compiler or Python headers here: the Python walk is used")
    walk = myconv._walk
    assert myconv.COMPILED and walk is not None
    assert (walk.EV_STOP, walk.EV_END, walk.EV_ERROR, walk.EV_HEAD, walk.EV_OTHER,
            walk.EV_PYTHON) == (myconv.EV_STOP, myconv.EV_END, myconv.EV_ERROR,
                                myconv.EV_HEAD, myconv.EV_OTHER, myconv.EV_PYTHON)
    source = Path(myconv.__file__).with_name("_walk.c")
    if source.exists():  # a checkout: the module was built from this very source
        assert hashlib.sha256(source.read_bytes()).hexdigest() == walk.SOURCE_SHA256, \
            "the compiled walk is older than _walk.c: run pip install -e . again"


@st.composite
def sessions(draw: st.DrawFn) -> tuple[bool, list[tuple[bytes, bytes]], list[int]]:
    """A session's commands, each with the server's answer: text queries of one statement
    or several, a prepared statement executed again and again (with a cursor or not), the
    answers as MariaDB sends them or damaged (bytes changed, cut, garbage after)."""
    deprecate = draw(st.booleans())
    prepare = my.packet(0, b"\x16CALL p(?)")
    prepared = my.packet(1, b"\x00" + struct.pack("<IHHBH", 7, 0, 1, 0, 0)) \
        + my.packet(2, b"\x03def") + (b"" if deprecate else my.packet(3, b"\xfe\0\0\2\0"))
    steps = [(prepare, prepared)]
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["query", "queries", "execute", "execute", "cursor"]))
        if kind.startswith("query"):
            count = 1 if kind == "query" else draw(st.integers(2, 3))
            command = query("; ".join(f"SELECT {i}" for i in range(count)))
        else:
            count = draw(st.sampled_from([1, 1, 2]))
            command = my.packet(0, b"\x17" + struct.pack("<IBI", 7, 1 if kind == "cursor"
                                                         else 0, 1)
                                + b"\x00\x01\x08\x00" + struct.pack("<q", 42))
        answer, _ = draw(results(deprecate, count, varied=draw(st.booleans())))
        damage = draw(st.sampled_from(["none", "none", "none", "bytes", "cut", "garbage"]))
        if damage == "bytes" and answer:
            at = draw(st.integers(0, len(answer) - 1))
            answer = answer[:at] + draw(st.binary(min_size=1, max_size=4)) + answer[at + 1:]
        elif damage == "cut":
            answer = answer[:draw(st.integers(0, len(answer)))]
        elif damage == "garbage":
            answer += draw(st.binary(max_size=40))
        steps.append((command, answer))
    return deprecate, steps, draw(st.lists(st.integers(0, 1 << 12), max_size=6))


def conversation_state(c: Conversation) -> tuple[object, ...]:
    stmt = c.prepared.get(7)
    return ([(run.seq, tag, rows, error, outcome)
             for run, tag, rows, _, error, outcome in c.finished],
            [(e.kind, e.state, e.rows, e.left, [r.seq for r in e.runs]) for e in c.pending],
            c.busy, c.error_seq(), bytes(c.sbuf), c._scont, c._next_server_seq,
            None if stmt is None else (stmt.head, stmt.head_last))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sessions())
def test_the_compiled_walk_and_the_python_walk_agree_on_any_answer(
        session: tuple[bool, list[tuple[bytes, bytes]], list[int]]) -> None:
    """The same session through the compiled walk and the Python one, the server's bytes
    cut anywhere, whole or damaged: the same bytes relayed, the same outcomes, the same
    state after every read, the same protocol error where one ends the session."""
    if myconv._walk is None:
        pytest.skip("the compiled walk was not built")
    deprecate, steps, cuts = session
    convs = {compiled: conv("admin", caps=EOF_CAPS if deprecate else 0)
             for compiled in (False, True)}
    for command, answer in steps:
        for compiled, c in convs.items():
            with result_walk(compiled):
                c.client(command)
        for part in chunks(answer, cuts):
            seen = {}
            for compiled, c in convs.items():
                with result_walk(compiled):
                    try:
                        seen[compiled] = (c.server(part), conversation_state(c))
                    except my.ProtocolError as exc:
                        seen[compiled] = (str(exc), None)
            assert seen[True] == seen[False]
            if seen[True][1] is None:
                return  # that session ends
