"""The detectors: each looks at one ledger event (and what it remembers) and may find
something worth an alert. They never write; `service.pump` turns findings into alerts.

Windowed detectors keep their memory in `Scan.state` (plain JSON saved with the cursor),
so a restart resumes exactly where the last committed batch ended.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.durations import format_duration
from accord.ledger.models import LedgerEntry
from accord.policy.engine import Policy
from accord.spec.detect import CountRule, DetectSpec

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
GATEWAY_USE = ("gateway.session_opened", "gateway.statement")
GRANT_ENDS = ("grant.expired", "grant.revoked", "grant.relinquished")


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str
    title: str
    key: str  # the same finding is raised once, whatever re-reads the ledger
    evidence: list[int]
    user: str | None = None
    resource: str | None = None
    subject: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestFacts:
    requester: str
    created_at: datetime
    resource: str


@dataclass
class Scan:
    session: Session
    policy: Policy
    spec: DetectSpec
    state: dict[str, Any]
    requests: dict[int, RequestFacts]  # prefetched for the batch's events


def _time(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00"))


def _request_id(event: dict[str, Any]) -> int | None:
    rid = (event.get("data") or {}).get("request_id")
    return rid if isinstance(rid, int) else None


def _resource(event: dict[str, Any]) -> str | None:
    res = event.get("resource") or {}
    return res.get("name") if isinstance(res, dict) else None


def _count_in_window(scan: Scan, rule: CountRule, bucket: str, who: str, idx: int,
                     when: datetime) -> list[int] | None:
    """Remember one occurrence; the indices of `count` within the window, else None.
    Once raised, the memory is cleared: the next alert needs `count` new occurrences."""
    seen: list[list[Any]] = scan.state.setdefault(bucket, {}).setdefault(who, [])
    seen.append([when.isoformat(), idx])
    horizon = when - rule.window
    # Events come in ledger order, so the oldest are first: drop from the front only (a
    # busy agent's every call would otherwise re-read the whole window).
    old = 0
    while old < len(seen) and datetime.fromisoformat(seen[old][0]) <= horizon:
        old += 1
    if old:
        del seen[:old]
    if len(seen) >= rule.count:
        out = [int(s[1]) for s in seen]
        seen.clear()
        return out
    return None


# ---------------------------------------------------------------- detectors


def repeated_denials(scan: Scan, idx: int, ev: dict[str, Any]) -> Iterator[Finding]:
    rule = scan.spec.repeated_denials
    rid = _request_id(ev)
    facts = scan.requests.get(rid) if rid is not None else None
    if not rule.enabled or facts is None:
        return
    hits = _count_in_window(scan, rule, "denials", facts.requester, idx, _time(ev))
    if hits:
        yield Finding(
            "repeated_denials", rule.severity,
            f"{facts.requester} had {len(hits)} requests denied within "
            f"{format_duration(rule.window)}", f"repeated_denials:{facts.requester}:{idx}", hits,
            user=facts.requester, resource=facts.resource,
            data={"count": len(hits), "window_seconds": rule.window.total_seconds()})


def failed_gateway_logins(scan: Scan, idx: int, ev: dict[str, Any]) -> Iterator[Finding]:
    rule = scan.spec.failed_gateway_logins
    data = ev.get("data") or {}
    who = str(data.get("user") or ev["actor"]["id"])
    if not rule.enabled:
        return
    hits = _count_in_window(scan, rule, "gateway_logins", who, idx, _time(ev))
    if hits:
        # The name is what unauthenticated clients claimed: the alert is not bob's doing.
        proven = ev["actor"]["kind"] == "user"
        yield Finding(
            "failed_gateway_logins", rule.severity,
            f"{len(hits)} refused gateway logins claiming to be {who} within "
            f"{format_duration(rule.window)}",
            f"failed_gateway_logins:{who}:{idx}", hits, user=who if proven else None,
            resource=_resource(ev),
            data={"count": len(hits), "claimed_user": who, "last_reason": data.get("reason"),
                  "last_client": data.get("client")})


def self_decision(scan: Scan, idx: int, ev: dict[str, Any]) -> Iterator[Finding]:
    rule = scan.spec.self_approval
    data = ev.get("data") or {}
    if rule.enabled and data.get("reason") == "self_decision":
        who = ev["actor"]["id"]
        yield Finding(
            "self_approval", rule.severity,
            f"{who} tried to {data.get('attempted', 'approve')} their own request "
            f"#{data.get('request_id')}", f"self_approval:{idx}", [idx], user=who,
            resource=_resource(ev), subject=ev.get("subject"))
    elif rule.enabled and data.get("reason") == "self_review":
        who = ev["actor"]["id"]
        yield Finding(
            "self_approval", rule.severity,
            f"{who} tried to {data.get('attempted', 'certify')} their own access in review "
            f"#{data.get('campaign_id')} (entry {data.get('entry_id')})",
            f"self_approval:{idx}", [idx], user=who, resource=_resource(ev),
            subject=ev.get("subject"))


def rubber_stamp(scan: Scan, idx: int, ev: dict[str, Any]) -> Iterator[Finding]:
    rule = scan.spec.rubber_stamp
    data = ev.get("data") or {}
    rid = _request_id(ev)
    facts = scan.requests.get(rid) if rid is not None else None
    if not rule.enabled or facts is None or data.get("decision", "approve") != "approve":
        return
    approver = ev["actor"]["id"]
    waited = (_time(ev) - facts.created_at).total_seconds()
    if waited <= rule.within.total_seconds():
        yield Finding(
            "rubber_stamp", rule.severity,
            f"{approver} approved request #{rid} by {facts.requester} {waited:.0f} s after "
            "it was filed", f"rubber_stamp:fast:{idx}", [idx], user=approver,
            resource=facts.resource, subject=f"request:{rid}",
            data={"seconds": round(waited, 3), "requester": facts.requester})
    # One approver deciding most of a team's recent requests.
    for team in sorted(scan.policy.groups_of.get(facts.requester, frozenset())):
        recent: list[list[Any]] = scan.state.setdefault("team_decisions", {}) \
            .setdefault(team, [])
        recent.append([approver, idx])
        del recent[:-rule.min_decisions]
        if len(recent) < rule.min_decisions:
            continue
        mine = [int(i) for a, i in recent if a == approver]
        if len(mine) / len(recent) >= rule.share:
            recent.clear()
            yield Finding(
                "rubber_stamp", rule.severity,
                f"{approver} decided {len(mine)} of the last {rule.min_decisions} approvals "
                f"for team {team}", f"rubber_stamp:share:{team}:{approver}:{idx}", mine,
                user=approver, data={"team": team, "share": len(mine) / rule.min_decisions})


def off_hours(scan: Scan, idx: int, ev: dict[str, Any]) -> Iterator[Finding]:
    rule = scan.spec.off_hours
    if not rule.enabled or ev["actor"]["kind"] == "agent":  # agents: agent_off_hours
        return
    local = _time(ev).astimezone(ZoneInfo(rule.timezone))
    working = WEEKDAYS[local.weekday()] in rule.weekdays and rule.start <= local.hour < rule.end
    if working:
        return
    who = ev["actor"]["id"]
    what = "asked for access" if ev["type"] == "request.created" else "used the gateway"
    yield Finding(
        "off_hours", rule.severity,
        f"{who} {what} outside working hours ({local.strftime('%a %H:%M')} {rule.timezone})",
        f"off_hours:{idx}", [idx], user=who, resource=_resource(ev), subject=ev.get("subject"),
        data={"local_time": local.isoformat()})


def _agent(ev: dict[str, Any]) -> tuple[str, str] | None:
    """(agent, owner) when an agent did what `ev` records."""
    actor = ev["actor"]
    if actor.get("kind") != "agent":
        return None
    return str(actor["id"]), str(actor.get("owner") or "?")


def agent_refused_tools(scan: Scan, idx: int, ev: dict[str, Any]) -> Iterator[Finding]:
    """An agent calling tools its role does not allow, again and again (probing)."""
    rule = scan.spec.agent_refused_tools
    data = ev.get("data") or {}
    who = _agent(ev)
    if not rule.enabled or who is None or "tool" not in data:
        return
    agent, owner = who
    hits = _count_in_window(scan, rule, "agent_refused_tools", agent, idx, _time(ev))
    if hits:
        yield Finding(
            "agent_refused_tools", rule.severity,
            f"agent {agent} (of {owner}) called {len(hits)} refused tools on "
            f"{_resource(ev) or '?'} within {format_duration(rule.window)}",
            f"agent_refused_tools:{agent}:{idx}", hits, user=agent, resource=_resource(ev),
            subject=ev.get("subject"),
            data={"owner": owner, "count": len(hits), "last_tool": data.get("tool")})


def agent_off_hours(scan: Scan, idx: int, ev: dict[str, Any]) -> Iterator[Finding]:
    """An agent at work while its owner is not (at most one alert per agent and hour)."""
    rule = scan.spec.agent_off_hours
    who = _agent(ev)
    if not rule.enabled or who is None:
        return
    agent, owner = who
    spec = scan.policy.agents.get(agent)
    hours = (spec.owner_hours if spec is not None else None) or scan.spec.off_hours
    local = _time(ev).astimezone(ZoneInfo(hours.timezone))
    if WEEKDAYS[local.weekday()] in hours.weekdays and hours.start <= local.hour < hours.end:
        return
    hour = local.strftime("%Y-%m-%dT%H")
    raised: dict[str, str] = scan.state.setdefault("agent_off_hours", {})
    if raised.get(agent) == hour:  # its alert for this hour is found already (a busy agent
        return  # makes thousands of calls an hour: one finding, not one per call)
    raised[agent] = hour
    what = {"request.created": "asked for access",
            "gateway.tool_call": "called a tool"}.get(ev["type"], "was active")
    yield Finding(
        "agent_off_hours", rule.severity,
        f"agent {agent} {what} outside {owner}'s working hours "
        f"({local.strftime('%a %H:%M')} {hours.timezone})",
        f"agent_off_hours:{agent}:{hour}", [idx], user=agent,
        resource=_resource(ev), subject=ev.get("subject"),
        data={"owner": owner, "local_time": local.isoformat()})


def agent_burst(scan: Scan, idx: int, ev: dict[str, Any]) -> Iterator[Finding]:
    """More tool calls by one agent within the window than the configured rate; then no
    other such alert for that agent until a window has passed (a burst that goes on is
    one alert a window, not one every `count` calls)."""
    rule = scan.spec.agent_burst
    who = _agent(ev)
    if not rule.enabled or who is None:
        return
    agent, owner = who
    when = _time(ev)
    quiet: dict[str, str] = scan.state.setdefault("agent_burst_quiet", {})
    until = quiet.get(agent)
    if until is not None and when < datetime.fromisoformat(until):
        return
    hits = _count_in_window(scan, rule, "agent_burst", agent, idx, when)
    if hits:
        quiet[agent] = (when + rule.window).isoformat()
        yield Finding(
            "agent_burst", rule.severity,
            f"agent {agent} (of {owner}) made {len(hits)} tool calls within "
            f"{format_duration(rule.window)}", f"agent_burst:{agent}:{idx}",
            [hits[0], hits[-1]], user=agent, resource=_resource(ev),
            data={"owner": owner, "count": len(hits),
                  "window_seconds": rule.window.total_seconds()})


def unused_grant(scan: Scan, idx: int, ev: dict[str, Any]) -> Iterator[Finding]:
    """A grant that ended without one gateway session: access nobody needed."""
    rule = scan.spec.unused_grant
    resource = _resource(ev)
    spec = scan.policy.resources.get(resource or "")
    # Only where the gateway is the way in; elsewhere Accord cannot see use.
    if not rule.enabled or spec is None or not spec.gateway_reachable:
        return
    subject = str(ev.get("subject"))
    used = scan.session.execute(
        select(LedgerEntry.idx).where(LedgerEntry.subject == subject,
                                      LedgerEntry.type.in_(GATEWAY_USE)).limit(1)).first()
    if used is None:
        data = ev.get("data") or {}
        user = data.get("user") or data.get("requester")
        yield Finding(
            "unused_grant", rule.severity,
            f"{subject} on {resource} ended ({ev['type'].split('.')[1]}) without being used",
            f"unused_grant:{subject}", [idx], user=str(user) if user else None,
            resource=resource, subject=subject)


def _each(rule_name: str, title: str) -> Callable[[Scan, int, dict[str, Any]], Iterator[Finding]]:
    """A detector that raises one alert per event of its type."""

    def detect(scan: Scan, idx: int, ev: dict[str, Any]) -> Iterator[Finding]:
        rule = getattr(scan.spec, rule_name)
        if not rule.enabled:
            return
        who = ev["actor"]["id"]
        person = ev["actor"]["kind"] in ("user", "agent")
        yield Finding(rule_name, rule.severity, title.format(who=who, ev=ev, **_fields(ev)),
                      f"{rule_name}:{idx}", [idx], user=who if person else None,
                      resource=_resource(ev), subject=ev.get("subject"))

    return detect


def _fields(ev: dict[str, Any]) -> dict[str, Any]:
    data = ev.get("data") or {}
    return {"resource": _resource(ev) or "?",
            "statement": str(data.get("statement") or data.get("tool") or "")[:80],
            "request_id": data.get("request_id", "?")}


_ATTEMPTS = {
    "identity": "change the session's role",
    "encoding": "change how the server reads statement text",
    "server": "reach the database server's files, programs or other sessions",
}


def gateway_escalation(scan: Scan, idx: int, ev: dict[str, Any]) -> Iterator[Finding]:
    """A refused statement or login that tried to leave its grant (the gateway names how)."""
    rule = scan.spec.gateway_escalation
    data = ev.get("data") or {}
    attempt = data.get("escalation")
    if not rule.enabled or attempt not in _ATTEMPTS:
        return
    user = ev["actor"]["id"] if ev["actor"]["kind"] == "user" else None
    what = str(data.get("statement") or data.get("reason") or "")[:80]
    yield Finding(
        "gateway_escalation", rule.severity,
        f"{user or 'an unauthenticated client'} tried to {_ATTEMPTS[attempt]} on "
        f"{_resource(ev) or data.get('database') or '?'}: {what}",
        f"gateway_escalation:{idx}", [idx], user=user, resource=_resource(ev),
        subject=ev.get("subject"), data={"escalation": attempt, "statement": what})


def break_glass(scan: Scan, idx: int, ev: dict[str, Any]) -> Iterator[Finding]:
    rule = scan.spec.break_glass
    data = ev.get("data") or {}
    if rule.enabled and data.get("emergency"):
        who = ev["actor"]["id"]
        yield Finding(
            "break_glass", rule.severity,
            f"{who} broke the glass on {_resource(ev)}: \"{str(data.get('reason'))[:120]}\"; "
            "open until reviewed", f"break_glass:{ev.get('subject')}", [idx], user=who,
            resource=_resource(ev), subject=ev.get("subject"))


def policy_change(scan: Scan, idx: int, ev: dict[str, Any]) -> Iterator[Finding]:
    rule = scan.spec.policy_change
    data = ev.get("data") or {}
    if rule.enabled and idx > 0 and data.get("previous"):
        yield Finding(
            "policy_change", rule.severity,
            f"policy changed to {str(data.get('version'))[:12]} by {ev['actor']['id']}",
            f"policy_change:{idx}", [idx], user=ev["actor"]["id"],
            subject=ev.get("subject"), data={"changes": data.get("changes")})


def ssh_command(scan: Scan, idx: int, ev: dict[str, Any]) -> Iterator[Finding]:
    """An SSH command matching `detect.ssh_commands.patterns`: an exec's command line (matched
    here), or lines typed at a shell that the gateway flagged in a recording chunk's event
    (`flagged`: the gateway sees the keystrokes; the ledger keeps only the matching lines)."""
    rule = scan.spec.ssh_commands
    if not rule.enabled:
        return
    data = ev.get("data") or {}
    if ev["type"] == "gateway.ssh_exec":
        command = str(data.get("command") or "")
        hits = [{"pattern": name, "line": command} for name, pattern in rule.patterns.items()
                if re.search(pattern, command)][:1]
    else:
        hits = [h for h in data.get("flagged") or [] if isinstance(h, dict)]
    who = ev["actor"]["id"]
    for n, hit in enumerate(hits):
        line = str(hit.get("line", ""))[:200]
        yield Finding(
            "ssh_commands", rule.severity,
            f"{who} ran `{line[:80]}` on {_resource(ev) or '?'} (matches {hit.get('pattern')})",
            f"ssh_commands:{idx}:{n}", [idx], user=who, resource=_resource(ev),
            subject=ev.get("subject"),
            data={"pattern": hit.get("pattern"), "line": line, "session": data.get("session"),
                  "channel": data.get("channel"), "chunk": data.get("index")})


Detector = Callable[[Scan, int, dict[str, Any]], Iterator[Finding]]
BY_TYPE: dict[str, list[Detector]] = {
    "request.denied": [repeated_denials],
    "gateway.login_refused": [failed_gateway_logins, gateway_escalation],
    "approval.refused": [self_decision],
    "review.refused": [self_decision],
    "approval.recorded": [rubber_stamp],
    "request.created": [off_hours, agent_off_hours, break_glass],
    "gateway.session_opened": [off_hours],
    "gateway.tool_call": [agent_off_hours, agent_burst],
    "gateway.violation": [_each("scope_violation",
                                "{who} ran a statement their role does not allow on "
                                "{resource}: {statement}"), gateway_escalation,
                          agent_refused_tools],
    "drift.detected": [_each("drift", "access on {resource} differs from Accord's grants")],
    "policy.loaded": [policy_change],
    "gateway.ssh_exec": [ssh_command],
    "gateway.ssh_chunk": [ssh_command],
    **{t: [unused_grant] for t in GRANT_ENDS},
}
# Events whose request the detectors need (requester, creation time): fetched per batch.
NEEDS_REQUEST = frozenset({"request.denied", "approval.recorded"})
