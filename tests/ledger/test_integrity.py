"""Re-hashing the stored ledger (`accord.ledger.integrity`): each way someone with database
access could change it is found, with the first bad index, on SQLite and PostgreSQL; and
the signer refuses to sign over entries that do not hash to the stored tree."""

from __future__ import annotations

import os

import pytest

from accord.db import transaction
from accord.ledger import checkpoints, integrity
from accord.ledger.service import LedgerCorruption
from tests.conftest import Env
from tests.ledger.test_tamper import N, _append, _leaf, _set_leaf, _tamper, signed

__all__ = ["signed"]  # the fixture, shared with the tamper tests


def _damage(env: Env) -> integrity.Damage | None:
    with env.st.sessions() as session:
        return integrity.first_bad(session, env.st.ledger.signer.verifier)


def test_an_untouched_ledger_has_no_damage(signed: tuple[Env, str]) -> None:
    env, _ = signed
    _append(env, 7, start=N)  # signed and unsigned entries alike
    assert _damage(env) is None


def test_a_changed_leaf_is_found(signed: tuple[Env, str]) -> None:
    env, _ = signed
    leaf = _leaf(env, 17).replace(b"alice", b"Alice")
    _set_leaf(env, 17, leaf)
    damage = _damage(env)
    assert damage is not None and damage.index == 17 and "leaf hash" in damage.what


def test_a_leaf_rewritten_with_its_hashes_is_found_by_the_signature(
        signed: tuple[Env, str]) -> None:
    env, _ = signed
    from accord.ledger import merkle

    # The careful forger recomputes leaf hash, chain and nodes: the signed root tells.
    _set_leaf(env, 17, _leaf(env, 17).replace(b"alice", b"Alice"))
    with env.st.sessions() as s:
        from sqlalchemy import text

        rows = s.execute(text("SELECT idx, leaf FROM ledger_entries WHERE idx IS NOT NULL "
                              "ORDER BY idx")).all()
    chain = bytes(32)
    tree = merkle.CompactRange()
    statements, params = [], {}
    for idx, leaf in rows:
        lh = merkle.leaf_hash(bytes(leaf))
        import hashlib

        chain = hashlib.sha256(chain + lh).digest()
        statements.append(f"UPDATE ledger_entries SET leaf_hash = :h{idx}, chain = :c{idx} "
                          f"WHERE idx = {idx}")
        params[f"h{idx}"], params[f"c{idx}"] = lh, chain
        for level, i, h in tree.append(lh):
            statements.append(f"UPDATE ledger_nodes SET hash = :n{level}_{i} "
                              f"WHERE level = {level} AND idx = {i}")
            params[f"n{level}_{i}"] = h
    statements.append("UPDATE ledger_head SET root = :root, chain = :chain")
    params["root"], params["chain"] = tree.root(), chain
    _tamper(env, *statements, **params)
    damage = _damage(env)
    assert damage is not None and damage.index == 0 and "signed" in damage.what


def test_a_changed_node_is_found(signed: tuple[Env, str]) -> None:
    env, _ = signed
    _tamper(env, "UPDATE ledger_nodes SET hash = :h WHERE level = 2 AND idx = 5",
            h=os.urandom(32))
    damage = _damage(env)
    assert damage is not None and damage.index == 20 and "subtree" in damage.what


def test_a_deleted_row_is_found(signed: tuple[Env, str]) -> None:
    env, _ = signed
    _tamper(env, "DELETE FROM ledger_entries WHERE idx = 23")
    damage = _damage(env)
    assert damage is not None and damage.index == 23 and "missing" in damage.what


def test_a_truncated_tail_is_found(signed: tuple[Env, str]) -> None:
    env, _ = signed
    _tamper(env, "DELETE FROM ledger_entries WHERE idx >= :n", n=N - 6)
    damage = _damage(env)
    assert damage is not None and damage.index == N - 6


def test_a_truncated_tail_with_its_head_rewound_is_found(signed: tuple[Env, str]) -> None:
    env, _ = signed
    import hashlib

    from sqlalchemy import text

    from accord.ledger import merkle

    keep = N - 6
    with env.st.sessions() as s:
        leaves = [bytes(r[0]) for r in s.execute(text(
            "SELECT leaf FROM ledger_entries WHERE idx < :n ORDER BY idx"), {"n": keep})]
    tree, chain = merkle.CompactRange(), bytes(32)
    for leaf in leaves:
        lh = merkle.leaf_hash(leaf)
        tree.append(lh)
        chain = hashlib.sha256(chain + lh).digest()
    # Remove the tail, the checkpoint over it, and rewind the head to match: only the
    # checkpoint kept beside the signing key (outside the database) still tells.
    with transaction(env.st.sessions) as session:
        if session.get_bind().dialect.name == "sqlite":
            session.execute(text("DROP TRIGGER IF EXISTS ledger_checkpoints_no_delete"))
            session.execute(text("DROP TRIGGER IF EXISTS ledger_head_no_update"))
    _tamper(env, "DELETE FROM ledger_entries WHERE idx >= :n", "DELETE FROM ledger_checkpoints",
            "UPDATE ledger_head SET size = :n, root = :root, chain = :chain, frontier = :f",
            n=keep, root=tree.root(), chain=chain, f=b"".join(tree.hashes))
    assert _damage(env) is None  # the database alone now looks whole
    with env.st.sessions() as session:
        _, damage = integrity.verify(session, env.st.ledger.signer.verifier,
                                     remembered=env.st.ledger.remembered())
    assert damage is not None and damage.index == keep and "beside the signing key" in \
        damage.what


def test_incremental_walks_find_what_a_full_pass_finds(signed: tuple[Env, str]) -> None:
    env, _ = signed
    verifier = env.st.ledger.signer.verifier
    with env.st.sessions() as session:
        scan, damage = integrity.verify(session, verifier, limit=10)
        assert damage is None and scan.position == 10
        scan, damage = integrity.verify(session, verifier, scan=scan)
        assert damage is None and scan.position == N and scan.checked_checkpoints == 1
    _append(env, 5, start=N)
    _set_leaf(env, N + 2, _leaf(env, N + 2).replace(b"alice", b"mallory"))
    with env.st.sessions() as session:
        scan, damage = integrity.verify(session, verifier, scan=scan)
    assert damage is not None and damage.index == N + 2


def test_the_signer_refuses_to_sign_over_a_changed_leaf(signed: tuple[Env, str]) -> None:
    env, _ = signed
    _append(env, 4, start=N)
    _set_leaf(env, N + 1, _leaf(env, N + 1).replace(b"alice", b"mallory"))
    with pytest.raises(LedgerCorruption, match=f"ledger index {N + 1}"), \
            transaction(env.st.sessions) as session:
        checkpoints.sign(session, env.st.ledger, now=env.clock(), force=True)
    with env.st.sessions() as session:
        assert checkpoints.latest(session).size == N  # type: ignore[union-attr]
