"""Live data masking, whatever the protocol: the rules of one session (`Masker`), the value
detectors (emails, card numbers with a Luhn check, IBANs with their mod-97 check, phone
numbers) and the rewriting of one row's values (`rewrite`).

A protocol's data path finds out what each result column is (PostgreSQL: from its
RowDescription and the catalog; `postgres.mask`), asks the `Masker` which columns it masks
whole and which text columns the detectors read, and rewrites each row with `rewrite`
before it reaches the client. The MySQL front can feed the same rules the same way.

Invariants:
* A NULL stays NULL; a masked value is never NULL, never the original.
* A column masked whole gets the rule's replacement whatever its value; the first rule in
  the file that names the column decides the replacement (deterministic).
* Detectors only read text (the bytes as UTF-8); they replace each match in place and leave
  the rest of the value as it was. A value they find nothing in is passed on unchanged
  (the same bytes object), so the data path can tell that nothing changed.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from accord.spec.masking import MaskingSpec

# ------------------------------------------------------------------ detectors

EMAIL = re.compile(rb"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# 13 to 19 digits, single spaces or dashes between them; not inside a longer number.
CARD = re.compile(rb"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")
# Two letters, two check digits, then 11 to 30 letters or digits (spaces between groups).
IBAN = re.compile(rb"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}")
# International (`+` and 8 to 15 digits) or North American (`(555) 123-4567`, `555.123.4567`).
PHONE_INTL = re.compile(rb"(?<![\w+])\+[0-9](?:[ ().-]{0,2}[0-9]){7,14}(?![0-9])")
PHONE_NA = re.compile(rb"(?<![\w(])(?:\([0-9]{3}\) ?|[0-9]{3}[ .-])[0-9]{3}[ .-][0-9]{4}(?![0-9])")
_NOT_DIGIT = re.compile(rb"[^0-9]")
_NOT_ALNUM = re.compile(rb"[^A-Za-z0-9]")
_HAS_DIGITS = re.compile(rb"[0-9][^0-9]{0,2}[0-9]")


def luhn(digits: bytes) -> bool:
    """Whether a string of ASCII digits passes the Luhn check."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ch - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_valid(text: bytes) -> bool:
    """Whether letters and digits (no spaces) make an IBAN whose check digits hold."""
    if not 15 <= len(text) <= 34 or not text[:2].isalpha() or not text[2:4].isdigit():
        return False
    moved = (text[4:] + text[:4]).upper()
    number = "".join(str(int(chr(c), 36)) for c in moved)
    return int(number) % 97 == 1


def _cards(value: bytes, out: list[tuple[int, int]]) -> None:
    for m in CARD.finditer(value):
        digits = _NOT_DIGIT.sub(b"", m.group())
        if 13 <= len(digits) <= 19 and luhn(digits):
            out.append(m.span())


# IBAN lengths by country (the SWIFT registry); a country not listed: any length from 15.
IBAN_LENGTHS = {
    b"AD": 24, b"AE": 23, b"AT": 20, b"BE": 16, b"BG": 22, b"BH": 22, b"BR": 29, b"CH": 21,
    b"CY": 28, b"CZ": 24, b"DE": 22, b"DK": 18, b"EE": 20, b"ES": 24, b"FI": 18, b"FO": 18,
    b"FR": 27, b"GB": 22, b"GI": 23, b"GL": 18, b"GR": 27, b"HR": 21, b"HU": 28, b"IE": 22,
    b"IL": 23, b"IS": 26, b"IT": 27, b"LI": 21, b"LT": 20, b"LU": 20, b"LV": 21, b"MC": 27,
    b"MT": 31, b"NL": 18, b"NO": 15, b"PL": 28, b"PT": 25, b"RO": 24, b"SA": 24, b"SE": 24,
    b"SI": 19, b"SK": 24, b"SM": 27, b"TR": 26, b"UA": 29,
}


def _ibans(value: bytes, out: list[tuple[int, int]]) -> None:
    for m in IBAN.finditer(value):
        text = m.group()
        start = m.start()
        # The pattern may run on into the next word: the IBAN is the longest prefix of
        # the country's length that ends a word and whose check digits hold.
        ends = [i + 1 for i, ch in enumerate(text) if ch != 0x20]
        want = IBAN_LENGTHS.get(text[:2])
        for count in range(min(len(ends), 34), 14, -1):
            if want is not None and count != want:
                continue
            stop = start + ends[count - 1]
            if stop < len(value) and value[stop:stop + 1].isalnum():
                continue
            if iban_valid(_NOT_ALNUM.sub(b"", text[:ends[count - 1]])):
                out.append((start, stop))
                break


def _emails(value: bytes, out: list[tuple[int, int]]) -> None:
    out.extend(m.span() for m in EMAIL.finditer(value))


def _phones(value: bytes, out: list[tuple[int, int]]) -> None:
    for m in PHONE_INTL.finditer(value):
        if 8 <= len(_NOT_DIGIT.sub(b"", m.group())) <= 15:
            out.append(m.span())
    out.extend(m.span() for m in PHONE_NA.finditer(value))


