"""The connector interface: what every target (PostgreSQL, MariaDB, a webhook) offers.

Connectors are synchronous and idempotent: granting what is already granted and
revoking what is already gone both succeed, so the worker can retry blindly. They
never log or return credentials except the one-time `secret` of a grant result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class GrantSpec:
    """One grant as the target needs to see it."""

    grant_id: int
    user: str  # the Accord user
    resource: str
    role: str  # the Accord role offered by the resource
    ends_at: datetime
    idempotency_key: str  # stable per (grant, action), e.g. "grant-17-activate"


@dataclass(frozen=True)
class GrantResult:
    """What the grantee needs to connect. `secret` is shown once, then forgotten."""

    login: str
    connection: dict[str, str | int] = field(default_factory=dict)  # host, port, database, user
    secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str


class ConnectorError(Exception):
    """The target refused or could not be reached. `retryable` says whether to try again."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class Connector(Protocol):
    kind: str

    def grant(self, spec: GrantSpec) -> GrantResult:
        """Make the access exist (idempotent); raise ConnectorError on failure."""
        ...

    def revoke(self, spec: GrantSpec) -> None:
        """Make the access not exist and end the user's live sessions (idempotent)."""
        ...

    def granted(self) -> set[tuple[str, str]]:
        """(Accord user, Accord role) pairs the target grants through Accord-managed roles."""
        ...

    def health(self) -> Health:
        ...

    def close(self) -> None:
        ...
