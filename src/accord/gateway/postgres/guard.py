"""Guardrails for PostgreSQL: what a statement does (`gateway.rules.Facts`), read from
PostgreSQL's own parser (pglast), and the rules of a session matched on it.

Operations are found wherever they sit in the tree: `WITH d AS (DELETE ...) SELECT`,
`EXPLAIN ANALYZE DELETE`, `PREPARE p AS DELETE`, `COPY (SELECT ...) TO STDOUT`, and SQL
text given as a constant to the functions that run it (`query_to_xml('delete ...')`).
Comments, case and quoting are the parser's business, so they change nothing. Plain
EXPLAIN runs nothing: only its own kind (`other`) is an operation.

`Guard` caches outcomes as `scope.Classifier` caches classes: by exact text, and for plain
statements by shape (digits turned into 0) when no rule names an identifier with a digit
(then digits cannot change which names a statement holds match a rule).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from pglast import parser as pgparser

from accord.gateway.classes import DIGITS
from accord.gateway.postgres.scope import (
    _MAX_NESTING,
    _NOT_A_PARAM,
    _SQL_TEXT_ARGS,
    _sql_text,
    _truthy_option,
)
from accord.gateway.rules import NOTHING, Facts, Operation, Outcome, RuleSet

_KINDS = {
    "SelectStmt": "select", "InsertStmt": "insert", "UpdateStmt": "update",
    "DeleteStmt": "delete", "MergeStmt": "merge", "CopyStmt": "copy",
    "TruncateStmt": "truncate", "CallStmt": "call", "DoStmt": "do", "LockStmt": "lock",
    "VariableSetStmt": "set", "VacuumStmt": "vacuum", "IndexStmt": "create",
    "ViewStmt": "create", "DefineStmt": "create", "CompositeTypeStmt": "create",
    "RuleStmt": "create", "RenameStmt": "alter", "ReindexStmt": "alter",
    "ClusterStmt": "alter", "CommentStmt": "alter",
}
_DML = ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt")
# Statements whose `query` runs (EXPLAIN only with ANALYZE, see `_queries`).
_RUNS_QUERY = ("PrepareStmt", "DeclareCursorStmt", "CopyStmt", "CreateTableAsStmt")


def _kind(top: str, node: dict[str, Any]) -> str:
    kind = _KINDS.get(top)
    if kind is not None:
        return kind
    if top.startswith("Drop"):
        return "drop"
    if top.startswith("Create"):
        return "create"
    if top.startswith("Alter"):
        return "alter"
    if top in ("GrantStmt", "GrantRoleStmt"):
        return "grant" if node.get("is_grant") else "revoke"
    return "other"


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) under `node` (the JSON form of the parse tree)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                yield key, value
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def _tables(node: Any) -> frozenset[tuple[str | None, str]]:
    """Every relation named under `node` (RangeVars, wrapped or not)."""
    out: set[tuple[str | None, str]] = set()
    for _, value in _walk({"": node}):
        if isinstance(value, dict) and isinstance(value.get("relname"), str):
            schema = value.get("schemaname")
            out.add((str(schema).lower() if schema else None, value["relname"].lower()))
    return frozenset(out)


def _dropped(node: dict[str, Any]) -> frozenset[tuple[str | None, str]]:
    """DROP's objects as tables (the last two parts of each qualified name)."""
    out: set[tuple[str | None, str]] = set()
    for obj in node.get("objects") or []:
        items = obj.get("List", {}).get("items") if isinstance(obj, dict) else None
        names = [i.get("String", {}).get("sval") for i in items or [] if isinstance(i, dict)]
        names = [str(n).lower() for n in names if n]
        if names:
            out.add((names[-2] if len(names) > 1 else None, names[-1]))
    return frozenset(out) if out else _tables(node)


def _has_column(node: Any) -> bool:
    return any(key == "ColumnRef" for key, _ in _walk({"": node}))


def _limited(select: dict[str, Any]) -> bool:
    count = select.get("limitCount")
    return isinstance(count, dict) and not (
        "A_Const" in count and count["A_Const"].get("isnull"))


def _queries(top: str, node: dict[str, Any]) -> list[dict[str, Any]]:
    """The queries a statement runs as its result (the statement itself for SELECT)."""
    if top == "SelectStmt":
        return [node]
    inner = None
    if top in _RUNS_QUERY or (top == "ExplainStmt" and _analyze(node)):
        inner = node.get("query")
    if isinstance(inner, dict) and inner:
        sub_top, sub = next(iter(inner.items()))
        if isinstance(sub, dict):
            return _queries(sub_top, sub) if sub_top != "SelectStmt" else [sub]
    return []


