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

TEXT_OID = 25
# text, varchar, char(n), name, unknown: their values are UTF-8 text in both formats.
TEXT_TYPES = frozenset({25, 1043, 1042, 19, 705})
_FIELD = struct.Struct("!IhIhih")  # table OID, attnum, type OID, typlen, typmod, format
_I32 = struct.Struct("!i")
_unpack_i32 = _I32.unpack_from
_pack_i32 = _I32.pack
MAX_PLANS = 256
NO_PLAN = Plan({}, (), ())


class RowPlan:
    """A result's plan and its RowDescription as the client gets it (None: unchanged)."""

    __slots__ = ("description", "last", "plan", "replacements", "targets")

    def __init__(self, plan: Plan, description: bytes | None) -> None:
        self.plan = plan
        self.description = description
        self.targets = frozenset(plan.whole) | frozenset(plan.scan)
        self.last = max(self.targets) if self.targets else -1
        # Columns up to the last masked one: a whole column's replacement as a field
        # (its length first), else None. Only when no detector reads a column.
        self.replacements: tuple[bytes | None, ...] | None = None if plan.scan else tuple(
            None if i not in plan.whole else _pack_i32(len(plan.whole[i])) + plan.whole[i]
            for i in range(self.last + 1))


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
    or None when no value changed. Names of the columns changed are added to `masked`."""
    count = int.from_bytes(data[start:start + 2], "big", signed=True)
    targets = plan.targets
    whole = plan.plan.whole
    last = min(plan.last, count - 1)
    pos = start + 2
    at = pos
    parts: list[bytes] | None = None
    unpack = _unpack_i32
    for i in range(last + 1):
        length = unpack(data, pos)[0]
        begin = pos + 4
        stop = begin + length if length > 0 else begin
        if stop > end:
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
    replacements = plan.replacements
    if replacements is None:  # detectors read values: one row at a time
        return _rows_one_by_one(data, pos, n, plan, masker, masked)
    if not plan.targets:  # nothing to mask in this result: rows counted
        count = 0
        while n - pos >= 5 and data[pos] == 0x44:
            end = pos + 1 + _unpack_i32(data, pos + 1)[0]
            if end > n:
                break
            count += 1
            pos = end
        return pos, count, None
    rows = _whole_rows(replacements)
    changed: set[str] = set()

    def one(data: bytes, pos: int, end: int) -> bytes:  # a row with a masked column NULL
        return rewrite_row(data, pos + 5, end, plan, masker, changed) or data[pos:end]

    end, count, out, whole = rows(data, pos, n, one)
    if masked is not None:
        if whole:
            masked.update(plan.plan.names[i] for i in plan.plan.whole)
        masked.update(changed)
    if not out:
        return end, count, None
    out.append(data[out.pop():end])  # the last row's rest, as it was
    return end, count, b"".join(out)


_ROW_HEAD = struct.Struct("!ih").unpack_from  # DataRow length, column count
_COMPILED: dict[tuple[bytes | None, ...], Any] = {}


def _whole_rows(replacements: tuple[bytes | None, ...]) -> Any:
    """A function masking the DataRows of a buffer for these columns (`RowPlan.
    replacements`), written for them: each row's fields up to the last masked one are read
    in straight-line code, without a loop over columns or a lookup per field (a masked
    session's rows all pass here: this is its cost). Rows with a masked column NULL go
    to `one` (the general `rewrite_row`). Returns (end, rows, parts, whether some row was
    masked): `parts` ends with where the last part stops being rewritten (an int)."""
    known = _COMPILED.get(replacements)
    if known is not None:
        return known
    last = len(replacements) - 1
    masked = [i for i, r in enumerate(replacements) if r is not None]
    lines = [
        "def rows(data, pos, n, one):",
        "    out = []",
        "    copied = pos",
        "    count = 0",
        "    whole = False",
        "    while n - pos >= 7 and data[pos] == 68:",
        "        length, columns = head(data, pos + 1)",
        "        end = pos + 1 + length",
        "        if end > n:",
        "            break",
        f"        if columns <= {last}:",
        "            raise Bad('DataRow: fewer columns than its RowDescription')",
        "        count += 1",
        "        p = pos + 7",
    ]
    for i in range(last + 1):
        lines.append("        s = unpack(data, p)[0]")
        if i in masked:
            lines += [f"        a{i} = p", f"        n{i} = s"]
        lines.append("        p += 4 + s if s > 0 else 4")
        if i in masked:
            lines.append(f"        b{i} = p")
    delta = sum(len(replacements[i] or b"") - 4 for i in masked)
    pieces = []
    prev = "pos + 5"
    for i in masked:
        pieces += [f"data[{prev}:a{i}]", f"R{i}"]
        prev = f"b{i}"
    lines += [
        "        if p > end:",
        "            raise Bad('DataRow: bad length')",
        f"        if {' and '.join(f'n{i} >= 0' for i in masked)}:",
        f"            out += (data[copied:pos], b'D' + pack(length + {delta} - "
        f"{' - '.join(f'n{i}' for i in masked)}), {', '.join(pieces)})",
        f"            copied = {prev}",
        "            whole = True",
        "        else:",
        "            out += (data[copied:pos], one(data, pos, end))",
        "            copied = end",
        "        pos = end",
        "    if out:",
        "        out.append(copied)",
        "    return pos, count, out, whole",
    ]
    scope: dict[str, Any] = {"head": _ROW_HEAD, "unpack": _unpack_i32, "pack": _pack_i32,
                             "Bad": pq.ProtocolError}
    scope.update({f"R{i}": replacements[i] for i in masked})
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
    while n - pos >= 5 and data[pos] == 0x44:
        end = pos + 1 + _unpack_i32(data, pos + 1)[0]
        if end > n or end < pos + 7:
            if end < pos + 7:
                raise pq.ProtocolError("DataRow: bad length")
            break
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
