"""Ledger events as human messages: one `Message` per event and recipient.

`render` reads the event envelope (see `accord.ledger.events`) and writes a subject
line, a plain-text body and an HTML body in which every piece of user text (reasons,
comments, names) is escaped. Templates are small f-strings kept here; channels turn
the result into their own format (email parts, Slack blocks, webhook JSON).

The envelope is all `render` knows: `request.approved`, `request.denied`,
`request.expired` and `request.cancelled` do not name the requester, so their messages
say "Request #7" and `Message.requester` is None; the caller may know better.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from typing import Any

APPROVER_ACTIONS = ("approve", "deny")

SUPPORTED = frozenset({
    "request.created", "request.approved", "request.denied", "request.expired",
    "request.cancelled", "grant.activated", "grant.expired", "grant.revoked",
    "grant.relinquished", "grant.expiring", "alert.raised", "request.review_reminded",
    "review.started", "review.reminded",
})
# Events that need not name a resource and role (an alert may be about a person).
_RESOURCELESS = frozenset({"alert.raised", "review.started", "review.reminded"})


@dataclass(frozen=True)
class Message:
    """One notification, ready for any channel."""

    event_type: str
    subject: str  # one line, no control characters
    text: str  # plain text; the first paragraph is the headline
    html: str | None  # the same content as an HTML document, user text escaped
    request_id: int | None
    resource: str
    role: str
    requester: str | None  # who asked (or holds the grant), when the event says so
    link: str  # where to see the request (or grant) in Accord
    actions: list[str] = field(default_factory=list)  # e.g. ["approve", "deny"]
    event: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def headline(self) -> str:
        return self.text.split("\n\n", 1)[0]


@dataclass(frozen=True)
class _Ctx:
    type: str
    resource: str
    role: str
    data: dict[str, Any]
    actor_kind: str
    actor_id: str
    recipient: str
    approver: bool
    request_id: int | None
    requester: str | None
    base_url: str

    @property
    def target(self) -> str:
        return f"{self.resource}/{self.role}"

    @property
    def ref(self) -> str:
        return f"request #{self.request_id}" if self.request_id is not None else "a request"

    def whose(self) -> str:
        """'Your request #7', "alice's request #7" or 'Request #7'."""
        if self.requester is None:
            return self.ref[0].upper() + self.ref[1:]
        if self.requester == self.recipient:
            return f"Your {self.ref}"
        return f"{self.requester}'s {self.ref}"

    def who(self, name: str) -> str:
        return "you" if name == self.recipient else name

    def by(self) -> str:
        if self.actor_kind == "policy":
            return f"by policy (workflow {self.actor_id})"
        if self.actor_kind == "system":
            return "automatically"
        return f"by {self.who(self.actor_id)}"


@dataclass
class _Draft:
    subject: str
    paragraphs: list[str]
    actions: list[str] = field(default_factory=list)
    link: str | None = None


def render(event: dict[str, Any], *, base_url: str, recipient: str, approver: bool) -> Message:
    """The message about `event` for `recipient` (an Accord user name).

    `approver` marks someone asked to decide (or told about a decision they could have
    made): a pending `request.created` then carries `actions` ["approve", "deny"].
    Raises ValueError for event types without a notification and malformed envelopes.
    """
    if not isinstance(event, dict):
        raise ValueError("the event must be a JSON object")
    etype = event.get("type")
    if etype not in SUPPORTED:
        raise ValueError(f"no notification for event type {etype!r}")
    resource = event.get("resource")
    name = resource.get("name") if isinstance(resource, dict) else None
    role = resource.get("role") if isinstance(resource, dict) else None
    if etype in _RESOURCELESS:
        name, role = (name if isinstance(name, str) and name else "-"), (role or "-")
    if not isinstance(name, str) or not isinstance(role, str) or not name or not role:
        raise ValueError(f"{etype} event without a resource name and role")
    data = event.get("data")
    data = data if isinstance(data, dict) else {}
    actor = event.get("actor")
    actor = actor if isinstance(actor, dict) else {}
    request_id = _int(data.get("request_id"))
    if request_id is None and etype.startswith("request."):
        request_id = _subject_id(event.get("subject"), "request")
    if request_id is None and etype.startswith("grant."):
        ids = [i for i in (_int(x) for x in _list(data.get("request_ids"))) if i is not None]
        request_id = min(ids) if ids else None  # the grant's first request
    if request_id is None and etype.startswith("request."):
        raise ValueError(f"{etype} event without a request id")
    requester = _str(data.get("requester")) or _str(data.get("user"))
    ctx = _Ctx(
        type=etype, resource=name, role=role, data=data,
        actor_kind=_str(actor.get("kind")) or "system", actor_id=_str(actor.get("id")) or "?",
        recipient=recipient, approver=approver, request_id=request_id, requester=requester,
        base_url=base_url.rstrip("/"),
    )
    draft = _TEMPLATES[etype](ctx)
    link = draft.link or (f"{ctx.base_url}/requests/{request_id}"
                          if request_id is not None else ctx.base_url)
    text = "\n\n".join([*draft.paragraphs, f"Details: {link}"])
    return Message(
        event_type=etype,
        subject=_one_line(draft.subject),
        text=text,
        html=_html(draft.paragraphs, link),
        request_id=request_id,
        resource=name,
        role=role,
        requester=requester,
        link=link,
        actions=draft.actions,
        event=event,
    )


DIGEST = "notification.digest"  # the event_type of a digest message


def render_digest(events: Sequence[tuple[dict[str, Any], bool]], *, base_url: str,
                  recipient: str, day: str) -> Message | None:
    """One message listing several events for `recipient`, oldest first: a daily digest.

    `events` are (envelope, approver) pairs as `render` takes them; events without a
    notification are left out. None when nothing is left to tell.
    """
    shown: list[Message] = []
    for event, approver in events:
        try:
            shown.append(render(event, base_url=base_url, recipient=recipient,
                                approver=approver))
        except ValueError:
            continue
    if not shown:
        return None
    count = f"{len(shown)} update" + ("" if len(shown) == 1 else "s")
    link = base_url.rstrip("/") or base_url
    intro = f"Your Accord digest for {day}: {count} since the last one."
    lines = [f"- {_one_line(m.headline, 300)}\n  {m.link}" for m in shown]
    text = "\n\n".join([intro, "\n".join(lines), f"Details: {link}"])
    items = "".join(f'<li>{escape(_one_line(m.headline, 300))} '
                    f'(<a href="{escape(m.link, quote=True)}">details</a>)</li>\n'
                    for m in shown)
    html = (f'<!DOCTYPE html>\n<html><body style="font-family: sans-serif">\n'
            f"<p>{escape(intro)}</p>\n<ul>\n{items}</ul>\n</body></html>\n")
    return Message(
        event_type=DIGEST,
        subject=_one_line(f"[Accord] Daily digest for {day}: {count}"),
        text=text,
        html=html,
        request_id=None,
        resource="",
        role="",
        requester=None,
        link=link,
        event={"type": DIGEST, "day": day, "events": [m.event for m in shown]},
    )


# ---------------------------------------------------------------- templates


def _created(c: _Ctx) -> _Draft:
    d = c.data
    duration = _str(d.get("duration")) or f"{_int(d.get('duration_seconds')) or 0}s"
    reason = _str(d.get("reason"))
    found = d.get("routing")
    routing: dict[str, Any] = found if isinstance(found, dict) else {}
    outcome = _str(routing.get("outcome"))
    pending = outcome not in ("approve", "deny")
    asker = c.requester or "someone"
    if c.requester is not None and c.requester == c.recipient:
        headline = f"You asked for {c.target} for {duration}"
    else:
        headline = f"{asker} asks for {c.target} for {duration}"
    paragraphs = [headline + (f": {reason}" if reason else ".")]
    owner = _str(d.get("owner"))
    if owner:
        paragraphs.append(f"{asker} is an AI agent acting for {owner}.")
    call = d.get("tool_call")
    if d.get("kind") == "tool_call" and isinstance(call, dict):
        shown = call.get("arguments")
        paragraphs.append(
            f"It asks to run one call of the tool {_str(call.get('tool'))} through the MCP "
            "gateway, with " + (f"these arguments: {_one_line(json.dumps(shown))}"
                                if isinstance(shown, dict) else
                                f"arguments {', '.join(map(str, call.get('argument_names') or []))}"
                                f" (sha256 {(_str(call.get('arguments_sha256')) or '?')[:16]}…)")
            + "; approving it lets that call run once.")
    until = _when(d.get("pending_until"))
    if not pending:
        verdict = "approved" if outcome == "approve" else "denied"
        why = _str(routing.get("reason"))
        paragraphs.append(f"Policy {verdict} it at once" + (f" ({why})." if why else ".")
                          + (" No decision is needed." if c.approver else ""))
    elif c.approver:
        paragraphs.append("Approve or deny it" + (f" before {until}" if until else "")
                          + f": accord request approve {c.request_id} | "
                          f"accord request deny {c.request_id}")
    else:
        paragraphs.append("It waits for approval" + (f" until {until}." if until else "."))
    if c.approver:
        subject = f"[Accord] {asker} asks for {c.target} for {duration} ({c.ref})"
    else:
        subject = f"[Accord] {c.whose()} for {c.target} was filed"
    actions = list(APPROVER_ACTIONS) if c.approver and pending else []
    return _Draft(subject, paragraphs, actions)


def _approved(c: _Ctx) -> _Draft:
    approvers = [a["user"] for a in _list(c.data.get("approvers"))
                 if isinstance(a, dict) and isinstance(a.get("user"), str)]
    by = ("by " + _and([c.who(a) for a in approvers])
          if approvers and c.actor_kind == "user" else c.by())
    paragraphs = [f"{c.whose()} for {c.target} was approved {by}."]
    reason = _str(c.data.get("reason"))
    if reason and c.actor_kind == "policy":
        paragraphs.append(f"Reason: {reason}")
    return _Draft(f"[Accord] Approved: {c.target} ({c.ref})", paragraphs)


def _denied(c: _Ctx) -> _Draft:
    paragraphs = [f"{c.whose()} for {c.target} was denied {c.by()}."]
    detail = _detail(_str(c.data.get("reason")), f"denied by {c.actor_id}")
    if detail:
        paragraphs.append(f"Reason: {detail}")
    return _Draft(f"[Accord] Denied: {c.target} ({c.ref})", paragraphs)


def _expired(c: _Ctx) -> _Draft:
    paragraphs = [f"{c.whose()} for {c.target} expired: nobody decided in time."]
    if c.approver:
        paragraphs.append("No decision is needed any more.")
    return _Draft(f"[Accord] Expired: {c.target} ({c.ref})", paragraphs)


def _cancelled(c: _Ctx) -> _Draft:
    paragraphs = [f"{c.whose()} for {c.target} was withdrawn {c.by()}."]
    detail = _detail(_str(c.data.get("reason")), "cancelled by the requester")
    if detail:
        paragraphs.append(f"Comment: {detail}")
    if c.approver:
        paragraphs.append("No decision is needed any more.")
    return _Draft(f"[Accord] Withdrawn: {c.target} ({c.ref})", paragraphs)


def _alert(c: _Ctx) -> _Draft:
    severity = (_str(c.data.get("severity")) or "?").upper()
    title = _str(c.data.get("title")) or "an alert"
    evidence = ", ".join(f"#{i}" for i in _list(c.data.get("evidence")))
    paragraphs = [f"{severity}: {title}",
                  f"Rule {c.data.get('rule')}; evidence in the ledger: {evidence or 'none'}."]
    return _Draft(f"[Accord] {severity} alert: {title}", paragraphs,
                  link=f"{c.base_url}/alerts")


def _review_reminded(c: _Ctx) -> _Draft:
    since = _when(c.data.get("waiting_since")) or "earlier"
    paragraphs = [f"{c.requester or 'Someone'} broke the glass for {c.target} ({c.ref}) at "
                  f"{since}; nobody has reviewed it yet (reminder {c.data.get('round', 1)}).",
                  f"Review it: accord request review {c.request_id} --verdict justified|"
                  "unjustified --note '...'"]
    return _Draft(f"[Accord] Break-glass {c.ref} needs a review", paragraphs)


def _access_review(c: _Ctx) -> _Draft:
    """review.started / review.reminded, for one reviewer: how many entries wait on them."""
    cid = _int(c.data.get("campaign_id"))
    name = _str(c.data.get("definition")) or "an access review"
    found = c.data.get("reviewers")
    waiting = _int(found.get(c.recipient)) if isinstance(found, dict) else None
    count = f"{waiting or 0} entr{'y' if waiting == 1 else 'ies'}"
    wait = "waits" if waiting == 1 else "wait"
    deadline = _when(c.data.get("deadline")) or "the deadline"
    if c.type == "review.started":
        headline = (f"Access review {name} (#{cid}) started: {count} of standing or recurring "
                    f"access {wait} for your decision by {deadline}.")
        subject = f"[Accord] Access review {name}: {count} to review by {deadline}"
    else:
        headline = (f"Reminder (round {c.data.get('round', 1)}): {count} in access review "
                    f"{name} (#{cid}) still {wait} for your decision; undecided entries expire "
                    f"at {deadline}.")
        subject = f"[Accord] Reminder: {count} to review in {name} by {deadline}"
    paragraphs = [headline,
                  f"Certify or revoke each: accord review show {cid} --mine, then "
                  f"accord review certify|revoke {cid} ENTRY --note '...'"]
    return _Draft(subject, paragraphs, link=f"{c.base_url}/reviews/{cid}")


def _grant_link(c: _Ctx) -> str | None:
    grant_id = _int(c.data.get("grant_id"))
    # The dashboard's page of the grant's first request shows the grant and its actions.
    return f"{c.base_url}/grants#grant-{grant_id}" if grant_id is not None else None


def _activated(c: _Ctx) -> _Draft:
    grantee = c.requester or "someone"
    ends = _when(c.data.get("ends_at")) or "its end"
    mine = grantee == c.recipient
    paragraphs = [f"You now have {c.target} until {ends}." if mine
                  else f"{grantee} now has {c.target} until {ends}."]
    login = _str(c.data.get("login"))
    connection = c.data.get("connection")
    if mine and login:
        paragraphs.append(f"Log in as {login}.")
    if mine and isinstance(connection, dict) and connection:
        paragraphs.append("Connection: " + ", ".join(f"{k}={v}" for k, v in connection.items()))
    if mine and c.request_id is not None:
        paragraphs.append(f"Done early? accord request relinquish {c.request_id}")
    return _Draft(f"[Accord] Access granted: {c.target} until {ends}", paragraphs,
                  link=_grant_link(c))


def _ended(c: _Ctx) -> _Draft:
    grantee = c.requester or "someone"
    mine = grantee == c.recipient
    access = "Your access" if mine else f"{grantee}'s access"
    if c.type == "grant.expired":
        ends = _when(c.data.get("ended_at")) or _when(c.data.get("ends_at"))
        headline = f"{access} to {c.target} expired" + (f" at {ends}." if ends else ".")
        word = "expired"
    elif c.type == "grant.revoked":
        headline = f"{access} to {c.target} was revoked {c.by()}."
        word = "revoked"
    else:
        headline = (f"{'You' if mine else grantee} gave up access to {c.target}."
                    if c.actor_id == grantee else
                    f"{access} to {c.target} was given up {c.by()}.")
        word = "given up"
    paragraphs = [headline]
    comment = _str(c.data.get("comment"))
    if comment:
        paragraphs.append(f"Comment: {comment}")
    return _Draft(f"[Accord] Access {word}: {c.target}", paragraphs, link=_grant_link(c))


def _expiring(c: _Ctx) -> _Draft:
    ends = _when(c.data.get("ends_at"))
    paragraphs = [f"Your access to {c.target} ends" + (f" at {ends}." if ends else " soon.")]
    rid = c.data.get("request_id")
    if rid is not None:
        paragraphs.append(f"Need more time? accord request extend {rid} --duration 1h "
                          "--reason '...'")
    return _Draft(f"[Accord] Access ending soon: {c.target}", paragraphs, link=_grant_link(c))


_TEMPLATES = {
    "alert.raised": _alert,
    "request.review_reminded": _review_reminded,
    "grant.expiring": _expiring,
    "request.created": _created,
    "request.approved": _approved,
    "request.denied": _denied,
    "request.expired": _expired,
    "request.cancelled": _cancelled,
    "grant.activated": _activated,
    "grant.expired": _ended,
    "grant.revoked": _ended,
    "grant.relinquished": _ended,
    "review.started": _access_review,
    "review.reminded": _access_review,
}


# ---------------------------------------------------------------- helpers


def _html(paragraphs: Sequence[str], link: str) -> str:
    body = "".join(f"<p>{escape(p).replace(chr(10), '<br>' + chr(10))}</p>\n"
                   for p in paragraphs)
    body += f'<p><a href="{escape(link, quote=True)}">Details</a></p>\n'
    return f'<!DOCTYPE html>\n<html><body style="font-family: sans-serif">\n{body}</body></html>\n'


def _one_line(value: str, limit: int = 200) -> str:
    flat = re.sub(r"[\x00-\x1f\x7f\s]+", " ", value).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _detail(reason: str | None, said: str) -> str | None:
    """`reason` without a leading restatement of what the headline already says."""
    if not reason:
        return None
    if reason == said:
        return None
    if reason.startswith(said + ": "):
        return reason[len(said) + 2:] or None
    return reason


def _when(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _subject_id(subject: Any, kind: str) -> int | None:
    if isinstance(subject, str) and subject.startswith(kind + ":"):
        tail = subject[len(kind) + 1:]
        if tail.isascii() and tail.isdigit():
            return int(tail)
    return None
