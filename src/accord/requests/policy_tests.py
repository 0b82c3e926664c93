"""Policy tests as code: run the cases of a tests file (`accord.tests.yaml`) against a policy,
without a database, through the same routing a filed request takes (`service.route`, or
`service.break_glass` for an emergency), and gate loading a policy on its own tests.

Cases run against the file alone (its users and groups, no directory snapshot), so a
policy's tests give the same answer on a laptop, in CI and in the server that loads it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from accord.db import utcnow
from accord.errors import AccordError, Conflict, Invalid
from accord.ledger.events import Actor
from accord.people.snapshot import EMPTY
from accord.policy import service as policies
from accord.policy.engine import Policy
from accord.requests import service
from accord.spec.policytests import (
    EXPECTABLE,
    Case,
    CasesError,
    LoadedCases,
    StatementJudge,
    case_label,
    declared_tests,
    load_cases,
)

log = logging.getLogger("accord.policy")
OUTCOMES = {"approve": "approved", "deny": "denied", "steps": "pending"}
SHOWN = 10  # names listed in an "unknown ..." message


@dataclass(frozen=True)
class CaseResult:
    """One case run: what it expected, what the policy decided, and where they differ."""

    file: str
    index: int
    name: str
    expected: dict[str, Any]
    got: dict[str, Any]  # every field of EXPECTABLE, and `reason` (the decision in words)
    differences: list[str]
    seconds: float

    @property
    def passed(self) -> bool:
        return not self.differences

    @property
    def label(self) -> str:
        return f"{self.file}: {case_label(self.index, self.name)}"


@dataclass
class Report:
    """The results of every case of some tests files."""

    files: list[str]
    results: list[CaseResult] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if not r.passed]

    @property
    def summary(self) -> str:
        return f"{self.passed} passed, {len(self.failed)} failed"


def _known(names: Iterable[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:SHOWN]) or "none"
    return shown + (f", ... ({len(names)} in all)" if len(names) > SHOWN else "")


def check(policy: Policy, loaded: LoadedCases) -> list[str]:
    """Cases naming what the policy does not have (users, resources, roles, workflows):
    every problem, with its file, case and field."""
    problems = []
    workflows = [w.spec.name for w in policy.workflows]
    for place, case in zip(loaded.places, loaded.cases, strict=True):
        where = f"{loaded.path}: {case_label(place, case.name)}"
        if case.statement is not None:
            problems += _check_statement(policy, case, where)
            continue
        req, expect = case.request, case.expect
        assert req is not None
        if not policy.is_principal(req.requester):
            problems.append(f'{where}: request.requester: unknown user "{req.requester}" '
                            "(not among accord.yaml's users and group members)")
        spec = policy.resources.get(req.resource)
        if spec is None:
            problems.append(f'{where}: request.resource: unknown resource "{req.resource}" '
                            f"(known: {_known(policy.resources)})")
        elif req.role not in spec.roles:
            problems.append(f'{where}: request.role: {req.resource} offers no role '
                            f'"{req.role}" (offers: {", ".join(spec.roles)})')
        if "workflow" in expect.model_fields_set and expect.workflow is not None \
                and expect.workflow not in workflows:
            problems.append(f'{where}: expect.workflow: no workflow "{expect.workflow}" in '
                            f"accord.yaml (workflows: {_known(workflows)})")
        for s, people in enumerate(expect.steps or []):
            for p, person in enumerate(people):
                if not policy.is_user(person):
                    problems.append(f'{where}: expect.steps[{s}][{p}]: unknown user '
                                    f'"{person}"')
    return problems


def _check_statement(policy: Policy, case: Case, where: str) -> list[str]:
    """A statement case naming what the policy does not have: the resource, the role, the
    guardrails it expects."""
    st, expect = case.statement, case.expect
    assert st is not None
    spec = policy.resources.get(st.resource)
    if spec is None:
        return [f'{where}: statement.resource: unknown resource "{st.resource}" '
                f"(known: {_known(policy.resources)})"]
    problems = []
    if st.role not in spec.roles:
        problems.append(f'{where}: statement.role: {st.resource} offers no role "{st.role}" '
                        f'(offers: {", ".join(spec.roles)})')
    names = [g.name for g in spec.gateway.guardrails] if spec.gateway is not None else []
    expected = list(expect.rules or []) + ([expect.rule] if expect.rule else [])
    for name in expected:
        if name not in names:
            problems.append(f'{where}: expect: {st.resource} has no guardrail "{name}" '
                            f"(guardrails: {_known(names)})")
    return problems


def decide_statement(policy: Policy, case: Case, statements: StatementJudge | None
                     ) -> dict[str, Any]:
    """What the resource's guardrails do with the case's statement, for the role."""
    st = case.statement
    assert st is not None
    got: dict[str, Any] = dict.fromkeys(EXPECTABLE)
    if statements is None:
        got["reason"] = "statement cases need the gateway's SQL parser, which was not given"
        return got
    got.update(statements(policy.resources[st.resource], st.role, st.sql))
    return got


def _matched(policy: Policy, case: Case, now: datetime) -> str | None:
    """The workflow that matched a refused request (decide's order: the first that
    matches; one whose `match` errors does not)."""
    req = case.request
    assert req is not None
    resource = policy.resources.get(req.resource)
    if resource is None:  # refused as unknown (`check` reports it before anything runs)
        return None
    ctx = policy.context(requester=req.requester, resource=resource,
                         role=req.role, duration=req.duration, reason=req.reason, now=now,
                         extension=False)
    for w in policy.workflows:
        try:
            if w.match.execute(ctx) is True:
                return w.spec.name
        except Exception:  # noqa: S112 - fail closed, as decide does: an error is no match
            continue
    return None


def decide(policy: Policy, case: Case, now: datetime) -> dict[str, Any]:
    """What the policy makes of the case's request: every field a case may expect."""
    req = case.request
    assert req is not None
    at = req.time or now
    try:
        decision, eligible = service.decide(
            policy, requester=req.requester, resource=req.resource, role=req.role,
            duration=req.duration, reason=req.reason, now=at, emergency=bool(req.emergency))
    except AccordError as exc:  # what the API answers 4xx: over max_duration, no reason, ...
        workflow = None if req.emergency else _matched(policy, case, at)
        return {"outcome": "refused", "workflow": workflow, "rule": None, "steps": [],
                "emergency": False, "elevated": _elevated(policy, workflow, req.role),
                "action": None, "rules": None,
                "reason": f"{exc.field}: {exc.detail}" if exc.field else exc.detail}
    pending = decision.outcome == "steps"
    return {
        "outcome": OUTCOMES[decision.outcome],
        "workflow": decision.workflow,
        "rule": decision.rule,
        "steps": [sorted(people) for people in eligible] if pending else [],
        "emergency": decision.rule == service.BREAK_GLASS,
        "elevated": _elevated(policy, decision.workflow, req.role),
        "action": None, "rules": None,
        "reason": decision.reason,
    }


