"""`resources[].gateway.guardrails`: rules the gateway matches on each parsed statement,
whatever the protocol, and what it does on a match (`block`, `warn`, `review`).

```yaml
gateway:
  review_window: 1h              # an approved statement runs once within this
  guardrails:
    - name: no-unbounded-delete
      action: block              # block | warn | review
      roles: [write, admin]      # default: every role
      statements: [delete, update]
      without_where: true
      message: "UPDATE and DELETE need a WHERE clause"
```

A rule matches a statement when every condition it gives holds: `statements` (the kind of
some operation in the statement, anywhere in its tree: CTEs, EXPLAIN ANALYZE, PREPARE,
functions that run SQL text), `tables` and `schemas` (a table that operation touches),
`without_where` (an UPDATE or DELETE without a WHERE, or with one that names no column),
`without_limit` (a query without LIMIT), `functions` (a function called anywhere). The
conditions on an operation hold for one and the same operation. Lists are any-of.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Literal

from pydantic import Field, field_validator

from accord.spec.base import NAME, Strict

ACTIONS = ("block", "warn", "review")
# Statement kinds a rule may name (each protocol's parser maps its statements to these).
STATEMENT_KINDS = (
    "select", "insert", "update", "delete", "merge", "copy", "truncate", "drop", "create",
    "alter", "grant", "revoke", "call", "do", "lock", "set", "vacuum", "other",
)
# `schema.table`, `table`, or a name in double quotes; `*` as a whole part: any.
_IDENT = r'(?:[A-Za-z_][A-Za-z0-9_$]*|"[^"]+"|\*)'
TABLE = re.compile(rf"^{_IDENT}(?:\.{_IDENT})?$")
FUNCTION = re.compile(rf"^(?:{_IDENT}\.)?{_IDENT}$")


class GuardrailSpec(Strict):
    """One rule: conditions (all that are given must hold) and an action."""

    name: str
    action: Literal["block", "warn", "review"]
    message: str = ""  # shown to the client (block: the error; warn: the notice)
    roles: list[str] = Field(default_factory=list)  # empty: every role
    statements: list[str] = Field(default_factory=list)
    tables: list[str] = Field(default_factory=list)
    schemas: list[str] = Field(default_factory=list)
    functions: list[str] = Field(default_factory=list)
    without_where: bool = False
    without_limit: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("must be lowercase letters, digits, '.', '_' or '-' (max 63)")
        return v

    @property
    def conditions(self) -> bool:
        """Whether it says anything about a statement (a rule without conditions would
        match every statement)."""
        return bool(self.statements or self.tables or self.schemas or self.functions
                    or self.without_where or self.without_limit)


DEFAULT_REVIEW_WINDOW = timedelta(hours=1)
