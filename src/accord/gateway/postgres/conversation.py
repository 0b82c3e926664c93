"""The data path of one gateway session, sans-IO: bytes in, bytes out, statements noted.

`client(data)` takes what the client sent and returns what to send upstream;
`server(data)` takes what the server sent and returns what to send the client. Bytes are
passed on as they arrive: only message headers are read, and the bodies of the few
messages that matter (Query, Parse, Bind, Execute, Close, Describe, Sync, FunctionCall
from the client; CommandComplete, ErrorResponse, ReadyForQuery and the extended-protocol
acknowledgements from the server). DataRow and CopyData stream through, split or not.

Every statement run (a simple-query statement, an Execute, a FunctionCall) becomes a `Run`
in `started` when it is sent upstream, and a `Finished` in `finished` when its result
comes back, in order. A statement the role may not run never reaches the server: it is
replaced by a statement that fails to parse, so the server aborts the transaction and
discards the rest of the pipeline exactly as for a real error, and that error is
rewritten into 42501 on its way back. A Bind with a text parameter that is not UTF-8 is
refused the same way (a Bind of a statement that does not exist; 22021 on the way back).
Executes behind a refusal, up to the Sync, are discarded by the server: they are not
noted as run. `violations` lists the refusals.

Reuse (`auto_prepare`): a client that sends the same Parse of the unnamed statement again
and again (pgbench -M extended, psycopg before its own prepare threshold, most ORMs) makes
the server parse and plan it every time. From the `auto_prepare`-th time in a session, the
gateway prepares it once upstream under a name of its own. Later Parses of it do not
reach the server: with nothing outstanding and a Bind right behind, the gateway answers
ParseComplete itself, ahead of the server's answer to the Bind; otherwise it sends a Parse
of an empty string, which the server answers in order at next to no cost. Binds and
Describes of the unnamed statement name the prepared one. The client sees the same
messages; the audit trail records the client's text as always.
"""

from __future__ import annotations

import struct
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from accord.gateway.classes import ADMIN, DDL, IDENTITY, PINNED, UNKNOWN
from accord.gateway.postgres import mask as _mask
from accord.gateway.postgres import protocol as pq
from accord.gateway.postgres.guard import Guard
from accord.gateway.postgres.mask import RowPlan, SessionMask, rewrite_rows
from accord.gateway.postgres.scope import (
    PINNED_SETTINGS,
    Classifier,
    Statement,
    Verdict,
    escalation,
)
from accord.gateway.records import Finished, GuardrailHit, Run, Violation
from accord.gateway.rules import BLOCK, REVIEW, Outcome, ReviewAsk, ReviewDecision, statement_hash

REFUSED_SQL = b"ACCORD GATEWAY REFUSED THIS STATEMENT"
MAX_PARAM_CHARS = 1024
MAX_AUTO_PREPARED = 256  # statements a session prepares upstream for reuse, at most
MAX_AUTO_BODY = 8192  # longer Parse messages are not counted for reuse
_REUSABLE = frozenset({"read", "write"})  # statement classes worth preparing for reuse
EMPTY_PARSE = b"P\0\0\0\x08\0\0\0\0"  # Parse of the unnamed statement, empty text: cheap
PARSE_COMPLETE = b"1\0\0\0\x04"

_unpack_i32 = struct.Struct("!i").unpack_from
# The compiled walk over rows only counted (None: this module's Python loop does it).
WALK = _mask.walk_rows
_now = time.perf_counter_ns

# Message type bytes, as ints (what indexing bytes gives).
_Q, _P, _B, _E, _D, _C, _S, _H, _F, _X = b"QPBEDCSHFX"
_COPY_DATA, _COPY_DONE, _COPY_FAIL = b"dcf"
_PARSE_OK, _BIND_OK, _CLOSE_OK = b"123"
_PARAM_DESC, _ROW_DESC, _NO_DATA, _DATA_ROW = b"tTnD"
_COMPLETE, _EMPTY, _SUSPENDED, _ERROR, _READY = b"CIsEZ"
_COPY_IN, _COPY_OUT, _COPY_BOTH = b"GHW"
_FUNC_RESULT, _NOTICE, _NOTIFY, _PARAM_STATUS = b"VNAS"
_FRONTEND_OK = frozenset(b"QPBEDCSHFXdcf")
_PASSIVE = frozenset(b"tNASGHWc")  # backend messages the tracker has nothing to do with
_BACKEND_OK = frozenset(b"123tTnDCIsEZGHWVNASdc")
_MASK_META = frozenset(b"TnHW")  # what a masked session reads besides DataRows

# Pending-entry kinds (what the server will answer, in order).
K_QUERY, K_PARSE, K_BIND, K_EXECUTE, K_DESCRIBE, K_CLOSE, K_SYNC, K_CALL = range(8)
# Backend acknowledgements and the entry kind each one completes (RowDescription also
# comes inside query results, where the head is no Describe and nothing is popped).
_ACKS = {_PARSE_OK: K_PARSE, _BIND_OK: K_BIND, _CLOSE_OK: K_CLOSE, _NO_DATA: K_DESCRIBE,
         _ROW_DESC: K_DESCRIBE}


# Settings the server reports (ParameterStatus) among those the gateway pins.
_REPORTED_PINS = {name.encode(): value.encode() for name, value in PINNED_SETTINGS.items()
                  if name in ("client_encoding", "standard_conforming_strings")}


class PinnedSettingChanged(pq.ProtocolError):
    """The server reports a pinned setting changed (by a function the gateway could not
    see into): the gateway and the server may no longer read text alike."""


def _prepares(verdict: Verdict) -> bool:
    return any(st.prepares is not None for st in verdict.statements)


def _violation(st: Statement, missing: frozenset[str], protocol: str, t0: int) -> Violation:
    # Refusals are rare: naming an escalation (a second parse) costs the data path nothing.
    return Violation(st.text, st.classes, missing, protocol, t0,
                     escalation(st, missing, protocol))


class _Hold(Exception):
    """A statement waits for a review decision (`Conversation.awaiting`): the message and
    everything after it stay in the client buffer until `resolve`."""


class _Entry:
    __slots__ = ("error", "hidden", "index", "kind", "message", "portal", "prepare", "refused",
                 "runs")

    def __init__(self, kind: int, runs: list[Run] | None = None,
                 refused: Violation | None = None, prepare: list[Any] | None = None,
                 message: bytes | None = None, portal: bytes | None = None,
                 hidden: bool = False) -> None:
        self.kind = kind
        # Masking: the portal an Execute runs or a Describe describes (None: a statement),
        # and whether the gateway sent the Describe itself (its answer is not passed on).
        self.portal = portal
        self.hidden = hidden
        self.message = message  # refused by a guardrail: the error the client gets
        self.runs = runs  # QUERY: one per statement; EXECUTE/CALL: one
        self.index = 0  # QUERY: the statement whose result comes next
        self.refused = refused
        self.error: tuple[str, str] | None = None
        self.prepare = prepare  # PARSE that prepares a statement for reuse: its slot


