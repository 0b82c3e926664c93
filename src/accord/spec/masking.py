"""`resources[].gateway.masking`: which values in query results the gateway rewrites before
they reach a role's client, whatever the protocol.

```yaml
gateway:
  masking:
    - name: customer-pii
      roles: [read]                      # default: every role
      columns: [public.customers.email]  # schema.table.column; `*` as a whole part: any
      column_patterns: ["*email*", ssn]  # a column's name (as stored or as returned), glob
      detectors: [email, card, iban, phone]  # values found in any text column
      replacement: "****"
```

A column a rule names (by `columns` or `column_patterns`) has every value replaced by
`replacement`, NULLs kept; a detector replaces what it finds inside text values. Roles
with masking may not `COPY ... TO STDOUT` (the copy stream is not rows the gateway reads).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from accord.spec.base import NAME, Strict

DETECTORS = ("email", "card", "iban", "phone")
# `schema.table.column`, each part an identifier, a name in double quotes, or `*`.
_IDENT = r'(?:[A-Za-z_][A-Za-z0-9_$]*|"[^"]+"|\*)'
COLUMN = re.compile(rf"^{_IDENT}\.{_IDENT}\.{_IDENT}$")
PATTERN = re.compile(r"^[A-Za-z0-9_$*?]{1,63}$")


class MaskingSpec(Strict):
    """One masking rule: what it masks, for which roles, and with what."""

    name: str
    roles: list[str] = Field(default_factory=list)  # empty: every role
    columns: list[str] = Field(default_factory=list)
    column_patterns: list[str] = Field(default_factory=list)
    detectors: list[Literal["email", "card", "iban", "phone"]] = Field(default_factory=list)
    replacement: str = Field(default="****", max_length=64)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("must be lowercase letters, digits, '.', '_' or '-' (max 63)")
        return v

    @property
    def conditions(self) -> bool:
        return bool(self.columns or self.column_patterns or self.detectors)
