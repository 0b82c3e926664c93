"""Access review campaigns. Every change writes its ledger event; nothing commits.

    open ─every entry decided─▶ completed
    open ─deadline (undecided entries: expired)─▶ completed

A campaign of a review definition (`reviews:` in accord.yaml) covers the period since
the previous campaign of that definition (or `every` back, for the first). It has one
entry per (user, resource, role) of the covered resources with *standing* access (a
live grant when it starts) or *recurring* access (at least `recurring.min_grants`
grants held during the period); a one-off grant that ended is not under review. Each
entry carries its evidence: the grants, the requests behind them and the ledger indices
of the grants' `grant.activated` events.

Reviewers of an entry are the definition's `reviewers` resolved against the entry's
resource (like workflow approvers, `owners` included), never the entry's own user; when
that leaves nobody, the Accord admins (again without the user). Each entry gets one
decision: `certify`, or `revoke`, which ends the user's live grants of that resource and
role through `grants.end` (so a provisioned target is deprovisioned by its job) in the
same transaction.

Time is kept by durable jobs: per definition a start job keyed by name and due time
(the next start is always `every` after the last one, however it was started, so every
chain of start jobs converges on one key), and per campaign reminder jobs (a key per
round) and a close job at the deadline.
"""

from __future__ import annotations

import functools
import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import cel
from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from accord.durations import format_duration, parse_duration
from accord.errors import Conflict, Forbidden, Invalid, NotFound
from accord.grants import service as grants
from accord.grants.models import Grant, GrantStatus
from accord.identity.caller import Caller
from accord.jobs import service as jobs
from accord.jobs.models import Job
from accord.ledger import service as ledger
from accord.ledger.events import Actor, EventType, format_time
from accord.ledger.models import LedgerEntry
from accord.policy.engine import Policy
from accord.requests.models import AccessRequest
from accord.reviews.models import (
    CampaignStatus,
    EntryStatus,
    ReviewCampaign,
    ReviewEntry,
    ReviewReviewer,
)
from accord.spec.reviews import ReviewSpec

START = "review.start"
REMIND = "review.remind"
CLOSE = "review.close"
DECISIONS = ("certify", "revoke")
_OUTCOME = {"certify": EntryStatus.CERTIFIED, "revoke": EntryStatus.REVOKED}
_LIVE = (GrantStatus.ACTIVE, GrantStatus.PROVISIONING)


def subject(campaign_id: int) -> str:
    return f"review:{campaign_id}"


# ---------------------------------------------------------------- definitions


def definitions(policy: Policy) -> dict[str, ReviewSpec]:
    return {r.name: r for r in policy.loaded.spec.reviews}


def definition(policy: Policy, name: str) -> ReviewSpec:
    spec = definitions(policy).get(name)
    if spec is None:
        known = ", ".join(sorted(definitions(policy))) or "none; add reviews to accord.yaml"
        raise Invalid(f'unknown review "{name}" (known: {known})', field="definition")
    return spec


@functools.lru_cache(maxsize=256)
def _program(expr: str) -> Any:
    return cel.compile(expr)


def covered(policy: Policy, spec: ReviewSpec) -> tuple[list[str], list[str]]:
    """The resources a definition covers now, and those its `match` failed on (not covered,
    but named in review.started so nobody mistakes an error for a clean bill)."""
    if spec.match is None:
        return sorted(r for r in spec.resources if r in policy.resources), []
    out, errors = [], []
    for name, r in sorted(policy.resources.items()):
        ctx = {"resource": {"name": r.name, "kind": r.kind, "labels": dict(r.labels),
                            "owners": list(r.owners), "roles": list(r.roles)}}
        try:
            value = _program(spec.match).execute(ctx)
        except Exception:  # the binding raises KeyError and friends on a missing label
            errors.append(name)
            continue
        if value is True:
            out.append(name)
    return out, errors


