"""The audit API against an independent RFC 9162 implementation (tests/ledger/rfc9162.py).

Leaves come from GET /audit/events; everything the service says about them (checkpoint
roots and signatures, inclusion and consistency proofs) is recomputed here from the RFC
and from the C2SP signed-note format, never with accord.ledger.merkle or note.py parsing.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Engine, event, insert, select, text
from sqlalchemy.exc import IntegrityError

from accord import migrations
from accord.db import make_engine, make_sessionmaker, transaction
from accord.ledger import checkpoints
from accord.ledger.events import Actor, EventType
from accord.ledger.models import LedgerCheckpoint
from accord.ledger.note import Signer, checkpoint_body
from accord.ledger.service import LedgerCorruption, record
from accord.ledger.upkeep import integrate_all
from tests.conftest import Env, make_env
from tests.ledger import rfc9162

AUDIT = "/api/v1/audit"
PROBLEM = "application/problem+json"
EM_DASH = "\u2014"
POWERS = [1, 2, 4, 8, 16, 32, 64]


# ---------------------------------------------------------------- the reference itself


def _flip(h: bytes) -> bytes:
    return bytes([h[0] ^ 1]) + h[1:]


def test_reference_generator_and_verifier_agree_for_all_sizes_up_to_64() -> None:
    tree = rfc9162.Tree([f"entry {i}".encode() for i in range(64)])
    for n in range(1, 65):
        root = tree.root(n)
        assert root == rfc9162.mth(tree.entries[:n])
        for m in range(n):
            path = tree.path(m, n)
            assert rfc9162.verify_inclusion(m, n, path, tree.hashes[m], root), (m, n)
            # nothing else verifies: another leaf, index, size, root or a damaged path
            if n > 1:
                other = (m + 1) % n
                assert not rfc9162.verify_inclusion(m, n, path, tree.hashes[other], root)
                assert not rfc9162.verify_inclusion(other, n, path, tree.hashes[m], root)
            assert not rfc9162.verify_inclusion(m, n, path, tree.hashes[m], _flip(root))
            if n < 64:
                bigger = tree.root(n + 1)
                assert not rfc9162.verify_inclusion(m, n + 1, path, tree.hashes[m], bigger)
            assert not rfc9162.verify_inclusion(n, n, path, tree.hashes[m], root)
            assert not rfc9162.verify_inclusion(m, n, [*path, root], tree.hashes[m], root)
            for i in range(len(path)):
                bad = [*path[:i], _flip(path[i]), *path[i + 1:]]
                assert not rfc9162.verify_inclusion(m, n, bad, tree.hashes[m], root)
                assert not rfc9162.verify_inclusion(m, n, path[:i], tree.hashes[m], root)
        for m in range(n + 1):
            proof = tree.proof(m, n)
            old = tree.root(m)
            assert rfc9162.verify_consistency(m, n, proof, old, root), (m, n)
            if m > 0:  # (every tree extends the empty one)
                assert not rfc9162.verify_consistency(m, n, proof, old, _flip(root))
                assert not rfc9162.verify_consistency(m, n, proof, _flip(old), root)
            if 0 < m < n:
                assert proof
                assert not rfc9162.verify_consistency(m, n, [*proof, root], old, root)
                for i in range(len(proof)):
                    bad = [*proof[:i], _flip(proof[i]), *proof[i + 1:]]
                    assert not rfc9162.verify_consistency(m, n, bad, old, root), (m, n, i)
                    assert not rfc9162.verify_consistency(m, n, proof[:i], old, root)
                if n < 64:
                    assert not rfc9162.verify_consistency(m, n + 1, proof, old, tree.root(n + 1))
            else:
                assert proof == []
    assert rfc9162.verify_consistency(0, 0, [], rfc9162.EMPTY_ROOT, rfc9162.EMPTY_ROOT)
    assert not rfc9162.verify_consistency(3, 2, [], tree.root(3), tree.root(2))


def test_reference_matches_published_rfc6962_test_vectors() -> None:
    # The certificate-transparency reference test data (same tree hashing as RFC 9162).
    entries = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43",
               bytes(range(0x50, 0x58)), bytes(range(0x60, 0x70))]
    roots = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
    tree = rfc9162.Tree(entries)
    assert [tree.root(n).hex() for n in range(9)] == roots
    assert [h.hex() for h in tree.path(0, 8)] == [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ]
    assert tree.proof(1, 8) == tree.path(0, 8)
    assert [h.hex() for h in tree.proof(6, 8)] == [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]


# ---------------------------------------------------------------- helpers


def grow(env: Env, n: int, *, type: EventType = EventType.GRANT_EXPIRED,
         subject: str = "grant") -> None:
    """Append `n` events in one transaction (cheap), with data that exercises JCS."""
    with transaction(env.st.sessions) as session:
        for i in range(n):
            record(session, type=type, actor=Actor.system(), subject=f"{subject}:{i}",
                   resource={"name": "lab", "kind": "generic"},
                   data={"i": i, "z": [True, None, -0.0, 1e21, 1.5e-7, 2**53 - 1],
                         "text": "caf\u00e9 \u2713 \U0001f600 \u2028 \"q\" \\ </script>",
                         "\u00e9": {"b": 1, "a": 2, "A": 3, "": 4, "\U0001f600": 5}})


def ok(env: Env, path: str, user: str = "dave", **params: Any) -> Any:
    r = env.get(user, f"{AUDIT}{path}", params=params)
    assert r.status_code == 200, r.text
    return r


def all_items(env: Env) -> list[dict[str, Any]]:
    body = ok(env, "/events", limit=1000).json()
    assert body["next_cursor"] is None
    assert len(body["items"]) == body["size"]
    return list(body["items"])


def tree_of(env: Env) -> rfc9162.Tree:
    items = all_items(env)
    assert [item["index"] for item in items] == list(range(len(items)))
    return rfc9162.Tree([base64.b64decode(item["leaf"], validate=True) for item in items])


def b64list(values: list[str]) -> list[bytes]:
    return [base64.b64decode(v, validate=True) for v in values]


def assert_problem(r: Any, status: int, *words: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    for word in words:
        assert word in body["detail"], body["detail"]
    return body


def parse_key(text_: str) -> tuple[str, bytes, bytes]:
    """`<name>+<hex key id>+<base64(0x01 || public key)>` -> (name, key id, public key)."""
    name, hexid, blob = text_.strip().split("+", 2)
    raw = base64.b64decode(blob, validate=True)
    assert len(raw) == 33
    assert raw[0] == 0x01  # Ed25519
    public = raw[1:]
    key_id = hashlib.sha256(name.encode() + b"\n" + b"\x01" + public).digest()[:4]
    assert hexid == key_id.hex()
    return name, key_id, public


def open_note(note: str, key: str) -> tuple[str, int, bytes]:
    """Check a C2SP checkpoint's signature by `key`; return (origin, size, root)."""
    name, key_id, public = parse_key(key)
    body, sep, sigs = note.partition("\n\n")
    assert sep, "no blank line between body and signatures"
    body += "\n"  # the signed message ends with the newline before the blank line
    lines = body.split("\n")[:-1]
    assert len(lines) == 3, lines
    origin, size_line, root_line = lines
    assert size_line.isdigit()
    assert size_line == str(int(size_line))  # no leading zeros
    root = base64.b64decode(root_line, validate=True)
    assert len(root) == 32
    assert sigs.endswith("\n")
    verified = 0
    for line in sigs[:-1].split("\n"):
        assert line.startswith(EM_DASH + " "), line
        signer, blob = line[2:].split(" ")
        raw = base64.b64decode(blob, validate=True)
        if signer != name or raw[:4] != key_id:
            continue
        assert len(raw) == 4 + 64
        Ed25519PublicKey.from_public_bytes(public).verify(raw[4:], body.encode())
        verified += 1
    assert verified == 1, "no signature by the published key"
    return origin, int(size_line), root


