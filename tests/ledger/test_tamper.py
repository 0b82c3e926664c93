"""Tampering with the stored ledger, the way someone with database access could.

Each edit must make `accord audit verify` fail and name the first bad index. The
database owner can switch the append-only triggers off, so these tests do too.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import rfc8785
from sqlalchemy import text
from sqlalchemy.orm import Session

from accord.db import transaction
from accord.ledger import bundle, checkpoints
from accord.ledger.events import Actor, EventType
from accord.ledger.note import Signer, checkpoint_body
from accord.ledger.service import LedgerCorruption, record, tree_size
from accord.ledger.verify import Report, verify
from tests.conftest import Env

N = 40  # events in the log under attack


def _append(env: Env, n: int, start: int = 0) -> None:
    with transaction(env.st.sessions) as session:
        for i in range(start, start + n):
            record(session, type=EventType.POLICY_LOADED, actor=Actor.system(),
                   subject=f"test:{i}", data={"n": i, "note": "alice asked for orders-db"},
                   time=env.clock.advance(seconds=1))


def _sign(env: Env) -> str:
    with transaction(env.st.sessions) as session:
        cp = checkpoints.sign(session, env.st.ledger, now=env.clock(), force=True)
    checkpoints.after_commit(env.st.ledger, cp)
    assert cp is not None
    return cp.note


def _export(env: Env) -> bytes:
    buf = io.BytesIO()
    with env.st.sessions() as session:
        bundle.write(session, buf, origin=env.st.ledger.origin,
                     key=env.st.ledger.signer.verifier.encode(), exported_at=env.clock())
    return buf.getvalue()


def _verify(data: bytes, env: Env, **kw: object) -> Report:
    return verify(lambda: io.BytesIO(data), key=env.st.ledger.signer.verifier, **kw)  # type: ignore[arg-type]


@pytest.fixture
def signed(env: Env) -> Iterator[tuple[Env, str]]:
    """A log of exactly N entries (setup's own events included), signed and pinned."""
    with env.st.sessions() as session:
        base = tree_size(session)
    _append(env, N - base)
    pin = _sign(env)
    yield env, pin


def _untrigger(session: Session) -> None:
    """What a database owner does first: switch the append-only guard off (this test only)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL session_replication_role = replica"))
    else:
        for name in ("ledger_entries_no_update", "ledger_entries_no_delete",
                     "ledger_nodes_no_update"):
            session.execute(text(f"DROP TRIGGER IF EXISTS {name}"))


def _tamper(env: Env, *statements: str, **params: object) -> None:
    with transaction(env.st.sessions) as session:
        _untrigger(session)
        for sql in statements:
            session.execute(text(sql), params)


def _leaf(env: Env, idx: int) -> bytes:
    with env.st.sessions() as s:
        value: bytes = s.execute(text("SELECT leaf FROM ledger_entries WHERE idx = :i"),
                                 {"i": idx}).scalar_one()
        return bytes(value)


def _set_leaf(env: Env, idx: int, leaf: bytes) -> None:
    _tamper(env, "UPDATE ledger_entries SET leaf = :leaf WHERE idx = :i", leaf=leaf, i=idx)


def _assert_caught(report: Report, index: int) -> None:
    assert not report.ok
    assert report.first_bad_index == index, report.problems


def test_untouched_log_verifies(signed: tuple[Env, str]) -> None:
    env, pin = signed
    report = _verify(_export(env), env, pin=pin)
    assert report.ok, report.problems
    assert (report.size, report.checkpoints, report.pinned) == (N, 1, N)


def test_one_changed_byte(signed: tuple[Env, str]) -> None:
    env, pin = signed
    leaf = bytearray(_leaf(env, 17))
    leaf[leaf.index(b"alice")] = ord("A")
    _set_leaf(env, 17, bytes(leaf))
    _assert_caught(_verify(_export(env), env, pin=pin), 17)


def test_changed_timestamp_stays_canonical_json(signed: tuple[Env, str]) -> None:
    env, pin = signed
    event = json.loads(_leaf(env, 9))
    event["time"] = event["time"][:-8] + "000001Z"  # still a valid time, one microsecond on
    _set_leaf(env, 9, rfc8785.dumps(event))
    _assert_caught(_verify(_export(env), env, pin=pin), 9)


def test_deleted_row(signed: tuple[Env, str]) -> None:
    env, pin = signed
    _tamper(env, "DELETE FROM ledger_entries WHERE idx = 23")
    _assert_caught(_verify(_export(env), env, pin=pin), 23)


def test_swapped_rows(signed: tuple[Env, str]) -> None:
    env, pin = signed
    _tamper(env,
            "UPDATE ledger_entries SET idx = -1 WHERE idx = 11",
            "UPDATE ledger_entries SET idx = 11 WHERE idx = 30",
            "UPDATE ledger_entries SET idx = 30 WHERE idx = -1")
    _assert_caught(_verify(_export(env), env, pin=pin), 11)


def test_forged_row_inserted(signed: tuple[Env, str]) -> None:
    env, pin = signed
    forged = rfc8785.dumps({"v": 1, "type": "request.approved",
                            "time": "2026-01-01T00:00:00.000000Z",
                            "actor": {"kind": "user", "id": "bob", "via": "api"},
                            "subject": "request:999", "resource": None, "data": {}})
    with env.st.sessions() as s:
        ids = [r[0] for r in s.execute(text(
            "SELECT idx FROM ledger_entries WHERE idx >= 5 ORDER BY idx DESC"))]
    _tamper(env, *[f"UPDATE ledger_entries SET idx = {i + 1} WHERE idx = {i}" for i in ids])
    _tamper(env, "INSERT INTO ledger_entries (idx, type, time, actor, subject, leaf, leaf_hash, "
                 "chain) VALUES (5, 'request.approved', :t, 'bob', 'request:999', :leaf, :lh, :c)",
            t=env.clock(), leaf=forged, lh=os.urandom(32), c=os.urandom(32))
    # The head still says N: the export stops at N, so the forgery pushed the last entry out.
    _assert_caught(_verify(_export(env), env, pin=pin), 5)


def test_truncated_tail(signed: tuple[Env, str]) -> None:
    env, pin = signed
    _tamper(env, "DELETE FROM ledger_entries WHERE idx >= :n", n=N - 6)
    report = _verify(_export(env), env, pin=pin)
    _assert_caught(report, N - 6)
    assert any("removed" in p for p in report.problems)


def test_rewritten_log_resigned_with_a_new_key(signed: tuple[Env, str], tmp_path: Path) -> None:
    env, pin = signed
    witness = tmp_path / "witness"
    checkpoints.publish(witness, N, pin)
    # The forger rewrites an event and signs a matching checkpoint with a key of their own.
    leaf = bytearray(_leaf(env, 30))
    leaf[leaf.index(b"alice")] = ord("m")
    _set_leaf(env, 30, bytes(leaf))
    forger = Signer.generate(env.st.ledger.origin)
    data = _export(env)
    head = bundle.read_header(io.BytesIO(data))
    cr_root = verify(lambda: io.BytesIO(data), allow_unsigned_tail=True).root
    note = forger.sign(checkpoint_body(head.origin, N, cr_root))
    header = {**head.raw, "key": forger.verifier.encode(), "checkpoints": [note]}
    body = data[len(bundle.MAGIC):].split(b"\n", 1)[1]
    forged = bundle.MAGIC + json.dumps(header).encode() + b"\n" + body

    assert verify(lambda: io.BytesIO(forged)).ok  # trusting the bundle's own key: fooled
    by_key = _verify(forged, env)
    assert not by_key.ok and "not by the pinned key" in by_key.problems[0]
    by_pin = verify(lambda: io.BytesIO(forged), pin=pin)
    assert not by_pin.ok and "pinned checkpoint" in " ".join(by_pin.problems)
    by_witness = verify(lambda: io.BytesIO(forged), witness=witness)
    assert not by_witness.ok and "witness" in " ".join(by_witness.problems)


def test_replaced_checkpoint(signed: tuple[Env, str]) -> None:
    env, _pin = signed
    _append(env, 5, start=N)
    _sign(env)
    data = _export(env)
    head = bundle.read_header(io.BytesIO(data))
    # Swap the root inside the first checkpoint for another, keeping its signature.
    original = head.checkpoints[0]
    lines = original.split("\n")
    lines[2] = lines[2][:-4] + ("AAA=" if not lines[2].endswith("AAA=") else "BBB=")
    header = {**head.raw, "checkpoints": ["\n".join(lines), *head.checkpoints[1:]]}
    body = data[len(bundle.MAGIC):].split(b"\n", 1)[1]
    replaced = bundle.MAGIC + json.dumps(header).encode() + b"\n" + body
    report = _verify(replaced, env)
    assert not report.ok
    assert "bad signature" in report.problems[0] or "signature" in report.problems[0]


def test_signer_refuses_a_tree_that_does_not_extend_what_it_signed(
    signed: tuple[Env, str],
) -> None:
    env, _pin = signed
    # Rewrite a stored subtree inside the signed range, then let the log grow.
    _tamper(env, "UPDATE ledger_nodes SET hash = :h WHERE level = 5 AND idx = 0", h=os.urandom(32))
    _append(env, 3, start=N)
    with pytest.raises(LedgerCorruption), transaction(env.st.sessions) as session:
        checkpoints.sign(session, env.st.ledger, now=env.clock(), force=True)
    with env.st.sessions() as session:
        assert checkpoints.latest(session).size == N  # type: ignore[union-attr]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_untouched_log_of_100k_entries_verifies(env: Env) -> None:
    with env.st.sessions() as session:
        base = tree_size(session)
    for start in range(base, 100_000, 5000):
        _append(env, min(5000, 100_000 - start), start)
    pin = _sign(env)
    report = _verify(_export(env), env, pin=pin)
    assert report.ok, report.problems
    assert report.size == 100_000


def test_an_export_up_to_its_checkpoint_leaves_out_what_came_after(
        signed: tuple[Env, str]) -> None:
    """GET /audit/bundle signs, then reads: events integrated in between (the server's own
    jobs write some) would be a tail no checkpoint covers, and verify would fail. The
    endpoint exports up to the checkpoint it signed."""
    env, _pin = signed
    _append(env, 3, start=1000)  # after the signature
    assert not _verify(_export(env), env).ok  # the whole head: an uncovered tail
    buf = io.BytesIO()
    with env.st.sessions() as session:
        latest = checkpoints.latest(session)
        assert latest is not None and latest.size == N
        bundle.write(session, buf, origin=env.st.ledger.origin,
                     key=env.st.ledger.signer.verifier.encode(), exported_at=env.clock(),
                     upto=latest.size)
    report = _verify(buf.getvalue(), env)
    assert report.ok, report.problems
    assert json.loads(buf.getvalue()[len(bundle.MAGIC):].split(b"\n", 1)[0])["size"] == N
