"""An independent RFC 9162 section 2.1 implementation, written from the RFC text.

Deliberately shares nothing with `accord.ledger.merkle`: the tests use it to check what
the service computes, so it follows the RFC's recursive definitions literally (with a
memo so that whole-tree sweeps stay cheap) instead of the service's stored subtrees.

- MTH (2.1.1):  MTH({}) = SHA-256(), MTH({d0}) = SHA-256(0x00 || d0),
  MTH(D[n]) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n])), k the largest power of 2 < n.
- PATH(m, D[n]) (2.1.3.1), the inclusion proof, and its verification (2.1.3.2).
- PROOF(m, D[n]) = SUBPROOF(m, D[n], true) (2.1.4.1), the consistency proof, and its
  verification (2.1.4.2).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def split(n: int) -> int:
    """k: the largest power of two smaller than n (n > 1)."""
    assert n > 1
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class Tree:
    """D[n] for every n up to len(entries): the input list of the RFC's definitions."""

    def __init__(self, entries: Sequence[bytes]) -> None:
        self.entries = list(entries)
        self.hashes = [leaf_hash(e) for e in self.entries]
        self._overrides: dict[tuple[int, int], bytes] = {}
        self._memo: dict[tuple[int, int], bytes] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def override(self, lo: int, hi: int, value: bytes) -> None:
        """Pretend MTH(D[lo:hi]) is `value` (to model a rewritten stored subtree)."""
        self._overrides[(lo, hi)] = value
        self._memo = dict(self._overrides)  # forget every hash computed from the old value

    def mth(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi])."""
        assert 0 <= lo <= hi <= len(self.hashes)
        n = hi - lo
        if n == 0:
            return EMPTY_ROOT
        if n == 1:
            return self._memo.get((lo, hi), self.hashes[lo])
        if (lo, hi) not in self._memo:
            k = split(n)
            self._memo[(lo, hi)] = node_hash(self.mth(lo, lo + k), self.mth(lo + k, hi))
        return self._memo[(lo, hi)]

    def root(self, n: int) -> bytes:
        return self.mth(0, n)

    # ------------------------------------------------------------ 2.1.3.1

    def path(self, m: int, n: int) -> list[bytes]:
        """PATH(m, D[n]): the inclusion proof of leaf m in the tree of the first n leaves."""
        assert 0 <= m < n <= len(self.hashes)
        return self._path(m, 0, n)

    def _path(self, m: int, lo: int, hi: int) -> list[bytes]:
        # m is relative to D[lo:hi]
        n = hi - lo
        if n == 1:
            return []
        k = split(n)
        if m < k:
            return [*self._path(m, lo, lo + k), self.mth(lo + k, hi)]
        return [*self._path(m - k, lo + k, hi), self.mth(lo, lo + k)]

    # ------------------------------------------------------------ 2.1.4.1

    def proof(self, m: int, n: int) -> list[bytes]:
        """PROOF(m, D[n]); empty for m == n, and for m == 0 (every tree extends the empty one)."""
        assert 0 <= m <= n <= len(self.hashes)
        if m in (0, n):
            return []
        return self._subproof(m, 0, n, True)

    def _subproof(self, m: int, lo: int, hi: int, b: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if b else [self.mth(lo, hi)]
        k = split(n)
        if m <= k:
            return [*self._subproof(m, lo, lo + k, b), self.mth(lo + k, hi)]
        return [*self._subproof(m - k, lo + k, hi, False), self.mth(lo, lo + k)]


def mth(entries: Sequence[bytes]) -> bytes:
    return Tree(entries).root(len(entries))


# ---------------------------------------------------------------- 2.1.3.2


def verify_inclusion(
    leaf_index: int, tree_size: int, inclusion_path: Sequence[bytes], hash_: bytes,
    root_hash: bytes,
) -> bool:
    """RFC 9162 2.1.3.2, step by step. `hash_` is the leaf hash (0x00-prefixed)."""
    if not 0 <= leaf_index < tree_size:  # 1.
        return False
    fn, sn = leaf_index, tree_size - 1  # 2.
    r = hash_  # 3.
    for p in inclusion_path:  # 4.
        if sn == 0:  # a.
            return False
        if fn & 1 or fn == sn:  # b.
            r = node_hash(p, r)  # i.
            if not fn & 1:  # ii.
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1  # c.
        sn >>= 1
    return sn == 0 and r == root_hash  # 5.


# ---------------------------------------------------------------- 2.1.4.2


def verify_consistency(
    first: int, second: int, consistency_path: Sequence[bytes], first_hash: bytes,
    second_hash: bytes,
) -> bool:
    """RFC 9162 2.1.4.2 for 0 < first < second; the trivial cases are defined explicitly."""
    if not 0 <= first <= second:
        return False
    if first == second:
        return not consistency_path and first_hash == second_hash
    if first == 0:
        return not consistency_path and first_hash == EMPTY_ROOT
    path = list(consistency_path)
    if not path:  # 1.
        return False
    if first & (first - 1) == 0:  # 2. first is an exact power of 2
        path.insert(0, first_hash)
    fn, sn = first - 1, second - 1  # 3.
    while fn & 1:  # 4.
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # 5.
    for c in path[1:]:  # 6.
        if sn == 0:  # a.
            return False
        if fn & 1 or fn == sn:  # b.
            fr = node_hash(c, fr)  # i.
            sr = node_hash(c, sr)
            if not fn & 1:  # ii.
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1  # c.
        sn >>= 1
    return fr == first_hash and sr == second_hash and sn == 0  # 7.
