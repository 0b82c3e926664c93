"""Build a report: stream the period's requests (two server-side cursors: requests with
their grant and usage, and their approvals, merged by id), aggregate in one pass.

Nothing here commits or writes, except `record_generated` (one ledger event, committed
by the caller). The ledger is read with aggregate queries on its indexed columns (type,
time, resource), never by loading its events: a quarter may hold millions.
"""

from __future__ import annotations

import base64
import importlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, inspect, select
from sqlalchemy.orm import Session

from accord.detect.models import Alert
from accord.errors import Invalid, NotFound
from accord.grants.models import Grant, GrantStatus
from accord.ledger import service as ledger
from accord.ledger.checkpoints import LedgerConfig, latest
from accord.ledger.events import Actor, EventType
from accord.ledger.models import LedgerEntry
from accord.policy.engine import Policy
from accord.reports.schemas import (
    OUTCOMES,
    AlertLine,
    ApprovalLine,
    Check,
    DecisionLine,
    Evidence,
    How,
    Kind,
    LedgerFacts,
    Outcome,
    Params,
    Report,
    RequestLine,
    Section,
    Tally,
    Usage,
)
from accord.requests.models import AccessRequest, Approval, Status

Progress = Callable[[str, int, int], None]  # stage, done, total
BATCH = 2000  # rows per fetch from the server-side cursor
AUTOMATIC_RULES = frozenset({"auto_approve", "auto_deny", "default_deny", "no_approvers"})
BREAK_GLASS = "break_glass"
DECISION_BUCKETS = (("< 1 min", 60), ("< 15 min", 900), ("< 1 h", 3600), ("< 4 h", 14400),
                    ("< 1 day", 86400), ("longer", None))
_NO_ACCESS = {GrantStatus.PROVISIONING, GrantStatus.PROVISION_FAILED}
_APPROVED = {Status.APPROVED, Status.ACTIVE, Status.REVOKED, Status.RELINQUISHED,
             Status.PROVISION_FAILED}

_REQUEST_COLUMNS = (
    AccessRequest.id, AccessRequest.requester, AccessRequest.resource, AccessRequest.role,
    AccessRequest.created_at, AccessRequest.created_via, AccessRequest.reason,
    AccessRequest.duration_seconds, AccessRequest.status, AccessRequest.decided_at,
    AccessRequest.pending_until, AccessRequest.decision_reason, AccessRequest.workflow,
    AccessRequest.policy_version, AccessRequest.rule, AccessRequest.emergency,
    AccessRequest.reviewed_at, AccessRequest.reviewed_by, AccessRequest.review_verdict,
    AccessRequest.review_note, AccessRequest.extends_grant_id, AccessRequest.grant_id,
)


# ---------------------------------------------------------------- parameters


def parse_when(value: str, *, field: str) -> datetime:
    """A day (`2026-07-01`, UTC midnight) or an RFC 3339 time with its offset."""
    text = value.strip()
    try:
        if len(text) == 10:
            return datetime.fromisoformat(text + "T00:00:00+00:00")
        when = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise Invalid("use a day (2026-07-01) or a time with its offset "
                      "(2026-07-01T00:00:00Z)", field=field) from None
    if when.tzinfo is None:
        raise Invalid("needs a timezone, e.g. 2026-07-01T00:00:00Z", field=field)
    return when.astimezone(UTC)


def params(kind: Kind, *, start: str | None, end: str | None, now: datetime,
           resource: str | None = None, user: str | None = None) -> Params:
    """Check and complete what was asked: `access` needs both ends of the period; user and
    resource reports default to everything up to now."""
    if kind == "access" and (not start or not end):
        raise Invalid("an access report needs a period: from and to", field="from" if not start
                      else "to")
    begin = parse_when(start, field="from") if start else None
    finish = parse_when(end, field="to") if end else now
    if begin is not None and begin >= finish:
        raise Invalid("must be later than from", field="to")
    return Params(kind=kind, start=begin, end=finish, resource=resource or None,
                  user=user or None)


