"""Per-call plumbing: the app's state, the unit of work, and the authenticated caller."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from fastapi import Depends, Request, Security
from fastapi.security import HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from accord import logs
from accord.db import end_read, reading
from accord.errors import Forbidden, Invalid, NotFound, Unauthorized
from accord.identity import service as identity
from accord.identity.caller import Caller
from accord.ledger.events import Via
from accord.policy.engine import Policy
from accord.state import AppState

MAX_ID = 2**31 - 1  # ids are 32-bit on PostgreSQL; anything larger names nothing
_CURSOR = re.compile(r"[0-9]{1,18}")


def parse_cursor(value: str | None, *, largest: int = MAX_ID) -> int | None:
    """A cursor this API handed out (a non-negative integer), or Invalid.

    Clamped to `largest`: a larger cursor means "past everything", and must not overflow
    a 32-bit id column on PostgreSQL.
    """
    if value is None or value == "":
        return None
    if not _CURSOR.fullmatch(value):
        raise Invalid("not a cursor returned by this API", field="cursor")
    return min(int(value), largest)


def known_id(value: int, what: str) -> int:
    """Ids outside the storable range cannot exist: say so instead of overflowing."""
    if not 0 < value <= MAX_ID:
        raise NotFound(f"{what} {value} does not exist")
    return value


@dataclass(frozen=True)
class Principal:
    user: str
    roles: frozenset[str]
    via: str
    policy: Policy
    token_id: int | None = None
    owner: str | None = None  # set: `user` is an agent acting for `owner`

    @property
    def is_agent(self) -> bool:
        return self.owner is not None

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def can_read_all(self) -> bool:
        return "admin" in self.roles or "auditor" in self.roles

    @property
    def caller(self) -> Caller:
        return Caller(self.user, self.via, self.owner)

    def using(self, via: str) -> Principal:
        """The same caller through another channel (MCP)."""
        return replace(self, via=via)


# Dependencies that do no I/O are `async def`: FastAPI runs sync ones in its thread pool,
# and each hop there costs more than the work they do.


async def state(request: Request) -> AppState:
    value: AppState = request.app.state.accord
    return value


async def db(request: Request) -> AsyncIterator[Session]:
    """A session for this call (it connects lazily). Handlers that change state commit it."""
    session = request.app.state.accord.sessions()
    try:
        yield session
    finally:
        if session.in_transaction():  # a rollback is a round trip: not on the event loop
            await run_in_threadpool(session.close)
        else:
            session.close()


# Following the policy and checking a token only read. On SQLite they run in a read
# transaction of their own (deferred: no write gate, no wait behind writers, even in a
# POST), ended before the handler begins its own, which queues for the gate if it writes.
# On PostgreSQL they stay in the call's one transaction, as before.


def _follow_policy(session: Session, st: AppState) -> None:
    with reading():
        st.policies.follow(session)
        end_read(session)


def _check_token(session: Session, st: AppState, token: str) -> tuple[int, str, str]:
    with reading():
        row = identity.authenticate(session, policy=st.policies.current, token=token,
                                    now=st.now())
        end_read(session)
    st.tokens.put(identity.hash_token(token), row)
    return row.id, row.user, row.kind


def bearer_token(header: str) -> str:
    """The token of an `Authorization: Bearer` header, or Unauthorized saying what is wrong."""
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized("missing bearer token; send 'Authorization: Bearer <token>'")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("malformed Authorization header; expected 'Bearer <token>'")
    return token.strip()


def _cached(st: AppState, token: str) -> tuple[int, str, str] | None:
    """A token verified a moment ago (its expiry and holder checked again now), or None."""
    hit = st.tokens.get(identity.hash_token(token))
    if hit is None:
        return None
    if hit.expires_at is not None and hit.expires_at <= st.now():
        raise Unauthorized("token has expired")
    if why := identity.gone(st.policies.current, hit.user, hit.kind):
        raise Unauthorized(why)
    return hit.token_id, hit.user, hit.kind


def principal_of(policy: Policy, token_id: int, name: str, kind: str, via: str) -> Principal:
    """The caller a verified token stands for: a user with their roles, or an agent (only
    ever a requester) with its owner."""
    owner = policy.owner_of(name) if kind == identity.AGENT else None
    return Principal(name, frozenset(policy.roles_of(name)), via, policy, token_id, owner)


def authenticate(session: Session, st: AppState, token: str, *, via: str) -> Principal:
    """The caller behind a bearer token, outside a FastAPI call (MCP): same checks."""
    if st.policies.due():
        _follow_policy(session, st)
    found = _cached(st, token)
    if found is None:
        found = _check_token(session, st, token)
    return principal_of(st.policies.current, *found, via)


# For the OpenAPI document only (its security scheme, and Swagger UI's "Authorize"):
# `principal` reads the header itself, to say what is wrong with it.
BEARER = HTTPBearer(scheme_name="bearer", auto_error=False,
                    description="An Accord API token (`accord token issue USER`, or the demo's "
                                "logins).")


async def principal(request: Request, session: Session = Depends(db),
                    _documented: object = Security(BEARER)) -> Principal:
    token = bearer_token(request.headers.get("authorization", ""))
    st: AppState = request.app.state.accord
    if st.policies.due():
        await run_in_threadpool(_follow_policy, session, st)
    policy = st.policies.current
    found = _cached(st, token)
    if found is None:
        found = await run_in_threadpool(_check_token, session, st, token)
    logs.set_user(found[1])  # on every line this call logs from now on
    # `via` says how the caller proved who they are, so it never comes from a header the
    # caller chose: a bearer token is the API, whichever program sent it.
    return principal_of(policy, *found, Via.API)


async def require_admin(who: Principal = Depends(principal)) -> Principal:
    if not who.is_admin:
        raise Forbidden("this needs the Accord admin role")
    return who


async def require_reader(who: Principal = Depends(principal)) -> Principal:
    if not who.can_read_all:
        raise Forbidden("this needs the Accord auditor or admin role")
    return who