def reviewers_for(policy: Policy, spec: ReviewSpec, *, user: str, resource: str) -> list[str]:
    """Who decides an entry: `reviewers` on its resource, else the admins; never `user`."""
    target = policy.resources.get(resource)
    people: set[str] = set()
    for ref in spec.reviewers:
        people |= policy.resolve(ref, target)
    people.discard(user)
    if not people:
        people = set(policy.admins) - {user}
    return sorted(people)


# ---------------------------------------------------------------- reads


def get_campaign(session: Session, *, policy: Policy, user: str, campaign_id: int,
                 lock: bool = False) -> ReviewCampaign:
    """A campaign the caller may see (admins, auditors, its reviewers), else 404."""
    q = select(ReviewCampaign).where(ReviewCampaign.id == campaign_id)
    if lock:
        q = q.with_for_update()
    camp = session.execute(q).scalar_one_or_none()
    if camp is None or not (sees_all(policy, user) or _reviews_in(session, camp.id, user)):
        raise NotFound(f"review {campaign_id} does not exist or is not visible to you")
    return camp


def sees_all(policy: Policy, user: str) -> bool:
    return user in policy.admins or user in policy.auditors


def _reviews_in(session: Session, campaign_id: int, user: str) -> bool:
    return session.execute(
        select(ReviewReviewer.entry_id).where(ReviewReviewer.campaign_id == campaign_id,
                                              ReviewReviewer.username == user).limit(1)
    ).first() is not None


def list_campaigns(session: Session, *, policy: Policy, user: str, status: str | None = None,
                   definition: str | None = None, before_id: int | None = None,
                   limit: int = 50) -> list[ReviewCampaign]:
    """Campaigns visible to `user`, newest first, keyset-paginated by id."""
    q = select(ReviewCampaign).order_by(ReviewCampaign.id.desc()).limit(limit)
    if not sees_all(policy, user):
        q = q.where(exists().where(ReviewReviewer.campaign_id == ReviewCampaign.id,
                                   ReviewReviewer.username == user))
    if status:
        q = q.where(ReviewCampaign.status == status)
    if definition:
        q = q.where(ReviewCampaign.definition == definition)
    if before_id is not None:
        q = q.where(ReviewCampaign.id < before_id)
    return list(session.execute(q).scalars())


def counts(session: Session, *, campaign_ids: list[int], user: str
           ) -> dict[int, dict[str, int]]:
    """Entries per status for each campaign, and `mine`: pending entries `user` decides."""
    out: dict[int, dict[str, int]] = {
        cid: {"total": 0, "mine": 0, **{str(s): 0 for s in EntryStatus}} for cid in campaign_ids}
    if not campaign_ids:
        return out
    for cid, status, n in session.execute(
            select(ReviewEntry.campaign_id, ReviewEntry.status, func.count())
            .where(ReviewEntry.campaign_id.in_(campaign_ids))
            .group_by(ReviewEntry.campaign_id, ReviewEntry.status)):
        out[cid][status] = int(n)
        out[cid]["total"] += int(n)
    for cid, n in session.execute(
            select(ReviewReviewer.campaign_id, func.count())
            .join(ReviewEntry, ReviewEntry.id == ReviewReviewer.entry_id)
            .where(ReviewReviewer.campaign_id.in_(campaign_ids),
                   ReviewReviewer.username == user,
                   ReviewEntry.status == EntryStatus.PENDING)
            .group_by(ReviewReviewer.campaign_id)):
        out[cid]["mine"] = int(n)
    return out


def entries(session: Session, *, policy: Policy, user: str, camp: ReviewCampaign,
            status: str | None = None, mine: bool = False) -> list[ReviewEntry]:
    """The campaign's entries `user` may see: all for admins and auditors, else those
    they review."""
    q = select(ReviewEntry).where(ReviewEntry.campaign_id == camp.id).order_by(ReviewEntry.id)
    if mine or not sees_all(policy, user):
        q = q.where(exists().where(ReviewReviewer.entry_id == ReviewEntry.id,
                                   ReviewReviewer.username == user))
    if status:
        q = q.where(ReviewEntry.status == status)
    return list(session.execute(q).scalars())