def check_subject(session: Session, *, policy: Policy, p: Params) -> None:
    """A user or resource must be in the policy or have history here; else 404."""
    if p.resource and p.resource not in policy.resources and session.execute(
            select(AccessRequest.id).where(AccessRequest.resource == p.resource).limit(1)
    ).first() is None:
        raise NotFound(f'resource "{p.resource}" is not in accord.yaml and has no requests')
    if p.user and not policy.is_user(p.user) and session.execute(
            select(AccessRequest.id).where(AccessRequest.requester == p.user).limit(1)
    ).first() is None:
        raise NotFound(f'user "{p.user}" is not in accord.yaml and has no requests')


# ---------------------------------------------------------------- gateway usage


def _usage_columns(session: Session) -> list[Any]:
    """Per-grant gateway usage columns, labelled `u_*`: from the gateway's usage table,
    or from columns on grants; none when this installation keeps no usage."""
    on_grants = [getattr(Grant, name, None) for name in
                 ("first_used_at", "last_used_at", "statement_count")]
    if all(c is not None for c in on_grants):
        return [c.label(f"u_{n}") for c, n in zip(  # type: ignore[union-attr]
            on_grants, ("first_used_at", "last_used_at", "statement_count"), strict=True)]
    model = _usage_model(session)
    if model is None:
        return []
    names = ("first_used_at", "last_used_at", "statement_count", "session_count",
             "violation_count")
    return [getattr(model, n).label(f"u_{n}") for n in names if hasattr(model, n)]


def _usage_model(session: Session) -> Any | None:
    """The gateway's per-grant usage table, when this installation has one."""
    try:
        module = importlib.import_module("accord.gateway.models")
    except ImportError:
        return None
    model = getattr(module, "GatewayUsage", None)
    if model is None or not hasattr(model, "grant_id"):
        return None
    if not inspect(session.connection()).has_table(model.__tablename__):
        return None
    return model


def _usage_of(row: Any) -> Usage | None:
    statements = getattr(row, "u_statement_count", None)
    if statements is None:
        return None
    return Usage(first_used_at=getattr(row, "u_first_used_at", None),
                 last_used_at=getattr(row, "u_last_used_at", None),
                 statements=int(statements),
                 sessions=getattr(row, "u_session_count", None),
                 violations=getattr(row, "u_violation_count", None))


# ---------------------------------------------------------------- the one pass


def _scope(p: Params) -> list[ColumnElement[bool]]:
    out: list[ColumnElement[bool]] = []
    if p.resource:
        out.append(AccessRequest.resource == p.resource)
    if p.user:
        out.append(AccessRequest.requester == p.user)
    return out


def _in_period(p: Params) -> list[ColumnElement[bool]]:
    out = [AccessRequest.created_at < p.end, *_scope(p)]
    if p.start is not None:
        out.append(AccessRequest.created_at >= p.start)
    return out


def _carried_over(p: Params) -> list[ColumnElement[bool]] | None:
    """Requests filed before the period whose grant overlaps it (grants joined)."""
    if p.start is None:
        return None
    return [
        AccessRequest.created_at < p.start, *_scope(p),
        Grant.request_id == AccessRequest.id,
        Grant.starts_at < p.end,
        func.coalesce(Grant.ended_at, Grant.ends_at) > p.start,
    ]


_GRANT_COLUMNS = (
    Grant.request_id.label("g_request_id"), Grant.status.label("g_status"),
    Grant.starts_at.label("g_starts_at"), Grant.ends_at.label("g_ends_at"),
    Grant.ended_at.label("g_ended_at"), Grant.ended_by.label("g_ended_by"),
)


def _rows(session: Session, where: Sequence[ColumnElement[bool]], usage: list[Any],
          size: int) -> Iterator[Any]:
    """The requests in scope with their grant and its usage, in id order, streamed (a
    server-side cursor on PostgreSQL): one query, whatever the period holds."""
    q: Any = select(*_REQUEST_COLUMNS, *_GRANT_COLUMNS, *usage).select_from(AccessRequest) \
        .outerjoin(Grant, Grant.id == AccessRequest.grant_id)
    if usage and usage[0].element.table is not Grant.__table__:
        model = usage[0].element.table
        q = q.outerjoin(model, model.c.grant_id == Grant.id)
    q = q.where(*where).order_by(AccessRequest.id).execution_options(yield_per=size)
    yield from session.execute(q)


