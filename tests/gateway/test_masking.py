"""Masking without a server: the detectors, the rules, PostgreSQL's DataRow rewriting and
RowDescription plans (property tests), and the sans-IO conversation of a masked session
(simple and extended protocol, hidden Describes, COPY refused)."""

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
from hypothesis import given, settings
from hypothesis import strategies as st

from accord.gateway import masking
from accord.gateway.masking import Masker, Plan, find, iban_valid, luhn, rewrite
from accord.gateway.postgres import mask as pgmask
from accord.gateway.postgres import protocol as pq
from accord.gateway.postgres.conversation import Conversation
from accord.gateway.postgres.mask import (
    RowPlan,
    SessionMask,
    catalog_query,
    rewrite_row,
    rewrite_rows,
)
from accord.gateway.postgres.scope import Classifier
from accord.spec.masking import MaskingSpec

# Property tests run without hypothesis's deadline: a loaded machine is no failure.
CARD = b"4111 1111 1111 1111"
IBAN = b"DE89 3704 0044 0532 0130 00"


def masker(**kw: object) -> Masker:
    m = Masker.of([MaskingSpec.model_validate({"name": "pii", **kw})], "read")
    assert m is not None
    return m


# The row loop for columns masked whole, both ways: compiled (_rows.c, where it was built)
# and the Python one it falls back to. Each test below holds both to the same answers.
ROW_LOOPS = [pytest.param(False, id="python"),
             pytest.param(True, id="compiled", marks=pytest.mark.skipif(
                 pgmask._rows is None, reason="the compiled row loop was not built"))]


@contextlib.contextmanager
def row_loop(compiled: bool) -> Iterator[None]:
    saved = pgmask.COMPILED
    pgmask.COMPILED = compiled
    try:
        yield
    finally:
        pgmask.COMPILED = saved


# ------------------------------------------------------------------ detectors


def _luhn_complete(digits: list[int]) -> bytes:
    """`digits` with the check digit that makes them pass Luhn."""
    for check in range(10):
        candidate = "".join(map(str, digits)).encode() + b"%d" % check
        if luhn(candidate):
            return candidate
    raise AssertionError("no check digit")


@settings(deadline=None)
@given(st.lists(st.integers(0, 9), min_size=12, max_size=18),
       st.sampled_from(["", " ", "-"]), st.text(alphabet="abc xyz:", max_size=10))
def test_cards_passing_luhn_are_found_in_any_grouping(digits: list[int], sep: str,
                                                      prefix: str) -> None:
    number = _luhn_complete(digits)
    grouped = sep.encode().join(number[i:i + 4] for i in range(0, len(number), 4))
    value = prefix.encode() + b" " + grouped + b" end"
    m = masker(detectors=["card"])
    out = m.scan(value)
    assert number not in out.replace(sep.encode(), b"") and out.endswith(b" end")
    assert out == prefix.encode() + b" **** end"


@settings(deadline=None)
@given(st.lists(st.integers(0, 9), min_size=13, max_size=19))
def test_numbers_failing_luhn_are_left(digits: list[int]) -> None:
    number = "".join(map(str, digits)).encode()
    if luhn(number):
        number = number[:-1] + b"%d" % ((number[-1] - 47) % 10)
    assert not luhn(number)
    assert masker(detectors=["card"]).scan(b"n=" + number) == b"n=" + number


@settings(deadline=None)
@given(st.from_regex(r"[a-z][a-z0-9._-]{0,15}@[a-z][a-z0-9-]{0,10}\.(com|org|io)",
                     fullmatch=True), st.text(alphabet="hello wrd,;", max_size=12))
def test_emails_are_found_inside_text(email: str, around: str) -> None:
    value = f"{around} <{email}> {around}".encode()
    out = masker(detectors=["email"]).scan(value)
    assert email.encode() not in out
    assert out == f"{around} <****> {around}".encode()


@settings(deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="@0123456789",
                                      blacklist_categories=("Cs",)), max_size=60))
def test_text_without_digits_or_at_is_passed_as_the_same_object(text: str) -> None:
    value = text.encode()
    assert masker(detectors=["email", "card", "iban", "phone"]).scan(value) is value


def test_ibans_need_their_check_digits_and_stop_at_the_next_word() -> None:
    assert iban_valid(b"DE89370400440532013000") and iban_valid(b"GB82WEST12345698765432")
    assert not iban_valid(b"DE88370400440532013000")
    m = masker(detectors=["iban"])
    assert m.scan(b"pay to " + IBAN + b" TODAY") == b"pay to **** TODAY"
    assert m.scan(b"GB82WEST12345698765432") == b"****"
    assert m.scan(b"DE88 3704 0044 0532 0130 00") == b"DE88 3704 0044 0532 0130 00"