def _elevated(policy: Policy, workflow: str | None, role: str) -> bool:
    spec = next((w.spec for w in policy.workflows if w.spec.name == workflow), None)
    return spec is not None and spec.elevated is not None and role in spec.elevated.roles


def _differs(key: str, expected: Any, got: Any) -> bool:
    if key == "steps":
        return len(expected) != len(got) or any(
            set(e) != set(g) for e, g in zip(expected, got, strict=False))
    return bool(expected != got)


def run_case(policy: Policy, loaded: LoadedCases, index: int, now: datetime,
             statements: StatementJudge | None = None) -> CaseResult:
    case = loaded.cases[index]
    began = time.perf_counter()
    got = decide(policy, case, now) if case.statement is None else \
        decide_statement(policy, case, statements)
    expected = case.expect.given()
    if "steps" in expected:
        expected["steps"] = [sorted(set(people)) for people in expected["steps"]]
    differences = [k for k in EXPECTABLE if k in expected and _differs(k, expected[k], got[k])]
    return CaseResult(loaded.path, loaded.places[index], case.name, expected, got, differences,
                      time.perf_counter() - began)


def run(policy: Policy, files: list[LoadedCases], *, now: datetime | None = None,
        statements: StatementJudge | None = None) -> Report:
    """Run every case of `files` against `policy` (the file alone: its own people). Check
    the files first (`check`): a case naming an unknown user or resource does not run.
    Statement cases are decided by `statements` (the gateway's parser; without it, they
    fail saying so)."""
    policy = policy.with_directory(EMPTY)
    at = now or utcnow()
    report = Report(files=[f.path for f in files])
    for loaded in files:
        report.results += [run_case(policy, loaded, i, at, statements)
                           for i in range(len(loaded.cases))]
    return report


