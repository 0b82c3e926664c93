"""The tree arithmetic against a direct transcription of RFC 9162's recursive definitions."""

from __future__ import annotations

import hashlib

from accord.ledger import merkle


def mth(hashes: list[bytes]) -> bytes:
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = 1 << ((len(hashes) - 1).bit_length() - 1)
    return merkle.node_hash(mth(hashes[:k]), mth(hashes[k:]))


def build(n: int) -> tuple[list[bytes], dict[merkle.Node, bytes]]:
    leaves = [merkle.leaf_hash(str(i).encode()) for i in range(n)]
    nodes: dict[merkle.Node, bytes] = {}
    cr = merkle.CompactRange()
    for i, lh in enumerate(leaves):
        nodes[(0, i)] = lh
        for level, idx, h in cr.append(lh):
            nodes[(level, idx)] = h
    return leaves, nodes


def test_compact_range_root_matches_mth_at_every_size() -> None:
    leaves = [merkle.leaf_hash(str(i).encode()) for i in range(130)]
    cr = merkle.CompactRange()
    assert cr.root() == mth([])
    for i, lh in enumerate(leaves):
        cr.append(lh)
        assert cr.root() == mth(leaves[: i + 1])
        again = merkle.CompactRange(cr.size, list(cr.hashes))
        assert again.root() == cr.root()


def test_proofs_from_stored_subtrees_verify_for_all_small_trees() -> None:
    leaves, nodes = build(70)
    for n in range(1, 71):
        root = mth(leaves[:n])
        assert merkle.root_of(n, nodes) == root
        for i in range(n):
            proof = merkle.build(merkle.inclusion_plan(i, n), nodes)
            assert merkle.verify_inclusion(leaves[i], i, n, proof, root)
            assert not merkle.verify_inclusion(leaves[(i + 1) % n], i, n, proof, root) or n == 1
        for old in range(n + 1):
            proof = merkle.build(merkle.consistency_plan(old, n), nodes)
            assert merkle.verify_consistency(old, n, proof, mth(leaves[:old]), root)
            if 0 < old < n:
                assert not merkle.verify_consistency(old, n, proof, mth(leaves[: old - 1]), root)


def test_proofs_need_few_subtrees() -> None:
    # O(log n) stored subtrees per proof is what keeps proofs fast at a million leaves.
    n = 1_000_003
    for i in (0, 1, n // 2, n - 1):
        assert len(merkle.plan(merkle.inclusion_plan(i, n))) <= 2 * n.bit_length()
    assert len(merkle.plan(merkle.consistency_plan(n // 3, n))) <= 3 * n.bit_length()