def _approvals(session: Session, where: Sequence[ColumnElement[bool]], size: int
               ) -> Iterator[Any]:
    """The approvals on the same requests, ordered by request: merged with `_rows`."""
    q: Any = (select(Approval.request_id, Approval.approver, Approval.decision, Approval.step,
                     Approval.via, Approval.created_at, Approval.comment)
              .join(AccessRequest, AccessRequest.id == Approval.request_id)
              .outerjoin(Grant, Grant.id == AccessRequest.grant_id)
              .where(*where).order_by(Approval.request_id, Approval.id)
              .execution_options(yield_per=size))
    yield from session.execute(q)


def _count(session: Session, where: Sequence[ColumnElement[bool]]) -> int:
    q = select(func.count()).select_from(AccessRequest).outerjoin(
        Grant, Grant.id == AccessRequest.grant_id)
    return int(session.execute(q.where(*where)).scalar_one())


def _outcome(row: Any, now: datetime) -> Outcome:
    if row.grant_id is not None or row.status in _APPROVED:
        return Outcome.APPROVED
    if row.status == Status.DENIED:
        return Outcome.DENIED
    if row.status == Status.CANCELLED:
        return Outcome.CANCELLED
    if row.status == Status.EXPIRED:
        return Outcome.EXPIRED
    if row.status == Status.PENDING and row.pending_until is not None \
            and row.pending_until <= now:
        return Outcome.EXPIRED  # expiry holds on every read, before the sweeper records it
    return Outcome.PENDING


def _how(row: Any, outcome: Outcome, approvals: Sequence[ApprovalLine]) -> How:
    if row.emergency or row.rule == BREAK_GLASS:
        return How.BREAK_GLASS
    if outcome is Outcome.PENDING:
        return How.UNDECIDED
    if outcome is Outcome.CANCELLED:
        reason = row.decision_reason or ""
        return How.REQUESTER if reason.startswith("cancelled by the requester") else How.SYSTEM
    if outcome is Outcome.EXPIRED:
        return How.SYSTEM
    if row.rule in AUTOMATIC_RULES:
        return How.POLICY
    wanted = "approve" if outcome is Outcome.APPROVED else "deny"
    if any(a.decision == wanted for a in approvals):
        return How.PEOPLE
    return How.SYSTEM  # e.g. an approved extension whose grant had ended meanwhile


def _status(row: Any, now: datetime) -> str:
    if row.status == Status.PENDING and row.pending_until is not None \
            and row.pending_until <= now:
        return str(Status.EXPIRED)
    if row.status == Status.ACTIVE and row.g_status == GrantStatus.ACTIVE \
            and row.g_ends_at <= now:
        return str(Status.EXPIRED)
    return str(row.status)