def load(policy: Policy, paths: list[Path]) -> list[LoadedCases]:
    """Read tests files and check them against `policy`; raise CasesError with every
    problem of every file."""
    policy = policy.with_directory(EMPTY)
    files, problems = [], []
    for path in paths:
        try:
            loaded = load_cases(path)
        except CasesError as exc:
            problems += exc.problems
            if exc.loaded is not None:  # the cases that validated: what else is wrong
                problems += check(policy, exc.loaded)
            continue
        problems += check(policy, loaded)
        files.append(loaded)
    if problems:
        raise CasesError(problems)
    return files


def declared(policy: Policy) -> Path | None:
    """The tests `policy` declares (`policy.tests`, else accord.tests.yaml beside it)."""
    return declared_tests(Path(policy.loaded.source), policy.loaded.spec.policy)


# ---------------------------------------------------------------- gating a load


class PolicyTestsFailed(Conflict):
    """A policy whose own tests fail is not loaded. The outer layer rolls back, records the
    refusal (`record_refusal`), commits, then reports it."""

    def __init__(self, policy: Policy, report: Report) -> None:
        self.version = policy.version
        self.source = policy.loaded.source
        self.report = report
        names = ", ".join(f'"{r.name}"' for r in report.failed)
        super().__init__(
            f"{self.source}: its tests failed ({', '.join(report.files)}: {report.summary}: "
            f"{names}), so this version ({self.version[:12]}) was not loaded and the running "
            "policy is unchanged; `accord policy test` shows why")


def check_before_loading(policy: Policy, statements: StatementJudge | None = None
                         ) -> Report | None:
    """Run the policy's own tests, if it declares any. Raises Invalid when they cannot run
    (a malformed tests file, a case naming an unknown user) and PolicyTestsFailed when one
    fails; returns the report (None: no tests declared)."""
    path = declared(policy)
    if path is None:
        return None
    try:
        files = load(policy, [path])
    except CasesError as exc:
        raise Invalid(f"{policy.loaded.source}: its tests cannot run, so it was not loaded "
                      "and the running policy is unchanged: " + "; ".join(exc.problems)
                      ) from None
    report = run(policy, files, statements=statements)
    if report.failed:
        raise PolicyTestsFailed(policy, report)
    return report


def record_refusal(session: Session, *, exc: PolicyTestsFailed, actor: Actor) -> None:
    """The refused load, as a ledger event naming the failing cases (the caller commits)."""
    log.error("policy %s refused: %s", exc.version[:12], exc.detail)
    policies.refuse(session, version=exc.version, source=exc.source, actor=actor, data={
        "reason": "tests_failed",
        "tests": exc.report.files,
        "passed": exc.report.passed,
        "failed": [{"file": r.file, "case": r.name, "fields": r.differences}
                   for r in exc.report.failed],
    })