def checkpoint(env: Env, *, fresh: bool = True) -> tuple[str, int, bytes, str]:
    params = {"fresh": "true"} if fresh else {}
    r = ok(env, "/checkpoint", **params)
    assert r.headers["content-type"].startswith("text/plain")
    origin, size, root = open_note(r.text, ok(env, "/key").text)
    return origin, size, root, r.text


def api_inclusion(env: Env, index: int, size: int) -> list[bytes]:
    body = ok(env, "/proof/inclusion", index=index, size=size).json()
    assert (body["index"], body["size"]) == (index, size)
    return b64list(body["hashes"])


def api_consistency(env: Env, old: int, new: int) -> list[bytes]:
    body = ok(env, "/proof/consistency", **{"from": old, "to": new}).json()
    assert (body["from"], body["to"]) == (old, new)
    return b64list(body["hashes"])


# ---------------------------------------------------------------- events


def test_leaves_are_the_jcs_bytes_of_their_events(env: Env) -> None:
    env.ask("alice")
    grow(env, 12)
    items = all_items(env)
    assert len(items) >= 20
    assert [item["index"] for item in items] == list(range(len(items)))
    for item in items:
        leaf = base64.b64decode(item["leaf"], validate=True)
        assert json.loads(leaf) == item["event"]
        assert leaf == rfc8785.dumps(item["event"])
        assert {"v", "type", "time", "actor", "subject", "resource", "data"} <= item[
            "event"].keys()
    grown = [i["event"] for i in items if i["event"]["type"] == "grant.expired"]
    assert len(grown) == 12
    assert grown[3]["data"]["text"] == "caf\u00e9 \u2713 \U0001f600 \u2028 \"q\" \\ </script>"
    assert grown[3]["data"]["i"] == 3


