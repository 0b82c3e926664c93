"""RFC 9162 Merkle tree arithmetic: hashing, the compact range, proofs and their checks.

Storage-free. Callers that keep completed subtrees give `plan_*` functions nothing
and get back which perfect subtrees (level, index) a proof needs, fetch them in
one round trip, and hand them to `build_*`. A perfect subtree at (level, index)
covers leaves [index << level, (index + 1) << level).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

Node = tuple[int, int]  # (level, index)
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(leaf: bytes) -> bytes:
    h = hashlib.sha256(b"\x00")
    h.update(leaf)
    return h.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class CompactRange:
    """The right edge of a growing tree: at most log2(n) perfect subtree hashes.

    `append` returns the perfect subtrees it completed, so an integrator can
    store them; `root` is MTH of everything appended so far.
    """

    __slots__ = ("hashes", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != bin(size).count("1"):
            raise ValueError("a compact range holds one hash per set bit of its size")
        self.size = size
        self.hashes = list(hashes)

    @staticmethod
    def nodes_for(size: int) -> list[Node]:
        """The perfect subtrees making up a tree of `size`, left to right."""
        out = []
        start = 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                out.append((level, start >> level))
                start += 1 << level
        return out

    def append(self, lh: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf hash; returns completed subtrees (level >= 1, index, hash)."""
        completed = []
        h = lh
        index = self.size
        level = 0
        while index & 1:
            h = node_hash(self.hashes.pop(), h)
            index >>= 1
            level += 1
            completed.append((level, index, h))
        self.hashes.append(h)
        self.size += 1
        return completed

    def append_subtree(self, level: int, h: bytes) -> None:
        """Add a perfect subtree of 2**level leaves; the size must be a multiple of it."""
        if self.size & ((1 << level) - 1):
            raise ValueError(f"size {self.size} is not aligned to a subtree of level {level}")
        size, lv = self.size, level
        while size >> lv & 1:
            h = node_hash(self.hashes.pop(), h)
            lv += 1
        self.hashes.append(h)
        self.size += 1 << level

    def copy(self) -> CompactRange:
        return CompactRange(self.size, list(self.hashes))

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        h = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            h = node_hash(left, h)
        return h


# ---------------------------------------------------------------- ranges


def range_nodes(start: int, end: int) -> list[Node]:
    """Perfect subtrees that concatenate to [start, end) when start is suitably aligned."""
    return _range_nodes(start, end)


def _range_nodes(start: int, end: int) -> list[Node]:
    """Perfect subtrees that concatenate to [start, end), as RFC 9162 ranges are aligned."""
    out = []
    while start < end:
        size = end - start
        level = size.bit_length() - 1
        # the largest aligned perfect subtree starting at `start` that fits
        while start & ((1 << level) - 1):
            level -= 1
        out.append((level, start >> level))
        start += 1 << level
    return out


def _mth(start: int, end: int, nodes: Mapping[Node, bytes]) -> bytes:
    parts = [nodes[n] for n in _range_nodes(start, end)]
    h = parts[-1]
    for left in reversed(parts[:-1]):
        h = node_hash(left, h)
    return h


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    start, end, m = 0, size, index
    while end - start > 1:
        k = _split(end - start)
        if m < k:
            out.append((start + k, end))
            end = start + k
        else:
            out.append((start, start + k))
            start += k
            m -= k
    out.reverse()  # PATH lists the sibling nearest the leaf first
    return out


def _consistency_ranges(old: int, new: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    start, end, m, whole = 0, new, old, True
    while True:
        n = end - start
        if m == n:
            if not whole:
                out.append((start, end))
            break
        k = _split(n)
        if m <= k:
            out.append((start + k, end))
            end = start + k
        else:
            out.append((start, start + k))
            start += k
            m -= k
            whole = False
    out.reverse()
    return out


def plan(ranges: Iterable[tuple[int, int]]) -> set[Node]:
    needed: set[Node] = set()
    for s, e in ranges:
        needed.update(_range_nodes(s, e))
    return needed


def inclusion_plan(index: int, size: int) -> list[tuple[int, int]]:
    if not 0 <= index < size:
        raise ValueError(f"index {index} is outside a tree of size {size}")
    return _inclusion_ranges(index, size)


def consistency_plan(old: int, new: int) -> list[tuple[int, int]]:
    if not 0 <= old <= new:
        raise ValueError(f"cannot prove consistency from size {old} to size {new}")
    if old == 0 or old == new:
        return []
    return _consistency_ranges(old, new)


def build(ranges: Sequence[tuple[int, int]], nodes: Mapping[Node, bytes]) -> list[bytes]:
    return [_mth(s, e, nodes) for s, e in ranges]


def root_of(size: int, nodes: Mapping[Node, bytes]) -> bytes:
    return EMPTY_ROOT if size == 0 else _mth(0, size, nodes)


# ---------------------------------------------------------------- checks (RFC 9162 2.1.3.2/2.1.4.2)


def verify_inclusion(
    lh: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    if index >= size:
        return False
    fn, sn = index, size - 1
    r = lh
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    old: int, new: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> bool:
    if old > new:
        return False
    if old == new:
        return not proof and old_root == new_root
    if old == 0:
        return not proof
    if not proof:
        return False
    path = list(proof)
    if old & (old - 1) == 0:  # a power of two: the old root is the first node
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0
