"""Masking for PostgreSQL: what each result column is (a RowDescription's table OID and
attribute number, looked up in the catalog once per session), how its DataRows are
rewritten, and which statements would stream rows the gateway does not read (`COPY ...
TO STDOUT`).

The rules and the detectors are the gateway core's (`gateway.masking`); this module only
speaks the protocol:

* A stored column is known by (table OID, attribute number), whatever the query calls
  it: `SELECT email AS x FROM customers` is masked like `SELECT email`. The session's
  catalog lookup (`lookup`) maps the columns the rules name to those pairs when it opens;
  `column_patterns` also match a result column's own name (an alias, `lower(email)`'s
  `lower` no; detectors cover computed text).
* Values are rewritten in text and binary formats alike: a column masked whole is sent as
  text (its RowDescription says type `text`, which every client decodes in both formats);
  detectors read only columns that already are text (`text`, `varchar`, `char(n)`,
  `name`, `unknown`), so their type never changes.
* NULLs stay NULL.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from pglast import parser as pgparser

from accord.gateway.link import Link
from accord.gateway.masking import Masker, Plan
from accord.gateway.postgres import protocol as pq

try:  # the compiled row loop (_rows.c), built at install where a C compiler is at hand
    from accord.gateway.postgres import _rows
except ImportError:  # pragma: no cover - exercised where Accord was built without one
    _rows = None  # type: ignore[assignment]

TEXT_OID = 25
# text, varchar, char(n), name, unknown: their values are UTF-8 text in both formats.
TEXT_TYPES = frozenset({25, 1043, 1042, 19, 705})
_FIELD = struct.Struct("!IhIhih")  # table OID, attnum, type OID, typlen, typmod, format
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_unpack_i32 = _I32.unpack_from
_unpack_u32 = _U32.unpack_from
_pack_i32 = _I32.pack
MAX_PLANS = 256
NO_PLAN = Plan({}, (), ())


class RowPlan:
    """A result's plan and its RowDescription as the client gets it (None: unchanged)."""

    __slots__ = ("description", "fast", "last", "plan", "replacements", "targets",
                 "whole_names")

    def __init__(self, plan: Plan, description: bytes | None) -> None:
        self.plan = plan
        self.description = description
        self.targets = frozenset(plan.whole) | frozenset(plan.scan)
        self.last = max(self.targets) if self.targets else -1
        self.whole_names = tuple(plan.names[i] for i in plan.whole)
        # Columns up to the last masked one: a whole column's replacement as a field
        # (its length first), else None. Only when no detector reads a column.
        self.replacements: tuple[bytes | None, ...] | None = None if plan.scan else tuple(
            None if i not in plan.whole else _pack_i32(len(plan.whole[i])) + plan.whole[i]
            for i in range(self.last + 1))
        # The row loop written for these replacements (None: detectors, or nothing masked)
        self.fast = _whole_rows(self.replacements) \
            if self.replacements is not None and self.targets else None