def test_events_paginate_by_index(env: Env) -> None:
    grow(env, 30)
    everything = all_items(env)
    pages: list[list[dict[str, Any]]] = []
    params: dict[str, Any] = {"limit": 7}
    while True:
        body = ok(env, "/events", **params).json()
        assert body["size"] == len(everything)
        pages.append(body["items"])
        assert len(pages) < 100
        if body["next_cursor"] is None:
            break
        assert body["next_cursor"] == str(body["items"][-1]["index"] + 1)
        params["cursor"] = body["next_cursor"]
    assert all(len(p) == 7 for p in pages[:-1])
    assert 1 <= len(pages[-1]) <= 7
    assert [i for page in pages for i in page] == everything
    # a page that ends exactly at the last entry has no next cursor
    body = ok(env, "/events", limit=len(everything)).json()
    assert body["next_cursor"] is None
    tail = ok(env, "/events", cursor=str(len(everything) - 2), limit=5).json()
    assert tail["items"] == everything[-2:]
    assert tail["next_cursor"] is None
    beyond = ok(env, "/events", cursor=str(len(everything) + 10)).json()
    assert beyond["items"] == []
    assert beyond["next_cursor"] is None


def test_events_filter_by_type_subject_and_actor(env: Env) -> None:
    env.ask("alice")
    grow(env, 5)
    grow(env, 3, type=EventType.GRANT_REVOKED, subject="revoked")
    everything = all_items(env)

    def same(expected: list[dict[str, Any]], **params: Any) -> None:
        body = ok(env, "/events", limit=1000, **params).json()
        assert body["items"] == expected, params
        assert expected

    same([i for i in everything if i["event"]["type"] == "grant.revoked"], type="grant.revoked")
    assert len([i for i in everything if i["event"]["type"] == "grant.revoked"]) == 3
    same([i for i in everything if i["event"]["subject"] == "revoked:1"], subject="revoked:1")
    same([i for i in everything if i["event"]["actor"]["id"] == "alice"], actor="alice")
    same([i for i in everything if i["event"]["actor"]["id"] == "accord"
          and i["event"]["type"] == "grant.expired"], actor="accord", type="grant.expired")
    # filters and pagination together
    first = ok(env, "/events", type="grant.expired", limit=2).json()
    assert [i["event"]["subject"] for i in first["items"]] == ["grant:0", "grant:1"]
    second = ok(env, "/events", type="grant.expired", limit=2, cursor=first["next_cursor"]).json()
    assert [i["event"]["subject"] for i in second["items"]] == ["grant:2", "grant:3"]
    assert ok(env, "/events", type="no.such.type").json()["items"] == []


BAD_CURSORS = ["abc", "-1", "1.5", "0x10", "\u00b2", "\u0663", " 1", "9" * 30]
BAD_LIMITS = ["0", "1001", "-5", "x", "1.5"]


