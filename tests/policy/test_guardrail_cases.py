"""`accord policy test` cases about statements: what a resource's guardrails do with a
sample statement (action, the deciding rule, every rule matched), read by the gateway's
own parser; their problems; the server's check before loading runs them too."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from accord.cli.main import app
from accord.gateway.postgres.cases import guardrail_case
from accord.policy.engine import Policy
from accord.requests import policy_tests
from accord.spec.load import parse_policy_text
from accord.spec.policytests import CasesError, parse_cases
from tests.policy.test_guardrail_config import with_rules

RULES = (
    "        - {name: no-unbounded-writes, action: block, statements: [delete, update],\n"
    "           without_where: true}\n"
    "        - {name: orders-scan, action: warn, statements: [select], tables: [orders],\n"
    "           without_limit: true}\n"
    "        - {name: payments, action: review, tables: [payments], roles: [write]}\n"
)
CASES = """\
cases:
  - name: delete without where is blocked, also in a CTE
    statement: {resource: orders-db, role: write,
                sql: "WITH d AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM d"}
    expect: {action: block, rule: no-unbounded-writes,
             rules: [no-unbounded-writes, orders-scan]}
  - name: delete with where runs
    statement: {resource: orders-db, role: write, sql: "DELETE FROM orders WHERE id = 1"}
    expect: {action: none, rule: null, rules: []}
  - name: a scan warns
    statement: {resource: orders-db, role: read, sql: "select * from ORDERS"}
    expect: {action: warn, rule: orders-scan}
  - name: payments need review for writers only
    statement: {resource: orders-db, role: write, sql: "UPDATE payments SET x = 1 WHERE id = 2"}
    expect: {action: review}
  - name: and readers are not reviewed
    statement: {resource: orders-db, role: read, sql: "SELECT * FROM payments LIMIT 1"}
    expect: {action: none}
"""


def policy() -> Policy:
    return Policy(parse_policy_text(with_rules(RULES), "accord.yaml"))


def test_statement_cases_pass_and_fail_with_what_the_rules_did() -> None:
    loaded = parse_cases(CASES, "accord.tests.yaml")
    assert policy_tests.check(policy(), loaded) == []
    report = policy_tests.run(policy(), [loaded], statements=guardrail_case)
    assert report.summary == "5 passed, 0 failed", [r.got for r in report.failed]
    wrong = parse_cases(CASES.replace("expect: {action: warn, rule: orders-scan}",
                                      "expect: {action: block}"), "t.yaml")
    report = policy_tests.run(policy(), [wrong], statements=guardrail_case)
    [failed] = report.failed
    assert failed.differences == ["action"] and failed.got["action"] == "warn"
    assert failed.got["reason"] == "warn by guardrail orders-scan (matched: orders-scan)"
    # Without the gateway's parser, statement cases fail saying so (never pass unseen).
    report = policy_tests.run(policy(), [loaded])
    assert len(report.failed) == 5
    assert "need the gateway's SQL parser" in report.failed[0].got["reason"]


@pytest.mark.parametrize(("case", "problem"), [
    ("{name: x, statement: {resource: orders-db, role: write, sql: 'select 1'},\n"
     "     expect: {outcome: approved}}",
     "a statement case expects only action, rule, rules (not outcome)"),
    ("{name: x, request: {requester: alice, resource: orders-db, role: read, duration: 1h},\n"
     "     expect: {action: block}}", "action: only statement cases expect it"),
    ("{name: x, expect: {action: block}}", "give either request or statement"),
    ("{name: x, statement: {resource: orders-db, role: write, sql: 'select 1'}, expect: {}}",
     "expect: give at least one of action, rule, rules"),
    ("{name: x, statement: {resource: orders-db, role: write, sql: 'select 1'},\n"
     "     expect: {action: stop}}", "expect.action: Input should be"),
])
def test_malformed_statement_cases(case: str, problem: str) -> None:
    with pytest.raises(CasesError) as info:
        parse_cases(f"cases:\n  - {case}\n", "t.yaml")
    assert problem in "\n".join(info.value.problems), info.value.problems


def test_unknown_names_in_statement_cases() -> None:
    loaded = parse_cases("""\
cases:
  - name: x
    statement: {resource: nope, role: write, sql: "select 1"}
    expect: {action: none}
  - name: y
    statement: {resource: orders-db, role: owner, sql: "select 1"}
    expect: {action: block, rule: no-such-rule}
""", "t.yaml")
    found = policy_tests.check(policy(), loaded)
    assert found[0].startswith('t.yaml: case 1 "x": statement.resource: unknown resource "nope"')
    assert 't.yaml: case 2 "y": statement.role: orders-db offers no role "owner" ' \
           "(offers: read, write, admin)" in found
    assert any('has no guardrail "no-such-rule"' in p for p in found)


def test_the_cli_runs_statement_cases(tmp_path: Path) -> None:
    (tmp_path / "accord.yaml").write_text(with_rules(RULES), encoding="utf-8")
    (tmp_path / "accord.tests.yaml").write_text(CASES, encoding="utf-8")
    result = CliRunner().invoke(app, ["policy", "test", "-c", str(tmp_path / "accord.yaml")])
    assert result.exit_code == 0, result.output
    assert "5 passed, 0 failed" in result.output