# Entries that carry no state of their own are shared (the data path allocates less).
_PARSE_ENTRY = _Entry(K_PARSE)
_BIND_ENTRY = _Entry(K_BIND)
_DESCRIBE_ENTRY = _Entry(K_DESCRIBE)
# A Bind or Describe rewritten to name a statement prepared for reuse: when PostgreSQL says
# "cached plan must not change result type" (0A000) to one of these, reuse starts afresh.
_REUSED_BIND_ENTRY = _Entry(K_BIND)
_REUSED_DESCRIBE_ENTRY = _Entry(K_DESCRIBE)
_CLOSE_ENTRY = _Entry(K_CLOSE)
_SYNC_ENTRY = _Entry(K_SYNC)
_DISCARDED_EXECUTE = _Entry(K_EXECUTE)  # behind a refusal: the server never runs it
_NO_PORTAL: tuple[bytes, object] = (b"", None)  # Execute of a portal never bound here
# What libpq sends after Parse and Bind for a one-off statement: Describe of the unnamed
# portal, Execute of it without a row limit, Sync.
_DESCRIBE_EXECUTE_SYNC = b"D\0\0\0\x06P\0" + b"E\0\0\0\x09\0\0\0\0\0" + b"S\0\0\0\x04"


_TAGS: dict[bytes, tuple[str, int | None]] = {}  # command tags repeat: read each once


def _tag(raw: bytes) -> tuple[str, int | None]:
    """A CommandComplete's tag (without its NUL) and the row count it reports, if any."""
    known = _TAGS.get(raw)
    if known is None:
        tag = raw.decode("utf-8", "replace")
        known = (tag, pq.rows_of(tag))
        if len(_TAGS) < 4096 and len(raw) <= 64:
            _TAGS[raw] = known
    return known


def _format(formats: tuple[int, ...], i: int) -> int:
    return formats[0] if len(formats) == 1 else (formats[i] if formats else 0)


def bad_text_param(body: bytes) -> int | None:
    """The index of a Bind's first text-format parameter that is not valid UTF-8, or None.

    The server would refuse it too (it reads text parameters in the pinned UTF8), but the
    gateway refuses it first, so that nothing it did not check as UTF-8 is ever run.
    Binary-format parameters are bytes, never text: they pass. ASCII passes at once."""
    if body.isascii():
        return None
    bind = pq.parse_bind(body)
    for i, value in enumerate(bind.values):
        if value is not None and _format(bind.formats, i) == 0:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return i
    return None


def render_params(body: bytes) -> list[str | None]:
    """A Bind's parameter values for the audit trail: text as text, binary as hex."""
    bind = pq.parse_bind(body)
    out: list[str | None] = []
    for i, value in enumerate(bind.values):
        if value is None:
            out.append(None)
            continue
        fmt = _format(bind.formats, i)
        try:
            shown = value.decode("utf-8") if fmt == 0 else "\\x" + value.hex()
        except UnicodeDecodeError:  # recorded as sent, never "repaired"
            shown = "\\x" + value.hex()
        if len(shown) > MAX_PARAM_CHARS:
            shown = shown[:MAX_PARAM_CHARS] + "…"
        out.append(shown)
    return out


def refusal_message(v: Violation, role: str, resource: str) -> bytes:
    missing = ", ".join(sorted(v.missing))
    text = v.text.decode("utf-8", "replace")
    shown = text if len(text) <= 200 else text[:200] + "…"
    if v.reason is not None:  # not the statement: how it was sent
        return pq.error_response(
            "22021", f"Accord gateway: {v.reason}", detail=f"statement: {shown}",
            hint="the gateway and the server read text as UTF-8: send text parameters in "
                 "UTF-8, or bytes in binary format")
    if IDENTITY in v.missing:  # first: a computed setting name may be a role too
        return pq.error_response(
            "42501", f"Accord gateway: a session of role {role} on {resource} may not change "
                     f"its role or session authorization",
            detail=f"refused statement: {shown}",
            hint="the session's privileges are its grant's; ask for another role with "
                 f"accord request create {resource} ROLE")
    if PINNED in v.missing:
        pins = ", ".join(f"{k}={v}" for k, v in PINNED_SETTINGS.items())
        return pq.error_response(
            "42501", "Accord gateway: the settings that decide how the server reads "
                     "statement text are pinned and may not be changed",
            detail=f"refused statement: {shown}",
            hint=f"the gateway pins {pins} so that it and the server read every statement "
                 f"alike; send UTF-8")
    return pq.error_response(
        "42501",
        f"Accord gateway: role {role} on {resource} may not run {missing} statements",
        detail=f"refused statement: {shown}",
        hint=f"ask for a role that allows {missing}: accord request create {resource} ROLE")


def _shown(text: bytes) -> str:
    out = text.decode("utf-8", "replace")
    return out if len(out) <= 200 else out[:200] + "…"


def guard_refusal(rule: str, message: str, text: bytes) -> bytes:
    """The error for a statement a `block` rule refused."""
    return pq.error_response(
        "42501", f"Accord gateway: {message or 'this statement is not allowed here'} "
                 f"(guardrail {rule})",
        detail=f"refused statement: {_shown(text)}",
        hint="the resource's guardrails in accord.yaml refuse it whatever the role")


def copy_refusal(text: bytes) -> bytes:
    """The error for a `COPY ... TO` in a session whose results are masked."""
    return pq.error_response(
        "42501", "Accord gateway: COPY ... TO is refused for a role whose results are masked",
        detail=f"refused statement: {_shown(text)}",
        hint="select the rows instead: masking rewrites query results, not copy streams")


def guard_notice(rule: str, message: str) -> bytes:
    return pq.notice_response("01000", f"Accord gateway: {message or 'careful'} "
                                       f"(guardrail {rule})", severity="WARNING")