def test_bad_event_cursor_or_limit_is_a_problem_never_500(env: Env) -> None:
    # one app for all cases: a fresh app per case costs more than the cases
    grow(env, 3)
    for cursor in BAD_CURSORS:
        r = env.get("dave", f"{AUDIT}/events", params={"cursor": cursor})
        assert r.status_code != 500, (cursor, r.text)
        if r.status_code == 200:  # a cursor past the end may be an empty page
            assert r.json()["items"] == [], cursor
        else:
            assert_problem(r, r.status_code, "cursor")
            assert r.status_code in (400, 422), cursor
    for limit in BAD_LIMITS:
        r = env.get("dave", f"{AUDIT}/events", params={"limit": limit})
        assert_problem(r, 422, "limit")


# ---------------------------------------------------------------- checkpoints
#
# In the `env` fixture every session shares one connection inside a rolled-back
# transaction, so a checkpoint the API signs in its own unit of work is folded into the
# request's (read) session and rolled back with it when the request ends. Checkpoints
# that later steps rely on are therefore signed here with `sign_now`, as the worker does;
# `test_checkpoints_persist_across_requests_on_real_databases` covers the API's own
# commits on databases that are committed to for real.


def sign_now(env: Env) -> LedgerCheckpoint:
    """Sign the current tree as the ledger worker does (commit, then after_commit)."""
    with transaction(env.st.sessions) as session:
        cp = checkpoints.sign(session, env.st.ledger, now=env.clock(), force=True)
    assert cp is not None
    checkpoints.after_commit(env.st.ledger, cp)
    return cp


def test_checkpoint_signs_the_root_of_the_listed_leaves(env: Env) -> None:
    grow(env, 70)
    tree = tree_of(env)
    origin, size, root, note = checkpoint(env)
    assert origin == env.st.ledger.origin
    assert size == len(tree) >= 70
    assert root == tree.root(size)
    key = ok(env, "/key").text
    assert key.endswith("\n")
    assert key.split("+")[0] == note.rsplit(EM_DASH + " ", 1)[1].split(" ")[0]
    # the check above is not vacuous: a changed body or signature fails it
    forged = note.replace(f"\n{size}\n", f"\n{size + 1}\n", 1)
    with pytest.raises(InvalidSignature):
        open_note(forged, key)
    body, _, sig = note.partition("\n\n")
    raw = bytearray(base64.b64decode(sig.split(" ")[-1]))
    raw[10] ^= 1
    bad_sig = f"{body}\n\n{EM_DASH} {sig.split(' ')[1]} {base64.b64encode(raw).decode()}\n"
    with pytest.raises(InvalidSignature):
        open_note(bad_sig, key)


def test_signing_twice_without_growth_returns_the_same_note(env: Env) -> None:
    grow(env, 4)
    first = sign_now(env)
    env.clock.advance(seconds=60)
    again = sign_now(env)
    assert (again.size, again.root, again.note) == (first.size, first.root, first.note)
    assert again.signed_at == first.signed_at  # the old checkpoint, not a re-signing
    assert checkpoint(env)[3] == first.note
    assert checkpoint(env, fresh=False)[3] == first.note
    assert _checkpoint_rows(env) == [(first.size, first.root)]


def test_a_grown_tree_gets_a_larger_checkpoint_consistent_with_the_old_one(env: Env) -> None:
    grow(env, 9)
    old = sign_now(env)
    grow(env, 23)
    # within the signing interval a plain read still serves the old checkpoint ...
    assert checkpoint(env, fresh=False)[3] == old.note
    # ... fresh=true signs the grown tree now
    _, new_size, new_root, new_note = checkpoint(env)
    assert new_size == old.size + 23
    assert new_note != old.note
    tree = tree_of(env)
    assert (tree.root(old.size), tree.root(new_size)) == (old.root, new_root)
    proof = api_consistency(env, old.size, new_size)
    assert proof == tree.proof(old.size, new_size)
    assert rfc9162.verify_consistency(old.size, new_size, proof, old.root, new_root)
    # and once the interval has passed, a plain read signs the growth itself
    env.clock.advance(seconds=3600)
    _, later_size, later_root, _ = checkpoint(env, fresh=False)
    assert later_size == new_size
    assert later_root == new_root


def _forged_note(env: Env, size: int, root: bytes) -> str:
    """A note for `root` by a key with the ledger key's name that is not the ledger key."""
    impostor = Signer.generate(env.st.ledger.signer.name)
    return impostor.sign(checkpoint_body(env.st.ledger.origin, size, root))