class SessionMask:
    """A session's masking: its rules and which stored columns they name."""

    def __init__(self, masker: Masker, catalog: dict[tuple[int, int], bytes]) -> None:
        self.masker = masker
        self.catalog = catalog  # (table OID, attnum) → replacement
        self._plans: dict[bytes, RowPlan] = {}
        self._copies: dict[bytes, bool] = {}

    def describe(self, body: bytes) -> RowPlan:
        """The plan for the rows a RowDescription (its body) announces."""
        known = self._plans.get(body)
        if known is not None:
            return known
        masker = self.masker
        count = int.from_bytes(body[:2], "big", signed=True)
        pos = 2
        whole: dict[int, bytes] = {}
        scan: list[int] = []
        names: list[str] = []
        out: bytearray | None = None
        for i in range(count):
            nul = body.index(b"\0", pos)
            name = body[pos:nul].decode("utf-8", "replace")
            names.append(name)
            pos = nul + 1
            table, attnum, typ, _, _, fmt = _FIELD.unpack_from(body, pos)
            replacement = self.catalog.get((table, attnum)) if table else None
            if replacement is None:
                replacement = masker.named(name)
            if replacement is not None:
                whole[i] = replacement
                if typ not in TEXT_TYPES:  # sent as text from now on
                    out = out if out is not None else bytearray(body)
                    _FIELD.pack_into(out, pos, table, attnum, TEXT_OID, -1, -1, fmt)
            elif masker.kinds and typ in TEXT_TYPES:
                scan.append(i)
            pos += _FIELD.size
        if pos != len(body):
            raise pq.ProtocolError("RowDescription: bad length")
        plan = RowPlan(Plan(whole, tuple(scan), tuple(names)),
                       None if out is None else pq.message(b"T", bytes(out)))
        if len(self._plans) >= MAX_PLANS:
            self._plans.clear()
        self._plans[body] = plan
        return plan

    def copies_out(self, sql: bytes) -> bool:
        """Whether a statement text holds a `COPY ... TO` (rows streamed as CopyData, which
        masking does not read). Text the parser refuses but that names COPY counts."""
        if b"copy" not in sql.lower():
            return False
        known = self._copies.get(sql)
        if known is None:
            known = copies_out(sql)
            if len(self._copies) >= MAX_PLANS:
                self._copies.clear()
            self._copies[sql] = known
        return known


def copies_out(sql: bytes) -> bool:
    """`SessionMask.copies_out` without its cache."""
    try:
        tree = json.loads(pgparser.parse_sql_json(sql.decode("utf-8", "replace")))
    except pgparser.ParseError:  # unparsable and naming COPY: refused, to be safe
        return True
    stack: list[Any] = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            copy = item.get("CopyStmt")
            if isinstance(copy, dict) and not copy.get("is_from"):
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def rewrite_row(data: bytes, start: int, end: int, plan: RowPlan, masker: Masker,
                masked: set[str] | None) -> bytes | None:
    """The DataRow whose body is `data[start:end]`, masked by `plan` (the whole message),
    or None when no value changed. Names of the columns changed are added to `masked`.
    The careful path (rows read by detectors, rows with a NULL where a column is masked
    whole, malformed rows): every length is checked against the row's end."""
    if end - start < 2:
        raise pq.ProtocolError("DataRow: bad length")
    count = int.from_bytes(data[start:start + 2], "big", signed=True)
    if count < 0:
        raise pq.ProtocolError("DataRow: a negative field count")
    targets = plan.targets
    whole = plan.plan.whole
    last = min(plan.last, count - 1)
    pos = start + 2
    at = pos
    parts: list[bytes] | None = None
    unpack = _unpack_i32
    for i in range(last + 1):
        if pos + 4 > end:
            raise pq.ProtocolError("DataRow: bad length")
        length = unpack(data, pos)[0]
        begin = pos + 4
        stop = begin + length if length > 0 else begin
        if stop > end or length < -1:
            raise pq.ProtocolError("DataRow: bad length")
        if length >= 0 and i in targets:
            new = whole.get(i)
            if new is None:
                value = data[begin:stop]
                new = masker.scan(value)
                if new is value:
                    pos = stop
                    continue
            if parts is None:
                parts = [data[start:at]] if at > start else []
            parts += (data[at:pos], _pack_i32(len(new)), new)
            at = stop
            if masked is not None:
                masked.add(plan.plan.names[i])
        pos = stop
    if last < plan.last and pos != end:
        # Fewer fields than a masked column's place, yet bytes after them: a client reading
        # past the count would find a value no rule looked at. Not passed on.
        raise pq.ProtocolError("DataRow: its field count and its length disagree")
    if parts is None:
        return None
    parts.append(data[at:end])
    body = b"".join(parts)
    return b"D" + _pack_i32(len(body) + 4) + body