_FINDERS = {"card": _cards, "iban": _ibans, "email": _emails, "phone": _phones}
ORDER = ("card", "iban", "email", "phone")  # overlapping finds: the first kind wins
# The shortest text each kind's pattern matches (card: 13 digits; IBAN: 15 characters;
# email: `a@b.io`; phone: `+` and 8 digits): a shorter value is not searched for it.
SHORTEST = {"card": 13, "iban": 15, "email": 6, "phone": 9}


def find(value: bytes, kinds: Iterable[str]) -> list[tuple[int, int, str]]:
    """What the detectors `kinds` find in `value`: (start, end, kind), in order, without
    overlaps (a find overlapping an earlier one, or one of a kind earlier in `ORDER`,
    is dropped)."""
    wanted = set(kinds)
    size = len(value)
    if size < 6 or (b"@" not in value and not _HAS_DIGITS.search(value)):
        return []
    found: list[tuple[int, int, str]] = []
    for kind in ORDER:
        if kind not in wanted or size < SHORTEST[kind] or (
                kind == "email" and b"@" not in value):
            continue
        spans: list[tuple[int, int]] = []
        _FINDERS[kind](value, spans)
        for start, end in spans:
            if all(end <= s or start >= e for s, e, _ in found):
                found.append((start, end, kind))
    found.sort()
    return found


# ------------------------------------------------------------------ rules


def _part(name: str) -> str:
    """A name as a rule gives it: quotes dropped; compared case-insensitively (stricter
    than the server: `"Email"` also masks `email`)."""
    return name[1:-1].lower() if len(name) > 1 and name[0] == name[-1] == '"' else name.lower()


def split_column(ref: str) -> tuple[str, str, str]:
    """`schema.table.column` (any part `*` or quoted) as its three parts, case-folded."""
    parts = re.findall(r'"[^"]+"|[^.]+', ref)
    if len(parts) != 3:
        raise ValueError(f"{ref!r} is not schema.table.column")
    return _part(parts[0]), _part(parts[1]), _part(parts[2])


class Masker:
    """The masking rules of one role of one resource, compiled."""

    def __init__(self, specs: Sequence[MaskingSpec]) -> None:
        self.rules = tuple(s.name for s in specs)
        self._columns: list[tuple[tuple[str, str, str], bytes]] = []
        self._patterns: list[tuple[re.Pattern[str], bytes]] = []
        self.globs: tuple[str, ...] = tuple(p for s in specs for p in s.column_patterns)
        self.detectors: dict[str, bytes] = {}  # kind → replacement (the first rule's)
        for spec in specs:
            replacement = spec.replacement.encode()
            self._columns += [(split_column(c), replacement) for c in spec.columns]
            self._patterns += [(re.compile(fnmatch.translate(p.lower()), re.IGNORECASE),
                                replacement) for p in spec.column_patterns]
            for kind in spec.detectors:
                self.detectors.setdefault(kind, replacement)
        self.kinds = tuple(k for k in ORDER if k in self.detectors)

    @classmethod
    def of(cls, specs: Iterable[MaskingSpec], role: str) -> Masker | None:
        """The rules that apply to `role` (None: none do)."""
        chosen = [s for s in specs if not s.roles or role in s.roles]
        return cls(chosen) if chosen else None

    @property
    def column_rules(self) -> tuple[tuple[str, str, str], ...]:
        return tuple(c for c, _ in self._columns)

    def column(self, schema: str, table: str, name: str) -> bytes | None:
        """The replacement for a stored column a rule names (by `columns` or
        `column_patterns`), or None."""
        schema, table, name = schema.lower(), table.lower(), name.lower()
        for (s, t, c), replacement in self._columns:
            if s in ("*", schema) and t in ("*", table) and c in ("*", name):
                return replacement
        return self.named(name)

    def named(self, name: str) -> bytes | None:
        """The replacement for a result column called `name` a pattern matches, or None."""
        for pattern, replacement in self._patterns:
            if pattern.match(name):
                return replacement
        return None

    def scan(self, value: bytes) -> bytes:
        """`value` with what the detectors find replaced (the same object: nothing found)."""
        found = find(value, self.kinds)
        if not found:
            return value
        parts: list[bytes] = []
        at = 0
        for start, end, kind in found:
            parts += (value[at:start], self.detectors[kind])
            at = end
        parts.append(value[at:])
        return b"".join(parts)


@dataclass(frozen=True)
class Plan:
    """How to rewrite the rows of one result: the columns masked whole (index →
    replacement), the text columns the detectors read, and every column's name."""

    whole: dict[int, bytes]
    scan: tuple[int, ...]
    names: tuple[str, ...]

    @property
    def active(self) -> bool:
        return bool(self.whole or self.scan)


def rewrite(values: Sequence[bytes | None], plan: Plan, masker: Masker
            ) -> tuple[list[bytes | None], set[int]] | None:
    """One row's values masked by `plan`: the new values and the indexes of those that
    changed, or None when none did. NULLs are kept."""
    out: list[bytes | None] | None = None
    changed: set[int] = set()
    for i, replacement in plan.whole.items():
        if i < len(values) and values[i] is not None:
            out = out or list(values)
            out[i] = replacement
            changed.add(i)
    for i in plan.scan:
        value = values[i] if i < len(values) else None
        if value is not None:
            masked = masker.scan(value)
            if masked is not value:
                out = out or list(values)
                out[i] = masked
                changed.add(i)
    return (out, changed) if out is not None else None