def _checkpoint_rows(env: Env) -> list[tuple[int, bytes]]:
    with env.st.sessions() as session:
        rows = session.execute(select(LedgerCheckpoint.size, LedgerCheckpoint.root)
                               .order_by(LedgerCheckpoint.size)).all()
    return [(int(s), bytes(r)) for s, r in rows]


def test_sign_refuses_when_another_root_is_stored_for_the_current_size(env: Env) -> None:
    """Two different roots for one size are never signed, nor handed out as a checkpoint."""
    grow(env, 10)
    tree = tree_of(env)
    size = len(tree)
    fake = hashlib.sha256(b"another history").digest()
    assert fake != tree.root(size)
    with env.st.sessions() as session:
        session.begin_nested()
        session.add(LedgerCheckpoint(size=size, root=fake, note=_forged_note(env, size, fake),
                                     signed_at=env.clock()))
        session.flush()
        with pytest.raises(LedgerCorruption):
            checkpoints.sign(session, env.st.ledger, now=env.clock(), force=True)
        session.rollback()
    assert _checkpoint_rows(env) == []
    assert not env.st.ledger.memory_path.exists()


def test_api_refuses_a_checkpoint_whose_root_is_not_the_trees(env: Env) -> None:
    grow(env, 10)
    tree = tree_of(env)
    size = len(tree)
    fake = hashlib.sha256(b"another history").digest()
    forged = _forged_note(env, size, fake)
    with transaction(env.st.sessions) as session:
        session.add(LedgerCheckpoint(size=size, root=fake, note=forged, signed_at=env.clock()))
    r = env.get("dave", f"{AUDIT}/checkpoint", params={"fresh": "true"})
    assert r.text != forged, "the API served a checkpoint whose root is not the tree's"
    assert_problem(r, 409, "refusing to sign")
    assert not env.st.ledger.memory_path.exists()


def test_sign_refuses_a_tree_that_does_not_extend_the_latest_checkpoint(env: Env) -> None:
    grow(env, 10)
    size = len(tree_of(env))
    fake = hashlib.sha256(b"another history").digest()
    with transaction(env.st.sessions) as session:  # "signed" at size - 3 with another root
        session.add(LedgerCheckpoint(size=size - 3, root=fake,
                                     note=_forged_note(env, size - 3, fake),
                                     signed_at=env.clock()))
    with env.st.sessions() as session:
        session.begin_nested()
        with pytest.raises(LedgerCorruption, match="does not extend"):
            checkpoints.sign(session, env.st.ledger, now=env.clock(), force=True)
        session.rollback()
    assert_problem(env.get("dave", f"{AUDIT}/checkpoint", params={"fresh": "true"}), 409,
                   "refusing to sign")
    assert _checkpoint_rows(env) == [(size - 3, fake)]
    assert not env.st.ledger.memory_path.exists()


def _disable_guard(session: Any, table: str) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER {table}_append_only"))
    else:
        session.execute(text(f"DROP TRIGGER {table}_no_update"))


@pytest.mark.parametrize("keep_memory", [True, False])
def test_sign_refuses_when_a_signed_prefix_was_rewritten(env: Env, keep_memory: bool) -> None:
    """Someone with DDL rights rewrites the first 64 leaves' subtree and fixes up the head.

    Caught by the latest checkpoint in the database, and (with the database's copy
    deleted as well) by the checkpoint remembered beside the key.
    """
    grow(env, 70)
    signed = sign_now(env)
    assert 64 < signed.size < 123
    grow(env, 5)
    tree = tree_of(env)
    new_size = len(tree)
    assert new_size < 128
    forged = hashlib.sha256(b"rewritten history").digest()
    tree.override(0, 64, forged)
    forged_root = tree.root(new_size)
    with transaction(env.st.sessions) as session:
        _disable_guard(session, "ledger_nodes")
        changed = session.execute(text(
            "UPDATE ledger_nodes SET hash = :h WHERE level = 6 AND idx = 0"), {"h": forged})
        assert changed.rowcount == 1
        session.execute(text("UPDATE ledger_head SET root = :r WHERE id = 1"),
                        {"r": forged_root})
        if not keep_memory:
            _disable_guard(session, "ledger_checkpoints")
            if session.get_bind().dialect.name == "sqlite":
                session.execute(text("DROP TRIGGER ledger_checkpoints_no_delete"))
            session.execute(text("DELETE FROM ledger_checkpoints"))
    # the tree now agrees with itself, but not with what was signed
    with env.st.sessions() as session:
        session.begin_nested()
        with pytest.raises(LedgerCorruption, match="does not extend"):
            checkpoints.sign(session, env.st.ledger, now=env.clock(), force=True)
        session.rollback()
    assert_problem(env.get("dave", f"{AUDIT}/checkpoint", params={"fresh": "true"}), 409,
                   "refusing to sign")
    expected = [(signed.size, signed.root)] if keep_memory else []
    assert _checkpoint_rows(env) == expected
    assert env.st.ledger.memory_path.read_text(encoding="utf-8") == signed.note