class _Builder:
    def __init__(self, session: Session, p: Params, now: datetime) -> None:
        self.session = session
        self.p = p
        self.now = now
        self.sections: dict[str, Section] = {}
        self.totals = Tally("all")
        self.usage = _usage_columns(session)
        self.usage_available = bool(self.usage)
        # The same names, roles and policy versions recur on every row: keep one copy.
        self.strings: dict[str, str] = {}

    def same(self, value: str | None) -> str | None:
        if value is None:
            return None
        return self.strings.setdefault(value, value)

    def section(self, name: str) -> Section:
        s = self.sections.get(name)
        if s is None:
            s = self.sections[name] = Section(Tally(name))
        return s

    def run(self, where: Sequence[ColumnElement[bool]], in_period: bool, size: int,
            tick: Callable[[], None]) -> None:
        approvals = _approvals(self.session, where, size)
        pending = next(approvals, None)
        same = self.same
        for row in _rows(self.session, where, self.usage, size):
            mine: list[ApprovalLine] = []
            while pending is not None and pending.request_id <= row.id:
                if pending.request_id == row.id:
                    a = pending
                    mine.append(ApprovalLine(same(a.approver) or "", same(a.decision) or "",
                                             a.step, same(a.via) or "", a.created_at,
                                             a.comment))
                pending = next(approvals, None)
            self.add(self.line(row, mine, in_period))
            tick()

    def line(self, row: Any, approvals: Sequence[ApprovalLine], in_period: bool
             ) -> RequestLine:
        same = self.same
        outcome = _outcome(row, self.now)
        review = ((row.review_verdict or "", row.reviewed_by or "", row.reviewed_at,
                   row.review_note or "") if row.reviewed_at is not None else None)
        line = RequestLine(
            id=row.id, requester=same(row.requester) or "", resource=same(row.resource) or "",
            role=same(row.role) or "", created_at=row.created_at,
            created_via=same(row.created_via) or "", reason=row.reason or "",
            duration_seconds=row.duration_seconds, status=same(_status(row, self.now)) or "",
            outcome=outcome, how=_how(row, outcome, approvals), decided_at=row.decided_at,
            decision_reason=same(row.decision_reason), workflow=same(row.workflow),
            policy_version=same(row.policy_version), rule=same(row.rule),
            approvals=tuple(approvals), emergency=bool(row.emergency), review=review,
            extends_grant_id=row.extends_grant_id, in_period=in_period,
            grant_id=row.grant_id,
        )
        # The access itself is shown on the request that opened the grant; an extension
        # points at it (its time is the same grant's, not more access).
        if row.grant_id is not None and row.g_request_id == row.id:
            self.fill_access(line, row)
        return line

    def fill_access(self, line: RequestLine, row: Any) -> None:
        now, p = self.now, self.p
        line.ended_by = self.same(row.g_ended_by)
        status = str(row.g_status)
        if status == GrantStatus.ACTIVE and row.g_ends_at <= now:
            status = str(GrantStatus.EXPIRED)
        line.access_end_status = self.same(status)
        line.usage = _usage_of(row)
        if status in _NO_ACCESS:
            return
        starts: datetime = row.g_starts_at
        end: datetime = row.g_ended_at or row.g_ends_at
        line.access_start, line.access_end = starts, end
        held_until = min(end, now)
        line.access_seconds = max(0, int((held_until - starts).total_seconds()))
        line.access_in_period = starts < p.end and (p.start is None or end > p.start)
        if line.access_in_period:
            lo = starts if p.start is None else max(starts, p.start)
            hi = min(held_until, p.end)
            line.period_seconds = max(0, int((hi - lo).total_seconds()))

    def add(self, line: RequestLine) -> None:
        section = self.section(line.resource)
        section.lines.append(line)
        for t in (section.tally, self.totals):
            if line.in_period:
                t.requests += 1
                t.outcomes[line.outcome.value] += 1
                t.automatic += line.how is How.POLICY
                t.human += line.how is How.PEOPLE
                t.emergency += line.emergency
                t.approvals += len(line.approvals)
                if line.how is How.PEOPLE and line.decision_seconds is not None:
                    t.decision_seconds.append(line.decision_seconds)
            if line.access_in_period:
                t.grants += 1
                t.carried_over += not line.in_period
                t.users.add(line.requester)
                t.access_seconds += line.period_seconds
                if line.usage is not None and line.usage.statements:
                    t.statements += line.usage.statements
                    t.used_grants += 1


def build(session: Session, *, p: Params, policy: Policy, now: datetime, generated_by: str,
          progress: Progress | None = None, batch: int = BATCH) -> Report:
    """The report for `p`, as of `now`: one streaming pass over the period's requests."""
    b = _Builder(session, p, now)
    if p.kind != "user":  # every resource in scope gets a section, even a quiet one
        for name in sorted(policy.resources):
            if p.resource is None or name == p.resource:
                b.section(name)
    carried = _carried_over(p)
    passes: list[tuple[Sequence[ColumnElement[bool]], bool]] = [(_in_period(p), True)]
    if carried is not None:
        passes.append((carried, False))
    total = sum(_count(session, where) for where, _ in passes)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress and done % batch == 0:
            progress("requests", done, total)

    if progress:
        progress("requests", 0, total)
    for where, in_period in passes:
        b.run(where, in_period, batch, tick)
    if progress:
        progress("requests", total, total)
    for s in b.sections.values():
        s.lines.sort(key=lambda line: line.id)
    other = _alerts(session, p, b)
    sections = [b.sections[name] for name in sorted(b.sections)]
    unit, timeline = _timeline(p, sections, now)
    if progress:
        progress("ledger", 0, 1)
    facts = _ledger_facts(session, p, sections, b.totals)
    if progress:
        progress("ledger", 1, 1)
    title = {"access": "Access report", "user": f"Access report for user {p.user}",
             "resource": f"Access report for resource {p.resource}"}[p.kind]
    return Report(
        params=p, generated_at=now, generated_by=generated_by, title=title,
        sections=sections, totals=b.totals, timeline=timeline, timeline_unit=unit,
        decision_buckets=_decision_buckets(b.totals.decision_seconds), other_alerts=other,
        decisions_by_user=_decisions_by(session, p) if p.user else [],
        ledger=facts, usage_available=b.usage_available,
    )


