"""Bearer tokens for /scim/v2: one per identity provider connector, issued by an operator
(`accord scim token issue NAME`), stored as a sha256 hash, revocable.

They live in their own table (`scim_clients`), apart from API tokens: /api/v1 looks its
tokens up in `api_tokens` only and /scim/v2 in `scim_clients` only, so neither kind opens
the other's door. The `accscim_` prefix tells a person which kind they hold.
"""

from __future__ import annotations

import secrets
import time
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.errors import Invalid, NotFound, Unauthorized
from accord.identity.service import hash_token
from accord.ledger import service as ledger
from accord.ledger.events import Actor, EventType
from accord.people.models import ScimClient

PREFIX = "accscim_"


def issue(session: Session, *, name: str, actor: Actor, now: datetime) -> tuple[ScimClient, str]:
    """A new token for the connector `name`; returns the row and the only copy of the secret."""
    name = name.strip()
    if not name or len(name) > 100 or not name.isprintable():
        raise Invalid("a SCIM client's name is 1 to 100 printable characters", field="name")
    secret = PREFIX + secrets.token_urlsafe(32)
    row = ScimClient(name=name, token_hash=hash_token(secret), prefix=secret[:len(PREFIX) + 6],
                     created_at=now, created_by=actor.id)
    session.add(row)
    session.flush()
    ledger.record(session, type=EventType.SCIM_TOKEN_ISSUED, actor=actor,
                  subject=f"scim_client:{row.id}",
                  data={"client_id": row.id, "name": row.name, "prefix": row.prefix},
                  time=now)
    return row, secret


def list_clients(session: Session) -> list[ScimClient]:
    return list(session.execute(select(ScimClient).order_by(ScimClient.id)).scalars())


def revoke(session: Session, *, client_id: int, actor: Actor, now: datetime) -> ScimClient:
    """Revoke a token: the next SCIM call made with it is refused. Revoking twice is a no-op."""
    row = session.get(ScimClient, client_id)
    if row is None:
        raise NotFound(f"SCIM token {client_id} does not exist")
    if row.revoked_at is not None:
        return row
    row.revoked_at = now
    row.revoked_by = actor.id
    VERIFIED.clear()  # this process stops honouring it at once, others within a second
    ledger.record(session, type=EventType.SCIM_TOKEN_REVOKED, actor=actor,
                  subject=f"scim_client:{row.id}",
                  data={"client_id": row.id, "name": row.name, "prefix": row.prefix},
                  time=now)
    session.flush()
    return row


def authenticate(session: Session, token: str) -> ScimClient:
    """The live SCIM client behind a bearer secret, or Unauthorized saying why."""
    row = session.execute(select(ScimClient).where(
        ScimClient.token_hash == hash_token(token))).scalar_one_or_none()
    if row is None:
        raise Unauthorized("invalid token (/scim/v2 takes a token from `accord scim token "
                           "issue`, not an API token)")
    if row.revoked_at is not None:
        raise Unauthorized("token has been revoked")
    return row


class Verified:
    """SCIM tokens checked against the database in the last second, by hash: an initial push
    is tens of thousands of calls with one token. A revocation reaches every process within
    the second (the CLI that revokes runs in another process anyway)."""

    TTL = 1.0

    def __init__(self) -> None:
        self._items: dict[str, tuple[str, float]] = {}

    def get(self, digest: str) -> str | None:
        hit = self._items.get(digest)
        if hit is None or time.monotonic() - hit[1] > self.TTL:
            return None
        return hit[0]

    def put(self, digest: str, name: str) -> None:
        if len(self._items) > 1000:
            self._items.clear()
        self._items[digest] = (name, time.monotonic())

    def clear(self) -> None:
        self._items.clear()


VERIFIED = Verified()