def rewrite_rows(data: bytes, pos: int, n: int, plan: RowPlan, masker: Masker,
                 masked: set[str] | None) -> tuple[int, int, bytes | None]:
    """The whole DataRows from `pos` on (up to the first other message or a cut one),
    masked: (where they end, how many, the bytes the client gets or None when no value
    changed). One call for a read's rows: per row, only the fields up to the last masked
    column are looked at. Names of the columns changed are added to `masked`."""
    fast = plan.fast
    if fast is None:
        if plan.replacements is None:  # detectors read values: one row at a time
            return _rows_one_by_one(data, pos, n, plan, masker, masked)
        if COMPILED:  # nothing to mask in this result: whole rows counted
            end, count, _ = _rows.walk_rows(data, pos, n, False, True)
            if n - end >= 5 and data[end] == 0x44:  # one it would not judge: Python's checks
                end, more, _ = _count_rows(data, end, n)
                count += more
            return end, count, None
        return _count_rows(data, pos, n)
    if COMPILED:
        return _compiled_rows(data, pos, n, plan, masker, masked)
    return python_rows(data, pos, n, plan, masker, masked)


COMPILED = _rows is not None
# The walk over rows the gateway only counts (`_rows.walk_rows`), for the conversation.
walk_rows = _rows.walk_rows if _rows is not None else None


def _compiled_rows(data: bytes, pos: int, n: int, plan: RowPlan, masker: Masker,
                   masked: set[str] | None) -> tuple[int, int, bytes | None]:
    """`rewrite_rows` with the compiled loop: it stops at a row that is not a whole,
    regular DataRow; a whole one it stopped at (malformed, or fewer fields than the plan)
    goes through the careful `rewrite_row`, which raises or rewrites it, and the walk
    goes on after it."""
    assert plan.replacements is not None
    parts: list[bytes] = []
    changed = False
    count = 0
    names = plan.plan.names
    while True:
        end, rows, out, hits = _rows.mask_rows(data, pos, n, plan.replacements)
        count += rows
        if out is not None:
            changed = True
            parts.append(out)
            if masked is not None:
                masked.update(names[i] for i in hits)
        elif end > pos:
            parts.append(data[pos:end])
        pos = end
        if n - pos < 5 or data[pos] != 0x44:
            break
        stop = pos + 1 + _unpack_u32(data, pos + 1)[0]  # read as the Python loop reads it
        if stop > n:  # cut by the end of the read: the next read brings the rest
            break
        if stop < pos + 7:
            raise pq.ProtocolError("DataRow: bad length")
        row = rewrite_row(data, pos + 5, stop, plan, masker, masked)
        if row is not None:
            changed = True
        parts.append(row if row is not None else data[pos:stop])
        count += 1
        pos = stop
    if not changed:
        return pos, count, None
    return pos, count, b"".join(parts) if len(parts) > 1 else parts[0]


def python_rows(data: bytes, pos: int, n: int, plan: RowPlan, masker: Masker,
                masked: set[str] | None) -> tuple[int, int, bytes | None]:
    """`rewrite_rows` in Python, with the loop written for the plan (`RowPlan.fast`): the
    fallback where the compiled loop was not built, and its property tests' other side."""
    fast = plan.fast
    assert fast is not None
    changed: set[str] = set()
    end, count, out, whole = fast(data, pos, n, plan, masker, changed)
    if end < n and count == 0 and n - end < _HEAD.size and data[end] == 0x44:
        # a DataRow too short for the fast loop's first read, at the buffer's end
        stop = end + 1 + _unpack_i32(data, end + 1)[0] if n - end >= 5 else n + 1
        if stop <= n:
            row = rewrite_row(data, end + 5, stop, plan, masker, changed)
            out, end, count = [row or data[end:stop], stop], stop, 1
    if masked is not None:
        if whole:
            masked.update(plan.whole_names)
        masked.update(changed)
    if not whole and not changed:
        return end, count, None
    out.append(data[out.pop():end])  # the last row's rest, as it was
    return end, count, b"".join(out)