@pytest.mark.parametrize(("value", "masked"), [
    (b"call +44 20 7946 0958 now", b"call **** now"),
    (b"+1 (555) 123-4567", b"****"),
    (b"(555) 123-4567", b"****"),
    (b"555.123.4567", b"****"),
    (b"on 2024-01-15 at 10:30", None),  # dates are not phone numbers
    (b"order 12345", None),
])
def test_phones(value: bytes, masked: bytes | None) -> None:
    assert masker(detectors=["phone"]).scan(value) == (masked or value)



def test_the_shortest_text_of_each_kind_is_still_found() -> None:
    """Values shorter than a kind's shortest match are not searched for it
    (`masking.SHORTEST`): matches of exactly that length are still masked."""
    shortest = {"email": b"a@b.io", "card": b"4000000000006", "iban": b"NO9386011117947",
                "phone": b"+12345678"}
    assert {k: len(v) for k, v in shortest.items()} == masking.SHORTEST
    for kind, value in shortest.items():
        assert masker(detectors=[kind]).scan(value) == b"****", kind
        assert masker(detectors=[kind]).scan(b" " + value + b" ") == b" **** ", kind

def test_kinds_do_not_overlap_and_the_first_kind_wins() -> None:
    value = b"card " + CARD + b" mail a@b.io"
    assert [k for _, _, k in find(value, masking.ORDER)] == ["card", "email"]


# ------------------------------------------------------------------ rules


def test_columns_and_patterns_first_rule_decides() -> None:
    m = Masker.of([
        MaskingSpec(name="a", roles=["read"], columns=["public.customers.email"],
                    replacement="[email]"),
        MaskingSpec(name="b", column_patterns=["*mail*", "ssn"], replacement="xx"),
        MaskingSpec(name="c", roles=["admin"], columns=["*.*.*"]),
    ], "read")
    assert m is not None and m.rules == ("a", "b")
    assert m.column("public", "customers", "email") == b"[email]"
    assert m.column("PUBLIC", "Customers", "EMAIL") == b"[email]"
    assert m.column("other", "customers", "email") == b"xx"  # the pattern
    assert m.column("public", "customers", "name") is None
    assert m.named("SSN") == b"xx" and m.named("ssn2") is None
    assert Masker.of([MaskingSpec(name="c", roles=["admin"], detectors=["email"])],
                     "read") is None


def test_catalog_query_quotes_names() -> None:
    m = masker(columns=['public."O\'Brien".email', "*.*.card_no"], column_patterns=["*_ssn"])
    q = catalog_query(m)
    assert q is not None
    assert "c.relname ILIKE 'o''brien'" in q
    assert "a.attname ILIKE 'card\\_no'" in q and "n.nspname ILIKE '%'" in q
    assert "a.attname ILIKE '%\\_ssn'" in q
    assert catalog_query(masker(detectors=["email"])) is None


@settings(deadline=None)
@given(st.lists(st.one_of(st.none(), st.binary(max_size=20)), max_size=8), st.data())
def test_rewrite_keeps_nulls_and_changes_only_masked(values: list[bytes | None],
                                                     data: st.DataObject) -> None:
    whole = {i: b"#" for i in data.draw(st.sets(st.integers(0, 9)))}
    m = masker(detectors=["email"])
    result = rewrite(values, Plan(whole, (), ()), m)
    out, changed = result if result is not None else (list(values), set())
    assert len(out) == len(values)
    for i, (before, after) in enumerate(zip(values, out, strict=True)):
        if before is None:
            assert after is None
        elif i in whole:
            assert after == b"#" and i in changed
        else:
            assert after == before


# ------------------------------------------------------------------ PostgreSQL rows


def row_description(fields: list[tuple[str, int, int, int, int]]) -> bytes:
    """(name, table OID, attnum, type OID, format) each."""
    body = struct.pack("!h", len(fields))
    for name, table, attnum, typ, fmt in fields:
        body += name.encode() + b"\0" + struct.pack("!IhIhih", table, attnum, typ, -1, -1, fmt)
    return pq.message(b"T", body)


