"""Per-call plumbing: the app's state, the unit of work, and the authenticated caller."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from accord.config import Settings
from accord.errors import Forbidden, Invalid, NotFound, Unauthorized
from accord.identity import service as identity
from accord.ledger.checkpoints import LedgerConfig
from accord.ledger.events import Via
from accord.policy.engine import Policy
from accord.policy.store import PolicyStore
from accord.requests.service import Caller

CLIENT_VIAS = {"cli": Via.CLI, "web": Via.WEB, "api": Via.API}
MAX_ID = 2**31 - 1  # ids are 32-bit on PostgreSQL; anything larger names nothing
_CURSOR = re.compile(r"[0-9]{1,18}")


def parse_cursor(value: str | None) -> int | None:
    """A cursor this API handed out (a non-negative integer), or Invalid."""
    if value is None or value == "":
        return None
    if not _CURSOR.fullmatch(value):
        raise Invalid("not a cursor returned by this API", field="cursor")
    return int(value)


def known_id(value: int, what: str) -> int:
    """Ids outside the storable range cannot exist: say so instead of overflowing."""
    if not 0 < value <= MAX_ID:
        raise NotFound(f"{what} {value} does not exist")
    return value


@dataclass
class AppState:
    settings: Settings
    sessions: sessionmaker[Session]
    policies: PolicyStore
    now: Callable[[], datetime]
    ledger: LedgerConfig


@dataclass(frozen=True)
class Principal:
    user: str
    roles: frozenset[str]
    via: str
    policy: Policy
    token_id: int | None = None

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def can_read_all(self) -> bool:
        return "admin" in self.roles or "auditor" in self.roles

    @property
    def caller(self) -> Caller:
        return Caller(self.user, self.via)


def state(request: Request) -> AppState:
    value: AppState = request.app.state.accord
    return value


def db(request: Request) -> Iterator[Session]:
    """A session for this call. Handlers that change state commit it themselves."""
    with state(request).sessions() as session:
        yield session


def principal(request: Request, session: Session = Depends(db)) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized("missing bearer token; send 'Authorization: Bearer <token>'")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("malformed Authorization header; expected 'Bearer <token>'")
    st = state(request)
    policy = st.policies.current
    row = identity.authenticate(session, policy=policy, token=token.strip(), now=st.now())
    via = CLIENT_VIAS.get(request.headers.get("x-accord-client", "api"), Via.API)
    who = Principal(row.user, frozenset(policy.roles_of(row.user)), via, policy, row.id)
    # End the read transaction: on SQLite it holds the write lock (BEGIN IMMEDIATE), and a
    # handler that only reads, or works in another session, must not keep it.
    session.commit()
    return who


def require_admin(who: Principal = Depends(principal)) -> Principal:
    if not who.is_admin:
        raise Forbidden("this needs the Accord admin role")
    return who


def require_reader(who: Principal = Depends(principal)) -> Principal:
    if not who.can_read_all:
        raise Forbidden("this needs the Accord auditor or admin role")
    return who
