"""Guardrail rules, whatever the protocol: what a parsed statement does (`Facts`), the rules
of one session (`RuleSet`), and which of them a statement matches.

A protocol's parser (`postgres.guard`) turns a statement into `Facts`: the operations in it
(an UPDATE of `public.orders` without a WHERE, a SELECT without LIMIT over these tables,
...), wherever they sit in its tree, and the functions it calls. Rules come from
`accord.yaml` (`spec.guardrails.GuardrailSpec`) and are matched here, so MySQL's parser
can feed the same rules.

Matching is deterministic: every rule a statement matches is reported, in the order of
the file, and the action taken is the strictest (`block`, then `review`, then `warn`);
among rules of that action, the first in the file names the outcome.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from accord.spec.guardrails import GuardrailSpec

BLOCK, REVIEW, WARN = "block", "review", "warn"
_STRICTNESS = {BLOCK: 0, REVIEW: 1, WARN: 2}


@dataclass(frozen=True)
class Operation:
    """One thing a statement does: its kind (`spec.guardrails.STATEMENT_KINDS`) and the
    tables it touches, as (schema or None, name), names case-folded."""

    kind: str
    tables: frozenset[tuple[str | None, str]] = frozenset()
    where: bool | None = None  # UPDATE/DELETE: whether it has a WHERE naming a column
    limit: bool | None = None  # a query: whether it has a LIMIT


@dataclass(frozen=True)
class Facts:
    """What one statement does, as far as rules care."""

    operations: tuple[Operation, ...] = ()
    functions: frozenset[str] = frozenset()  # names called anywhere, case-folded, unqualified


def _name(part: str) -> str:
    """An identifier as a rule gives it: quoted kept, unquoted case-folded. Rules compare
    case-insensitively (stricter than the server: `"Orders"` also matches `orders`)."""
    return part[1:-1].lower() if part.startswith('"') and part.endswith('"') else part.lower()


def split_table(ref: str) -> tuple[str | None, str]:
    """`schema.table` or `table` (either part may be `*` or quoted) as (schema, table)."""
    if ref.count(".") and not (ref.startswith('"') and ref.endswith('"') and ref.count('"') == 2):
        schema, _, table = ref.partition(".")
        return _name(schema), _name(table)
    return None, _name(ref)


class Rule:
    """A compiled guardrail."""

    __slots__ = ("action", "functions", "kinds", "message", "name", "ops", "schemas",
                 "tables", "without_limit", "without_where")

    def __init__(self, spec: GuardrailSpec) -> None:
        self.name = spec.name
        self.action = spec.action
        self.message = spec.message
        self.kinds = frozenset(k.lower() for k in spec.statements)
        self.tables = tuple(split_table(t) for t in spec.tables)
        self.schemas = frozenset(_name(s) for s in spec.schemas)
        self.functions = frozenset(split_table(f)[1] for f in spec.functions)
        self.without_where = spec.without_where
        self.without_limit = spec.without_limit
        self.ops = bool(self.kinds or self.tables or self.schemas or self.without_where
                        or self.without_limit)

    def _table(self, table: tuple[str | None, str]) -> bool:
        schema, name = table
        for want_schema, want in self.tables:
            if want != "*" and want != name:
                continue
            # An unqualified table may be in any schema on the search_path: it matches.
            if want_schema in (None, "*") or schema is None or schema == want_schema:
                return True
        return False

    def _operation(self, op: Operation) -> bool:
        if self.kinds and op.kind not in self.kinds:
            return False
        if self.without_where and op.where is not False:
            return False
        if self.without_limit and op.limit is not False:
            return False
        if self.tables and not any(self._table(t) for t in op.tables):
            return False
        return not (self.schemas and not any(
            s is None or s in self.schemas for s, _ in op.tables))

    def matches(self, facts: Facts) -> bool:
        if self.functions and not (self.functions & facts.functions):
            return False
        return not self.ops or any(self._operation(op) for op in facts.operations)


@dataclass(frozen=True)
class Match:
    rule: str
    action: str
    message: str


@dataclass(frozen=True)
class Outcome:
    """What the rules make of a statement: every match, and the action taken."""

    matches: tuple[Match, ...] = ()

    @property
    def action(self) -> str | None:
        """The strictest action among the matches (None: no rule matched)."""
        if not self.matches:
            return None
        return min((m.action for m in self.matches), key=_STRICTNESS.__getitem__)

    @property
    def deciding(self) -> Match | None:
        """The first match (in file order) of the strictest action."""
        action = self.action
        return next((m for m in self.matches if m.action == action), None)

    @property
    def warnings(self) -> tuple[Match, ...]:
        return tuple(m for m in self.matches if m.action == WARN)


NOTHING = Outcome()


@dataclass
class RuleSet:
    """The guardrails that apply to one role of one resource, in file order."""

    rules: tuple[Rule, ...] = ()
    # Whether some rule names an identifier containing a digit (then statements that differ
    # only in digits may differ in outcome: no caching by shape).
    digits: bool = False
    actions: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, specs: Iterable[GuardrailSpec], role: str) -> RuleSet:
        chosen = [s for s in specs if not s.roles or role in s.roles]
        names = [n for s in chosen for n in (*s.tables, *s.schemas, *s.functions)]
        return cls(tuple(Rule(s) for s in chosen),
                   any(ch.isdigit() for n in names for ch in n),
                   frozenset(s.action for s in chosen))

    def __bool__(self) -> bool:
        return bool(self.rules)

    def check(self, facts: Sequence[Facts]) -> Outcome:
        """Every rule matched by any of `facts` (the statements of one text)."""
        found = tuple(Match(r.name, r.action, r.message) for r in self.rules
                      if any(r.matches(f) for f in facts))
        return Outcome(found) if found else NOTHING


def statement_hash(text: bytes, params: Sequence[str | None] | None = None) -> str:
    """The sha256 that binds a reviewed statement's approval to its execution: the exact
    text, and its parameter values when it has any (JSON, in order)."""
    h = hashlib.sha256(text)
    if params:
        h.update(b"\0" + json.dumps(list(params), ensure_ascii=False).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class ReviewAsk:
    """A statement a `review` rule holds until a decision is known: run it (an approval of
    exactly it was claimed) or refuse it (naming the request that reviews it)."""

    text: bytes
    params: tuple[str | None, ...] | None
    protocol: str
    hash: str
    rule: str
    message: str


@dataclass(frozen=True)
class ReviewDecision:
    """What became of a `ReviewAsk`: `run` (request `request_id` approved it and this run
    used it up) or not, with what to tell the client."""

    run: bool
    request_id: int | None
    message: str
    detail: str = ""
    hint: str = ""
    outcome: str = ""  # executed | filed | pending | refused_again | expired | denied | error
