"""Statement reuse (`auto_prepare`): what goes upstream, and that the client sees no change."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from accord.gateway.postgres import protocol as pq
from accord.gateway.postgres.conversation import EMPTY_PARSE, PARSE_COMPLETE, Conversation
from accord.gateway.postgres.scope import Classifier
from tests.gateway.postgres.test_protocol import (
    ADMIN,
    READY,
    ROWDESC,
    SYNC,
    bind,
    chunks,
    complete,
    describe,
    error,
    execute,
    parse,
    row,
)

SQL = b"select total from orders where id = $1"
ANSWER = b"1\0\0\0\x042\0\0\0\x04" + ROWDESC + row(b"10") + complete("SELECT 1") + READY


def conv(threshold: int = 3) -> Conversation:
    return Conversation(allowed=ADMIN, classifier=Classifier(), role="admin", resource="db",
                        auto_prepare=threshold)


def pipeline(value: bytes, sql: bytes = SQL) -> bytes:
    """What pgbench -M extended and psycopg without prepare send for one statement."""
    return parse(b"", sql) + bind(b"", b"", [value]) + describe() + execute() + SYNC


def messages(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos + 1:pos + 5], "big")
        out.append((data[pos:pos + 1], data[pos + 5:pos + 1 + length]))
        pos += 1 + length
    return out


def run(c: Conversation, value: bytes, answer: bytes = ANSWER, sql: bytes = SQL) -> bytes:
    sent = c.client(pipeline(value, sql))
    # No Parse upstream, no ParseComplete from the server: the gateway supplies it.
    reply = answer if sent.startswith(b"P") else answer[5:]
    assert c.server(reply) == answer  # the client sees what the server would have sent
    return sent


def reused(sent: bytes) -> bool:
    """The server was sent no Parse, and a Bind of the gateway's prepared statement."""
    return sent[:1] == b"B" and sent[6:14] == b"_accord_"


def test_the_nth_parse_prepares_and_later_ones_reuse_it() -> None:
    c = conv(3)
    assert run(c, b"1") == pipeline(b"1")
    assert run(c, b"2") == pipeline(b"2")
    third = messages(run(c, b"3"))
    assert third[0][0] == b"P"
    name = third[0][1].split(b"\0")[0]
    assert name.startswith(b"_accord_")
    assert third[0][1] == name + parse(b"", SQL)[5:]  # the same text and types, named
    assert third[1] == (b"B", b"\0" + name + bind(b"", b"", [b"3"])[6:])
    for value in (b"4", b"5", b"6"):
        sent = run(c, value)
        assert sent == pq.message(
            b"B", b"\0" + name + bind(b"", b"", [value])[6:]) + describe() + execute() + SYNC
    texts = [r.text for r in c.started]
    assert texts == [SQL] * 6  # the audit trail has the client's text every time
    assert [f[1] for f in c.finished] == ["SELECT 1"] * 6
    assert not c.busy


def test_describe_of_the_unnamed_statement_names_the_prepared_one() -> None:
    c = conv(1)
    c.client(pipeline(b"1")); c.server(ANSWER)  # noqa: E702
    name = messages(c.client(parse(b"", SQL) + SYNC))[0][1].split(b"\0")[0]
    c.server(b"1\0\0\0\x04" + READY)
    sent = c.client(parse(b"", SQL) + describe(b"S") + SYNC)
    assert sent == EMPTY_PARSE + describe(b"S", name) + SYNC


def test_a_failed_prepare_is_tried_again_and_never_binds_an_older_statement() -> None:
    c = conv(2)
    run(c, b"1")
    sent = messages(c.client(pipeline(b"2")))
    first = sent[0][1].split(b"\0")[0]
    assert first.startswith(b"_accord_")
    c.server(error("25P02", "current transaction is aborted") + READY)
    assert c.finished[-1][4] == ("25P02", "current transaction is aborted")
    # The unnamed statement upstream was never replaced: a Bind alone names `first`,
    # which does not exist, so it fails rather than running whatever is there.
    assert messages(c.client(bind(b"", b"", [b"1"]) + execute() + SYNC))[0][1].startswith(
        b"\0" + first + b"\0")
    c.server(error("26000", f'prepared statement "{first.decode()}" does not exist') + READY)
    # Re-preparing starts over, under a new name.
    assert run(c, b"3") == pipeline(b"3")
    second = messages(run(c, b"4"))[0][1].split(b"\0")[0]
    assert second.startswith(b"_accord_") and second != first
    assert reused(run(c, b"5"))


def test_a_changed_table_drops_prepared_statements() -> None:
    c = conv(2)
    run(c, b"1")
    run(c, b"2")
    assert reused(run(c, b"3"))
    c.client(pipeline(b"3"))
    assert c.server(error("0A000", "cached plan must not change result type") + READY) \
        == PARSE_COMPLETE + error("0A000", "cached plan must not change result type") + READY
    assert c.finished[-1][5] == "error"
    assert run(c, b"4") == pipeline(b"4")  # parsed by the server again, then reused anew
    assert not reused(run(c, b"5"))
    assert reused(run(c, b"6"))