def _rewrite_history(session: Any, tree: rfc9162.Tree, size: int) -> None:
    """Replace the stored hash of the leftmost big subtree and make the head agree."""
    level = size.bit_length() - 1
    forged = hashlib.sha256(b"rewritten history").digest()
    tree.override(0, 1 << level, forged)
    _disable_guard(session, "ledger_nodes")
    changed = session.execute(text(
        "UPDATE ledger_nodes SET hash = :h WHERE level = :l AND idx = 0"),
        {"h": forged, "l": level})
    assert changed.rowcount == 1
    session.execute(text("UPDATE ledger_head SET root = :r WHERE id = 1"),
                    {"r": tree.root(size)})


def test_a_checkpoint_signed_by_a_plain_read_is_remembered_beside_the_key(env: Env) -> None:
    grow(env, 10)
    note = checkpoint(env, fresh=False)[3]  # the first checkpoint: this read signs it
    assert env.st.ledger.memory_path.exists(), (
        "GET /audit/checkpoint (without fresh=true) signed a checkpoint but did not "
        "remember it beside the key")
    assert env.st.ledger.memory_path.read_text(encoding="utf-8") == note


@pytest.mark.parametrize("fresh", [True, False])
def test_no_second_root_is_signed_for_a_size_the_api_signed(env: Env, fresh: bool) -> None:
    """The memory beside the key is what stops a database rewrite from being re-signed."""
    grow(env, 10)
    tree = tree_of(env)
    _, size, root, _ = checkpoint(env, fresh=fresh)  # signed (and handed out) by a read
    assert (size, root) == (len(tree), tree.root(len(tree)))
    with transaction(env.st.sessions) as session:  # the database copy goes, history changes
        _disable_guard(session, "ledger_checkpoints")
        if session.get_bind().dialect.name == "sqlite":
            session.execute(text("DROP TRIGGER ledger_checkpoints_no_delete"))
        session.execute(text("DELETE FROM ledger_checkpoints"))
        _rewrite_history(session, tree, size)
    assert tree.root(size) != root
    with env.st.sessions() as session:
        session.begin_nested()
        try:
            cp = checkpoints.sign(session, env.st.ledger, now=env.clock(), force=True)
        except LedgerCorruption:
            cp = None
        session.rollback()
    assert cp is None, (
        f"signed a second root for size {size}: {root.hex()} (handed out earlier) "
        f"and now {cp.root.hex()}")


def test_database_refuses_a_second_checkpoint_row_for_a_size(env: Env) -> None:
    grow(env, 3)
    cp = sign_now(env)
    with env.st.sessions() as session:
        with pytest.raises(IntegrityError), session.begin_nested():
            session.execute(insert(LedgerCheckpoint).values(
                size=cp.size, root=hashlib.sha256(b"other").digest(), note="x",
                signed_at=env.clock() + timedelta(seconds=1)))
        rows = session.execute(select(LedgerCheckpoint.size, LedgerCheckpoint.root)).all()
    assert [(int(s), bytes(r)) for s, r in rows] == [(cp.size, cp.root)]