def _alerts(session: Session, p: Params, b: _Builder) -> list[AlertLine]:
    """Alerts opened in the period, filed under their resource's section when it has one."""
    q = select(Alert).where(Alert.opened_at < p.end).order_by(Alert.id)
    if p.start is not None:
        q = q.where(Alert.opened_at >= p.start)
    if p.resource:
        q = q.where(Alert.resource == p.resource)
    if p.user:
        q = q.where(Alert.user == p.user)
    other: list[AlertLine] = []
    for a in session.execute(q).scalars():
        line = AlertLine(a.id, a.rule, a.severity, a.status, a.title, a.user, a.resource,
                         a.subject, a.opened_at, tuple(int(i) for i in (a.evidence or [])))
        section = b.sections.get(a.resource) if a.resource else None
        if section is None:
            other.append(line)
            b.totals.alerts += 1
            continue
        section.alerts.append(line)
        section.tally.alerts += 1
        b.totals.alerts += 1
    session.expunge_all()
    return other


def _decisions_by(session: Session, p: Params) -> list[DecisionLine]:
    q = (select(Approval, AccessRequest.requester, AccessRequest.resource, AccessRequest.role)
         .join(AccessRequest, AccessRequest.id == Approval.request_id)
         .where(Approval.approver == p.user, Approval.created_at < p.end)
         .order_by(Approval.id))
    if p.start is not None:
        q = q.where(Approval.created_at >= p.start)
    out: list[DecisionLine] = [
        DecisionLine(a.request_id, requester, resource, role, a.decision, a.step, a.via,
                     a.created_at, a.comment)
        for a, requester, resource, role in session.execute(q)]
    session.expunge_all()
    return out


# ---------------------------------------------------------------- charts' data


def _bucket(when: datetime, unit: str) -> datetime:
    day = when.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "week":
        return day - timedelta(days=day.weekday())
    if unit == "month":
        return day.replace(day=1)
    return day


def _next(bucket: datetime, unit: str) -> datetime:
    if unit == "day":
        return bucket + timedelta(days=1)
    if unit == "week":
        return bucket + timedelta(days=7)
    return (bucket + timedelta(days=32)).replace(day=1)


def _timeline(p: Params, sections: list[Section], now: datetime
              ) -> tuple[str, list[tuple[str, dict[str, int]]]]:
    """Requests per day, week or month (by the period's length) and outcome."""
    created = [line.created_at for s in sections for line in s.lines if line.in_period]
    start = p.start or (min(created) if created else min(p.end, now) - timedelta(days=1))
    end = min(p.end, max(now, max(created, default=start)) + timedelta(microseconds=1))
    days = (end - start).total_seconds() / 86400
    unit = "day" if days <= 45 else "week" if days <= 400 else "month"
    counts: dict[datetime, Counter[str]] = {}
    for s in sections:
        for line in s.lines:
            if line.in_period:
                counts.setdefault(_bucket(line.created_at, unit), Counter())[line.outcome] += 1
    out: list[tuple[str, dict[str, int]]] = []
    bucket = _bucket(start, unit)
    fmt = {"day": "%d %b", "week": "%d %b", "month": "%b %Y"}[unit]
    while bucket < end and len(out) < 500:
        c = counts.get(bucket, Counter())
        out.append((bucket.strftime(fmt), {o.value: c[o.value] for o in OUTCOMES}))
        bucket = _next(bucket, unit)
    return unit, out


def _decision_buckets(seconds: list[float]) -> list[tuple[str, int]]:
    counts = [0] * len(DECISION_BUCKETS)
    for s in seconds:
        for i, (_label, bound) in enumerate(DECISION_BUCKETS):
            if bound is None or s < bound:
                counts[i] += 1
                break
    return [(label, n) for (label, _b), n in zip(DECISION_BUCKETS, counts, strict=True)]


