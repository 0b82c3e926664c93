"""Compiled policy: who is who, which workflow routes a request, and the decision plan.

First matching workflow in file order wins, and the decision names it with the
policy version and the rule that fired. No match is a denial (default deny).
CEL errors fail closed: a `match` that errors does not match, an `auto_approve`
that errors does not approve, an `auto_deny` that errors denies.
"""

from __future__ import annotations

import re
from collections import ChainMap
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import cel

from accord.durations import format_duration
from accord.ledger.events import Actor, format_time
from accord.people.snapshot import EMPTY, Directory
from accord.spec.agents import AgentSpec
from accord.spec.load import LoadedPolicy
from accord.spec.people import UserSpec
from accord.spec.resources import ResourceSpec
from accord.spec.workflows import StepSpec, WorkflowSpec


class PolicyRefusal(Exception):
    """Input the matched workflow does not accept (over max_duration, missing reason): a 422."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


@dataclass(frozen=True)
class PlannedStep:
    approvers: tuple[str, ...]
    min_approvals: int
    name: str | None = None
    elevated: bool = False
    # The workflow's escalation group was added to the approvers because the step could not
    # be filled without it (see requests.service.route).
    escalated: bool = False

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "approvers": list(self.approvers),
            "min_approvals": self.min_approvals,
            "elevated": self.elevated,
        }
        if self.escalated:
            out["escalated"] = True
        return out


@dataclass(frozen=True)
class Decision:
    outcome: str  # "approve" | "deny" | "steps"
    workflow: str | None
    rule: str  # match | auto_approve | auto_deny | default_deny | no_approvers
    reason: str
    steps: tuple[PlannedStep, ...] = ()
    inputs: dict[str, Any] = field(default_factory=dict)
    pending_timeout: timedelta | None = None
    # The matched workflow's steps even when a rule decided alone: their approvers may
    # still see and revoke what the automation granted.
    workflow_steps: tuple[PlannedStep, ...] = ()


@dataclass(frozen=True)
class CompiledWorkflow:
    spec: WorkflowSpec
    match: Any
    auto_approve: Any | None
    auto_deny: Any | None


def _eval_bool(program: Any, ctx: Any) -> tuple[bool | None, str | None]:
    try:
        value = program.execute(ctx)
    except Exception as exc:  # the binding raises KeyError, IndexError, ZeroDivisionError, ...
        # Any evaluation failure is a policy outcome (fail closed), never a crash.
        return None, str(exc).split("\n")[0]
    if not isinstance(value, bool):
        return None, f"expression returned {type(value).__name__}, not bool"
    return value, None


@dataclass(frozen=True)
class Evaluation:
    """One check `decide` made, in the order it made them: a CEL rule of a workflow
    (`match`, `auto_deny`, `auto_approve`) or one of its limits (`max_duration`,
    `require_reason`), and what came of it (None and `error`: it could not be evaluated)."""

    workflow: str
    rule: str
    expression: str
    result: bool | None
    error: str | None = None


class _Trace(list[Evaluation]):
    errors_only = False


_TRACE: ContextVar[_Trace | None] = ContextVar("accord_policy_trace", default=None)


@contextmanager
def tracing(*, errors_only: bool = False) -> Iterator[list[Evaluation]]:
    """Collect every check `decide` makes inside this block, in order: the routing's own
    evaluations (explaining a decision), not a second reading of the policy beside it.
    `errors_only`: only the rules that could not be evaluated."""
    trace = _Trace()
    trace.errors_only = errors_only
    token = _TRACE.set(trace)
    try:
        yield trace
    finally:
        _TRACE.reset(token)


def _check(workflow: str, rule: str, expression: str, program: Any, ctx: Any
           ) -> tuple[bool | None, str | None]:
    """Evaluate one rule of `workflow`, noting it when a trace is being collected."""
    result, err = _eval_bool(program, ctx)
    trace = _TRACE.get()
    if trace is not None and (err is not None or not trace.errors_only):
        trace.append(Evaluation(workflow, rule, expression, result, err))
    return result, err


def _note_limits(spec: WorkflowSpec, duration: timedelta, reason: str) -> None:
    """The workflow's limits a request must be within, when a trace is being collected."""
    trace = _TRACE.get()
    if trace is None or trace.errors_only:
        return
    trace.append(Evaluation(
        spec.name, "max_duration",
        f'request.duration <= duration("{format_duration(spec.max_duration)}")',
        duration <= spec.max_duration))
    if spec.require_reason:
        trace.append(Evaluation(spec.name, "require_reason", "request.reason is not blank",
                                bool(reason.strip())))