@pytest.fixture(params=["sqlite", "postgresql"])
def real_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    """The app on a database it commits to for real, with production sessions.

    SQLite's lock wait is cut from 30 s to 1 s so that a lock the app holds against
    itself fails fast instead of stalling the run.
    """
    if request.param == "postgresql":
        engine: Engine = request.getfixturevalue("fresh_pg")
    else:
        engine = make_engine(f"sqlite:///{tmp_path / 'real.db'}")

        @event.listens_for(engine, "connect")
        def _short_wait(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA busy_timeout=1000")

        migrations.upgrade(engine)
    e = make_env(make_sessionmaker(engine), tmp_path)
    try:
        with e.client:
            yield e
    finally:
        engine.dispose()


def test_checkpoints_persist_across_requests_on_real_databases(real_env: Env) -> None:
    env = real_env

    def grow_and_integrate(n: int) -> None:
        grow(env, n)
        integrate_all(env.st.sessions)  # PostgreSQL leaves new events pending; SQLite: no-op

    grow_and_integrate(5)
    _, size, root, first = checkpoint(env)
    assert size == len(tree_of(env))
    assert checkpoint(env)[3] == first
    assert checkpoint(env, fresh=False)[3] == first
    assert _checkpoint_rows(env) == [(size, root)]
    grow_and_integrate(7)
    assert checkpoint(env, fresh=False)[3] == first  # within the interval
    _, new_size, new_root, _ = checkpoint(env)
    assert new_size == size + 7
    tree = tree_of(env)
    proof = api_consistency(env, size, new_size)
    assert proof == tree.proof(size, new_size)
    assert rfc9162.verify_consistency(size, new_size, proof, root, new_root)
    assert _checkpoint_rows(env) == [(size, root), (new_size, new_root)]
    assert env.st.ledger.remembered().size == new_size  # type: ignore[union-attr]

# ---------------------------------------------------------------- proofs


def test_inclusion_proofs_match_the_reference_and_verify(env: Env) -> None:
    grow(env, 70)
    tree = tree_of(env)
    n = len(tree)
    assert n > 64
    every = POWERS  # every index at these sizes
    some = [3, 5, 7, 33, 63, 65, n - 1, n]  # the edges and a few inner leaves at these
    for size in every + some:
        root = tree.root(size)
        indices = range(size) if size in every else sorted(
            {0, 1, size // 2 - 1, size // 2, size - 2, size - 1})
        for index in indices:
            proof = api_inclusion(env, index, size)
            assert proof == tree.path(index, size), (index, size)
            assert rfc9162.verify_inclusion(index, size, proof, tree.hashes[index], root)
    assert api_inclusion(env, 0, 1) == []
    # the last leaf of the whole tree, against the signed checkpoint
    _, size, root, _ = checkpoint(env)
    assert size == n
    proof = api_inclusion(env, n - 1, n)
    assert rfc9162.verify_inclusion(n - 1, n, proof, rfc9162.leaf_hash(tree.entries[-1]), root)


def test_consistency_proofs_match_the_reference_and_verify(env: Env) -> None:
    grow(env, 70)
    tree = tree_of(env)
    n = len(tree)
    marks = sorted({0, 3, 7, *POWERS, 31, 33, 65, n - 1, n})
    pairs = {(a, b) for a in marks for b in marks if a <= b}
    pairs |= {(m, m + 1) for m in range(n)} | {(m, n) for m in range(0, n, 5)}
    for old, new in sorted(pairs):
        proof = api_consistency(env, old, new)
        assert proof == tree.proof(old, new), (old, new)
        assert rfc9162.verify_consistency(old, new, proof, tree.root(old), tree.root(new))
        if old in (0, new):
            assert proof == []


def test_a_proof_costs_the_same_few_statements_at_any_size(env: Env) -> None:
    """The tree's size and every hash a proof needs in one statement on PostgreSQL (three on
    SQLite: the size, then one per table): a proof at ten million leaves costs what one at a
    hundred does (the scale benchmark measures it), and no per-call statement is built (a
    proof's CPU was 2-3 ms of SQLAlchemy expression building before)."""
    from accord.ledger.service import consistency_proof, inclusion_proof

    grow(env, 300)
    tree = tree_of(env)
    n = len(tree)
    statements: list[str] = []
    bind = env.st.sessions.kw["bind"]
    engine = bind.engine if hasattr(bind, "engine") else bind
    def listen(*args: Any) -> None:  # before_cursor_execute (the test's savepoints aside)
        if args[2].lstrip().upper().startswith("SELECT"):
            statements.append(args[2])

    event.listen(engine, "before_cursor_execute", listen)
    try:
        with env.st.sessions() as session:
            for index in (0, 1, 150, n - 2, n - 1):
                statements.clear()
                assert inclusion_proof(session, index, n) == tree.path(index, n)
                assert len(statements) == (1 if engine.dialect.name == "postgresql"
                                           else 3), statements
            for old in (1, 64, 299, n - 1):
                statements.clear()
                assert consistency_proof(session, old, n) == tree.proof(old, n)
                assert len(statements) <= (1 if engine.dialect.name == "postgresql"
                                           else 3), statements
    finally:
        event.remove(engine, "before_cursor_execute", listen)


BAD_PROOF_ARGUMENTS = [
    ("/proof/inclusion", {"index": "N", "size": "N"}, 400, "index"),
    ("/proof/inclusion", {"index": "N+5", "size": "N"}, 400, "index"),
    ("/proof/inclusion", {"index": 5, "size": 3}, 400, "index"),
    ("/proof/inclusion", {"index": 0, "size": 0}, 400, "size"),
    ("/proof/inclusion", {"index": 0, "size": "N+1"}, 400, "size"),
    ("/proof/inclusion", {"index": -1, "size": "N"}, 400, "index"),
    ("/proof/inclusion", {"index": 0, "size": -1}, 400, "size"),
    ("/proof/inclusion", {"index": 0, "size": 2**64}, 400, "size"),
    ("/proof/inclusion", {"index": 2**64 - 1, "size": 2**64}, 400, "size"),  # past bigint
    ("/proof/inclusion", {"index": 2**64, "size": "N"}, 400, "index"),
    ("/proof/inclusion", {"index": "abc", "size": "N"}, 422, "index"),
    ("/proof/inclusion", {"index": 0, "size": "1.5"}, 422, "size"),
    ("/proof/inclusion", {"index": "", "size": "N"}, 422, "index"),
    ("/proof/inclusion", {"index": 0}, 422, "size"),
    ("/proof/consistency", {"from": "N", "to": "N+1"}, 400, "to"),
    ("/proof/consistency", {"from": 5, "to": 3}, 400, "from"),
    ("/proof/consistency", {"from": -1, "to": "N"}, 400, "from"),
    ("/proof/consistency", {"from": 0, "to": -1}, 400, "to"),
    ("/proof/consistency", {"from": 0, "to": 2**64}, 400, "to"),
    ("/proof/consistency", {"from": 2**64 - 3, "to": 2**64}, 400, "to"),
    ("/proof/consistency", {"from": 2**64, "to": "N"}, 400, "from"),
    ("/proof/consistency", {"from": "x", "to": "N"}, 422, "from"),
    ("/proof/consistency", {"from": 0, "to": "1e3"}, 422, "to"),
]


def test_proof_arguments_out_of_range_are_a_problem(env: Env) -> None:
    grow(env, 3)
    n = len(tree_of(env))
    subst = {"N": n, "N+1": n + 1, "N+5": n + 5}
    for path, params, status, word in BAD_PROOF_ARGUMENTS:
        query = {k: subst.get(v, v) if isinstance(v, str) else v for k, v in params.items()}
        r = env.get("dave", f"{AUDIT}{path}", params=query)
        assert r.status_code == status, (path, query, r.text)
        body = assert_problem(r, status, word)
        if status == 400:
            assert body["type"].endswith("/out-of-range")


# ---------------------------------------------------------------- who may read


ENDPOINTS = [
    ("/events", {}),
    ("/checkpoint", {}),
    ("/checkpoint", {"fresh": "true"}),
    ("/key", {}),
    ("/proof/inclusion", {"index": 0, "size": 1}),
    ("/proof/consistency", {"from": 0, "to": 1}),
    ("/bundle", {}),
]


def test_only_auditors_and_admins_read_the_ledger(env: Env) -> None:
    grow(env, 2)
    for path, params in ENDPOINTS:
        for user in ("alice", "bob", "erin"):
            assert_problem(env.get(user, f"{AUDIT}{path}", params=params), 403)
        assert_problem(env.get(None, f"{AUDIT}{path}", params=params), 401)
    # nothing was signed on a refused request
    assert _checkpoint_rows(env) == []
    for path, params in ENDPOINTS[:-1]:
        for user in ("dave", "carol"):
            assert env.get(user, f"{AUDIT}{path}", params=params).status_code == 200, path
