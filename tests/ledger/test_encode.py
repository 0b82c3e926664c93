"""The ledger's leaf bytes are RFC 8785 (JCS) canonical JSON, whichever path made them.

`encode` takes orjson for plain data and, with `plain=True`, without looking at each
value first (the gateway's statement rows); everything else goes to the reference
implementation. These hold the fast paths to the reference byte for byte.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from accord.gateway.recording import COLUMNS
from accord.ledger import events
from accord.ledger.service import encode

SAFE = 2**53 - 1
scalars = st.one_of(st.none(), st.booleans(), st.integers(-SAFE, SAFE), st.text())
ascii_keys = st.text(st.characters(max_codepoint=127), max_size=8)
plain_values = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                     st.dictionaries(ascii_keys, inner, max_size=5)),
    max_leaves=30)
# Any text, control characters, quotes, backslashes and astral planes included.
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=60)


def envelope(data: Any) -> dict[str, Any]:
    return {"v": 1, "type": "test.event", "time": "2026-11-28T00:00:00.000000Z",
            "actor": {"id": "user:alice", "via": "gateway"}, "subject": "grant:1",
            "resource": {"name": "db", "role": "read"}, "data": data}


@settings(max_examples=300)
@given(plain_values)
def test_plain_data_encodes_as_the_reference(data: Any) -> None:
    env = envelope(data)
    assert encode(env) == rfc8785.dumps(env)
    assert encode(env, plain=True) == rfc8785.dumps(env)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 2**32), texts, st.none() | st.lists(
    st.none() | texts, max_size=3), st.none() | texts, st.none() | st.integers(0, SAFE),
    st.none() | st.tuples(texts, texts)), max_size=20))
def test_statement_rows_encode_as_the_reference(rows: list[Any]) -> None:
    statements = [[seq, seq * 7, "extended", text, len(params or []), params, tag, count, 12,
                   "ok", list(error) if error else None]
                  for seq, text, params, tag, count, error in rows]
    env = envelope({"grant_id": 7, "session": "abc-1", "columns": list(COLUMNS),
                    "statements": statements})
    assert encode(env, plain=True) == rfc8785.dumps(env)


@given(st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                 st.dictionaries(st.text(min_size=1).filter(lambda k: not k.isascii()),
                                 st.integers(0, 9), min_size=1)))
def test_data_that_is_not_plain_takes_the_reference(data: Any) -> None:
    """Floats (JCS numbers) and non-ASCII keys (sorted by UTF-16 code units)."""
    env = envelope({"value": data})
    assert encode(env) == rfc8785.dumps(env)


@pytest.mark.parametrize("value", [2**53, -(2**53), 2**63])
def test_an_int_json_cannot_carry_exactly_is_refused_even_when_vouched_for(value: int) -> None:
    for plain in (False, True):
        with pytest.raises(rfc8785.IntegerDomainError):
            encode(envelope({"n": value}), plain=plain)


def test_an_actor_named_by_an_enum_encodes_as_plain_text(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """The worker's and the API's actors carry `Via` members: their events take the fast
    path, with the bytes the reference gives for the enum's value."""
    env = events.envelope(type=events.EventType.ALERT_RAISED,
                          time=datetime(2026, 11, 28, tzinfo=UTC),
                          actor=events.Actor.system(), subject="alert:1", resource=None,
                          data={"alert_id": 1})
    expected = rfc8785.dumps(env)
    assert b'"via":"worker"' in expected

    def slow(_env: Any) -> bytes:
        raise AssertionError("took the reference implementation")

    monkeypatch.setattr(rfc8785, "dumps", slow)
    assert encode(env) == expected