def data_row(values: list[bytes | None]) -> bytes:
    body = struct.pack("!h", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return pq.message(b"D", body)


def read_row(msg: bytes) -> list[bytes | None]:
    assert msg[:1] == b"D" and int.from_bytes(msg[1:5], "big") == len(msg) - 1
    count = int.from_bytes(msg[5:7], "big")
    pos = 7
    out: list[bytes | None] = []
    for _ in range(count):
        n = int.from_bytes(msg[pos:pos + 4], "big", signed=True)
        pos += 4
        if n < 0:
            out.append(None)
        else:
            out.append(msg[pos:pos + n])
            pos += n
    assert pos == len(msg)
    return out


VALUE = st.one_of(st.none(), st.binary(max_size=30),
                  st.sampled_from([b"x@y.org", CARD, b"note: " + CARD, b"\x00\x01"]))


@settings(max_examples=300, deadline=None)
@given(st.lists(VALUE, min_size=1, max_size=12), st.data())
def test_datarow_rewriting(values: list[bytes | None], data: st.DataObject) -> None:
    """Field count and NULLs kept; masked columns replaced; detector columns scanned;
    every other byte as it was; the length header right."""
    n = len(values)
    whole = data.draw(st.sets(st.integers(0, n - 1)))
    scan = data.draw(st.sets(st.integers(0, n - 1))) - whole
    m = masker(detectors=["email", "card"], replacement="****")
    names = tuple(f"c{i}" for i in range(n))
    plan = RowPlan(Plan(dict.fromkeys(whole, b"****"), tuple(sorted(scan)), names), None)
    msg = data_row(values)
    seen: set[str] = set()
    out = rewrite_row(msg, 5, len(msg), plan, m, seen)
    got = read_row(out) if out is not None else values
    assert len(got) == n
    for i, (before, after) in enumerate(zip(values, got, strict=True)):
        if before is None:
            assert after is None
        elif i in whole:
            assert after == b"****" and f"c{i}" in seen
        elif i in scan:
            assert after == m.scan(before)
            assert (after != before) == (f"c{i}" in seen)
        else:
            assert after == before
    assert (out is None) == (not seen)


@pytest.mark.parametrize("compiled", ROW_LOOPS)
@settings(max_examples=300, deadline=None)
@given(st.integers(1, 8), st.data())
def test_a_buffer_of_datarows(compiled: bool, width: int, data: st.DataObject) -> None:
    """Many rows in one buffer, cut anywhere, with columns masked whole (the code written
    for the plan) or read by detectors: each row as `rewrite_row` makes it, rows after a
    cut left for the next read, other messages never touched."""
    rows = data.draw(st.lists(st.lists(VALUE, min_size=width, max_size=width), max_size=6))
    whole = data.draw(st.sets(st.integers(0, width - 1)))
    scan = () if data.draw(st.booleans()) else tuple(sorted(
        data.draw(st.sets(st.integers(0, width - 1))) - whole))
    m = masker(detectors=["email", "card"])
    names = tuple(f"c{i}" for i in range(width))
    plan = RowPlan(Plan(dict.fromkeys(whole, b"#" * (len(whole) + 2)), scan, names), None)
    buffer = b"".join(data_row(r) for r in rows) + COMPLETE
    cut = data.draw(st.integers(0, len(buffer)))
    seen: set[str] = set()
    with row_loop(compiled):
        end, count, out = rewrite_rows(buffer[:cut], 0, cut, plan, m, seen)
    whole_rows = []
    at = 0
    for r in rows:
        msg = data_row(r)
        if at + len(msg) > cut:
            break
        whole_rows.append(msg)
        at += len(msg)
    assert (end, count) == (at, len(whole_rows))
    expected: set[str] = set()
    want = b"".join(rewrite_row(r, 5, len(r), plan, m, expected) or r for r in whole_rows)
    assert (out if out is not None else buffer[:end]) == want
    assert seen == expected
    assert out is not None or not expected  # None: nothing changed (not the other way)



def test_the_row_loop_is_compiled_where_it_can_be() -> None:
    """Where a C compiler and Python's headers are at hand, the install built the row
    loop: a build that failed there would otherwise fall back to Python unnoticed."""
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    if os.environ.get("ACCORD_PURE_PYTHON") == "1" or not shutil.which("cc") \
            or not headers.exists():
        pytest.skip("no C compiler or Python headers here: the Python loop is used")
    assert pgmask.COMPILED and pgmask._rows is not None
    source = Path(pgmask.__file__).with_name("_rows.c")
    if source.exists():  # a checkout: the module was built from this very source
        assert hashlib.sha256(source.read_bytes()).hexdigest() == pgmask._rows.SOURCE_SHA256, \
            "the compiled row loop is older than _rows.c: run pip install -e . again"


def reference_rows(buffer: bytes, plan: Plan, m: Masker) -> tuple[int, int, bytes, set[str]]:
    """What the client should get for the whole DataRows at the start of `buffer`, the
    simple way: every field decoded, the row masked by the core's `masking.rewrite`, the
    row encoded again. Returns (where the rows end, how many, the bytes, columns changed)."""
    at, count, out, changed = 0, 0, b"", set()
    while len(buffer) - at >= 5 and buffer[at:at + 1] == b"D":
        end = at + 1 + int.from_bytes(buffer[at + 1:at + 5], "big")
        if end > len(buffer):
            break
        values = read_row(buffer[at:end])
        result = rewrite(values, plan, m)
        if result is None:
            out += buffer[at:end]
        else:
            out += data_row(result[0])
            changed |= {plan.names[i] for i in result[1]}
        at, count = end, count + 1
    return at, count, out, changed


# Values of every length class: NULL, empty, short, a length over 255 (its length takes
# two bytes), and what the detectors find.
ANY_VALUE = st.one_of(VALUE, st.just(b""), st.binary(min_size=250, max_size=300))


@pytest.mark.parametrize("compiled", ROW_LOOPS)
@settings(max_examples=400, deadline=None)
@given(st.integers(1, 10), st.data())
def test_the_fast_row_loop_gives_the_bytes_of_a_simple_reference(
        compiled: bool, width: int, data: st.DataObject) -> None:
    """`rewrite_rows` (the loop written per plan, rows with a NULL up to the last masked
    column on the careful path, detectors one row at a time) against `reference_rows` on
    random rows, masked columns anywhere (first, last, adjacent or not), cut anywhere:
    identical bytes, row count, end and masked columns."""
    rows = data.draw(st.lists(st.lists(ANY_VALUE, min_size=width, max_size=width),
                              max_size=8))
    whole_at = data.draw(st.sets(st.integers(0, width - 1)))
    replacement = data.draw(st.sampled_from([b"****", b"", b"#" * 300, "\u2588".encode()]))
    scan = () if data.draw(st.booleans()) else tuple(sorted(
        data.draw(st.sets(st.integers(0, width - 1))) - whole_at))
    m = masker(detectors=["email", "card"])
    names = tuple(f"c{i}" for i in range(width))
    plan = Plan(dict.fromkeys(whole_at, replacement), scan, names)
    buffer = b"".join(data_row(r) for r in rows) + COMPLETE + READY
    cut = data.draw(st.integers(0, len(buffer)))
    seen: set[str] = set()
    with row_loop(compiled):
        end, count, out = rewrite_rows(buffer[:cut], 0, cut, RowPlan(plan, None), m, seen)
    want_end, want_count, want, changed = reference_rows(buffer[:cut], plan, m)
    assert (end, count) == (want_end, want_count)
    assert (out if out is not None else buffer[:end]) == want
    assert seen == changed


@pytest.mark.parametrize("compiled", ROW_LOOPS)
def test_malformed_rows_are_protocol_errors(compiled: bool) -> None:
    """A DataRow whose fields run past its length, fast path or careful one, is the
    upstream breaking the protocol (never a struct error, never passed on)."""
    m = masker(detectors=["email"])
    plan = RowPlan(Plan({1: b"****"}, (), ("a", "b")), None)
    scanned = RowPlan(Plan({}, (0, 1), ("a", "b")), None)
    good = data_row([b"1", b"x@y.org"])
    short = b"D" + (len(good) - 3).to_bytes(4, "big") + good[5:-2]  # its last 2 bytes cut
    with row_loop(compiled):
        for p in (plan, scanned):
            for buffer in (short + COMPLETE, good + short + COMPLETE, short):
                with pytest.raises(pq.ProtocolError):
                    rewrite_rows(buffer, 0, len(buffer), p, m, set())
        tiny = data_row([])  # no columns: at the buffer's end, shorter than the first read
        assert rewrite_rows(tiny, 0, len(tiny), plan, m, set()) == (len(tiny), 1, None)
        both = good + tiny
        end, count, out = rewrite_rows(both, 0, len(both), plan, m, set())
        if end < len(both):  # the Python loop stops at the short row; the next call takes it
            assert (end, count) == (len(good), 1)
            assert rewrite_rows(both, end, len(both), plan, m, set()) == (len(both), 1, None)
        else:
            assert count == 2 and out == data_row([b"1", b"****"]) + tiny


def lying_row(values: list[bytes | None], count: int) -> bytes:
    """A DataRow whose field count says `count` whatever fields it carries."""
    row = data_row(values)
    return row[:5] + struct.pack("!h", count) + row[7:]


@pytest.mark.parametrize("compiled", ROW_LOOPS)
@pytest.mark.parametrize("detectors", [False, True])
@pytest.mark.parametrize("values,count", [
    ([b"1", b"alice@example.org", b"n"], 1),    # the masked column past the count
    ([b"1", b"alice@example.org", b"n"], -1),   # a negative count
    ([None, b"alice@example.org", b"n"], 1),    # a NULL first, then the same
    ([b"1", b"alice@example.org", b"n"], 0),
])
def test_a_row_whose_count_hides_a_masked_value_is_refused(
        compiled: bool, detectors: bool, values: list[bytes | None], count: int) -> None:
    """An upstream that lies in a DataRow's field count (fewer fields than the row holds)
    must not get a value past the count to the client unmasked: the row is refused (the
    careful path, which the compiled loop and detectors use for such a row), or masked by
    place (the Python loop for columns masked whole, which reads fields whatever the
    count says); never passed on."""
    plan = RowPlan(Plan({} if detectors else {2: b"****", 1: b"****"},
                        (1, 2) if detectors else (), ("id", "email", "note")), None)
    m = masker(detectors=["email"])
    row = lying_row(values, count)
    conv = conversation(detectors=["email"]) if detectors else \
        conversation(columns=["public.people.email"])
    conv.client(pq.query("SELECT id, email, note FROM people"))
    with row_loop(compiled):
        for attempt in (
                lambda: rewrite_rows(row + COMPLETE, 0, len(row) + len(COMPLETE), plan, m,
                                     set())[2] or row,
                lambda: conv.server(DESC + row + COMPLETE + READY)):
            try:
                out = attempt()
            except pq.ProtocolError:
                continue
            assert b"alice@example.org" not in out


@pytest.mark.skipif(pgmask._rows is None, reason="the compiled row loop was not built")
@settings(max_examples=500, deadline=None)
@given(st.integers(1, 6), st.data())
def test_the_compiled_loop_takes_any_bytes(width: int, data: st.DataObject) -> None:
    """Rows from an upstream are untrusted: random bytes after a DataRow's kind byte,
    lengths that lie, counts that are negative or short, buffers cut anywhere. The
    compiled loop and the Python one agree: the same rows masked the same way, or the
    same protocol error; nothing read outside the buffer (under ASan, nothing crashes)."""
    m = masker(detectors=["email"])
    whole = data.draw(st.sets(st.integers(0, width - 1), min_size=1))
    names = tuple(f"c{i}" for i in range(width))
    plan = RowPlan(Plan(dict.fromkeys(whole, b"**"), (), names), None)
    pieces = data.draw(st.lists(st.one_of(
        st.lists(ANY_VALUE, min_size=0, max_size=width + 1).map(data_row),
        st.binary(max_size=40).map(lambda b: b"D" + b),
        st.tuples(st.integers(-2**31, 2**31 - 1), st.integers(-2**15, 2**15 - 1),
                  st.binary(max_size=30)).map(
            lambda t: b"D" + struct.pack("!ih", t[0], t[1]) + t[2])), max_size=5))
    buffer = b"".join(pieces) + COMPLETE
    buffer = buffer[:data.draw(st.integers(0, len(buffer)))]  # a read ends anywhere
    cut = len(buffer)
    pos = data.draw(st.integers(0, cut))

    def drain(compiled: bool) -> tuple[int, int, bytes, set[str]] | str:
        """Rows taken as the conversation takes them: a call only where a whole DataRow
        of a plausible length starts (the conversation refuses any other first)."""
        at, rows, out = pos, 0, b""
        seen: set[str] = set()
        with row_loop(compiled):
            try:
                while cut - at >= 5 and buffer[at] == 0x44:
                    length = int.from_bytes(buffer[at + 1:at + 5], "big", signed=True)
                    if length < 6:
                        return "refused"
                    if at + 1 + length > cut:
                        break
                    end, count, got = rewrite_rows(buffer, at, cut, plan, m, seen)
                    assert end > at and count >= 1
                    out += got if got is not None else buffer[at:end]
                    at, rows = end, rows + count
            except pq.ProtocolError:
                return "refused"
        return at, rows, out, seen

    assert drain(True) == drain(False)


def test_row_description_plan_turns_masked_columns_into_text() -> None:
    mask = SessionMask(masker(columns=["public.people.card_no"], column_patterns=["*email*"],
                              detectors=["phone"]), {(16400, 3): b"****"})
    desc = row_description([("id", 16400, 1, 23, 1), ("contact_email", 0, 0, 25, 0),
                            ("card", 16400, 3, 20, 1), ("note", 16400, 4, 1043, 0),
                            ("n", 16400, 5, 700, 0)])
    plan = mask.describe(desc[5:])
    assert plan.plan.whole == {1: b"****", 2: b"****"} and plan.plan.scan == (3,)
    assert plan.description is not None
    rewritten = plan.description[5:]
    # card (int8, binary) is sent as text in binary format: what clients decode as a string
    at = rewritten.index(b"card\0") + 5
    assert struct.unpack_from("!IhIhih", rewritten, at) == (16400, 3, 25, -1, -1, 1)
    assert mask.describe(desc[5:]) is plan  # cached by its bytes


# ------------------------------------------------------------------ the conversation


def conversation(**rules: object) -> Conversation:
    m = masker(**rules)
    return Conversation(allowed=frozenset({"read", "transaction", "session"}),
                        classifier=Classifier(), role="read", resource="lab",
                        mask=SessionMask(m, {(16400, 2): b"****"}))


DESC = row_description([("id", 16400, 1, 23, 0), ("email", 16400, 2, 25, 0),
                        ("note", 16400, 3, 25, 0)])
COMPLETE = pq.message(b"C", b"SELECT 2\0")
READY = pq.ready_for_query(b"I")


def test_simple_query_rows_are_masked_even_split_across_reads() -> None:
    conv = conversation(detectors=["card"])
    conv.client(pq.query("SELECT id, email, note FROM people"))
    answer = DESC + data_row([b"1", b"a@b.io", b"card " + CARD]) + \
        data_row([b"2", None, None]) + COMPLETE + READY
    out = b"".join(conv.server(answer[i:i + 7]) for i in range(0, len(answer), 7))
    assert b"a@b.io" not in out and CARD not in out
    rows = [m for m in _messages(out) if m[:1] == b"D"]
    assert [read_row(r) for r in rows] == [[b"1", b"****", b"card ****"], [b"2", None, None]]
    run, tag, count, _, _, outcome = conv.finished[0]
    assert (tag, count, outcome) == ("SELECT 2", 2, "ok")
    assert run.masked == {"email", "note"}


def test_extended_execute_without_describe_gets_a_hidden_one() -> None:
    conv = conversation()
    sent = conv.client(pq.parse_message(b"", b"SELECT id, email FROM people") +
                       pq.message(b"B", b"\0\0\0\0\0\0\0\x01\0\x01") +
                       pq.message(b"E", b"\0\0\0\0\0") + pq.message(b"S"))
    assert b"D\0\0\0\x06P\0" in sent  # Describe of the unnamed portal, ahead of Execute
    answer = b"1\0\0\0\x04" + b"2\0\0\0\x04" + DESC + data_row([b"\0\0\0\x01", b"a@b.io"]) + \
        pq.message(b"C", b"SELECT 1\0") + READY
    out = conv.server(answer)
    assert b"T" not in [m[:1] for m in _messages(out)]  # the client asked no Describe
    assert [read_row(m) for m in _messages(out) if m[:1] == b"D"] == \
        [[b"\0\0\0\x01", b"****"]]
    assert conv.finished[0][0].masked == {"email"}


def test_copy_to_stdout_is_refused_and_rows_without_description_end_the_session() -> None:
    conv = conversation()
    sent = conv.client(pq.query("copy (select * from people) TO STDOUT"))
    assert b"REFUSED" in sent
    assert conv.hits and conv.hits[0].detail == "copy_out"
    out = conv.server(pq.error_response("42601", "syntax error") + READY)
    assert b"COPY ... TO is refused" in out
    conv.client(pq.query("COPY people FROM STDIN"))  # into the table: allowed to try
    assert len(conv.hits) == 1
    with pytest.raises(pq.ProtocolError):
        conv.server(pq.message(b"H", b"\0\0\0"))


def _messages(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        end = pos + 1 + int.from_bytes(data[pos + 1:pos + 5], "big")
        out.append(data[pos:end])
        pos = end
    return out