# ---------------------------------------------------------------- the ledger's own count


def _period(q: Any, p: Params) -> Any:
    q = q.where(LedgerEntry.idx.is_not(None), LedgerEntry.time < p.end)
    if p.start is not None:
        q = q.where(LedgerEntry.time >= p.start)
    return q


def _ledger_facts(session: Session, p: Params, sections: list[Section], totals: Tally
                  ) -> LedgerFacts:
    """Event counts in the period and the checks that tie the tables to the ledger."""
    size = ledger.tree_size(session)
    events, first, last = session.execute(_period(
        select(func.count(), func.min(LedgerEntry.idx), func.max(LedgerEntry.idx)), p)).one()
    by_type = {t: int(n) for t, n in session.execute(_period(
        select(LedgerEntry.type, func.count()), p).group_by(LedgerEntry.type)
        .order_by(LedgerEntry.type))}
    # request.created, per resource: the actor of a creation is its requester.
    q = _period(select(LedgerEntry.resource, func.count()), p).where(
        LedgerEntry.type == str(EventType.REQUEST_CREATED))
    if p.resource:
        q = q.where(LedgerEntry.resource == p.resource)
    if p.user:
        q = q.where(LedgerEntry.actor == p.user)
    created = {r: int(n) for r, n in session.execute(q.group_by(LedgerEntry.resource))}
    checks = [Check("requests created (request.created events)", totals.requests,
                    sum(created.values()))]
    checks += [Check(f"requests created for {s.tally.name}", s.tally.requests,
                     created.get(s.tally.name, 0)) for s in sections if len(sections) > 1]
    if not p.user:  # decisions recorded in the period, on any request in scope
        aq = select(func.count()).select_from(Approval).join(
            AccessRequest, AccessRequest.id == Approval.request_id).where(
            Approval.created_at < p.end, *_scope(p))
        if p.start is not None:
            aq = aq.where(Approval.created_at >= p.start)
        lq = _period(select(func.count()).select_from(LedgerEntry), p).where(
            LedgerEntry.type == str(EventType.APPROVAL_RECORDED))
        if p.resource:
            lq = lq.where(LedgerEntry.resource == p.resource)
        checks.append(Check("approval decisions recorded (approval.recorded events)",
                            int(session.execute(aq).scalar_one()),
                            int(session.execute(lq).scalar_one())))
    return LedgerFacts(size=size, events=int(events), first_index=first, last_index=last,
                       by_type=by_type, checks=checks)


# ---------------------------------------------------------------- evidence and record


def evidence(session: Session, *, cfg: LedgerConfig) -> Evidence | None:
    """The newest signed checkpoint (sign one first: see `generate`), with the key."""
    row = latest(session)
    if row is None:
        return None
    ring = cfg.ring()
    cp = ring.check(row.note, row.size)
    return Evidence(origin=cp.origin, key=ring.signer.verifier.encode(),
                    checkpoint_size=cp.size, checkpoint_root=base64.b64encode(cp.root).decode(),
                    checkpoint_note=row.note, signed_at=row.signed_at)


def covers(report: Report) -> bool:
    """Whether the report's checkpoint covers every event of the period."""
    ev, last = report.evidence, report.ledger.last_index
    return ev is not None and (last is None or ev.checkpoint_size > last)


def record_generated(session: Session, *, report: Report, fmt: str, sha256: str,
                     size: int, actor: Actor, now: datetime) -> dict[str, Any]:
    """The ledger event that says this report was generated, by whom, over what."""
    p = report.params
    ev = report.evidence
    return ledger.record(
        session, type=EventType.REPORT_GENERATED, actor=actor,
        subject=f"report:{sha256[:16]}",
        resource={"name": p.resource} if p.resource else None,
        data={
            **p.as_dict(), "format": fmt, "sha256": sha256, "bytes": size,
            "requests": report.totals.requests, "grants": report.totals.grants,
            "ledger_first_index": report.ledger.first_index,
            "ledger_last_index": report.ledger.last_index,
            "checkpoint_size": ev.checkpoint_size if ev else None,
        },
        time=now,
    )

