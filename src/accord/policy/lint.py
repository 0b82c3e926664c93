"""What `accord policy check` finds in a compiled policy beyond the file's own errors: the
workflows whose steps cannot be filled jointly (`satisfiable.fill`) for someone they route.

Each workflow is taken with each resource and role, and its plan (its steps, with the
elevated ones for an elevated role) with each person who could ask: the requester never
approves, so a plan that everyone else can fill may still have no way through when one of
its own approvers asks. A finding is reported only when the workflow would route that
person's request (the first `match` that is true, over a few representative durations with
and without `request.extension`); `auto_approve` and `auto_deny` are not consulted, since a
request they let through reaches the steps. Only the people an answer can differ for are
tried one by one: the plan's own approvers, and everyone (agents too) when a step names
`manager` or `owner` (an agent's owner; nobody for a person's request).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from accord.policy.engine import CompiledWorkflow, PlannedStep, Policy, plan_of
from accord.policy.satisfiable import Filling, Step, describe, fill, names
from accord.spec.resources import ResourceSpec

REASON = "accord policy check: a representative reason"


@dataclass(frozen=True)
class Unfillable:
    """A workflow that cannot complete `resource`'s `roles` when one of `requesters` asks
    (None: whoever asks), and why."""

    workflow: str
    resource: str
    roles: tuple[str, ...]
    requesters: tuple[str, ...] | None
    why: str

    def __str__(self) -> str:
        who = "anyone" if self.requesters is None else names(self.requesters, conj="or")
        return (f'workflow "{self.workflow}" cannot complete a request for {self.resource} '
                f"{'/'.join(self.roles)} when {who} asks: {self.why}")


class _Router:
    """Would some representative request of a person go to a workflow? (Memoized.)"""

    def __init__(self, policy: Policy, now: datetime) -> None:
        self.policy, self.now = policy, now
        self.durations = sorted({timedelta(minutes=1), timedelta(hours=1)}
                                | {w.spec.max_duration for w in policy.workflows})
        self._seen: dict[tuple[str, str, str, timedelta, bool], CompiledWorkflow | None] = {}

    def __call__(self, user: str, resource: ResourceSpec, role: str,
                 w: CompiledWorkflow) -> bool:
        for duration in self.durations:
            for extension in (False, True):
                key = (user, resource.name, role, duration, extension)
                if key not in self._seen:
                    self._seen[key] = self.policy.routing_workflow(
                        requester=user, resource=resource, role=role, duration=duration,
                        reason=REASON, now=self.now, extension=extension)
                if self._seen[key] is w:
                    return True
        return False


def unfillable(policy: Policy, *, now: datetime) -> list[Unfillable]:
    """Every (workflow, resource, roles, requesters) whose steps cannot be filled jointly,
    in the file's order of workflows and resources."""
    router = _Router(policy, now)
    # Agents ask too (a step naming `owner` is theirs to fill), and are tried by name.
    users = sorted(policy.users) + sorted(a for a in policy.agents if policy.is_agent(a))
    found: dict[tuple[str, str, tuple[str, ...], str], list[str] | None] = {}
    for w in policy.workflows:
        for resource in policy.resources.values():
            plans: dict[tuple[PlannedStep, ...], list[str]] = {}
            for role in resource.roles:
                if plan := plan_of(w.spec, role):
                    plans.setdefault(plan, []).append(role)
            for plan, roles in plans.items():
                for who, on, why in _plan(policy, router, w, resource, plan, roles, users):
                    key = (w.spec.name, resource.name, on, why)
                    if who is None:
                        found[key] = None
                    else:
                        listed = found.setdefault(key, [])
                        if listed is not None:
                            listed.append(who)
    return [Unfillable(w, r, roles, None if who is None else tuple(who), why)
            for (w, r, roles, why), who in found.items()]


def _plan(policy: Policy, router: _Router, w: CompiledWorkflow, resource: ResourceSpec,
          plan: tuple[PlannedStep, ...], roles: list[str], users: list[str],
          ) -> list[tuple[str | None, tuple[str, ...], str]]:
    """(who asks, None for anyone; the roles; why) for each way one plan cannot be filled."""

    def steps(requester: str | None) -> list[Step]:
        return [Step(policy.eligible(s.as_dict(), resource.name, requester), s.min_approvals,
                     s.name) for s in plan]

    def why(f: Filling) -> str:  # the one who asks is named already: the words skip them
        assert f.shortfall is not None
        return describe(replace(f, shortfall=replace(f.shortfall, excluded=())))

    out: list[tuple[str | None, tuple[str, ...], str]] = []
    # whose manager, whose owner: each requester's own
    if any(ref in s.approvers for s in plan for ref in ("manager", "owner")):
        for user in users:
            f = fill(steps(user), exclude={user})
            on = () if f.ok else tuple(r for r in roles if router(user, resource, r, w))
            if on:
                out.append((user, on, why(f)))
        return out
    base = steps(None)
    anyone = fill(base)
    if not anyone.ok:
        on = tuple(r for r in roles if any(router(u, resource, r, w) for u in users))
        return [(None, on, why(anyone))] if on else []
    for user in sorted(set().union(*(s.eligible for s in base)) & set(users)):
        f = fill(base, exclude={user})
        on = () if f.ok else tuple(r for r in roles if router(user, resource, r, w))
        if on:
            out.append((user, on, why(f)))
    return out
