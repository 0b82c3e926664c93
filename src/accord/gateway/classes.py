"""Statement classes, whatever the protocol: the names, what each Accord role may run by
default, and what accord.yaml may give a role.

A protocol's parser (`postgres.scope`, `mysql.scope`) gives each statement a set of these
classes; a role may run the statement when it holds every one. The meaning of each class is
the same on every protocol (docs/gateway.md, Statement classes), only the statements that
fall in it differ.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Generic, Protocol, TypeVar

READ = "read"
WRITE = "write"
DDL = "ddl"
ADMIN = "admin"
TRANSACTION = "transaction"
SESSION = "session"
IDENTITY = "identity"
PINNED = "pinned"
UNKNOWN = "unknown"
CLASSES = (READ, WRITE, DDL, ADMIN, TRANSACTION, SESSION, IDENTITY, PINNED, UNKNOWN)
ALL = "all"  # in accord.yaml: every class except identity (and pinned, which none holds)

DEFAULT_ROLES: dict[str, frozenset[str]] = {
    "read": frozenset({READ, TRANSACTION, SESSION}),
    "write": frozenset({READ, WRITE, TRANSACTION, SESSION}),
    "admin": frozenset({READ, WRITE, DDL, ADMIN, TRANSACTION, SESSION, UNKNOWN}),
}
FALLBACK = DEFAULT_ROLES["read"]  # roles with another name and no configuration

# What a refused statement tried beyond its grant (`records.Violation.escalation`): become
# another identity, change how the server reads text, or reach the server's files, programs
# or other sessions. The detectors alert on each.
ESCALATIONS = ("identity", "encoding", "server")


def role_classes(role: str, configured: Mapping[str, Iterable[str]] | None = None
                 ) -> frozenset[str]:
    """The classes an Accord role may run: accord.yaml's, else the defaults (never
    `pinned`: no configuration can let a session change how the server reads text)."""
    if configured and role in configured:
        out: set[str] = set()
        for name in configured[role]:
            if name == ALL:
                out.update(c for c in CLASSES if c not in (IDENTITY, PINNED))
            else:
                out.add(name)
        out.discard(PINNED)
        return frozenset(out)
    return DEFAULT_ROLES.get(role, FALLBACK)


class _Statement(Protocol):
    @property
    def classes(self) -> frozenset[str]: ...


class _Verdict(Protocol):
    @property
    def plain(self) -> bool: ...
    @property
    def statements(self) -> Sequence[_Statement]: ...


V = TypeVar("V", bound=_Verdict)
DIGITS = bytes.maketrans(b"123456789", b"000000000")  # a statement's shape: digits as 0
MAX_CACHED = 8192  # longer text is parsed each time (it is rarely sent again)


class VerdictCache(Generic[V]):
    """A protocol parser's verdicts, kept in two bounded maps: by exact text (prepared and
    repeated statements), and for plain statements, whose classes depend only on keywords
    and which kinds of node occur, by shape (`DIGITS`), so `WHERE id = 123` is parsed once.
    What counts as plain, and which text may be looked up by shape, is the protocol's."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._exact: dict[bytes, V] = {}
        self._shape: dict[bytes, frozenset[str]] = {}

    def remember(self, sql: bytes, key: bytes | None, verdict: V) -> V:
        """Keep `verdict` of `sql` (`key`: its shape, None when it may not be looked up by
        shape) and return it."""
        if verdict.plain and key is not None:
            if len(self._shape) >= self.size:
                self._shape.clear()
            self._shape[key] = verdict.statements[0].classes
        elif len(sql) <= MAX_CACHED:
            if len(self._exact) >= self.size:
                self._exact.clear()
            self._exact[sql] = verdict
        return verdict
