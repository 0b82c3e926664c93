"""Policy test cases about statements (`accord policy test`, and the server's check before
it loads a policy): what a resource's guardrails do with a sample statement, read by the
same parser and rules as the data path (`guard.Guard`)."""

from __future__ import annotations

from typing import Any

from accord.gateway.postgres.guard import Guard
from accord.gateway.rules import RuleSet


def guardrail_case(spec: Any, role: str, sql: str) -> dict[str, Any]:
    """A `spec.policytests.StatementJudge`: the action taken (`none`: no rule matched), the
    deciding rule, every rule matched, and the outcome in words."""
    rules = spec.gateway.guardrails if spec.gateway is not None else []
    ruleset = RuleSet.of(rules, role)
    if not ruleset:
        return {"action": "none", "rule": None, "rules": [],
                "reason": f"no guardrail of {spec.name} applies to role {role}"}
    outcome = Guard(ruleset)(sql.encode())
    deciding = outcome.deciding
    if deciding is None:
        return {"action": "none", "rule": None, "rules": [],
                "reason": f"no guardrail of {spec.name} matches it for role {role}"}
    matched = [m.rule for m in outcome.matches]
    return {"action": deciding.action, "rule": deciding.rule, "rules": matched,
            "reason": f"{deciding.action} by guardrail {deciding.rule} (matched: "
                      f"{', '.join(matched)})"}