def _row_end(data: bytes, pos: int, n: int) -> int:
    """Where the DataRow at `pos` ends; -1: no whole DataRow there (another message, or
    one cut by the end of the read)."""
    if n - pos < 5 or data[pos] != 0x44:
        return -1
    end = pos + 1 + _unpack_i32(data, pos + 1)[0]
    if end < pos + 7:
        raise pq.ProtocolError("DataRow: bad length")
    return end if end <= n else -1


def _count_rows(data: bytes, pos: int, n: int) -> tuple[int, int, None]:
    """The whole DataRows from `pos` on, counted (a result nothing is masked in)."""
    count = 0
    while n - pos >= 5 and data[pos] == 0x44:
        end = pos + 1 + _unpack_i32(data, pos + 1)[0]
        if end > n or end < pos + 7:
            if end < pos + 7:
                raise pq.ProtocolError("DataRow: bad length")
            break
        count += 1
        pos = end
    return pos, count, None


# A DataRow's kind, length and first field's length, read as unsigned: a NULL (-1) there
# or in a later field read the same way sends the walk past the row's end.
_HEAD = struct.Struct("!BI2xI")
_COMPILED: dict[tuple[bytes | None, ...], Any] = {}


def _whole_rows(replacements: tuple[bytes | None, ...]) -> Any:
    """A function masking the DataRows of a buffer for these columns (`RowPlan.
    replacements`, for a result no detector reads), written for them: each row's field
    lengths up to the last masked column are read in straight-line code (one `unpack_from`
    each, no loop over columns, no test per field), and the row is passed on as slices of
    the buffer around the replacements (adjacent masked columns: one constant). A row
    with a NULL up to the last masked column (or anything irregular) takes the careful
    path (`rewrite_row`). Returns (end, rows, parts, whether some row was masked here):
    `parts` ends with where the last part stops being rewritten (an int)."""
    known = _COMPILED.get(replacements)
    if known is not None:
        return known
    last = len(replacements) - 1
    spans: list[list[int]] = []  # runs of adjacent masked columns: [first, last]
    for i, r in enumerate(replacements):
        if r is not None:
            if spans and spans[-1][1] == i - 1:
                spans[-1][1] = i
            else:
                spans.append([i, i])
    constants = {f"R{a}": b"".join(replacements[i] or b"" for i in range(a, b + 1))
                 for a, b in spans}
    delta = sum(len(c) for c in constants.values())
    starts = {a for a, _ in spans}
    ends = {b for _, b in spans}
    # f{i}: where field i starts (its length); the row's fields start at pos + 7.
    walk = []
    if 0 in starts:
        walk.append("                f0 = pos + 7")
    walk.append("                p = pos + 11 + s")
    if 0 in ends:
        walk.append("                g0 = p")
    for i in range(1, last + 1):
        if i in starts:
            walk.append(f"                f{i} = p")
        walk.append("                p += 4 + unpack(data, p)[0]")
        if i in ends:
            walk.append(f"                g{i} = p")
    removed = " - ".join(f"(g{b} - f{a})" for a, b in spans)
    pieces = ["data[copied:pos + 1]", f"pack(length - {removed} + {delta})"]
    prev = "pos + 5"
    for a, b in spans:
        pieces += [f"data[{prev}:f{a}]", f"R{a}"]
        prev = f"g{b}"
    lines = [
        "def rows(data, pos, n, plan, masker, changed):",
        "    out = []",
        "    copied = pos",
        "    count = 0",
        "    whole = False",
        "    try:",
        "        while True:",
        "            kind, length, s = head(data, pos)",
        "            end = pos + 1 + length",
        "            if kind != 68 or end > n:",
        "                break",
        "            try:",
        *walk,
        "            except StructError:",
        "                p = end + 1",
        "            if p > end:",
        "                out += (data[copied:pos],",
        "                        careful(data, pos + 5, end, plan, masker, changed)"
        " or data[pos:end])",
        "                copied = end",
        "            else:",
        f"                out += ({', '.join(pieces)})",
        f"                copied = {prev}",
        "                whole = True",
        "            count += 1",
        "            pos = end",
        "    except StructError:",
        "        pass",
        "    out.append(copied)",
        "    return pos, count, out, whole",
    ]
    scope: dict[str, Any] = {"head": _HEAD.unpack_from, "unpack": _U32.unpack_from,
                             "pack": _U32.pack, "careful": rewrite_row,
                             "StructError": struct.error, **constants}
    exec("\n".join(lines), scope)  # noqa: S102 - our own text: names and numbers only
    if len(_COMPILED) >= MAX_PLANS:
        _COMPILED.clear()
    _COMPILED[replacements] = scope["rows"]
    return scope["rows"]


