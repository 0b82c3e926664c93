"""Gateway domain logic: connection tokens, who may connect, usage, audit events. Never commits."""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sqlalchemy import case, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from accord.config import GatewaySpec, PostgresTarget, ResourceSpec
from accord.gateway.models import GatewaySpoolMark, GatewayToken, GatewayUsage
from accord.grants.models import Grant, GrantStatus
from accord.grants.service import effective_status
from accord.ledger import service as ledger
from accord.ledger.events import Actor, EventType, Via, format_time
from accord.policy.engine import Policy

if TYPE_CHECKING:
    from accord.gateway.audit import Fact

TOKEN_PREFIX = "acg_"
_VIA = str(Via.GATEWAY)  # a plain str: the ledger's fast canonical encoder takes only those
KEEP_EXPIRED = timedelta(days=1)  # expired tokens are pruned this long after expiry


class Refusal(Exception):
    """Why a client may not connect: a SQLSTATE and a message for its driver to show.

    `authenticated`: the client proved who it is (its token was issued to that user), so
    the refusal is recorded as that user's; otherwise as an anonymous client's, the name it
    claimed kept in the data. `escalation`: what the client tried beyond its grant
    (`identity`, `encoding`, `server`), for the detectors.
    """

    def __init__(self, code: str, message: str, hint: str = "", *,
                 authenticated: bool = False, escalation: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.authenticated = authenticated
        self.escalation = escalation


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def reachable(spec: ResourceSpec) -> bool:
    """Whether the gateway can reach a resource: its own `gateway:` block or a postgres target."""
    return spec.gateway is not None or isinstance(spec.provision, PostgresTarget)


def issue_token(session: Session, *, grant: Grant, actor: Actor, now: datetime,
                ttl: timedelta) -> tuple[GatewayToken, str]:
    """A connection token for the grantee: returned once, stored as its sha256."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = GatewayToken(token_hash=hash_token(secret), user=grant.user, resource=grant.resource,
                       grant_id=grant.id, created_at=now, expires_at=min(now + ttl, grant.ends_at))
    session.execute(delete(GatewayToken).where(GatewayToken.expires_at < now - KEEP_EXPIRED))
    session.add(row)
    session.flush()
    ledger.record(session, type=EventType.GATEWAY_TOKEN_ISSUED, actor=actor,
                  subject=f"grant:{grant.id}",
                  resource={"name": grant.resource, "role": grant.role},
                  data={"grant_id": grant.id, "token_id": row.id, "user": grant.user,
                        "expires_at": format_time(row.expires_at)}, time=now)
    return row, secret


def authenticate(session: Session, *, policy: Policy, user: str, resource: str, token: str,
                 now: datetime) -> Grant:
    """The active grant a client's connection token stands for, or a Refusal saying why."""
    spec = policy.resources.get(resource)
    if spec is None:
        raise Refusal("3D000", f'Accord gateway: resource "{resource}" does not exist',
                      "the database name is the Accord resource name")
    if not reachable(spec):
        raise Refusal("3D000", f"Accord gateway: resource {resource} is not reachable "
                               f"through the gateway")
    row = None
    if token.startswith(TOKEN_PREFIX) and len(token) < 200:
        row = session.execute(select(GatewayToken).where(
            GatewayToken.token_hash == hash_token(token))).scalar_one_or_none()
    if row is None or row.user != user or row.resource != resource:
        raise Refusal("28P01", f'password authentication failed for user "{user}": not a '
                               f"valid Accord connection token for {resource}",
                      f"get one with `accord connect {resource}` (needs an active grant)")
    # From here the client holds a token issued to `user`: it is who it says it is.
    if row.expires_at <= now:
        raise Refusal("28P01", f"Accord connection token expired at "
                               f"{format_time(row.expires_at)}",
                      f"get a new one with `accord connect {resource}`", authenticated=True)
    if not policy.is_user(user):
        raise Refusal("28000", f'user "{user}" is no longer in accord.yaml', authenticated=True)
    grant = session.get(Grant, row.grant_id)
    status = effective_status(grant, now) if grant is not None else "missing"
    if grant is None or status != GrantStatus.ACTIVE:
        raise Refusal("28000", f"no active grant: grant {row.grant_id} of {user} on {resource} "
                               f"is {status}",
                      f"ask for access with `accord request create {resource} ROLE`",
                      authenticated=True)
    return grant


def record_refusal(session: Session, *, policy: Policy, user: str, resource: str,
                   refusal: Refusal, client: str, now: datetime,
                   grant: Grant | None = None) -> None:
    """A refused gateway login, as the ledger's `gateway.login_refused` (for the detectors).

    The user and database are what the client claimed, cut short. Unless the client proved
    who it is, the actor is anonymous: an unauthenticated client never writes events in a
    real user's name.
    """
    user, resource = user[:64], resource[:64]
    actor = Actor("user", user, _VIA) if refusal.authenticated and policy.is_user(user) \
        else Actor("anonymous", "unauthenticated", _VIA)
    data: dict[str, Any] = {"user": user, "database": resource, "code": refusal.code,
                            "reason": refusal.message[:500], "client": client}
    if refusal.escalation is not None:
        data["escalation"] = refusal.escalation
    if grant is not None:
        data["grant_id"] = grant.id
    ledger.record(session, type=EventType.GATEWAY_LOGIN_REFUSED, actor=actor,
                  subject=f"grant:{grant.id}" if grant is not None else f"user:{user}",
                  resource={"name": resource, "role": grant.role if grant else None}
                  if resource in policy.resources else None,
                  data=data, time=now)


def record_suppressed(session: Session, *, client: str, count: int, since: datetime,
                      now: datetime) -> None:
    """Refused logins from one client address beyond the per-minute budget, in one event."""
    ledger.record(session, type=EventType.GATEWAY_LOGINS_SUPPRESSED,
                  actor=Actor("anonymous", "unauthenticated", _VIA),
                  subject=f"client:{client[:64]}", resource=None,
                  data={"client": client[:64], "count": count, "since": format_time(since)},
                  time=now)


def grant_states(session: Session, *, ids: Sequence[int]) -> dict[int, tuple[str, datetime]]:
    """Status and end of each grant (one query; the watcher's per-tick read)."""
    if not ids:
        return {}
    rows = session.execute(select(Grant.id, Grant.status, Grant.ends_at)
                           .where(Grant.id.in_(list(ids)))).all()
    return {gid: (status, ends) for gid, status, ends in rows}


def usage_for(session: Session, *, grant_ids: Sequence[int]) -> dict[int, GatewayUsage]:
    if not grant_ids:
        return {}
    rows = session.execute(select(GatewayUsage)
                           .where(GatewayUsage.grant_id.in_(list(grant_ids)))).scalars()
    return {u.grant_id: u for u in rows}


@dataclass(frozen=True)
class ConnectionInfo:
    host: str
    port: int
    database: str
    user: str
    sslmode: str

    def dsn(self, token: str) -> str:
        return (f"postgresql://{quote(self.user, safe='')}:{quote(token, safe='')}@"
                f"{self.host}:{self.port}/{quote(self.database, safe='')}"
                f"?sslmode={self.sslmode}")

    def psql(self, token: str) -> str:
        return (f"PGPASSWORD='{token}' psql 'host={self.host} port={self.port} "
                f"dbname={self.database} user={self.user} sslmode={self.sslmode}'")


def connection_info(spec: GatewaySpec, *, user: str, resource: str) -> ConnectionInfo:
    host, port = spec.host_port
    if spec.public_host:
        host = spec.public_host
    elif host in ("0.0.0.0", "::", ""):  # noqa: S104 - a wildcard listen address is no host
        host = "127.0.0.1"
    sslmode = "require" if spec.tls.required else ("prefer" if spec.tls.cert else "disable")
    return ConnectionInfo(host, spec.public_port or port, resource, user, sslmode)


# ---------------------------------------------------------------------- audit


def spool_mark(session: Session, *, instance: str) -> int:
    row = session.get(GatewaySpoolMark, instance)
    return row.committed if row is not None else 0


def forget_mark(session: Session, *, instance: str) -> None:
    session.execute(delete(GatewaySpoolMark).where(GatewaySpoolMark.instance == instance))


def _wall(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


@functools.cache
def _upserts(dialect: str) -> tuple[Any, Any]:
    """The usage and spool-mark upserts for `dialect`, built once and run with parameters so
    SQLAlchemy compiles each once (with the rows in VALUES it compiled them for every batch
    the shipper recorded: about 1 ms each)."""
    ins = pg_insert if dialect == "postgresql" else sqlite_insert
    usage = ins(GatewayUsage)
    ex = usage.excluded
    table = GatewayUsage
    mark = ins(GatewaySpoolMark)
    return (usage.on_conflict_do_update(index_elements=["grant_id"], set_={
        "first_used_at": case((ex.first_used_at < table.first_used_at, ex.first_used_at),
                              else_=table.first_used_at),
        "last_used_at": case((ex.last_used_at > table.last_used_at, ex.last_used_at),
                             else_=table.last_used_at),
        "statement_count": table.statement_count + ex.statement_count,
        "violation_count": table.violation_count + ex.violation_count,
        "session_count": table.session_count + ex.session_count,
    }), mark.on_conflict_do_update(index_elements=["instance"], set_={
        "committed": mark.excluded.committed, "updated_at": mark.excluded.updated_at}))


# A statement in a `gateway.statement` event: one row of these columns (compact, and
# cheap to encode: no keys to sort per statement).
COLUMNS = ("seq", "offset_us", "protocol", "text", "param_count", "params", "tag", "rows",
           "duration_us", "outcome", "error")


def statement_row(seq: int, protocol: str, text: str, params: object, tag: str | None,
                  rows: int | None, duration_ns: int, outcome: str,
                  error: tuple[str, str] | list[str] | None) -> list[Any]:
    """A statement's row with `offset_us` still 0 (set when it joins an event)."""
    count = params if type(params) is int else (len(params) if isinstance(params, list) else 0)
    return [seq, 0, protocol, text, count, params if isinstance(params, list) else None, tag,
            rows, duration_ns // 1000, outcome,
            [error[0], error[1][:2000]] if error else None]


def as_dicts(data: dict[str, Any]) -> list[dict[str, Any]]:
    """A `gateway.statement` event's statements as dicts, for readers of the ledger."""
    columns = data["columns"]
    return [dict(zip(columns, row, strict=True)) for row in data["statements"]]


def record_facts(session: Session, *, facts: Sequence[Fact], instance: str, per_event: int,
                 max_text: int, mark: int | None = None) -> int:
    """Ledger events for a batch of audit facts, the grants' usage, and the spool mark.

    A session's statements in one batch share an event (at most `per_event` statements
    each), in order; session opens, closes and refusals are events of their own.
    Returns the number of events recorded.
    """
    events = 0
    open_groups: dict[str, list[Any]] = {}  # session id → [first fact, statements]
    order: list[tuple[str, Any]] = []
    usage: dict[int, list[Any]] = {}
    for fact in facts:
        _, kind, info, at_ns, payload = fact
        use = usage.get(info.grant_id)
        if use is None:
            use = usage[info.grant_id] = [at_ns, at_ns, 0, 0, 0]
        elif at_ns < use[0]:
            use[0] = at_ns
        if kind == "statement":
            end = at_ns + payload[8] * 1000
            if end > use[1]:
                use[1] = end
            use[2] += 1
            group = open_groups.get(info.id)
            if group is None or len(group[1]) >= per_event:
                group = open_groups[info.id] = [fact, []]
                order.append(("statements", group))
            payload[1] = (at_ns - group[0][3]) // 1000  # set again on a retry: idempotent
            group[1].append(payload)
            continue
        if at_ns > use[1]:
            use[1] = at_ns
        if kind == "violation":
            use[3] += 1
        elif kind == "open":
            use[4] += 1
        elif kind == "close":
            open_groups.pop(info.id, None)
        order.append((kind, fact))
    for kind, item in order:
        if kind == "statements":
            first, statements = item
            info = first[2]
            base = first[3]
            _emit(session, EventType.GATEWAY_STATEMENT, info, base,
                  {"grant_id": info.grant_id, "session": info.id, "columns": list(COLUMNS),
                   "statements": statements}, plain=True)
        else:
            _, _, info, at_ns, payload = item
            if kind == "open":
                data = {"grant_id": info.grant_id, "session": info.id, "client": info.client,
                        "application": info.application, "tls": info.tls,
                        "upstream_role": info.upstream_role}
                etype = EventType.GATEWAY_SESSION_OPENED
            elif kind == "close":
                data = {"grant_id": info.grant_id, "session": info.id, **payload}
                etype = EventType.GATEWAY_SESSION_CLOSED
            else:
                data = {"grant_id": info.grant_id, "session": info.id, **payload}
                etype = EventType.GATEWAY_VIOLATION
            _emit(session, etype, info, at_ns, data)
        events += 1
    usage_upsert, mark_upsert = _upserts(session.get_bind().dialect.name)
    if usage:
        session.execute(usage_upsert, [
            {"grant_id": gid, "first_used_at": _wall(u[0]), "last_used_at": _wall(u[1]),
             "statement_count": u[2], "violation_count": u[3], "session_count": u[4]}
            for gid, u in usage.items()])
    committed = mark if mark is not None else (facts[-1][0] if facts else 0)
    session.execute(mark_upsert, {"instance": instance, "committed": committed,
                                  "updated_at": datetime.now(UTC)})
    return events


def _emit(session: Session, etype: EventType, info: Any, at_ns: int,
          data: dict[str, Any], plain: bool = False) -> None:
    # plain: statement rows hold only str, None and ints below 2**53 (the spool reader
    # makes sure), so the ledger need not walk every value before encoding.
    ledger.record(session, type=etype, actor=Actor.user(info.user, _VIA),
                  subject=f"grant:{info.grant_id}",
                  resource={"name": info.resource, "role": info.role}, data=data,
                  time=_wall(at_ns), plain=plain)
