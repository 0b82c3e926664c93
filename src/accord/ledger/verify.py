"""Offline verification of a ledger bundle: recompute everything, trust only signatures.

The first pass recomputes the Merkle tree from the leaf bytes and compares its root at
every size that something trusted vouches for: each checkpoint in the bundle (signed
by the log key, or by the pinned key), an auditor's pinned checkpoint, and every copy
in a witness directory. When something disagrees, a second pass names the first bad
index: a gap or repeat in the indices, a leaf that is not canonical JSON, or a leaf
whose chain value does not follow from the one before (what an edit, swap, deletion or
forged insertion leaves behind unless the forger also recomputed every later chain
value, in which case the damage is placed between two checkpoints).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import rfc8785

from accord.ledger import bundle, merkle
from accord.ledger.note import NoteError, Verifier, open_checkpoint, tidy_note


@dataclass
class Report:
    size: int = 0
    origin: str = ""
    key: str = ""
    checkpoints: int = 0
    witnessed: int = 0
    pinned: int | None = None
    root: bytes = b""
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    first_bad_index: int | None = None
    indices: list[int | None] = field(default_factory=list)  # per problem, when it names one
    keys: list[str] = field(default_factory=list)  # the signing keys followed, oldest first
    rotations: list[str] = field(default_factory=list)  # where one key introduced the next

    @property
    def ok(self) -> bool:
        return not self.problems

    def ordered(self) -> list[str]:
        """Problems, the one at the first bad index first; the rest as found."""
        order = sorted(range(len(self.problems)), key=lambda i: (
            self.indices[i] is None, self.indices[i] or 0, i))
        return [self.problems[i] for i in order]

    def fail(self, message: str, index: int | None = None) -> None:
        self.problems.append(message)
        self.indices.append(index)
        if index is not None and (self.first_bad_index is None or index < self.first_bad_index):
            self.first_bad_index = index


@dataclass
class _Target:
    size: int
    root: bytes
    what: str


def verify(
    open_bundle: Callable[[], IO[bytes]],
    *,
    key: Verifier | None = None,
    pin: str | None = None,
    witness: Path | None = None,
    allow_unsigned_tail: bool = False,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
    path: str | Path | None = None,
) -> Report:
    """Verify the bundle `open_bundle()` returns (called twice when a diagnosis is needed).

    Given the bundle's `path`, large bundles are hashed by one process per core, each
    reading its own blocks through the bundle's seek table.
    """
    report = Report()
    with open_bundle() as f:
        try:
            header = bundle.read_header(f)
        except bundle.BundleError as exc:
            report.fail(str(exc))
            return report
        report.origin, report.key, report.size = header.origin, header.key, header.size
        targets = _targets(header, report, key=key, pin=pin, witness=witness)
        if report.problems and not targets:
            return report
        _first_pass(f, header, targets, report, allow_unsigned_tail, progress,
                    workers if workers is not None else (os.cpu_count() or 1),
                    str(path) if path is not None else None)
    if not report.ok and report.first_bad_index is None:
        with open_bundle() as f:
            bundle.read_header(f)
            _diagnose(f, report)
    return report


@dataclass
class _Note:
    """A signed checkpoint from the bundle, the pin or the witness, and who signed it."""

    what: str  # "signed checkpoint", "pinned checkpoint", "witnessed checkpoint"
    label: str  # how to name it in a problem
    size: int
    root: bytes
    origin: str
    signed: list[Verifier]
    accepted: bool = False


def _targets(header: bundle.Header, report: Report, *, key: Verifier | None, pin: str | None,
             witness: Path | None) -> list[_Target]:
    try:
        log_key = Verifier.decode(header.key)
        listed = [Verifier.decode(k) for k in header.keys]
    except NoteError as exc:
        report.fail(f"bundle key: {exc}")
        return []
    trusted = key or log_key
    if key is None:
        report.warnings.append("no --key given: trusting the key inside the bundle "
                               f"({log_key.encode()}); pin it for the next audit")
    candidates = _unique([*listed, trusted])
    notes: list[_Note] = []
    for n, text in enumerate(header.checkpoints):
        label = f"checkpoint {n + 1} of {len(header.checkpoints)}"
        try:
            cp, signed = open_checkpoint(text, candidates)
        except NoteError as exc:
            report.fail(f"{label}: {exc}")
            continue
        if cp.origin != header.origin:
            report.fail(f"checkpoint of size {cp.size} has origin {cp.origin!r}, "
                        f"not {header.origin!r}")
        notes.append(_Note("signed checkpoint", label, cp.size, cp.root, cp.origin, signed))
    if pin is not None:
        try:
            cp, signed = open_checkpoint(tidy_note(pin), candidates)
            notes.append(_Note("pinned checkpoint", "pinned checkpoint", cp.size, cp.root,
                               cp.origin, signed))
        except NoteError as exc:
            if "bad signature" in str(exc):
                report.fail(f"pinned checkpoint: {exc}: it is not signed by the key you trust "
                            f"(was the log re-signed with another key, or is --key another "
                            f"log's?)")
            else:
                report.fail(f"the pinned checkpoint is malformed: {exc}; copy it whole: the "
                            f"origin, size and root lines, a blank line, and the signature "
                            f"line starting with an em dash")
    if witness is not None:
        for path in sorted(witness.glob("*")):
            if not path.name.isdigit():
                continue
            try:
                cp, signed = open_checkpoint(path.read_text(encoding="utf-8"), candidates)
            except NoteError as exc:
                report.fail(f"witness copy {path.name}: {exc}")
                continue
            notes.append(_Note("witnessed checkpoint", f"witness copy {path.name}", cp.size,
                               cp.root, cp.origin, signed))
    notes.sort(key=lambda nt: nt.size)
    if (notes and not any(trusted in nt.signed for nt in notes) and key is not None
            and (key.name, key.public) != (log_key.name, log_key.public)):
        report.fail(f"the log is signed by {log_key.encode()}, not by the pinned key "
                    f"{key.encode()}: the log was re-signed or replaced")
    _follow(notes, trusted, listed, report)
    targets: list[_Target] = []
    for nt in notes:
        if nt.accepted:
            targets.append(_Target(nt.size, nt.root, f"{nt.what} of size {nt.size}"))
            if nt.what == "signed checkpoint":
                report.checkpoints += 1
            elif nt.what == "pinned checkpoint":
                report.pinned = nt.size
            else:
                report.witnessed += 1
    if report.keys and report.keys[-1] != log_key.encode():
        report.warnings.append(f"the bundle names {log_key.encode()} as its key, but no "
                               f"checkpoint introduced it (the last key followed is "
                               f"{report.keys[-1]})")
    targets.sort(key=lambda t: t.size)
    return targets


def _unique(keys: list[Verifier]) -> list[Verifier]:
    out: list[Verifier] = []
    for v in keys:
        if all((v.name, v.public) != (o.name, o.public) for o in out):
            out.append(v)
    return out


def _label(v: Verifier) -> str:
    return f"{v.name} key {v.id.hex()}"


def _follow(notes: list[_Note], trusted: Verifier, listed: list[Verifier],
            report: Report) -> None:
    """Follow the signing keys through rotations, from the trusted key, both ways.

    Each checkpoint (in size order) must be signed by the key in force at its size. One
    signed by the key in force and by a key not seen before introduces that key: after it
    (in size order) only the new key is accepted, and before it only the old one. So a
    pinned old key accepts a log rotated since, a pinned new key accepts the history signed
    before the rotation, and a checkpoint signed only by a key never introduced fails.
    """
    first = next((i for i, nt in enumerate(notes) if trusted in nt.signed), None)
    if first is None:
        for nt in notes:
            _reject(nt, None, 0, report, notes)
        return
    start = notes[first]
    others = [v for v in start.signed if v != trusted]
    older: Verifier | None = None
    forward = trusted
    chain = [trusted]
    if others:
        # The first checkpoint the trusted key signed is also signed by another: the key
        # it succeeded, unless nothing comes before it (then the bundle's order says).
        before = [nt for nt in notes[:first] if others[0] in nt.signed]
        order = {(v.name, v.public): i for i, v in enumerate(listed)}
        rank = order.get((others[0].name, others[0].public), -1)
        if before or rank < order.get((trusted.name, trusted.public), len(listed)):
            older = others[0]
        else:
            forward = others[0]
            chain.append(forward)
            report.rotations.append(f"at size {start.size}: {_label(trusted)} introduced "
                                    f"{_label(forward)}")
    start.accepted = True
    seen = {trusted, *start.signed}
    # Forward: later checkpoints.
    current, good = forward, start.size
    for nt in notes[first + 1:]:
        if current not in nt.signed:
            _reject(nt, current, good, report, notes)
            continue
        new = [v for v in nt.signed if v not in seen]
        if len(new) > 1:
            _reject(nt, current, good, report, notes, why="it introduces several keys at once")
            continue
        if new:
            report.rotations.append(f"at size {nt.size}: {_label(current)} introduced "
                                    f"{_label(new[0])}")
            current = new[0]
            seen.add(current)
            chain.append(current)
        nt.accepted = True
        good = nt.size
    # Backward: earlier checkpoints, signed by the keys the trusted one succeeded.
    current = older or trusted
    if older is not None:
        chain.insert(0, older)
        report.rotations.insert(0, f"at size {start.size}: {_label(older)} introduced "
                                   f"{_label(trusted)}")
    for nt in reversed(notes[:first]):
        if current not in nt.signed:
            _reject(nt, current, 0, report, notes)
            continue
        new = [v for v in nt.signed if v not in seen]
        if new:
            report.rotations.insert(0, f"at size {nt.size}: {_label(new[0])} introduced "
                                       f"{_label(current)}")
            current = new[0]
            seen.add(current)
            chain.insert(0, current)
        nt.accepted = True
    report.keys = [v.encode() for v in chain]


def _reject(nt: _Note, current: Verifier | None, good: int, report: Report,
            notes: list[_Note], why: str | None = None) -> None:
    below = [o.size for o in notes if o.accepted and o.size < nt.size]
    good = max([good, *below])
    by = ", ".join(_label(v) for v in nt.signed) or "no key this bundle or --key names"
    if why is None:
        want = (f"the key in force at that size, {_label(current)}" if current is not None
                else "the trusted key")
        why = (f"it is not signed by {want} (signed by: {by}); a new key counts only once "
               f"a checkpoint signed by the key in force introduced it")
    if nt.what == "pinned checkpoint":
        report.fail(f"pinned checkpoint of size {nt.size}: {why}: it is not signed by the key "
                    f"you trust (was the log re-signed with another key, or is --key another "
                    f"log's?)", good if good < nt.size else None)
    else:
        report.fail(f"{nt.label}, of size {nt.size}: {why}; entries {good}..{nt.size - 1} "
                    f"are not vouched for by a trusted signature", good)


BLOCK = 1 << 14  # leaves per unit of work (a power of two: blocks are perfect subtrees)
Subtrees = list[tuple[int, bytes]]


def _hash_block(data: bytes, first: int, cuts: tuple[int, ...]
                ) -> tuple[int, Subtrees, dict[int, Subtrees], str | None]:
    """Hash one block of records whose first leaf has index `first` (a multiple of BLOCK).

    Returns the number of leaves, the perfect subtrees covering them, the subtrees
    covering [first, cut) for each cut (a signed size inside the block), and an error
    naming the first index out of place. Runs in worker processes for large bundles.
    """
    unpack = bundle.RECORD.unpack_from
    overhead = bundle.OVERHEAD
    head = bundle.RECORD.size
    spans: list[tuple[int, int]] = []
    pos, expected, size = 0, first, len(data)
    while pos < size:
        idx, n = unpack(data, pos)
        if idx != expected:
            what = "missing" if idx > expected else "repeated or out of order"
            return 0, [], {}, f"index {expected}: {what} (the next record has index {idx})"
        if data[pos + head] != 0:
            return 0, [], {}, f"index {idx}: record lacks the 0x00 leaf prefix"
        spans.append((pos + head, pos + head + 1 + n))
        pos += overhead + n
        expected += 1
    mv = memoryview(data)
    sha = hashlib.sha256
    level = [sha(mv[a:b]).digest() for a, b in spans]  # 0x00 || leaf, hashed in place
    levels = [level]
    copy = sha(b"\x01").copy
    while len(level) > 1:
        up: list[bytes] = []
        push = up.append
        it = iter(level)
        for left, right in zip(it, it, strict=False):
            h = copy()
            h.update(left)
            h.update(right)
            push(h.digest())
        levels.append(up)
        level = up
    count = len(spans)

    def cover(end: int) -> Subtrees:
        return [(lv, levels[lv][i - (first >> lv)]) for lv, i in merkle.range_nodes(first, end)]

    return count, cover(first + count), {c: cover(c) for c in cuts if c < first + count}, None


def _hash_range(path: str, first: int, start: int, end: int, expect: int,
                cuts: tuple[int, ...]) -> tuple[int, Subtrees, dict[int, Subtrees], str | None]:
    """A worker reads its own slice of the bundle file (found through the seek table)."""
    with Path(path).open("rb") as f:
        f.seek(start)
        data = f.read(end - start)
    result = _hash_block(data, first, cuts)
    if result[3] is None and result[0] != expect:
        return 0, [], {}, f"index {first + result[0]}: the bundle's seek table does not match"
    return result


def _plan(f: IO[bytes], header: bundle.Header, records_at: int
          ) -> list[tuple[int, int, int, int]] | None:
    """(first index, start, end, count) per block from a seek table that fits, else None."""
    table = bundle.seek_table(f)
    f.seek(records_at)
    if table is None:
        return None
    block, offsets = table
    if block != BLOCK or not offsets or offsets[0] != records_at:
        return None
    if len(offsets) != -(-header.size // BLOCK) or offsets != sorted(set(offsets)):
        return None
    f.seek(-8, 2)
    table_at = int.from_bytes(f.read(8), "big")
    f.seek(records_at)
    ends = [*offsets[1:], table_at - bundle.RECORD.size]
    plan = []
    for n, (start, end) in enumerate(zip(offsets, ends, strict=True)):
        first = n * BLOCK
        plan.append((first, start, end, min(BLOCK, header.size - first)))
    return plan


def _first_pass(f: IO[bytes], header: bundle.Header, targets: list[_Target], report: Report,
                allow_unsigned_tail: bool, progress: Callable[[int, int], None] | None,
                workers: int, path: str | None) -> None:
    cr = merkle.CompactRange()
    t = 0
    good = [0]  # the largest size a trusted root confirmed
    while t < len(targets) and targets[t].size == 0:
        _compare(cr.root(), targets[t], report, good)
        t += 1
    done = 0

    def absorb(first: int, result: tuple[int, Subtrees, dict[int, Subtrees], str | None]
               ) -> bool:
        nonlocal cr, t, done
        count, subtrees, cuts, error = result
        if error:
            report.fail(error, int(error.split(":")[0].removeprefix("index ")))
            return False
        for size, nodes in sorted(cuts.items()):
            partial = cr.copy()
            for lv, h in nodes:
                partial.append_subtree(lv, h)
            while t < len(targets) and targets[t].size == size:
                _compare(partial.root(), targets[t], report, good)
                t += 1
        for lv, h in subtrees:
            cr.append_subtree(lv, h)
        done = first + count
        while t < len(targets) and targets[t].size == done:
            _compare(cr.root(), targets[t], report, good)
            t += 1
        if progress:
            progress(done, header.size)
        return True

    sizes = [tg.size for tg in targets]

    def cuts_in(first: int) -> tuple[int, ...]:
        return tuple(sorted({s for s in sizes if first < s < first + BLOCK}))

    plan = None
    if path is not None and workers > 1 and header.size >= 4 * BLOCK:
        plan = _plan(f, header, f.tell())
    try:
        if plan is None:
            for n, data in enumerate(bundle.blocks(f, BLOCK)):
                if not absorb(n * BLOCK, _hash_block(data, n * BLOCK, cuts_in(n * BLOCK))):
                    return
        else:
            # Each worker reads and hashes its own blocks; only subtree hashes come back.
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [(first, pool.submit(_hash_range, str(path), first, start, end, count,
                                               cuts_in(first)))
                           for first, start, end, count in plan]
                for first, fut in futures:
                    if not absorb(first, fut.result()):
                        for _, later in futures:
                            later.cancel()
                        return
    except bundle.BundleError as exc:
        report.fail(f"index {done}: {exc}", done)
        return
    report.root = cr.root()
    expected = done
    if expected != header.size:
        report.fail(f"the bundle header says {header.size} entries but it holds {expected}",
                    min(expected, header.size))
    for target in targets[t:]:
        report.fail(f"the log has {expected} entries but the {target.what} covers "
                    f"{target.size}: entries were removed from the end", expected)
    signed = max((tg.size for tg in targets), default=0)
    if expected > signed:
        msg = (f"entries {signed}..{expected - 1} are not covered by any signed checkpoint "
               "(export again to have them signed)")
        if allow_unsigned_tail:
            report.warnings.append(msg)
        else:
            report.fail(msg, signed)


def _compare(root: bytes, target: _Target, report: Report, good: list[int]) -> None:
    if root == target.root:
        if not report.problems:
            good[0] = target.size
        return
    report.fail(f"the first {target.size} entries do not match the {target.what}; "
                f"the damage lies in indices {good[0]}..{target.size - 1}")


def _diagnose(f: IO[bytes], report: Report) -> None:
    """Name the first index whose bytes or chain value cannot be the original."""
    chain = bytes(32)
    for expected, (idx, leaf, stored) in enumerate(bundle.records(f)):
        if idx != expected:
            report.fail(f"index {expected}: missing", expected)
            return
        try:
            canonical = rfc8785.dumps(json.loads(leaf)) == leaf
        except ValueError:
            canonical = False
        if not canonical:
            report.fail(f"index {idx}: the leaf is not canonical JSON (its bytes were edited)",
                        idx)
            return
        chain = hashlib.sha256(chain + merkle.leaf_hash(leaf)).digest()
        if chain != stored:
            report.fail(f"index {idx}: the leaf does not follow from the one before it "
                        "(edited, swapped, inserted or removed here)", idx)
            return
