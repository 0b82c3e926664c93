"""The MySQL data path's parser, pure: whatever bytes a client or server sends, cut
anywhere, it relays, answers or raises ProtocolError (that session ends), never anything
else; results are followed to the right statement."""

from __future__ import annotations

import contextlib
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accord.gateway.classes import DEFAULT_ROLES
from accord.gateway.mysql import protocol as my
from accord.gateway.mysql.conversation import Conversation, decode_params
from accord.gateway.mysql.scope import Classifier

CLASSIFIER = Classifier()
EOF_CAPS = my.CLIENT_DEPRECATE_EOF


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


def test_a_query_and_its_result_set_are_followed_cut_anywhere() -> None:
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


def test_old_style_eof_packets_and_multi_results() -> None:
    c = conv(caps=0)
    c.client(query("SELECT 1; SELECT 2"))
    assert [r.text for r in c.started] == [b"SELECT 1", b"SELECT 2"]
    more = my.SERVER_STATUS_AUTOCOMMIT | my.SERVER_MORE_RESULTS_EXISTS
    answer = result_set(1, status=more, deprecate_eof=False)
    answer += result_set(2, seq=6, deprecate_eof=False)
    assert c.server(answer) == answer
    assert [(f[1], f[2], f[5]) for f in c.finished] == [("ROWS", 1, "ok"), ("ROWS", 2, "ok")]


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


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=6),
       st.sampled_from(["SELECT 1", "SELECT 1; SELECT 2", "PREPARE"]))
def test_arbitrary_server_bytes_relay_or_raise_protocol_error(data: bytes, cuts: list[int],
                                                               command: str) -> None:
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