def reviewers_of(session: Session, *, entry_ids: list[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {i: [] for i in entry_ids}
    if entry_ids:
        for eid, name in session.execute(
                select(ReviewReviewer.entry_id, ReviewReviewer.username)
                .where(ReviewReviewer.entry_id.in_(entry_ids))
                .order_by(ReviewReviewer.username)):
            out[eid].append(name)
    return out


# ---------------------------------------------------------------- start


@dataclass
class _Found:
    standing: bool = False
    period: set[int] = field(default_factory=set)
    grants: set[int] = field(default_factory=set)


def _last(session: Session, name: str) -> ReviewCampaign | None:
    return session.execute(
        select(ReviewCampaign).where(ReviewCampaign.definition == name)
        .order_by(ReviewCampaign.started_at.desc(), ReviewCampaign.id.desc()).limit(1)
    ).scalar_one_or_none()


def _access(session: Session, resources: list[str], start: datetime, end: datetime,
            now: datetime) -> dict[tuple[str, str, str], _Found]:
    """Per (user, resource, role): live grants now, and grants held during [start, end)."""
    found: dict[tuple[str, str, str], _Found] = defaultdict(_Found)
    if not resources:
        return found
    live = or_(and_(Grant.status == GrantStatus.ACTIVE, Grant.ends_at > now),
               Grant.status == GrantStatus.PROVISIONING)
    held = and_(Grant.status != GrantStatus.PROVISION_FAILED, Grant.starts_at < end,
                func.coalesce(Grant.ended_at, Grant.ends_at) > start)
    rows = session.execute(
        select(Grant.id, Grant.user, Grant.resource, Grant.role, live, held)
        .where(Grant.resource.in_(resources), or_(live, held)).order_by(Grant.id))
    for gid, user, resource, role, is_live, is_held in rows:
        f = found[(user, resource, role)]
        f.grants.add(gid)
        f.standing |= bool(is_live)
        if is_held:
            f.period.add(gid)
    return found


def _evidence(session: Session, grant_ids: Iterable[int]) -> dict[int, int]:
    """grant id -> ledger index of its grant.activated event (integrated ones)."""
    subjects = [f"grant:{g}" for g in grant_ids]
    if not subjects:
        return {}
    rows = session.execute(
        select(LedgerEntry.subject, LedgerEntry.idx)
        .where(LedgerEntry.type == str(EventType.GRANT_ACTIVATED),
               LedgerEntry.subject.in_(subjects), LedgerEntry.idx.is_not(None)))
    return {int(s.split(":", 1)[1]): int(i or 0) for s, i in rows}


def _requests(session: Session, grant_ids: Iterable[int]) -> dict[int, list[int]]:
    """grant id -> the requests riding on it (the first one and its extensions)."""
    ids = list(grant_ids)
    out: dict[int, list[int]] = defaultdict(list)
    if ids:
        for rid, gid in session.execute(
                select(AccessRequest.id, AccessRequest.grant_id)
                .where(AccessRequest.grant_id.in_(ids)).order_by(AccessRequest.id)):
            out[int(gid or 0)].append(int(rid))
    return out


def entries_digest(rows: Iterable[ReviewEntry]) -> str:
    """sha256 of the canonical JSON of what was put under review (recorded at the start,
    recomputed by the report)."""
    listed = [[e.id, e.user, e.resource, e.role, e.standing, list(e.grant_ids)]
              for e in sorted(rows, key=lambda e: e.id)]
    return hashlib.sha256(ledger.encode({"entries": listed})).hexdigest()


def outcomes_digest(rows: Iterable[ReviewEntry]) -> str:
    """sha256 of every entry's outcome (recorded at completion, recomputed by the report)."""
    listed = [[e.id, e.status, e.decided_by, e.note, list(e.revoked_grant_ids)]
              for e in sorted(rows, key=lambda e: e.id)]
    return hashlib.sha256(ledger.encode({"outcomes": listed})).hexdigest()


def start(session: Session, *, policy: Policy, name: str, actor: Actor, now: datetime,
          trigger: str = "manual") -> ReviewCampaign:
    """Open a campaign of review `name` now: find the access under review, its evidence
    and reviewers, record review.started, and schedule its reminders, its close and the
    definition's next start."""
    spec = definition(policy, name)
    running = session.execute(
        select(ReviewCampaign).where(ReviewCampaign.definition == name,
                                     ReviewCampaign.status == CampaignStatus.OPEN)
    ).scalar_one_or_none()
    if running is not None:
        raise Conflict(f"review {name} has campaign {running.id} open until "
                       f"{format_time(running.deadline)}; one campaign at a time")
    last = _last(session, name)
    period_start = last.period_end if last is not None else now - spec.every
    resources, errors = covered(policy, spec)
    camp = ReviewCampaign(
        definition=name, status=CampaignStatus.OPEN, trigger=trigger, started_by=actor.id,
        started_at=now, deadline=now + spec.duration, period_start=period_start,
        period_end=now, policy_version=policy.version,
        spec={"resources": resources, "reviewers": list(spec.reviewers),
              "every": format_duration(spec.every), "duration": format_duration(spec.duration),
              "remind_every": format_duration(spec.remind_every) if spec.remind_every
              else None,
              "min_grants": spec.recurring.min_grants if spec.recurring else None,
              "match": spec.match, "description": spec.description})
    try:
        with session.begin_nested():
            session.add(camp)
            session.flush()
    except IntegrityError:  # a concurrent start of the same definition won
        raise Conflict(f"review {name} has a campaign open already; one at a time") from None

    found = _access(session, resources, period_start, now, now)
    wanted = {k: f for k, f in found.items()
              if f.standing or (spec.recurring is not None
                                and len(f.period) >= spec.recurring.min_grants)}
    all_grants = set().union(*(f.grants for f in wanted.values())) if wanted else set()
    activated = _evidence(session, all_grants)
    riding = _requests(session, all_grants)
    rows: list[ReviewEntry] = []
    for (user, resource, role), f in sorted(wanted.items()):
        ids = sorted(f.grants)
        rows.append(ReviewEntry(
            campaign_id=camp.id, user=user, resource=resource, role=role, standing=f.standing,
            period_grants=len(f.period), grant_ids=ids,
            request_ids=sorted({r for g in ids for r in riding.get(g, [])}),
            evidence=sorted(activated[g] for g in ids if g in activated),
            status=EntryStatus.PENDING, note="", revoked_grant_ids=[]))
    session.add_all(rows)
    session.flush()
    asked: dict[str, int] = defaultdict(int)
    nobody: list[int] = []  # not even an admin other than the user: the entry will expire
    for e in rows:
        people = reviewers_for(policy, spec, user=e.user, resource=e.resource)
        session.add_all(ReviewReviewer(entry_id=e.id, username=u, campaign_id=camp.id)
                        for u in people)
        for u in people:
            asked[u] += 1
        if not people:
            nobody.append(e.id)
    session.flush()
    ledger.record(
        session, type=EventType.REVIEW_STARTED, actor=actor, subject=subject(camp.id),
        time=now,
        data={"campaign_id": camp.id, "definition": name, "trigger": trigger,
              "period": {"start": format_time(period_start), "end": format_time(now)},
              "deadline": format_time(camp.deadline), "resources": resources,
              "match_errors": errors, "entries": len(rows),
              "standing": sum(1 for e in rows if e.standing),
              "recurring": sum(1 for e in rows if not e.standing),
              "min_grants": camp.spec["min_grants"], "entries_sha256": entries_digest(rows),
              "reviewers": dict(sorted(asked.items())),
              "unreviewable": nobody})
    schedule_next(session, name=name, due=now + spec.every, now=now)
    if not rows:
        _complete(session, camp, actor=actor, now=now, reason="nothing to review")
        return camp
    jobs.enqueue(session, kind=CLOSE, key=f"review:{camp.id}:close", run_at=camp.deadline,
                 now=now, payload={"campaign_id": camp.id})
    if spec.remind_every is not None and now + spec.remind_every < camp.deadline:
        jobs.enqueue(session, kind=REMIND, key=f"review:{camp.id}:remind:1",
                     run_at=now + spec.remind_every, now=now,
                     payload={"campaign_id": camp.id, "round": 1})
    return camp


# ---------------------------------------------------------------- decisions


class SelfReview(Forbidden):
    """Someone tried to decide a review of their own access. Refused, and worth recording:
    the outer layer rolls back, then records the attempt with `record_self_review`."""

    def __init__(self, campaign_id: int, entry: ReviewEntry, decision: str) -> None:
        super().__init__("you cannot review your own access")
        self.campaign_id, self.entry_id, self.decision = campaign_id, entry.id, decision
        self.resource = {"name": entry.resource, "role": entry.role}


def record_self_review(session: Session, *, exc: SelfReview, caller: Caller,
                       now: datetime) -> None:
    """The refused attempt, as its own ledger event (the self-approval detector reads it)."""
    ledger.record(session, type=EventType.REVIEW_REFUSED, actor=caller.actor,
                  subject=subject(exc.campaign_id), resource=exc.resource, time=now,
                  data={"campaign_id": exc.campaign_id, "entry_id": exc.entry_id,
                        "reason": "self_review", "attempted": exc.decision})


def decide(session: Session, *, policy: Policy, caller: Caller, campaign_id: int,
           entry_id: int, decision: str, note: str, now: datetime) -> ReviewEntry:
    """Certify or revoke one entry (its reviewers only; never one's own access; once).
    `revoke` ends the user's live grants of that resource and role in this transaction."""
    camp = get_campaign(session, policy=policy, user=caller.user, campaign_id=campaign_id,
                        lock=True)
    entry = session.execute(
        select(ReviewEntry).where(ReviewEntry.id == entry_id,
                                  ReviewEntry.campaign_id == camp.id).with_for_update()
    ).scalar_one_or_none()
    if entry is None:
        raise NotFound(f"review {camp.id} has no entry {entry_id}")
    if decision not in DECISIONS:
        raise Invalid(f"must be one of {', '.join(DECISIONS)}", field="decision")
    if caller.user == entry.user:
        raise SelfReview(camp.id, entry, decision)
    people = reviewers_of(session, entry_ids=[entry.id])[entry.id]
    if caller.user not in people:
        raise Forbidden(f"you are not a reviewer of entry {entry.id} "
                        f"(reviewers: {', '.join(people) or 'nobody'})")
    if camp.status != CampaignStatus.OPEN or now >= camp.deadline:
        raise Conflict(f"review {camp.id} closed at {format_time(camp.deadline)}; "
                       "it takes no more decisions")
    if entry.status != EntryStatus.PENDING:
        by = f" by {entry.decided_by}" if entry.decided_by else ""
        raise Conflict(f"entry {entry.id} was already {entry.status}{by}; "
                       "an entry is decided once")
    if decision == "revoke" and not note.strip():
        raise Invalid("say why the access should go", field="note")

    revoked: list[int] = []
    if decision == "revoke":
        revoked = _revoke_live(session, entry, actor=caller.actor, now=now,
                               why=f"access review {camp.definition} #{camp.id}, "
                                   f"entry {entry.id}: {note}")
    entry.status = _OUTCOME[decision]
    entry.decided_by, entry.decided_at, entry.decided_via = caller.user, now, caller.via
    entry.note = note
    entry.revoked_grant_ids = revoked
    ledger.record(
        session, type=EventType.REVIEW_DECIDED, actor=caller.actor, subject=subject(camp.id),
        resource={"name": entry.resource, "role": entry.role}, time=now,
        data={"campaign_id": camp.id, "definition": camp.definition, "entry_id": entry.id,
              "user": entry.user, "decision": decision, "note": note,
              "grant_ids": list(entry.grant_ids), "evidence": list(entry.evidence),
              "revoked_grant_ids": revoked})
    session.flush()
    left = session.execute(
        select(func.count()).select_from(ReviewEntry)
        .where(ReviewEntry.campaign_id == camp.id, ReviewEntry.status == EntryStatus.PENDING)
    ).scalar_one()
    if left == 0:
        _complete(session, camp, actor=caller.actor, now=now, reason="every entry decided")
    return entry


def _revoke_live(session: Session, entry: ReviewEntry, *, actor: Actor, now: datetime,
                 why: str) -> list[int]:
    """End the entry's user's live grants of that resource and role (provisioning then
    takes the access away on the target); the ids of the grants ended."""
    live = session.execute(
        select(Grant).where(Grant.user == entry.user, Grant.resource == entry.resource,
                            Grant.role == entry.role, Grant.status.in_(_LIVE))
        .order_by(Grant.id).with_for_update()).scalars().all()
    revoked = []
    for g in live:
        if grants.effective_status(g, now) in _LIVE:
            grants.end(session, grant=g, status=GrantStatus.REVOKED, actor=actor, now=now,
                       comment=why)
            revoked.append(g.id)
    return revoked


def _complete(session: Session, camp: ReviewCampaign, *, actor: Actor, now: datetime,
              reason: str) -> None:
    rows = list(session.execute(
        select(ReviewEntry).where(ReviewEntry.campaign_id == camp.id)
        .order_by(ReviewEntry.id)).scalars())
    tally = {str(s): 0 for s in EntryStatus}
    for e in rows:
        tally[e.status] += 1
    camp.status = CampaignStatus.COMPLETED
    camp.completed_at = now
    started = session.execute(
        select(LedgerEntry.idx).where(LedgerEntry.subject == subject(camp.id),
                                      LedgerEntry.type == str(EventType.REVIEW_STARTED))
    ).scalar_one_or_none()
    ledger.record(
        session, type=EventType.REVIEW_COMPLETED, actor=actor, subject=subject(camp.id),
        time=now,
        data={"campaign_id": camp.id, "definition": camp.definition, "reason": reason,
              "entries": len(rows), "counts": tally,
              "expired": [e.id for e in rows if e.status == EntryStatus.EXPIRED],
              "revoked": [e.id for e in rows if e.status == EntryStatus.REVOKED],
              "revoked_grant_ids": sorted(g for e in rows for g in e.revoked_grant_ids),
              "outcomes_sha256": outcomes_digest(rows), "started_index": started})
    session.flush()


# ---------------------------------------------------------------- background


def close(session: Session, *, campaign_id: int, now: datetime, revoke: bool = False) -> bool:
    """At the deadline: undecided entries expire and the campaign completes. With
    `revoke` (the definition's `on_expiry: revoke`), expired entries lose their access."""
    camp = session.get(ReviewCampaign, campaign_id, with_for_update=True)
    if camp is None or camp.status != CampaignStatus.OPEN:
        return False
    system = Actor.system()
    for e in session.execute(
            select(ReviewEntry).where(ReviewEntry.campaign_id == camp.id,
                                      ReviewEntry.status == EntryStatus.PENDING)
            .with_for_update()).scalars():
        e.status = EntryStatus.EXPIRED
        if revoke:
            e.revoked_grant_ids = _revoke_live(
                session, e, actor=system, now=now,
                why=f"access review {camp.definition} #{camp.id}, entry {e.id}: nobody "
                    "certified it by the deadline (on_expiry: revoke)")
    session.flush()
    _complete(session, camp, actor=system, now=now,
              reason="deadline: undecided entries expired"
              + (" and their access was revoked" if revoke else ""))
    return True


def pending_by_reviewer(session: Session, *, campaign_id: int) -> dict[str, int]:
    return {u: int(n) for u, n in session.execute(
        select(ReviewReviewer.username, func.count())
        .join(ReviewEntry, ReviewEntry.id == ReviewReviewer.entry_id)
        .where(ReviewReviewer.campaign_id == campaign_id,
               ReviewEntry.status == EntryStatus.PENDING)
        .group_by(ReviewReviewer.username).order_by(ReviewReviewer.username))}


def remind(session: Session, *, campaign_id: int, round: int, now: datetime) -> bool:
    """Remind reviewers of their undecided entries, and plan the next round before the
    deadline. Nothing once everything is decided or the campaign is over."""
    camp = session.get(ReviewCampaign, campaign_id, with_for_update=True)
    if camp is None or camp.status != CampaignStatus.OPEN or now >= camp.deadline:
        return False
    waiting = pending_by_reviewer(session, campaign_id=camp.id)
    if not waiting:
        return False
    ledger.record(
        session, type=EventType.REVIEW_REMINDED, actor=Actor.system(), subject=subject(camp.id),
        time=now,
        data={"campaign_id": camp.id, "definition": camp.definition, "round": round,
              "deadline": format_time(camp.deadline), "reviewers": waiting})
    every = camp.spec.get("remind_every")
    if every:
        due = now + parse_duration(every)
        if due < camp.deadline:
            jobs.enqueue(session, kind=REMIND, key=f"review:{camp.id}:remind:{round + 1}",
                         run_at=due, now=now,
                         payload={"campaign_id": camp.id, "round": round + 1})
    return True


def _start_key(name: str, due: datetime) -> str:
    return f"review:{name}:start:{format_time(due)}"


def schedule_next(session: Session, *, name: str, due: datetime, now: datetime) -> bool:
    """The definition's next start job (its key: name and due time, so schedules converge)."""
    return jobs.enqueue(session, kind=START, key=_start_key(name, due), run_at=due, now=now,
                        payload={"name": name})


def plan(session: Session, *, policy: Policy, now: datetime) -> int:
    """Give every review definition its next start job (at `every` after its last campaign,
    or after now for a definition never run). Returns how many were added."""
    waiting: dict[str, datetime] = {}
    for key, run_at in session.execute(
            select(Job.key, Job.run_at).where(Job.kind == START, Job.done_at.is_(None))):
        name = key.split(":")[1]
        waiting[name] = min(run_at, waiting.get(name, run_at))
    added = 0
    for name, spec in definitions(policy).items():
        last = _last(session, name)
        if last is None:
            due = now + spec.every
        else:
            due = last.started_at + spec.every
            if last.status == CampaignStatus.OPEN:
                due = max(due, last.deadline)
        if name in waiting and waiting[name] <= due:
            continue
        added += schedule_next(session, name=name, due=due, now=now)
    return added


def start_due(session: Session, *, policy: Policy, name: str, now: datetime
              ) -> ReviewCampaign | None:
    """A start job came due: start a campaign, unless one started less than `every` ago
    (then the job moves to `every` after that one) or the definition is gone."""
    spec = definitions(policy).get(name)
    if spec is None:
        return None  # removed from accord.yaml; `plan` schedules it again if it returns
    last = _last(session, name)
    if last is not None:
        due = last.started_at + spec.every
        if last.status == CampaignStatus.OPEN:
            due = max(due, last.deadline)
        if due > now:
            schedule_next(session, name=name, due=due, now=now)
            return None
    return start(session, policy=policy, name=name, actor=Actor.system(), now=now,
                 trigger="schedule")


def next_start(session: Session, *, name: str) -> datetime | None:
    """When the scheduler next starts a campaign of `name` (None: not planned yet)."""
    prefix = f"review:{name}:start:"
    value: datetime | None = session.execute(
        select(func.min(Job.run_at)).where(Job.kind == START, Job.done_at.is_(None),
                                           Job.key.startswith(prefix, autoescape=True))
    ).scalar_one()
    return value