def _analyze(explain: dict[str, Any]) -> bool:
    """Whether an EXPLAIN runs its statement (ANALYZE, not turned off)."""
    return any((o.get("DefElem") or {}).get("defname") == "analyze"
               and _truthy_option(o.get("DefElem") or {}) for o in explain.get("options") or [])


def _runs(top: str, node: dict[str, Any]) -> dict[str, Any]:
    """The part of a statement that runs (EXPLAIN without ANALYZE: nothing but itself)."""
    if top == "ExplainStmt" and not _analyze(node):
        return {}
    return node


def facts_of(top: str, node: dict[str, Any], depth: int = 0) -> Facts:
    """What one statement's tree does."""
    ops: list[Operation] = []
    functions: set[str] = set()
    runs = _runs(top, node)
    if top != "SelectStmt" and top not in _DML:
        if top == "DropStmt":
            ops.append(Operation("drop", _dropped(node)))
        elif top not in ("ExplainStmt", "PrepareStmt", "DeclareCursorStmt"):
            ops.append(Operation(_kind(top, node), _tables(node)))
        else:
            ops.append(Operation("other"))
    queries = {id(q) for q in _queries(top, node)}
    extra: list[Facts] = []
    for key, value in _walk({top: runs}):
        if not isinstance(value, dict):
            continue
        if key in _DML:
            where = None
            if key in ("UpdateStmt", "DeleteStmt"):
                clause = value.get("whereClause")
                where = clause is not None and _has_column(clause)
            ops.append(Operation(_KINDS[key], _tables(value), where=where))
        elif key == "SelectStmt":
            limit = _limited(value) if id(value) in queries else None
            ops.append(Operation("select", _tables(value), limit=limit))
        elif key == "FuncCall":
            names = [n.get("String", {}).get("sval", "") for n in value.get("funcname", [])]
            name = str(names[-1]).lower() if names else ""
            functions.add(name)
            args = value.get("args") or []
            positions = (1,) if name == "ts_rewrite" and len(args) == 2 else \
                _SQL_TEXT_ARGS.get(name, ())
            for i in positions:
                text = _sql_text(args[i]) if i < len(args) else None
                if text is not None and depth < _MAX_NESTING:
                    extra += text_facts(text, depth + 1)
    for f in extra:
        ops += f.operations
        functions |= f.functions
    return Facts(tuple(ops), frozenset(functions))


def text_facts(text: str, depth: int = 0) -> list[Facts]:
    """The facts of each statement of `text` (text that does not parse: one `other`)."""
    try:
        if "\0" in text:
            raise ValueError("NUL in statement text")
        tree = json.loads(pgparser.parse_sql_json(text))
    except (pgparser.ParseError, ValueError, RecursionError):
        return [Facts((Operation("other"),))]
    out = []
    for raw in tree.get("stmts") or []:
        body = raw.get("stmt") or {}
        if not body:
            out.append(Facts((Operation("other"),)))
            continue
        top, node = next(iter(body.items()))
        out.append(facts_of(top, node if isinstance(node, dict) else {}, depth))
    return out


class Guard:
    """A session's rules (one role of one resource) with bounded caches of outcomes."""

    def __init__(self, rules: RuleSet, size: int = 4096) -> None:
        self.rules = rules
        self.size = size
        self._exact: dict[bytes, Outcome] = {}
        self._shape: dict[bytes, Outcome] = {}

    def _key(self, sql: bytes) -> bytes | None:
        if self.rules.digits or len(sql) > 8192 or b"&" in sql or (
                b"$" in sql and _NOT_A_PARAM.search(sql)):
            return None
        return sql.translate(DIGITS)

    def quiet(self, sql: bytes) -> bool:
        """Whether `sql` is known to match no rule (the data path's fast check)."""
        hit = self._exact.get(sql)
        if hit is None:
            key = self._key(sql)
            hit = self._shape.get(key) if key is not None else None
        return hit is NOTHING

    def __call__(self, sql: bytes) -> Outcome:
        hit = self._exact.get(sql)
        if hit is not None:
            return hit
        key = self._key(sql)
        if key is not None:
            hit = self._shape.get(key)
            if hit is not None:
                return hit
        try:
            text = sql.decode("utf-8")
        except UnicodeDecodeError:
            facts = [Facts((Operation("other"),))]
        else:
            facts = text_facts(text)
        outcome = self.rules.check(facts)
        if key is not None and any(_SQL_TEXT_ARGS.get(name) or name == "ts_rewrite"
                                   for f in facts for name in f.functions):
            key = None  # a digit in SQL text given to a function may be an escape: exact
        cache, k = (self._shape, key) if key is not None else (self._exact, sql)
        if len(sql) <= 8192:
            if len(cache) >= self.size:
                cache.clear()
            cache[k] = outcome
        return outcome