class Conversation:
    """The proxy phase of one session. Not thread-safe; one per connection."""

    def __init__(self, *, allowed: frozenset[str], classifier: Classifier, role: str,
                 resource: str, redact: bool = True, max_message: int = 8 << 20,
                 auto_prepare: int = 0, guard: Guard | None = None,
                 mask: SessionMask | None = None) -> None:
        self.allowed = allowed
        # Masking (None: the session's results pass as they are). The rows of a simple
        # query follow its RowDescription (`_plan`); an Execute's, its portal's Describe
        # (`_portal_plans`), which the gateway sends itself when the client did not.
        self.mask = mask
        self._plan: RowPlan | None = None
        self._portal_plans: dict[bytes, RowPlan | None] = {}
        self._described: set[bytes] = set()  # portals described since their Bind
        if mask is not None:
            auto_prepare = 0  # statements stay the client's: Describes answer in order
        # Guardrails (None: the session has no rules). Statements a rule matched (`hits`);
        # a statement a review rule holds (`awaiting`) until `resolve` gives its decision.
        self.guard = guard if guard is not None and guard.rules else None
        self.hits: list[GuardrailHit] = []
        self.awaiting: ReviewAsk | None = None
        self._decisions: dict[str, ReviewDecision] = {}
        self._notices = b""  # warnings for the client, sent at the server stream's next boundary
        self._reviewed: dict[bytes, Outcome] = {}  # Parse text → warn/review: at each Execute
        self._review_params: dict[bytes, tuple[str | None, ...]] = {}  # portal → values
        self._approved_portals: set[bytes] = set()  # ran with an approval (more Executes ok)
        self.classify = classifier
        self.role = role
        self.resource = resource
        self.redact = redact
        self.max_message = max_message
        self.seq = 0
        self.started: list[Run] = []
        self.finished: list[Finished] = []
        self.violations: list[Violation] = []
        self.terminated = False  # the client sent Terminate
        self.status = b"I"  # the last ReadyForQuery status
        self._pending: deque[_Entry] = deque()
        self._statements: dict[bytes, bytes | None] = {}  # prepared name → text (None: refused)
        # allowed Parse body → (name, text, whether worth preparing for reuse)
        self._parsed: dict[bytes, tuple[bytes, bytes, bool]] = {}
        self._portals: dict[bytes, tuple[bytes, object]] = {}  # portal → (text, params)
        self._sql_prepared: dict[str, frozenset[str]] = {}  # PREPARE name → classes
        self.cbuf = b""  # a partial client message we must see whole (a slow client?)
        self._crest = 0  # bytes of a streamed client message (CopyData) still to pass
        self._sbuf = b""
        self._srest = 0
        self.auto_prepare = auto_prepare  # reuse after this many Parses of a text (0: never)
        self._auto: dict[bytes, list[Any]] = {}  # Parse body → [uses, name or None, ready]
        self._auto_made = 0
        # Dropped after "cached plan must not change result type" (0A000: a table changed
        # under one) or when one of ours is missing (26000).
        self._auto_prefix = b"_accord_%08x_" % (id(self) & 0xFFFFFFFF)
        self._unnamed: bytes | None = None  # the prepared statement standing for the unnamed
        self._gone = self._auto_prefix + b"gone"  # a name no statement has
        self._lead = b""  # answers of the gateway's own, due before the server's next bytes
        # Whether the unnamed statement changed behind a message of the same segment (up to
        # a Sync) that may fail, so that the server may skip the change; whether something
        # then failed; whether the current segment parsed it; whether a message that may
        # fail came since the last Sync; whether the server discards messages until a Sync.
        self._may_skip = False
        self._unsure = False
        self._unsure_failed = False
        self._segment_parsed = False
        self._skipping = False
        self._refusing = False  # a message since the last Sync was refused (its Executes:
        # the server discards them)

    # ------------------------------------------------------------------ helpers

    @property
    def at_boundary(self) -> bool:
        """Whether the client's stream ends between messages (safe to add one)."""
        return self._srest == 0

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    def _check(self, verdict: Verdict) -> tuple[Statement, frozenset[str]] | None:
        if verdict.plain and verdict.statements[0].classes <= self.allowed:
            return None
        return verdict.refused(self.allowed, self._sql_prepared)

    def _note_prepares(self, verdict: Verdict) -> None:
        for st in verdict.statements:
            if st.prepares is not None:
                self._sql_prepared[st.prepares] = st.classes
            if st.forgets or DDL in st.classes:  # DEALLOCATE, DISCARD ALL: ours may be
                self._auto.clear()  # gone; after DDL, texts may mean other tables

    # ------------------------------------------------------------------ guardrails

    def _guarded(self, outcome: Outcome, text: bytes, params: tuple[str | None, ...] | None,
                 protocol: str, t0: int, *, prepares: bool = False) -> bytes | None:
        """A statement some rule matched: the error that refuses it, or None to run it
        (warnings noted for the client). A review without a decision yet raises `_Hold`."""
        deciding = outcome.deciding
        assert deciding is not None
        names = tuple(m.rule for m in outcome.matches)
        action = outcome.action
        if action == REVIEW and prepares:  # EXECUTE would run it again and again
            self.hits.append(GuardrailHit(text, protocol, t0, BLOCK, deciding.rule, names,
                                          detail="prepare"))
            return guard_refusal(deciding.rule, "a statement that needs review cannot be "
                                 "prepared; send the statement itself", text)
        if action == BLOCK:
            self.hits.append(GuardrailHit(text, protocol, t0, BLOCK, deciding.rule, names))
            return guard_refusal(deciding.rule, deciding.message, text)
        if action == REVIEW:
            digest = statement_hash(text, params)
            decision = self._decisions.pop(digest, None)
            if decision is None:
                self.awaiting = ReviewAsk(text, params, protocol, digest, deciding.rule,
                                          deciding.message)
                raise _Hold
            self.hits.append(GuardrailHit(text, protocol, t0, REVIEW, deciding.rule, names,
                                          decision.request_id, decision.outcome))
            if not decision.run:
                return pq.error_response("42501", decision.message, detail=decision.detail,
                                         hint=decision.hint)
        warnings = outcome.warnings
        if warnings:
            if action != REVIEW:
                self.hits.append(GuardrailHit(text, protocol, t0, "warn", warnings[0].rule,
                                              names))
            self._notices += b"".join(guard_notice(m.rule, m.message) for m in warnings)
        return None

    def _review_execute(self, portal: bytes, text: bytes) -> bytes | None:
        """An Execute of a statement a review rule matched: None to run it, or the error
        that refuses it; `_Hold` until its decision is known."""
        params = self._review_params.get(portal)
        refusal = self._guarded(self._reviewed[text], text, params or None, "extended", _now())
        if refusal is None:
            self._approved_portals.add(portal)  # its further Executes (row limits) go on
        return refusal

    def _reviewed_bound(self) -> None:
        if len(self._reviewed) > 256:  # texts parsed long ago: forget the oldest
            self._reviewed.pop(next(iter(self._reviewed)))

    def resolve(self, decision: ReviewDecision) -> None:
        """The decision for `awaiting`: the held message is processed with it when the
        client's buffer is processed next (`client(b"")`)."""
        ask = self.awaiting
        assert ask is not None
        self.awaiting = None
        self._decisions[ask.hash] = decision

    def hold(self, data: bytes) -> None:
        """Bytes from the client while a decision is awaited: kept behind the held ones."""
        self.cbuf += data

    # ------------------------------------------------------------------ reuse

    def _unnamed_to(self, value: bytes | None) -> None:
        """The client's unnamed statement changed (to a prepared one, or to the server's
        own). Behind a message of its segment that may fail, the server may skip this."""
        if self._may_skip and self._auto_made:
            self._unsure = True
        self._unnamed = value

    def _unnamed_target(self) -> bytes | None:
        """What a Bind or Describe of the unnamed statement names upstream (None: the
        server's unnamed statement). When an earlier change of it may have been skipped
        and this segment did not parse it, a statement that does not exist: an error,
        never whatever the server's unnamed statement holds."""
        if self._unsure and not self._segment_parsed:
            return self._gone
        return self._unnamed

    def _settle(self) -> None:
        """Everything sent was answered: after a failure, which changes of the unnamed
        statement the server skipped is unknown, so binding it needs a Parse again."""
        if self._unsure_failed:
            self._unnamed = self._gone
        self._unsure = self._unsure_failed = False

    def _reuse(self, body: bytes) -> tuple[_Entry, bytes | None]:
        """A Parse of the unnamed statement seen before (`body` starts with its empty
        name): its pending entry, and what to send instead (None: itself)."""
        self._segment_parsed = True
        slot = self._auto.get(body)
        if slot is None:  # counting starts (again, after the reused ones were dropped)
            self._count_parse(body)
            self._unnamed_to(None)
            return _PARSE_ENTRY, None
        if self._pending or self._skipping or self.status == b"E":
            # Only as the first message after everything was answered, outside a failed
            # transaction: then nothing before it can make the server skip it, and the
            # server would not refuse it for the transaction's sake (25P02).
            self._unnamed_to(None)
            return _PARSE_ENTRY, None
        if slot[2]:  # prepared: the server need not parse it again
            self._unnamed = slot[1]
            return _PARSE_ENTRY, EMPTY_PARSE
        slot[0] += 1
        if slot[1] is not None or slot[0] < self.auto_prepare \
                or self._auto_made >= MAX_AUTO_PREPARED:
            self._unnamed = None
            return _PARSE_ENTRY, None
        self._auto_made += 1
        name = self._auto_prefix + b"%d" % self._auto_made
        slot[1] = name
        # From here the unnamed statement is this one, prepared or not: should preparing
        # fail, a Bind of it fails too (never runs an older statement in its place).
        self._unnamed = name
        return _Entry(K_PARSE, prepare=slot), pq.message(b"P", name + body)

    def _reused_statement(self, data: bytes) -> bytes | None:
        """The common case of reuse on its own: Parse of a statement prepared for reuse,
        Bind (unnamed portal, parameters redacted), Describe, Execute, Sync, with nothing
        outstanding. None, having changed nothing, for anything else."""
        n = len(data)
        unpack = _unpack_i32
        if n < 10 or self._skipping or self._refusing or self.status == b"E":
            return None
        pend: int = 1 + unpack(data, 1)[0]
        if pend + 9 > n or data[pend] != _B or not self.redact or data[pend + 5] != 0 \
                or data[pend + 6] != 0:
            return None
        body = data[5:pend]
        slot = self._auto.get(body)
        known = self._parsed.get(body)
        if slot is None or not slot[2] or known is None:
            return None
        bend: int = pend + 1 + unpack(data, pend + 1)[0]
        if bend + len(_DESCRIBE_EXECUTE_SYNC) != n or data[bend:] != _DESCRIBE_EXECUTE_SYNC:
            return None
        if not data.isascii() and bad_text_param(data[pend + 5:bend]) is not None:
            return None  # the general loop refuses it
        nfmt = unpack(data, pend + 5)[0] & 0xFFFF  # i16 after the two NULs
        at = pend + 9 + 2 * nfmt
        if nfmt > 0x7FFF or at + 2 > bend:
            return None  # the general loop says what is wrong with it
        count = int.from_bytes(data[at:at + 2], "big", signed=True)
        if count < 0:
            return None
        text = known[1]
        self._statements[b""] = text
        self._portals[b""] = (text, count)
        name: bytes = slot[1]
        self._unnamed = name
        self._segment_parsed = self._may_skip = False  # the Sync at its end
        self._lead += PARSE_COMPLETE
        self.seq += 1
        run = Run(self.seq, "extended", text, count, _now())
        self.started.append(run)
        self._pending.extend((_REUSED_BIND_ENTRY, _DESCRIBE_ENTRY,
                              _Entry(K_EXECUTE, [run]), _SYNC_ENTRY))
        return b"B" + (bend - pend - 1 + len(name)).to_bytes(4, "big") + b"\0" + name + \
            data[pend + 6:]

    def _count_parse(self, body: bytes) -> None:
        auto = self._auto
        if len(body) > MAX_AUTO_BODY:
            return
        if len(auto) >= MAX_AUTO_PREPARED:  # make room: forget texts not prepared
            for key in [k for k, slot in auto.items() if slot[1] is None]:
                del auto[key]
            if len(auto) >= MAX_AUTO_PREPARED:
                return
        auto[body] = [1, None, False]

    def _reuse_failed(self, entry: _Entry) -> None:
        if entry.prepare is not None:
            entry.prepare[1] = None  # not prepared; the next Parse of it tries again

    def _forget_reuse(self) -> None:
        """Prepare afresh: statements prepared for reuse are gone or stale. Until the
        client parses its unnamed statement again, binding it names a statement that does
        not exist (an error), never whatever the server's unnamed statement holds."""
        self._auto.clear()
        if self._unnamed is not None:
            self._unnamed = self._gone

    # ------------------------------------------------------------------ client → server

    def client(self, data: bytes) -> bytes:
        """Bytes from the client; returns the bytes to send upstream (maybe rewritten)."""
        if data and data[0] == _Q and not self.cbuf and not self._crest:
            # The common case on its own: one whole simple query, of a shape seen before.
            n = len(data)
            if n > 5 and _unpack_i32(data, 1)[0] == n - 1 and data[-1] == 0 \
                    and n <= self.max_message:
                sql = data[5:-1]
                classes = self.classify.shape(sql)
                if classes is not None and classes <= self.allowed and (
                        self.guard is None or self.guard.quiet(sql)) and (
                        self.mask is None or not self.mask.copies_out(sql)):
                    self.seq += 1
                    run = Run(self.seq, "simple", sql.strip(), None, _now())
                    self.started.append(run)
                    if self._auto_made:  # a Query destroys the unnamed statement
                        self._unnamed_to(None)
                        self._segment_parsed = self._may_skip = False
                    self._pending.append(_Entry(K_QUERY, [run]))
                    return data
        elif data and data[0] == _P and self._auto and not self._pending and not self.cbuf \
                and not self._crest:
            out = self._reused_statement(data)
            if out is not None:
                return out
        if self.cbuf:
            data = self.cbuf + data
            self.cbuf = b""
        n = len(data)
        pos = 0
        if self._crest:
            step = min(self._crest, n)
            self._crest -= step
            pos = step
        parts: list[bytes] | None = None
        last = 0
        limit = self.max_message
        pending = self._pending
        unpack = _unpack_i32
        plain: bool | None = None  # whether `data` is all ASCII (asked at the first Bind)
        while n - pos >= 5:
            kind = data[pos]
            length = unpack(data, pos + 1)[0]
            end = pos + 1 + length
            if end > n or length < 4 or length > limit or kind == _COPY_DATA:
                # Rare: a message cut by the read, CopyData (streamed whatever its size),
                # or one that breaks the protocol.
                if kind not in _FRONTEND_OK:
                    raise pq.ProtocolError(
                        f"unexpected message type {chr(kind)!r} from the client")
                if length < 4:
                    raise pq.ProtocolError("invalid message length")
                if kind == _COPY_DATA:
                    if end > n:
                        self._crest = end - n
                        pos = n
                        break
                    pos = end
                    continue
                if length > limit:
                    raise pq.ProtocolError(f"message of {length} bytes exceeds the gateway's "
                                           f"limit of {limit}")
                break  # the rest of this message comes with the next read
            # The extended protocol's pipeline, inline: it comes with every statement.
            if kind == _S:
                if length != 4:
                    raise pq.ProtocolError("Sync: bad length")
                pending.append(_SYNC_ENTRY)
                self._segment_parsed = self._may_skip = self._refusing = False
            elif kind == _E and self._refusing:
                if data.find(b"\0", pos + 5, end) != end - 5:
                    raise pq.ProtocolError("Execute: bad length")
                pending.append(_DISCARDED_EXECUTE)
                self._may_skip = True
            elif kind == _E:
                nul = data.find(b"\0", pos + 5, end)
                if nul != end - 5:
                    raise pq.ProtocolError("Execute: bad length")
                portal = data[pos + 5:nul]
                text, params = self._portals.get(portal, _NO_PORTAL)
                if self._reviewed and text in self._reviewed \
                        and portal not in self._approved_portals:
                    try:
                        refusal = self._review_execute(portal, text)
                    except _Hold:
                        break
                    if refusal is not None:  # an Execute of a portal that does not exist
                        pending.append(_Entry(K_EXECUTE, message=refusal))
                        self._refusing = self._may_skip = True
                        parts = parts or []
                        parts += (data[last:pos], pq.message(b"E", self._gone + b"\0\0\0\0\0"))
                        last = end
                        pos = end
                        continue
                if self.mask is not None and portal not in self._described:
                    # Which columns its rows have: asked first, the answer kept here.
                    pending.append(_Entry(K_DESCRIBE, portal=portal, hidden=True))
                    self._described.add(portal)
                    parts = parts or []
                    parts += (data[last:pos], pq.message(b"D", b"P" + portal + b"\0"))
                    last = pos
                self.seq += 1
                run = Run(self.seq, "extended", text, params, _now())
                self.started.append(run)
                pending.append(_Entry(K_EXECUTE, [run], portal=portal))
                self._may_skip = True
            elif kind == _D:
                if length < 6 or data[pos + 5] not in (0x53, 0x50) or \
                        data.find(b"\0", pos + 6, end) != end - 1:
                    raise pq.ProtocolError("Describe: malformed")
                if length == 6 and data[pos + 5] == 0x53 and (
                        target := self._unnamed_target()) is not None:
                    pending.append(_REUSED_DESCRIBE_ENTRY)  # the unnamed statement: the
                    parts = parts or []  # statement prepared for reuse
                    parts += (data[last:pos], pq.message(b"D", b"S" + target + b"\0"))
                    last = end
                elif self.mask is not None:
                    described = data[pos + 6:end - 1]
                    if data[pos + 5] == 0x50:
                        self._described.add(described)
                        pending.append(_Entry(K_DESCRIBE, portal=described))
                    else:
                        pending.append(_Entry(K_DESCRIBE))
                else:
                    pending.append(_DESCRIBE_ENTRY)
                self._may_skip = True
            elif kind == _P and (known := self._parsed.get(body := data[pos + 5:end])) \
                    is not None:
                self._statements[known[0]] = known[1]  # the same Parse again (unnamed
                if self.auto_prepare and data[pos + 5] == 0 and known[2]:  # statements,
                    entry, replacement = self._reuse(body)  # pgbench -M extended)
                    pending = self._pending
                    if replacement is EMPTY_PARSE and not pending and end < n \
                            and data[end] == _B:
                        # Nothing outstanding, and the Bind's answer comes next: the
                        # ParseComplete goes ahead of it; the server sees no Parse.
                        self._lead += PARSE_COMPLETE
                        replacement = b""
                    else:
                        pending.append(entry)
                    if replacement is not None:
                        parts = parts or []
                        parts += (data[last:pos], replacement)
                        last = end
                else:
                    if data[pos + 5] == 0:
                        self._segment_parsed = True
                        if self._unnamed is not None or self._unsure:
                            self._unnamed_to(None)
                    pending.append(_PARSE_ENTRY)
                self._may_skip = True
            elif kind == _B and not (plain := data.isascii() if plain is None else plain) \
                    and (bad := bad_text_param(data[pos + 5:end])) is not None:
                parts = parts or []
                parts += (data[last:pos], self._refuse_bind(data[pos + 5:end], bad))
                last = end
                self._may_skip = True
            elif kind == _B and self.redact and data[pos + 5] == 0 and data[pos + 6] == 0 \
                    and not self._reviewed:
                # Unnamed portal of the unnamed statement, parameters redacted: the count.
                nfmt = unpack(data, pos + 5)[0] & 0xFFFF  # i16 after the two NULs
                at = pos + 9 + 2 * nfmt
                if nfmt > 0x7FFF or at + 2 > end:
                    raise pq.ProtocolError("Bind: bad format count")
                count = int.from_bytes(data[at:at + 2], "big", signed=True)
                if count < 0:
                    raise pq.ProtocolError("Bind: bad parameter count")
                self._portals[b""] = (self._statements.get(b"") or b"", count)
                self._described.discard(b"")
                target = self._unnamed if not self._unsure else self._unnamed_target()
                if target is not None:  # bind the statement prepared for reuse
                    pending.append(_REUSED_BIND_ENTRY)
                    parts = parts or []
                    parts += (data[last:pos], pq.message(b"B", b"\0" + target + data[pos + 6:end]))
                    last = end
                else:
                    pending.append(_BIND_ENTRY)
                self._may_skip = True
            elif kind in _FRONTEND_OK:
                try:
                    replacement = self._frontend(kind, data[pos + 5:end])
                except _Hold:  # a review decision first: this message and the rest wait
                    break
                # A Query or a function call ends in ReadyForQuery, failed or not.
                self._may_skip = kind not in (_Q, _F, _H, _X)
                if replacement is not None:
                    if parts is None:
                        parts = []
                    parts.append(data[last:pos])
                    parts.append(replacement)
                    last = end
            else:
                raise pq.ProtocolError(f"unexpected message type {chr(kind)!r} from the client")
            pos = end
        if pos < n:
            self.cbuf = data[pos:]
        if parts is None:
            return data if pos == n else data[:pos]
        parts.append(data[last:pos])
        return b"".join(parts)

    def _refuse_bind(self, body: bytes, bad: int) -> bytes:
        """A Bind whose text parameter `bad` is not UTF-8: noted as refused, and replaced by
        a Bind of a statement that does not exist, so that the server fails it and
        discards the rest up to the Sync as for any error (rewritten into 22021)."""
        portal, name, _ = pq.bind_header(body)
        text = self._statements.get(name) or b""
        v = Violation(text, frozenset({UNKNOWN}), frozenset({UNKNOWN}), "extended", _now(),
                      reason=f"parameter ${bad + 1} is not valid UTF-8; refused, never "
                             f"repaired")
        self.violations.append(v)
        self._pending.append(_Entry(K_BIND, refused=v))
        self._refusing = True
        return pq.message(b"B", portal + b"\0" + self._gone + b"\0" + bytes(6))

    def _frontend(self, kind: int, body: bytes) -> bytes | None:
        """Note one whole client message; return a replacement for it, or None."""
        pending = self._pending
        if kind == _Q:  # a Query destroys the unnamed statement
            self._segment_parsed = False
            if self._unnamed is not None or self._unsure:
                self._unnamed_to(None)
        if kind == _Q and body and body[-1] == 0:
            sql = body[:-1]
            classes = self.classify.shape(sql)
            if classes is not None and classes <= self.allowed and (  # the common case, fast
                    self.guard is None or self.guard.quiet(sql)) and (
                    self.mask is None or not self.mask.copies_out(sql)):
                self.seq += 1
                run = Run(self.seq, "simple", sql.strip(), None, _now())
                self.started.append(run)
                pending.append(_Entry(K_QUERY, [run]))
                return None
        if kind == _B:
            portal, name, count = pq.bind_header(body)
            text = self._statements.get(name)
            params: object = count if self.redact else render_params(body)
            self._portals[portal] = (text or b"", params)
            self._described.discard(portal)
            if self._reviewed:
                self._approved_portals.discard(portal)
                if text in self._reviewed:  # its values are part of what is reviewed
                    self._review_params[portal] = tuple(render_params(body))
            reused = self._unnamed_target() if not name else None
            if reused is not None:  # the statement prepared for reuse
                pending.append(_REUSED_BIND_ENTRY)
                cut = len(portal) + 1
                return pq.message(b"B", body[:cut] + reused + body[cut:])
            pending.append(_BIND_ENTRY)
            return None
        if kind == _P:
            parsed = pq.parse_parse(body)
            if not parsed.name:  # the client's unnamed statement is the server's again
                self._segment_parsed = True
                self._unnamed_to(None)
            verdict = self.classify(parsed.query)
            refused = self._check(verdict)
            if refused is not None:
                v = _violation(refused[0], refused[1], "extended", _now())
                self.violations.append(v)
                if not parsed.name:  # the server drops its unnamed statement before parsing;
                    self._statements[b""] = None  # a named one it keeps: Binds run that
                pending.append(_Entry(K_PARSE, refused=v))
                self._refusing = True
                return pq.parse_message(parsed.name, REFUSED_SQL)
            if self.mask is not None and self.mask.copies_out(parsed.query):
                self.hits.append(GuardrailHit(parsed.query, "extended", _now(), BLOCK,
                                              "masking", ("masking",), detail="copy_out"))
                if not parsed.name:
                    self._statements[b""] = None
                pending.append(_Entry(K_PARSE, message=copy_refusal(parsed.query)))
                self._refusing = True
                return pq.parse_message(parsed.name, REFUSED_SQL)
            guarded = False
            if self.guard is not None and (outcome := self.guard(parsed.query)).matches:
                guarded = True
                if outcome.action != BLOCK and not _prepares(verdict):
                    self._reviewed[parsed.query] = outcome  # warned or decided at each Execute
                    self._reviewed_bound()
                else:
                    refusal = self._guarded(outcome, parsed.query, None, "extended", _now(),
                                            prepares=_prepares(verdict))
                    if refusal is not None:
                        if not parsed.name:
                            self._statements[b""] = None
                        pending.append(_Entry(K_PARSE, message=refusal))
                        self._refusing = True
                        return pq.parse_message(parsed.name, REFUSED_SQL)
            self._note_prepares(verdict)
            self._statements[parsed.name] = parsed.query
            if not guarded and not any(st.prepares or st.executes or st.forgets
                                       for st in verdict.statements):
                if len(self._parsed) >= 256:
                    self._parsed.clear()
                reusable = len(verdict.statements) == 1 and \
                    verdict.statements[0].classes <= _REUSABLE
                self._parsed[body] = (parsed.name, parsed.query, reusable)
                if not parsed.name and self.auto_prepare and reusable:
                    self._count_parse(body)
            pending.append(_PARSE_ENTRY)
            return None
        if kind == _Q:
            sql = pq.parse_query(body)
            verdict = self.classify(sql)
            refused = self._check(verdict)
            t0 = _now()
            if refused is not None:
                v = _violation(refused[0], refused[1], "simple", t0)
                self.violations.append(v)
                pending.append(_Entry(K_QUERY, [], refused=v))
                return pq.message(b"Q", REFUSED_SQL + b"\0")
            if self.mask is not None and self.mask.copies_out(sql):
                self.hits.append(GuardrailHit(sql, "simple", t0, BLOCK, "masking",
                                              ("masking",), detail="copy_out"))
                pending.append(_Entry(K_QUERY, [], message=copy_refusal(sql)))
                return pq.message(b"Q", REFUSED_SQL + b"\0")
            if self.guard is not None and (outcome := self.guard(sql)).matches:
                refusal = self._guarded(outcome, sql, None, "simple", t0,
                                        prepares=_prepares(verdict))
                if refusal is not None:
                    pending.append(_Entry(K_QUERY, [], message=refusal))
                    return pq.message(b"Q", REFUSED_SQL + b"\0")
            self._note_prepares(verdict)
            runs: list[Run] = []
            for st in verdict.statements or (Statement(b"", frozenset()),):
                self.seq += 1
                runs.append(Run(self.seq, "simple", st.text, None, t0))
            self.started.extend(runs)
            pending.append(_Entry(K_QUERY, runs))
            return None
        if kind == _C:
            target, name = pq.parse_target(body)
            if target == 0x53:
                self._statements.pop(name, None)
                if not name and (self._unnamed is not None or self._unsure):
                    self._unnamed_to(None)
            else:
                self._portals.pop(name, None)
                self._described.discard(name)
            pending.append(_CLOSE_ENTRY)
            return None
        if kind == _F:
            t0 = _now()
            if ADMIN not in self.allowed:
                st = Statement(b"<fast-path function call>", frozenset({ADMIN}))
                v = _violation(st, frozenset({ADMIN}), "function", t0)
                self.violations.append(v)
                pending.append(_Entry(K_QUERY, [], refused=v))
                if self._unnamed is not None or self._unsure:
                    self._unnamed_to(None)
                return pq.message(b"Q", REFUSED_SQL + b"\0")
            self.seq += 1
            run = Run(self.seq, "function", b"<fast-path function call>", None, t0)
            self.started.append(run)
            pending.append(_Entry(K_CALL, [run]))
            return None
        if kind == _X:
            self.terminated = True
        return None  # H (Flush), CopyDone, CopyFail: nothing to track

    # ------------------------------------------------------------------ server → client

    def server(self, data: bytes) -> bytes:
        """Bytes from the server; returns the bytes to send the client (maybe rewritten)."""
        if self._notices and not self._srest:  # between two messages: warnings go first
            notices, self._notices = self._notices, b""
            return notices + self.server(data)
        if self._lead:
            lead, self._lead = self._lead, b""
            return lead + self.server(data)
        pending = self._pending
        if self.mask is None:
            if len(pending) == 1 and not self._sbuf and not self._srest \
                    and self._one_result(pending[0], data):
                return data
            if 4 <= len(pending) <= 5 and not self._sbuf and not self._srest \
                    and self._one_execution(data):
                return data
        if self._sbuf:
            data = self._sbuf + data
            self._sbuf = b""
        n = len(data)
        pos = 0
        if self._srest:
            step = min(self._srest, n)
            self._srest -= step
            pos = step
        pending = self._pending
        parts: list[bytes] | None = None
        last = 0
        limit = self.max_message
        unpack = _unpack_i32
        walk = WALK
        while n - pos >= 5:
            kind = data[pos]
            length = unpack(data, pos + 1)[0]
            end = pos + 1 + length
            if kind == _DATA_ROW and self.mask is not None:
                if length < 6 or length > limit:
                    raise pq.ProtocolError("invalid DataRow from the server")
                if end > n:
                    break  # masked: only whole rows pass
                end, replacement = self._masked_rows(data, pos, n)
                if replacement is not None:
                    if parts is None:
                        parts = []
                    parts += (data[last:pos], replacement)
                    last = end
                pos = end
                continue
            if kind == _DATA_ROW or kind == _COPY_DATA:  # noqa: SIM109 - the hot path
                if length < 4:
                    raise pq.ProtocolError("invalid message length from the server")
                passed = 1
                if walk is not None and self.mask is None:  # the run of rows, in C
                    after, passed, rest = walk(data, pos, n, True, False)
                    if passed:
                        end = after + rest
                    else:  # a short DataRow: counted here, as the Python loop does
                        passed = 1
                if pending:
                    head = pending[0]
                    runs = head.runs
                    if runs:
                        i = head.index if head.kind == K_QUERY else 0
                        if i < len(runs):
                            runs[i].rows += passed
                if end > n:
                    self._srest = end - n
                    pos = n
                    break
                pos = end
                continue
            if end > n:
                if length < 4 or length > limit or kind not in _BACKEND_OK:
                    raise pq.ProtocolError(f"unexpected message {chr(kind)!r} ({length} "
                                           f"bytes) from the server")
                break
            if self.mask is not None and kind in _MASK_META:
                if length < 4:
                    raise pq.ProtocolError("invalid message length from the server")
                replacement = self._masked_meta(kind, data[pos + 5:end])
                if replacement is not None:
                    if parts is None:
                        parts = []
                    parts += (data[last:pos], replacement)
                    last = end
                pos = end
                continue
            expect = _ACKS.get(kind)
            if expect is not None:  # an acknowledgement: the entry it answers is done
                if length < 4:
                    raise pq.ProtocolError("invalid message length from the server")
                if pending and pending[0].kind == expect:
                    prepare = pending.popleft().prepare
                    if prepare is not None:
                        prepare[2] = True  # prepared for reuse: later Parses skip parsing
                pos = end
                continue
            if kind == _COMPLETE and pending and length >= 5:
                head = pending[0]
                hk = head.kind
                if hk == K_EXECUTE or (hk == K_QUERY and head.runs
                                       and head.index < len(head.runs)):
                    if data[end - 1] != 0:
                        raise pq.ProtocolError("CommandComplete without terminator")
                    tag, count = _tag(data[pos + 5:end - 1])
                    runs = head.runs
                    assert runs is not None
                    if hk == K_EXECUTE:
                        pending.popleft()
                        run = runs[0]
                    else:
                        run = runs[head.index]
                        head.index += 1
                    self.finished.append((run, tag, run.rows if count is None else count,
                                          _now() - run.t0, None, "ok"))
                    pos = end
                    continue
            if kind == _READY and pending and length == 5:
                head = pending[0]
                if head.kind == K_SYNC or (head.kind == K_QUERY and head.runs
                                           and head.index == len(head.runs)):
                    pending.popleft()
                    self.status = data[pos + 5:end]
                    self._skipping = False
                    if self._unsure and not pending:
                        self._settle()
                    pos = end
                    continue
            if kind in _PASSIVE:  # nothing to note: notices, parameter changes, ...
                if length < 4:
                    raise pq.ProtocolError("invalid message length from the server")
                if kind == _PARAM_STATUS:
                    self._check_pins(data[pos + 5:end])
                pos = end
                continue
            if kind not in _BACKEND_OK or length < 4 or length > limit:
                raise pq.ProtocolError(f"unexpected message {chr(kind)!r} ({length} bytes) "
                                       f"from the server")
            replacement = self._backend(kind, data, pos + 5, end)
            if replacement is not None:
                if parts is None:
                    parts = []
                parts.append(data[last:pos])
                parts.append(replacement)
                last = end
            pos = end
        if pos < n:
            self._sbuf = data[pos:]
        if parts is None:
            return data if pos == n else data[:pos]
        parts.append(data[last:pos])
        return b"".join(parts)

    def _masked_meta(self, kind: int, body: bytes) -> bytes | None:
        """A RowDescription, NoData or copy response in a masked session: notes which
        columns the rows that follow have; returns what the client gets instead (b"":
        nothing, for a Describe the gateway sent itself), or None for the message as is."""
        if kind == _COPY_OUT or kind == _COPY_BOTH:  # noqa: SIM109
            raise pq.ProtocolError("the server streams copy data to a session whose "
                                   "results are masked")
        pending = self._pending
        head = pending[0] if pending else None
        plan = self.mask.describe(body) if kind == _ROW_DESC and self.mask else None
        if head is not None and head.kind == K_DESCRIBE:
            pending.popleft()
            if head.portal is not None:
                self._portal_plans[head.portal] = plan
            if head.hidden:
                return b""
        elif plan is not None:  # a simple query's result
            self._plan = plan
        return plan.description if plan is not None else None

    def _masked_rows(self, data: bytes, pos: int, n: int) -> tuple[int, bytes | None]:
        """The whole DataRows from `pos` in a masked session: counted and masked. Returns
        where they end and what the client gets instead (None: the same bytes)."""
        pending = self._pending
        head = pending[0] if pending else None
        plan: RowPlan | None = None
        run: Run | None = None
        if head is not None and head.runs:
            if head.kind == K_QUERY:
                plan = self._plan
                if head.index < len(head.runs):
                    run = head.runs[head.index]
            elif head.kind == K_EXECUTE:
                plan = self._portal_plans.get(head.portal or b"")
                run = head.runs[0]
        if plan is None:  # rows the gateway cannot tell the columns of: never passed on
            raise pq.ProtocolError("a DataRow the gateway cannot match to a RowDescription")
        assert self.mask is not None
        if run is not None and run.masked is None and plan.targets:
            run.masked = set()
        end, rows, out = rewrite_rows(data, pos, n, plan, self.mask.masker,
                                      run.masked if run is not None else None)
        if run is not None:
            run.rows += rows
        return end, out

    @staticmethod
    def _check_pins(body: bytes) -> None:
        name, _, rest = body.partition(b"\0")
        pinned = _REPORTED_PINS.get(name)
        if pinned is not None:
            value = rest.partition(b"\0")[0]
            if value != pinned:
                raise PinnedSettingChanged(
                    f"the server reports {name.decode()} {value.decode('utf-8', 'replace')!r}; "
                    f"the gateway pins it to {pinned.decode()}")

    def _one_result(self, head: _Entry, data: bytes) -> bool:
        """The common case on its own: the whole answer to one simple-query statement
        (RowDescription, DataRows, CommandComplete, ReadyForQuery) in one read. Returns
        False, having changed nothing, for anything else."""
        runs = head.runs
        if head.kind != K_QUERY or runs is None or len(runs) != 1 or head.index != 0:
            return False
        return self._rows_to_ready(data, 0, runs[0])

    def _one_execution(self, data: bytes) -> bool:
        """The common case of the extended protocol on its own: the whole answer to (Parse,)
        Bind, Describe, Execute, Sync (ParseComplete, BindComplete, RowDescription or
        NoData, DataRows, CommandComplete, ReadyForQuery) in one read. Returns False,
        having changed nothing, for anything else."""
        pending = self._pending
        at = i = 0  # where the answer to Bind starts, in the bytes and among the entries
        if len(pending) == 5:
            if pending[0] is not _PARSE_ENTRY or data[:5] != PARSE_COMPLETE:
                return False
            at, i = 5, 1
        if pending[i].kind != K_BIND or pending[i + 1] is not _DESCRIBE_ENTRY:
            return False
        execute = pending[i + 2]
        runs = execute.runs
        if execute.kind != K_EXECUTE or pending[i + 3] is not _SYNC_ENTRY or not runs:
            return False
        if len(data) < at + 11 or data[at] != _BIND_OK or data[at + 1:at + 5] != \
                b"\0\0\0\x04" or data[at + 5] not in (_ROW_DESC, _NO_DATA):
            return False
        pos = at + 6 + _unpack_i32(data, at + 6)[0]
        return pos >= at + 10 and self._rows_to_ready(data, pos, runs[0])

    def _rows_to_ready(self, data: bytes, pos: int, run: Run) -> bool:
        """From `pos` to the end of `data`: RowDescription and DataRows, one
        CommandComplete, ReadyForQuery. Notes `run` finished and every pending entry
        answered; False, having changed nothing, for anything else (the general loop)."""
        n = len(data)
        rows = 0
        tag_at = -1
        unpack = _unpack_i32
        walk = WALK
        while n - pos >= 5:
            kind = data[pos]
            end = pos + 1 + unpack(data, pos + 1)[0]
            if end > n or end < pos + 5:
                return False
            if kind == _DATA_ROW:
                if tag_at >= 0:
                    return False
                if walk is not None:  # the run of rows, in C (whole ones only)
                    after, passed, _ = walk(data, pos, n, False, True)
                    if passed:
                        rows += passed
                        pos = after
                        continue
                rows += 1
            elif kind == _COMPLETE:
                if tag_at >= 0 or end < pos + 6 or data[end - 1] != 0:
                    return False
                tag_at = pos
            elif kind == _READY:
                if end != n or end != pos + 6 or tag_at < 0:
                    return False
                run.rows += rows
                raw = data[tag_at + 5:tag_at + unpack(data, tag_at + 1)[0]]
                tag, count = _TAGS.get(raw) or _tag(raw)
                self.finished.append((run, tag, run.rows if count is None else count,
                                      _now() - run.t0, None, "ok"))
                self._pending.clear()
                self.status = data[pos + 5:end]
                if self._unsure:
                    self._settle()
                return True
            elif kind != _ROW_DESC or tag_at >= 0:
                return False  # errors, notices, copy, a suspended portal, ...
            pos = end
        return False

    def _finish(self, run: Run, tag: str | None, error: tuple[str, str] | None,
                outcome: str) -> None:
        rows = pq.rows_of(tag) if tag else None
        if rows is None and (run.rows or tag is not None or outcome == "suspended"):
            rows = run.rows
        self.finished.append((run, tag, rows, _now() - run.t0, error, outcome))

    def _backend(self, kind: int, data: bytes, start: int, end: int) -> bytes | None:
        pending = self._pending
        head = pending[0] if pending else None
        if kind == _READY:
            self.status = data[start:end]
            self._skipping = False
            while pending:
                entry = pending.popleft()
                self._reuse_failed(entry)
                if entry.kind in (K_SYNC, K_QUERY, K_CALL):
                    if entry.runs:
                        for run in entry.runs[entry.index:]:
                            self._finish(run, None, entry.error, "skipped")
                    break
            if self._unsure and not pending:
                self._settle()
            return None
        if head is None:
            return None  # asynchronous: notices, notifications, parameter changes, FATAL
        hk = head.kind
        if kind in (_COMPLETE, _EMPTY, _SUSPENDED):
            if hk == K_QUERY and head.runs is not None:
                if head.index < len(head.runs):
                    tag = pq.parse_tag(data[start:end]) if kind == _COMPLETE else ""
                    self._finish(head.runs[head.index], tag, None, "ok")
                    head.index += 1
            elif hk == K_EXECUTE:
                pending.popleft()
                assert head.runs is not None
                if kind == _SUSPENDED:
                    self._finish(head.runs[0], None, None, "suspended")
                else:
                    tag = pq.parse_tag(data[start:end]) if kind == _COMPLETE else ""
                    self._finish(head.runs[0], tag, None, "ok")
            return None
        if kind == _FUNC_RESULT:
            if hk == K_CALL and head.runs and head.index == 0:
                self._finish(head.runs[0], "FUNCTION CALL", None, "ok")
                head.index = 1
            return None
        if kind == _ERROR:
            return self._error(head, pq.parse_fields(data[start:end]))
        return None  # ParameterDescription, copy responses, notices: nothing to note

    def _error(self, head: _Entry, fields: Mapping[str, str]) -> bytes | None:
        pending = self._pending
        error = (fields.get("C", ""), fields.get("M", ""))
        if self._unsure:
            self._unsure_failed = True
        if self._auto_made and (
                (error[0] == "0A000" and head in (_REUSED_BIND_ENTRY, _REUSED_DESCRIBE_ENTRY))
                or (error[0] == "26000" and self._auto_prefix.decode() in error[1]
                    and self._gone.decode() not in error[1])):
            self._forget_reuse()  # a table changed under one of ours, or one is gone
        replacement = head.message if head.message is not None else (
            refusal_message(head.refused, self.role, self.resource)
            if head.refused is not None else None)
        hk = head.kind
        if hk in (K_QUERY, K_CALL):
            if head.runs and head.index < len(head.runs):
                self._finish(head.runs[head.index], None, error, "error")
                head.index += 1
            head.error = error
            return replacement
        if hk == K_SYNC:
            return None  # e.g. a deferred constraint failing at the implicit commit
        self._skipping = True  # the server discards what comes until the next Sync
        # Extended protocol: the server discards everything up to the next Sync. The
        # failing Execute, or the first one a failed Parse/Bind belonged to, carries it.
        blamed = head.refused is not None or head.message is not None
        while pending and pending[0].kind != K_SYNC:
            entry = pending.popleft()
            self._reuse_failed(entry)
            if entry.kind == K_EXECUTE and not blamed and entry.runs:
                self._finish(entry.runs[0], None, error, "error")
                blamed = True
        return replacement

    # ------------------------------------------------------------------ draining

    def drain(self) -> tuple[list[Run], list[Finished], list[Violation]]:
        """Take what happened since the last drain (the caller audits it)."""
        out = (self.started, self.finished, self.violations)
        if self.started:
            self.started = []
        if self.finished:
            self.finished = []
        if self.violations:
            self.violations = []
        return out

    def in_flight(self) -> list[Run]:
        """Statements sent upstream and not finished (audited as such if the session dies)."""
        out: list[Run] = []
        for entry in self._pending:
            if entry.runs:
                start = entry.index if entry.kind in (K_QUERY, K_CALL) else 0
                out.extend(entry.runs[start:])
        return out