def test_a_query_deallocate_or_close_gives_the_unnamed_statement_back() -> None:
    c = conv(1)
    run(c, b"1")
    run(c, b"2")
    assert reused(run(c, b"3"))
    q = pq.message(b"Q", b"select 1\0")
    assert c.client(q) == q
    c.server(ROWDESC + row(b"1") + complete("SELECT 1") + READY)
    tail = bind(b"", b"", [b"1"]) + execute() + SYNC
    assert c.client(tail) == tail  # a Query destroyed the unnamed statement: as sent
    c.server(error("26000", "unnamed prepared statement does not exist") + READY)
    assert reused(run(c, b"4"))  # still prepared upstream
    close = pq.message(b"C", b"S\0")
    assert c.client(close + SYNC) == close + SYNC
    c.server(b"3\0\0\0\x04" + READY)
    assert c.client(tail) == tail
    c.server(error("26000", "unnamed prepared statement does not exist") + READY)
    dealloc = pq.message(b"Q", b"DEALLOCATE ALL\0")
    assert c.client(dealloc) == dealloc
    c.server(complete("DEALLOCATE ALL") + READY)
    assert run(c, b"5") == pipeline(b"5")  # prepared afresh
    assert not reused(run(c, b"6"))
    assert reused(run(c, b"7"))


def test_named_statements_and_a_threshold_of_zero_pass_unchanged() -> None:
    c = conv(0)
    for value in (b"1", b"2", b"3"):
        assert run(c, value) == pipeline(value)
    c = conv(1)
    named = parse(b"s1", SQL) + bind(b"", b"s1", [b"1"]) + execute() + SYNC
    for _ in range(3):
        assert c.client(named) == named
        c.server(ANSWER)


def test_behind_outstanding_work_a_parse_goes_to_the_server() -> None:
    """Pipelined: something before it could fail and make the server skip it, so a Parse
    behind outstanding work is the client's own, and so is the unnamed statement."""
    c = conv(1)
    run(c, b"1")
    run(c, b"2")
    first = pipeline(b"3")
    sent = c.client(first + pipeline(b"4"))
    assert reused(sent)  # the first one: nothing outstanding
    assert sent.endswith(pipeline(b"4"))  # the second as sent
    answer = ANSWER[5:] + ANSWER  # no ParseComplete for the first, one for the second
    assert c.server(answer) == ANSWER + ANSWER
    assert [f[1] for f in c.finished][-2:] == ["SELECT 1", "SELECT 1"]
    assert not c.busy


class FakeServer:
    """Just enough of PostgreSQL's extended protocol to tell which text each Execute ran."""

    def __init__(self) -> None:
        self.statements: dict[bytes, bytes] = {}
        self.portal = b""
        self.ran: list[bytes] = []
        self.buf = b""

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = b""
        while len(self.buf) >= 5:
            length = int.from_bytes(self.buf[1:5], "big")
            if len(self.buf) < 1 + length:
                break
            kind, body = self.buf[:1], self.buf[5:1 + length]
            self.buf = self.buf[1 + length:]
            if kind == b"P":
                name, text = body.split(b"\0")[:2]
                assert name == b"" or name not in self.statements, "prepared twice"
                self.statements[name] = text
                out += PARSE_COMPLETE
            elif kind == b"B":
                stmt = body.split(b"\0")[1]
                self.portal = self.statements[stmt]  # a KeyError: a Bind of nothing
                out += b"2\0\0\0\x04"
            elif kind == b"D":
                out += ROWDESC
            elif kind == b"E":
                self.ran.append(self.portal)
                out += row(b"1") + complete("SELECT 1")
            elif kind == b"S":
                out += READY
        return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([SQL, b"select 2 where $1::int > 0", b"select $1::text"]),
                min_size=1, max_size=25),
       st.integers(min_value=0, max_value=4), st.lists(st.integers(0, 10_000), max_size=6),
       st.booleans())
def test_reuse_runs_what_the_client_asked_and_answers_what_the_server_would(
        texts: list[bytes], threshold: int, cuts: list[int], pipelined: bool) -> None:
    c, server = conv(threshold), FakeServer()
    direct = FakeServer()  # the same client talking to the server itself
    expected, got = b"", b""
    stream = [pipeline(str(i).encode(), text) for i, text in enumerate(texts)]
    batches = [b"".join(stream)] if pipelined else stream
    for batch in batches:
        expected += direct.feed(batch)
        for piece in chunks(batch, cuts):
            upstream = c.client(piece)
            if upstream:
                got += c.server(server.feed(upstream))
    assert got == expected
    assert server.ran == direct.ran == texts
    assert [r.text for r in c.started] == texts
    assert not c.busy
