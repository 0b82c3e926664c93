"""The C speedups' entry points take any arguments without reading outside their buffer:
arbitrary bytes, positions and counts (negative, past the end, past 64 bits), the types
they name and others. Each call either answers or raises TypeError, ValueError or
OverflowError, and a walk never ends past the bytes it was given (a `_walk.c` changed to
step 16 bytes past them fails here); under the sanitizers (`test_sanitizers.py`) any stray
read fails the run.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accord.gateway.mysql import conversation
from accord.gateway.postgres import mask

pytestmark = pytest.mark.skipif(conversation._walk is None or mask._rows is None,
                                reason="the C speedups were not built")

BIG = st.integers(min_value=-(2**70), max_value=2**70)
SMALL = st.integers(min_value=-3, max_value=70)
DATA = st.binary(max_size=64) | st.builds(bytearray, st.binary(max_size=64)) | \
    st.builds(memoryview, st.binary(max_size=64))
REFUSED = (TypeError, ValueError, OverflowError)
RUNS = settings(max_examples=1500, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


def packets(draw: Any) -> bytes:
    """Plausible MySQL packets (header lengths that mostly fit) with arbitrary payloads."""
    out = b""
    for payload in draw(st.lists(st.binary(max_size=12), max_size=6)):
        length = draw(st.sampled_from([len(payload), len(payload) + 1, 0xFFFFFF]))
        out += length.to_bytes(3, "little") + bytes([draw(st.integers(0, 255))]) + payload
    return out


# Where to walk: the whole buffer (as the gateway calls it), a part of it, or anything.
WHOLE = st.just((0, None))
SPAN = WHOLE | WHOLE | st.tuples(st.integers(0, 80), st.integers(0, 80)) | \
    st.tuples(SMALL | BIG, SMALL | BIG)
# A result's state, rows and bytes left: as a conversation has them, or anything.
USUAL = st.tuples(st.sampled_from([0, 1, 2, 3]), st.integers(0, 5), st.integers(0, 3))
COUNTERS = USUAL | USUAL | st.tuples(st.integers(-2, 5) | BIG, SMALL | BIG, SMALL | BIG)


def span(data: Any, where: tuple[int, int | None]) -> tuple[int, int]:
    pos, n = where
    return pos, len(data) if n is None else n


@RUNS
@given(data=DATA | st.composite(packets)() | st.composite(packets)(), where=SPAN,
       counters=COUNTERS, flags=st.tuples(st.booleans(), st.booleans(), st.booleans()))
def test_walk_takes_any_arguments(data: Any, where: tuple[int, int | None],
                                  counters: tuple[int, int, int],
                                  flags: tuple[bool, bool, bool]) -> None:
    assert conversation._walk is not None
    pos, n = span(data, where)
    state, rows, left = counters
    try:
        event, end, last, *_ = conversation._walk.walk(data, pos, n, state, rows, left, *flags)
    except REFUSED:
        return
    if 0 <= pos <= n <= len(data) and event != conversation._walk.EV_PYTHON:
        assert pos <= end <= n and last < end  # never past what it was given


def datarows(draw: Any) -> bytes:
    """Plausible PostgreSQL DataRow (and CopyData) messages, lengths often off."""
    out = b""
    for values in draw(st.lists(st.lists(st.none() | st.binary(max_size=6), max_size=4),
                                max_size=5)):
        body = len(values).to_bytes(2, "big", signed=False)
        for v in values:
            size = -1 if v is None else len(v) + draw(st.sampled_from([0, 0, 0, 1, -2, 9]))
            body += size.to_bytes(4, "big", signed=True) + (v or b"")
        length = len(body) + 4 + draw(st.sampled_from([0, 0, 0, 1, -1, -7, 2**20]))
        kind = draw(st.sampled_from([b"D", b"d", b"C"]))
        out += kind + (length % 2**32).to_bytes(4, "big") + body
    return out


@RUNS
@given(data=DATA | st.composite(datarows)() | st.composite(datarows)(), where=SPAN,
       copy=st.booleans(), whole=st.booleans(),
       replacements=st.lists(st.none() | st.binary(max_size=8), max_size=4).map(tuple))
def test_rows_take_any_arguments(data: Any, where: tuple[int, int | None], copy: bool,
                                 whole: bool, replacements: tuple[bytes | None, ...]) -> None:
    rows = mask._rows
    assert rows is not None
    pos, n = span(data, where)
    for call in (lambda: rows.walk_rows(data, pos, n, copy, whole),
                 lambda: rows.mask_rows(data, pos, n, replacements)):
        with contextlib.suppress(*REFUSED):
            call()