class People(Mapping[str, UserSpec]):
    """Everyone who is a user: the file's `users` and group members, and the directory's
    active people. A directory user deactivated by the provider is nobody, even if the
    file names them. Built in O(1) per policy; a directory person's spec is made on demand."""

    def __init__(self, file: dict[str, UserSpec], directory: Directory) -> None:
        self._file = file
        self._dir = directory
        self._len: int | None = None

    def __getitem__(self, name: str) -> UserSpec:
        person = self._dir.users.get(name)
        spec = self._file.get(name)
        if person is None:
            if spec is None:
                raise KeyError(name)
            return spec
        if not person.active:
            raise KeyError(name)
        if spec is None:
            return UserSpec(email=person.email, name=person.display_name)
        return spec if spec.email else spec.model_copy(update={"email": person.email})

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        person = self._dir.users.get(name)
        return person.active if person is not None else name in self._file

    def __iter__(self) -> Iterator[str]:
        for name in self._file:
            if self._dir.active(name) is not False:
                yield name
        for name, person in self._dir.users.items():
            if person.active and name not in self._file:
                yield name

    def __len__(self) -> int:
        if self._len is None:
            self._len = sum(1 for _ in self)
        return self._len


class _GroupsOf(Mapping[str, frozenset[str]]):
    """user -> the groups they are in, the file's and the directory's (active people only)."""

    def __init__(self, file: dict[str, frozenset[str]], directory: Directory) -> None:
        self._file = file
        self._dir = directory

    def __getitem__(self, name: str) -> frozenset[str]:
        if self._dir.active(name) is False:
            raise KeyError(name)
        mine = self._file.get(name, frozenset()) | self._dir.groups_of.get(name, frozenset())
        if not mine and name not in self._file:
            raise KeyError(name)
        return mine

    def __iter__(self) -> Iterator[str]:
        seen = set(self._file)
        yield from (n for n in self._file if self._dir.active(n) is not False)
        yield from (n for n in self._dir.groups_of if n not in seen)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class Policy:
    """An immutable, compiled view of one loaded accord.yaml and one directory snapshot."""

    def __init__(self, loaded: LoadedPolicy, directory: Directory = EMPTY, *,
                 compiled: list[CompiledWorkflow] | None = None) -> None:
        self.loaded = loaded
        self.directory = directory
        spec = loaded.spec
        self.version = loaded.version
        self._file_users = spec.user_specs()
        self.users: Mapping[str, UserSpec] = People(self._file_users, directory)
        gone = directory.inactive
        file_groups = {g: frozenset(m) - gone for g, m in spec.groups.items()}
        self.file_groups = file_groups
        # The file's groups win a name clash (the directory refuses one; see accord.directory).
        self.groups: Mapping[str, frozenset[str]] = ChainMap(
            file_groups, directory.groups)
        groups_of: dict[str, set[str]] = {u: set() for u in spec.user_specs()}
        for g, members in spec.groups.items():
            for m in members:
                groups_of[m].add(g)
        self.groups_of: Mapping[str, frozenset[str]] = _GroupsOf(
            {u: frozenset(gs) for u, gs in groups_of.items()}, directory)
        self.resources: dict[str, ResourceSpec] = {r.name: r for r in spec.resources}
        # Agents are in no group's members: whatever a step names, none of them approves.
        self.agents: dict[str, AgentSpec] = {a.name: a for a in spec.agents}
        self.workflows = compiled if compiled is not None else [
            CompiledWorkflow(
                spec=w,
                match=cel.compile(w.match),
                auto_approve=cel.compile(w.auto_approve) if w.auto_approve else None,
                auto_deny=cel.compile(w.auto_deny) if w.auto_deny else None,
            )
            for w in spec.workflows
        ]
        # Group names the policy refers to (a membership change there moves approvals).
        refs: set[str] = set(spec.accord.admins) | set(spec.accord.auditors)
        for ws in spec.workflows:
            for st in [*ws.steps, *(ws.elevated.steps if ws.elevated else [])]:
                refs |= set(st.approvers)
            if ws.escalation is not None:
                refs |= set(ws.escalation.to)
        for r in spec.resources:
            refs |= set(r.owners)
        self.referenced_groups = frozenset(r.removeprefix("group:") for r in refs)
        self.admins = self._members(spec.accord.admins)
        self.auditors = self._members(spec.accord.auditors)
        self._approvers_by_resource = {
            name: frozenset(self._all_approvers(r)) for name, r in self.resources.items()
        }
        self.all_approvers = frozenset().union(*self._approvers_by_resource.values())
        # (workflow, resource) -> who approves steps of that workflow on that resource
        self._routed: dict[tuple[str, str], frozenset[str]] = {}
        for w in self.workflows:
            steps = list(w.spec.steps) + (list(w.spec.elevated.steps) if w.spec.elevated else [])
            for name, r in self.resources.items():
                people: set[str] = set()
                for s in steps:
                    for ref in s.approvers:
                        people |= self.resolve(ref, r)
                if people:
                    self._routed[(w.spec.name, name)] = frozenset(people)
        self._pairs: dict[str, list[tuple[str, str]]] = {}
        for pair, approvers in self._routed.items():
            for person in approvers:
                self._pairs.setdefault(person, []).append(pair)

    def with_directory(self, directory: Directory) -> Policy:
        """This policy over another directory snapshot (its CEL stays compiled)."""
        if directory is self.directory:
            return self
        return Policy(self.loaded, directory, compiled=self.workflows)

    # ---------------------------------------------------------------- identity

    def _members(self, group_names: list[str]) -> frozenset[str]:
        out: set[str] = set()
        for g in group_names:
            out |= self.groups.get(g, frozenset())
        return frozenset(out)

    def is_user(self, name: str) -> bool:
        return name in self.users

    def is_agent(self, name: str) -> bool:
        """An agent of this policy whose owner is still a user (an agent outlives no owner)."""
        agent = self.agents.get(name)
        return agent is not None and agent.owner in self.users

    def is_principal(self, name: str) -> bool:
        """Someone who may hold a token and request access: a user or a live agent."""
        return name in self.users or self.is_agent(name)

    def owner_of(self, name: str) -> str | None:
        """The agent's owner (None for a user, or an unknown name)."""
        agent = self.agents.get(name)
        return agent.owner if agent is not None else None

    def actor(self, name: str, via: str) -> Actor:
        """`name` acting through `via`, as events record them: an agent with its owner."""
        owner = self.owner_of(name)
        return Actor.agent(name, owner, via) if owner is not None else Actor.user(name, via)

    def agents_of(self, user: str) -> list[str]:
        """The agents `user` owns."""
        return sorted(a.name for a in self.agents.values() if a.owner == user)

    def requester_groups(self, name: str) -> frozenset[str]:
        """The groups a requester asks as: a user's, or those the agent is listed with."""
        agent = self.agents.get(name)
        if agent is not None:
            return frozenset(agent.groups)
        return self.groups_of.get(name, frozenset())

    def roles_of(self, user: str) -> list[str]:
        roles = ["requester"]
        if user in self.agents:
            return roles
        if user in self.all_approvers:
            roles.append("approver")
        if user in self.admins:
            roles.append("admin")
        if user in self.auditors:
            roles.append("auditor")
        return roles

    def manager_of(self, user: str) -> str | None:
        """The person's manager: the directory's, else the file's `manager:`."""
        person = self.directory.users.get(user)
        if person is not None and person.manager:
            return person.manager
        spec = self._file_users.get(user)
        return spec.manager if spec is not None else None

    def resolve(self, ref: str, resource: ResourceSpec | None,
                requester: str | None = None) -> frozenset[str]:
        """The users a principal reference stands for: `owners`, `manager` (the requester's),
        `owner` (the requesting agent's), `group:x`, `user:x`, or a name. Never an agent."""
        if ref == "owner":
            owner = self.owner_of(requester) if requester else None
            return frozenset({owner}) if owner is not None and owner in self.users \
                else frozenset()
        if ref == "manager":
            boss = self.manager_of(requester) if requester else None
            return frozenset({boss}) if boss is not None and boss in self.users else frozenset()
        if ref == "owners":
            if resource is None:
                return frozenset()
            out: set[str] = set()
            for owner in resource.owners:
                out |= self.resolve(owner, None)
            return frozenset(out)
        if ref.startswith("group:"):
            return self.groups.get(ref[6:], frozenset())
        if ref.startswith("user:"):
            return frozenset({ref[5:]}) if ref[5:] in self.users else frozenset()
        if ref in self.groups:
            return self.groups[ref]
        return frozenset({ref}) if ref in self.users else frozenset()

    def eligible(self, step: dict[str, Any], resource: str,
                 requester: str | None = None) -> frozenset[str]:
        """Users who may decide a planned step (as stored on a request) of `resource`."""
        spec = self.resources.get(resource)
        out: set[str] = set()
        for ref in step.get("approvers", []):
            out |= self.resolve(ref, spec, requester)
        return frozenset(out)

    def _all_approvers(self, resource: ResourceSpec) -> set[str]:
        out: set[str] = set()
        for w in self.workflows:
            steps: list[StepSpec] = list(w.spec.steps)
            if w.spec.elevated:
                steps += w.spec.elevated.steps
            for s in steps:
                for ref in s.approvers:
                    out |= self.resolve(ref, resource)
        return out

    def workflow_approvers(self, workflow: str | None, resource: str) -> frozenset[str]:
        """Who approves the steps of `workflow` on `resource` (under this policy)."""
        return self._routed.get((workflow or "", resource), frozenset())

    def approver_pairs(self, user: str) -> list[tuple[str, str]]:
        """The (workflow, resource) pairs whose steps `user` approves."""
        return sorted(self._pairs.get(user, []))

    def owners_of(self, resource: str) -> frozenset[str]:
        """People who own `resource` (its `owners`, groups expanded)."""
        spec = self.resources.get(resource)
        return self.resolve("owners", spec) if spec else frozenset()

    def owned_by(self, user: str) -> list[str]:
        return sorted(r for r in self.resources if user in self.owners_of(r))

    # ---------------------------------------------------------------- routing

    def context(
        self,
        *,
        requester: str,
        resource: ResourceSpec,
        role: str,
        duration: timedelta,
        reason: str,
        now: datetime,
        extension: bool,
        kind: str = "access",
        statement: str = "",
        tool: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        spec = self.users.get(requester)
        owner = self.owner_of(requester)
        return {
            "request": {
                "kind": "tool_call" if tool is not None else kind,
                # access | statement (one exact statement, run once) | tool_call
                "statement": statement,  # the statement's SQL (kind statement), else ""
                "tool": tool or {},  # the tool call's name and arguments' sha256, else {}
                "role": role,
                "duration": duration,
                "reason": reason,
                "time": now,
                "extension": extension,
                "requester": {
                    "name": requester,
                    "kind": "agent" if owner is not None else "user",
                    "owner": owner or "",
                    "email": (spec.email if spec else None) or "",
                    "groups": sorted(self.requester_groups(requester)),
                },
            },
            "resource": {
                "name": resource.name,
                "kind": resource.kind,
                "labels": dict(resource.labels),
                "owners": list(resource.owners),
                "roles": list(resource.roles),
            },
        }

    def routing_workflow(self, *, requester: str, resource: ResourceSpec, role: str,
                         duration: timedelta, reason: str, now: datetime,
                         extension: bool = False, kind: str = "access",
                         statement: str = "") -> CompiledWorkflow | None:
        """The workflow that would route this request: the first whose `match` is true."""
        ctx = self.context(requester=requester, resource=resource, role=role,
                           duration=duration, reason=reason, now=now, extension=extension,
                           kind=kind, statement=statement)
        for w in self.workflows:
            if _eval_bool(w.match, ctx)[0]:
                return w
        return None

    def decide(
        self,
        *,
        requester: str,
        resource: ResourceSpec,
        role: str,
        duration: timedelta,
        reason: str,
        now: datetime,
        extension: bool = False,
        kind: str = "access",
        statement: str = "",
        tool: dict[str, Any] | None = None,
    ) -> Decision:
        """Route a request (`tool`: a tool call's name and arguments' sha256, for
        `request.tool`). Raises PolicyRefusal for input the matched workflow rejects."""
        ctx = self.context(
            requester=requester,
            resource=resource,
            role=role,
            duration=duration,
            reason=reason,
            now=now,
            extension=extension,
            kind=kind,
            statement=statement,
            tool=tool,
        )
        inputs = _jsonable(ctx)
        # One CEL context for every rule: converting the variables is most of an
        # evaluation's cost (25 µs against 0.3 µs), and a request may evaluate 50 rules.
        env = cel.Context(ctx)
        errors: list[str] = []
        for w in self.workflows:
            matched, err = _check(w.spec.name, "match", w.spec.match, w.match, env)
            if err:
                errors.append(f"workflow {w.spec.name!r} match: {err}")
            if matched:
                return self._decide_in(w, env, inputs, duration, reason, role)
        why = f"no workflow matches {resource.name}/{role}"
        if errors:
            why += " (" + "; ".join(errors) + ")"
        return Decision("deny", None, "default_deny", why, inputs=inputs)

    def _decide_in(
        self,
        w: CompiledWorkflow,
        ctx: Any,
        inputs: dict[str, Any],
        duration: timedelta,
        reason: str,
        role: str,
    ) -> Decision:
        spec = w.spec
        planned = plan_of(spec, role)
        steps = list(planned)
        _note_limits(spec, duration, reason)
        if duration > spec.max_duration:
            raise PolicyRefusal(
                "duration",
                f"{format_duration(duration)} is over the maximum of "
                f"{format_duration(spec.max_duration)} for workflow {spec.name!r}; "
                "ask for a shorter time",
            )
        if spec.require_reason and not reason.strip():
            raise PolicyRefusal("reason", f"workflow {spec.name!r} requires a reason")
        timeout = spec.pending_timeout
        if w.auto_deny is not None:
            denied, err = _check(spec.name, "auto_deny", spec.auto_deny or "", w.auto_deny, ctx)
            if err:
                return Decision(
                    "deny", spec.name, "auto_deny",
                    f"auto_deny could not be evaluated ({err}); denied to be safe",
                    inputs=inputs, workflow_steps=planned,
                )
            if denied:
                return Decision(
                    "deny", spec.name, "auto_deny",
                    f"denied by workflow {spec.name!r}: "
                    f"{spec.messages.auto_deny or in_words(spec.auto_deny or '')}",
                    inputs=inputs, workflow_steps=planned,
                )
        if w.auto_approve is not None:
            approved, _err = _check(spec.name, "auto_approve", spec.auto_approve or "",
                                    w.auto_approve, ctx)
            if approved:
                return Decision(
                    "approve", spec.name, "auto_approve",
                    f"approved by workflow {spec.name!r}: "
                    f"{spec.messages.auto_approve or in_words(spec.auto_approve or '')}",
                    inputs=inputs, workflow_steps=planned,
                )
        if not steps:
            return Decision(
                "deny", spec.name, "no_approvers",
                f"workflow {spec.name!r} did not auto-approve and has no approval steps",
                inputs=inputs,
            )
        return Decision(
            "steps", spec.name, "match", f"routed by workflow {spec.name!r}",
            steps=planned, inputs=inputs, pending_timeout=timeout, workflow_steps=planned,
        )


def plan_of(spec: WorkflowSpec, role: str) -> tuple[PlannedStep, ...]:
    """The steps `spec` plans for `role`: its own, then its elevated ones for an elevated
    role."""
    steps = [PlannedStep(tuple(s.approvers), s.min_approvals, s.name) for s in spec.steps]
    if spec.elevated and role in spec.elevated.roles:
        steps += [PlannedStep(tuple(s.approvers), s.min_approvals, s.name, elevated=True)
                  for s in spec.elevated.steps]
    return tuple(steps)


_RULES_IN_WORDS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"^size\(request\.reason\)\s*<\s*(\d+)$"),
     lambda m: f"a reason of at least {m[1]} characters is required"),
    (re.compile(r"^size\(request\.reason\)\s*<=\s*(\d+)$"),
     lambda m: f"a reason of more than {m[1]} characters is required"),
    (re.compile(r"^request\.reason\s*==\s*(?:''|\"\")$"), lambda m: "a reason is required"),
    (re.compile(r'^"([\w.-]+)"\s+in\s+request\.requester\.groups$'),
     lambda m: f"the requester is in group {m[1]}"),
    (re.compile(r'^!\s*\("([\w.-]+)"\s+in\s+request\.requester\.groups\)$'),
     lambda m: f"the requester is not in group {m[1]}"),
    (re.compile(r'^request\.role\s*==\s*"([\w.-]+)"$'), lambda m: f"the role is {m[1]}"),
    (re.compile(r"^request\.emergency$"), lambda m: "it is an emergency (break-glass) request"),
    (re.compile(r'^request\.duration\s*>\s*duration\("(\w+)"\)$'),
     lambda m: f"the access asked for is longer than {m[1]}"),
    (re.compile(r'^request\.duration\s*<=\s*duration\("(\w+)"\)$'),
     lambda m: f"the access asked for is at most {m[1]}"),
    (re.compile(r"^true$"), lambda m: "this workflow approves every request it matches"),
]


def in_words(expr: str) -> str:
    """A rule's CEL as people read it: the common shapes in words (conjunctions of them
    too), anything else as the rule itself, quoted."""
    parts = [p.strip() for p in re.split(r"\s&&\s", expr.strip())]
    said = []
    for part in parts:
        for pattern, words in _RULES_IN_WORDS:
            m = pattern.match(part)
            if m:
                said.append(words(m))
                break
        else:
            return f"the rule `{expr.strip()}` matched"
    return " and ".join(said)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, timedelta):
        return f"{int(value.total_seconds())}s"
    if isinstance(value, datetime):
        return format_time(value)
    return value
