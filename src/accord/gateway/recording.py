"""Audit facts into the ledger: a round of a gateway process's facts becomes events (a
session's statements grouped into `gateway.statement` events), the grants' usage and the
spool's mark, in the caller's transaction. Never commits."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from accord.gateway.models import GatewayRecording, GatewaySpoolMark
from accord.gateway.usage import usage_upsert
from accord.ledger import service as ledger
from accord.ledger.events import Actor, EventType, Via

if TYPE_CHECKING:  # spool imports this module: a type only, at run time no cycle
    from accord.gateway.packs import PackWriter
    from accord.gateway.spool import Fact

_VIA = str(Via.GATEWAY)  # a plain str: the ledger's fast canonical encoder takes only those


def spool_mark(session: Session, *, instance: str) -> int:
    row = session.get(GatewaySpoolMark, instance)
    return row.committed if row is not None else 0


def forget_mark(session: Session, *, instance: str) -> None:
    session.execute(delete(GatewaySpoolMark).where(GatewaySpoolMark.instance == instance))


def _wall(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


# A protocol's own facts (`AuditWriter.blob`) and the events they become. A chunk's bytes
# go into content-addressed storage (`GatewayRecording`), its sha256 and size into the event.
BLOB_FACTS = {"ssh_chunk": EventType.GATEWAY_SSH_CHUNK, "ssh_exec": EventType.GATEWAY_SSH_EXEC,
              "ssh_forward": EventType.GATEWAY_SSH_FORWARD,
              "ssh_file": EventType.GATEWAY_SSH_FILE,
              # The MCP gateway's: a call that passed, and one refused.
              "mcp_tool_call": EventType.GATEWAY_TOOL_CALL,
              "mcp_violation": EventType.GATEWAY_VIOLATION}


@functools.cache
def blob_insert(dialect: str) -> Any:
    """Store a chunk's bytes once (the same bytes under the same name: nothing to do)."""
    ins = pg_insert if dialect == "postgresql" else sqlite_insert
    return ins(GatewayRecording).on_conflict_do_nothing(index_elements=["sha256"])


@functools.cache
def mark_upsert(dialect: str) -> Any:
    """The spool-mark upsert for `dialect`, built once."""
    ins = pg_insert if dialect == "postgresql" else sqlite_insert
    mark = ins(GatewaySpoolMark)
    return mark.on_conflict_do_update(index_elements=["instance"], set_={
        "committed": mark.excluded.committed, "updated_at": mark.excluded.updated_at})


# A statement in a `gateway.statement` event: one row of these columns (compact, and
# cheap to encode: no keys to sort per statement). New columns go at the end (`masked`:
# the result columns whose values masking rewrote; `infile`: the size and sha256 of a file
# the client sent with the statement, MySQL's LOAD DATA LOCAL; events without them are older).
COLUMNS = ("seq", "offset_us", "protocol", "text", "param_count", "params", "tag", "rows",
           "duration_us", "outcome", "error", "masked", "infile")


def statement_row(seq: int, protocol: str, text: str, params: object, tag: str | None,
                  rows: int | None, duration_ns: int, outcome: str,
                  error: tuple[str, str] | list[str] | None,
                  masked: list[str] | None = None,
                  infile: dict[str, Any] | None = None) -> list[Any]:
    """A statement's row with `offset_us` still 0 (set when it joins an event)."""
    count = params if type(params) is int else (len(params) if isinstance(params, list) else 0)
    return [seq, 0, protocol, text, count, params if isinstance(params, list) else None, tag,
            rows, duration_ns // 1000, outcome,
            [error[0], error[1][:2000]] if error else None, masked, infile]


def as_dicts(data: dict[str, Any]) -> list[dict[str, Any]]:
    """A `gateway.statement` event's statements as dicts, for readers of the ledger."""
    columns = data["columns"]
    return [dict(zip(columns, row, strict=True)) for row in data["statements"]]


def record_facts(session: Session, *, facts: Sequence[Fact], instance: str, per_event: int,
                 max_text: int, mark: int | None = None,
                 packs: PackWriter | None = None) -> int:
    """Ledger events for a batch of audit facts, the grants' usage, and the spool mark.

    A session's statements in one batch share an event (at most `per_event` statements
    each), in order; session opens, closes and refusals are events of their own.
    Returns the number of events recorded.
    """
    events = 0
    open_groups: dict[str, list[Any]] = {}  # session id → [first fact, statements]
    order: list[tuple[str, Any]] = []
    usage: dict[int, list[Any]] = {}
    stored: dict[str, bytes] = {}  # chunks' bytes by sha256
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
        if kind in ("ssh_exec", "mcp_tool_call"):
            use[2] += 1  # a command or a tool call counts as a statement does
        if kind in ("violation", "mcp_violation"):
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
            elif kind in BLOB_FACTS:
                data = {"grant_id": info.grant_id, "session": info.id, **payload}
                etype = BLOB_FACTS[kind]
                blob = data.pop("blob", b"")
                if kind == "ssh_chunk":
                    digest = hashlib.sha256(blob).hexdigest()
                    data["sha256"], data["size"] = digest, len(blob)
                    stored[digest] = blob
            elif kind == "guardrail":
                data = {"grant_id": info.grant_id, "session": info.id, **payload}
                etype = EventType.GATEWAY_GUARDRAIL
            else:
                data = {"grant_id": info.grant_id, "session": info.id, **payload}
                etype = EventType.GATEWAY_VIOLATION
            _emit(session, etype, info, at_ns, data)
        events += 1
    dialect = session.get_bind().dialect.name
    if stored:  # one statement for the round's chunks, not a round trip each
        now = datetime.now(UTC)
        # In pack files (fsynced before the events can commit), or in the rows.
        where = packs.append(stored) if packs is not None else {}
        session.execute(blob_insert(dialect), [
            {"sha256": digest, "size": len(blob), "location": where.get(digest),
             "data": None if digest in where else blob, "created_at": now}
            for digest, blob in stored.items()])
    if usage:
        session.execute(usage_upsert(dialect), [
            {"grant_id": gid, "first_used_at": _wall(u[0]), "last_used_at": _wall(u[1]),
             "statement_count": u[2], "violation_count": u[3], "session_count": u[4]}
            for gid, u in usage.items()])
    committed = mark if mark is not None else (facts[-1][0] if facts else 0)
    session.execute(mark_upsert(dialect), {"instance": instance, "committed": committed,
                                  "updated_at": datetime.now(UTC)})
    return events


def _emit(session: Session, etype: EventType, info: Any, at_ns: int,
          data: dict[str, Any], plain: bool = False) -> None:
    # plain: statement rows hold only str, None and ints below 2**53 (the spool reader
    # makes sure), so the ledger need not walk every value before encoding.
    actor = Actor.agent(info.user, info.owner, _VIA) if info.owner is not None \
        else Actor.user(info.user, _VIA)  # an agent's session: with its owner
    ledger.record(session, type=etype, actor=actor,
                  subject=f"grant:{info.grant_id}",
                  resource={"name": info.resource, "role": info.role}, data=data,
                  time=_wall(at_ns), plain=plain)