def _rows_one_by_one(data: bytes, pos: int, n: int, plan: RowPlan, masker: Masker,
                     masked: set[str] | None) -> tuple[int, int, bytes | None]:
    out: list[bytes] = []
    copied = pos
    rows = 0
    while (end := _row_end(data, pos, n)) >= 0:
        rows += 1
        new = rewrite_row(data, pos + 5, end, plan, masker, masked)
        if new is not None:
            out += (data[copied:pos], new)
            copied = end
        pos = end
    if not out:
        return pos, rows, None
    out.append(data[copied:pos])
    return pos, rows, b"".join(out)


def _like(part: str) -> str:
    """A rule's name part as an ILIKE pattern (a literal: quotes doubled)."""
    if part == "*":
        return "'%'"
    escaped = part.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return "'" + escaped.replace("'", "''") + "'"


def _glob_like(glob: str) -> str:
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return "'" + escaped.replace("*", "%").replace("?", "_").replace("'", "''") + "'"


def catalog_query(masker: Masker) -> str | None:
    """The catalog query that finds the stored columns the rules name (a superset: each
    row is checked against the rules again), or None when no rule names columns."""
    conds = [f"(n.nspname ILIKE {_like(s)} AND c.relname ILIKE {_like(t)} "
             f"AND a.attname ILIKE {_like(col)})" for s, t, col in masker.column_rules]
    conds += [f"a.attname ILIKE {_glob_like(g)}" for g in masker.globs]
    if not conds:
        return None
    # Names go in as literals, quotes doubled (standard_conforming_strings is pinned on).
    return ("SELECT c.oid, a.attnum, n.nspname, c.relname, a.attname "  # noqa: S608
            "FROM pg_catalog.pg_attribute a "
            "JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE a.attnum > 0 AND NOT a.attisdropped "
            "AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            f"AND ({' OR '.join(conds)})")


def _row(body: bytes) -> list[str | None]:
    count = int.from_bytes(body[:2], "big")
    pos = 2
    out: list[str | None] = []
    for _ in range(count):
        length = _unpack_i32(body, pos)[0]
        pos += 4
        if length < 0:
            out.append(None)
            continue
        out.append(body[pos:pos + length].decode("utf-8", "replace"))
        pos += length
    return out


async def lookup(link: Link, masker: Masker) -> dict[tuple[int, int], bytes]:
    """The stored columns the rules name, read from the upstream's catalog on the session's
    own connection before the client's first message: (table OID, attnum) → replacement.
    Raises `pq.ProtocolError` with the server's message when the lookup fails."""
    query = catalog_query(masker)
    if query is None:
        return {}
    link.write(pq.query(query))
    found: dict[tuple[int, int], bytes] = {}
    failure: str | None = None
    while True:
        kind, body = await pq.read_message(link, 1 << 24)
        if kind == ord("D"):
            oid, attnum, schema, table, column = _row(body)
            assert oid is not None and attnum is not None
            replacement = masker.column(schema or "", table or "", column or "")
            if replacement is not None:
                found[(int(oid), int(attnum))] = replacement
        elif kind == ord("E"):
            failure = pq.parse_fields(body).get("M", "")
        elif kind == ord("Z"):
            break
    if failure is not None:
        raise pq.ProtocolError(f"the masking rules' catalog lookup failed: {failure}")
    return found
