"""Statement classes, whatever the protocol: the names, what each Accord role may run by
default, and what accord.yaml may give a role.

A protocol's parser (`postgres.scope`, `mysql.scope`) gives each statement a set of these
classes; a role may run the statement when it holds every one. The meaning of each class is
the same on every protocol (docs/gateway.md, Statement classes), only the statements that
fall in it differ.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

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
