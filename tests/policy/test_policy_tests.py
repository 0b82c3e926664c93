"""`accord policy test`: cases run against a policy without a database, through the routing
a filed request takes; their output, exit statuses, JUnit XML and JSON; bad tests files."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from accord.cli.main import app
from accord.policy.engine import Policy
from accord.requests import policy_tests
from accord.spec.load import parse_policy_text
from accord.spec.policytests import CasesError, parse_cases
from tests.conftest import POLICY

runner = CliRunner()
GLASS = "break_glass: {groups: [dba], reviewers: [admins], max_duration: 1h}\n"

PASSING = """\
cases:
  - name: prod write needs lead then owner
    request: {requester: alice, resource: orders-db, role: write, duration: 2h,
              reason: "INC-1: fix the totals"}
    expect: {workflow: prod, outcome: pending, rule: match, steps: [[bob, gina], [carol, erin]],
             elevated: false}
  - name: short reason is auto-denied
    request: {requester: alice, resource: orders-db, role: read, duration: 1h, reason: short}
    expect: {outcome: denied, rule: auto_deny}
  - name: staging reads are automatic
    request: {requester: erin, resource: staging-db, role: read, duration: 1h, reason: debugging,
              time: "2026-12-01T03:00:00Z"}
    expect: {outcome: approved, rule: auto_approve, workflow: staging}
  - name: the requester is not among her own approvers
    request: {requester: erin, resource: orders-db, role: write, duration: 1h,
              reason: "CHG-7: three rows"}
    expect: {outcome: pending, steps: [[gina, bob], [carol]]}
  - name: over the maximum is refused
    request: {requester: alice, resource: orders-db, role: read, duration: 5h,
              reason: "INC-2: a long look"}
    expect: {outcome: refused, workflow: prod, rule: null}
  - name: admin is elevated
    request: {requester: alice, resource: orders-db, role: admin, duration: 1h,
              reason: "INC-3: vacuum by hand"}
    expect: {outcome: pending, elevated: true}
  - name: nothing matches the lab
    request: {requester: alice, resource: lab, role: use, duration: 1h, reason: x}
    expect: {outcome: denied, rule: default_deny, workflow: null}
  - name: a dba breaks the glass
    request: {requester: carol, resource: orders-db, role: write, duration: 30m,
              reason: "SEV1: checkout is down", emergency: true}
    expect: {outcome: approved, emergency: true, rule: break_glass}
  - name: only the break-glass groups may
    request: {requester: alice, resource: orders-db, role: write, duration: 30m,
              reason: "SEV1: checkout is down", emergency: true}
    expect: {outcome: refused, emergency: false}
"""

FAILING = """\
cases:
  - name: passes
    request: {requester: alice, resource: orders-db, role: read, duration: 1h, reason: short}
    expect: {outcome: denied}
  - name: owners are only carol
    request: {requester: alice, resource: orders-db, role: write, duration: 2h,
              reason: "INC-1: fix the totals"}
    expect: {outcome: pending, steps: [[bob, gina], [carol]]}
  - name: thinks it is automatic
    request: {requester: alice, resource: orders-db, role: read, duration: 1h,
              reason: "INC-1: fix the totals"}
    expect: {outcome: approved, rule: auto_approve}
"""


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    (tmp_path / "accord.yaml").write_text(POLICY + GLASS, encoding="utf-8")
    return tmp_path


def policy() -> Policy:
    return Policy(parse_policy_text(POLICY + GLASS, "accord.yaml"))


def run(policy_dir: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["policy", "test", "-c", str(policy_dir / "accord.yaml"),
                                 *args])
    return result.exit_code, result.stdout, result.stderr


def test_the_issues_cases_pass_through_the_real_routing(policy_dir: Path) -> None:
    (policy_dir / "accord.tests.yaml").write_text(PASSING, encoding="utf-8")
    code, out, err = run(policy_dir)  # the default: accord.tests.yaml beside the policy
    assert (code, err) == (0, ""), out
    lines = out.splitlines()
    assert lines[0] == "✔ prod write needs lead then owner"
    assert sum(line.startswith("✔ ") for line in lines) == 9
    assert lines[-1] == "9 passed, 0 failed"


def test_a_failure_is_a_diff_per_field_and_exit_1(policy_dir: Path) -> None:
    tests = policy_dir / "mine.tests.yaml"
    tests.write_text(FAILING, encoding="utf-8")
    code, out, _err = run(policy_dir, str(tests))
    assert code == 1
    assert "✔ passes\n✘ owners are only carol\n✘ thinks it is automatic\n" in out
    assert (f'✘ owners are only carol ({tests}: case 2 "owners are only carol")\n'
            "  steps:\n"
            "    expected [[bob, gina], [carol]]\n"
            "    got      [[bob, gina], [carol, erin]]\n"
            "    step 2: unexpected erin\n"
            "  decided: routed by workflow 'prod'\n") in out
    assert ("  outcome:\n    expected approved\n    got      pending\n"
            "  rule:\n    expected auto_approve\n    got      match\n") in out
    assert out.rstrip().endswith("1 passed, 2 failed")


def test_junit_xml_and_json_for_ci(policy_dir: Path, tmp_path: Path) -> None:
    (policy_dir / "accord.tests.yaml").write_text(FAILING, encoding="utf-8")
    report = tmp_path / "out" / "junit.xml"
    report.parent.mkdir()
    code, out, _err = run(policy_dir, "--json", "--junit-xml", str(report))
    assert code == 1
    body = json.loads(out)
    assert (body["passed"], body["failed"]) == (1, 2)
    assert body["files"] == [str(policy_dir / "accord.tests.yaml")]
    second = body["cases"][1]
    assert second["name"] == "owners are only carol" and second["passed"] is False
    assert second["differences"] == ["steps"]
    assert second["got"]["steps"] == [["bob", "gina"], ["carol", "erin"]]
    assert second["got"]["reason"] == "routed by workflow 'prod'"
    root = ET.parse(report).getroot()  # noqa: S314 - the file this test just wrote
    assert root.tag == "testsuites" and root.get("tests") == "3" and root.get("failures") == "2"
    suite = root.find("testsuite")
    assert suite is not None and suite.get("name") == str(policy_dir / "accord.tests.yaml")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["passes", "owners are only carol",
                                              "thinks it is automatic"]
    assert cases[0].find("failure") is None
    failure = cases[2].find("failure")
    assert failure is not None
    assert failure.get("message") == "outcome: expected approved, got pending"
    assert "rule:\n    expected auto_approve\n    got      match" in (failure.text or "")


def test_policy_tests_key_names_the_tests_and_several_files_run_together(
        tmp_path: Path) -> None:
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "prod.yaml").write_text(PASSING, encoding="utf-8")
    (tmp_path / "accord.tests.yaml").write_text(FAILING, encoding="utf-8")  # not the declared
    (tmp_path / "accord.yaml").write_text(POLICY + GLASS + "policy: {tests: ci/prod.yaml}\n",
                                          encoding="utf-8")
    code, out, _err = run(tmp_path)
    assert code == 0 and out.rstrip().endswith("9 passed, 0 failed")
    code, out, _err = run(tmp_path, str(tmp_path / "ci" / "prod.yaml"),
                          str(tmp_path / "accord.tests.yaml"))
    assert code == 1
    assert f"{tmp_path / 'ci' / 'prod.yaml'}:\n  ✔ prod write needs lead then owner" in out
    assert out.rstrip().endswith("10 passed, 2 failed")


def test_no_tests_and_a_broken_policy_are_exit_2(policy_dir: Path) -> None:
    code, _out, err = run(policy_dir)
    assert code == 2
    assert "declares no tests" in err and "accord.tests.yaml" in err
    (policy_dir / "accord.yaml").write_text(POLICY.replace("[leads]}]", "[lead]}]", 1),
                                            encoding="utf-8")
    (policy_dir / "accord.tests.yaml").write_text(PASSING, encoding="utf-8")
    code, _out, err = run(policy_dir)
    assert code == 2 and 'unknown group "lead"' in err


BAD = """\
cases:
  - name: typo
    request: {requester: alice, resource: orders-db, role: read, duration: 1h, reasn: x}
    expect: {outcome: approved, stepz: []}
  - name: wrong types
    request: {requester: alice, resource: orders-db, role: read, duration: 2 hours,
              reason: 5, time: "2026-12-01T03:00:00", emergency: maybe}
    expect: {outcome: yes, steps: bob}
  - name: strangers
    request: {requester: zed, resource: payroll, role: read, duration: 1h}
    expect: {outcome: denied, workflow: nightly, steps: [[bob, yves]]}
  - name: no such role
    request: {requester: alice, resource: orders-db, role: sudo, duration: 1h}
    expect: {outcome: refused}
  - name: typo
    request: {requester: alice, resource: orders-db, role: read, duration: 1h}
    expect: {}
  - just a string
"""


def test_bad_cases_name_the_file_the_case_and_the_field(policy_dir: Path) -> None:
    tests = policy_dir / "bad.yaml"
    tests.write_text(BAD, encoding="utf-8")
    code, out, err = run(policy_dir, str(tests))
    assert code == 2 and out == ""
    f = str(tests)
    assert err.splitlines() == [
        f'error: {f}: case 1 "typo": request.reasn: unknown field',
        f'error: {f}: case 1 "typo": expect.stepz: unknown field',
        f"error: {f}: case 2 \"wrong types\": request.duration: '2 hours' is not a duration; "
        "use a form like 45m, 1h30m or PT1H30M",
        f'error: {f}: case 2 "wrong types": request.reason: must be text',
        f'error: {f}: case 2 "wrong types": request.time: needs a time zone, such as '
        "2026-12-01T03:00:00Z",
        f'error: {f}: case 2 "wrong types": request.emergency: Input should be a valid '
        "boolean, unable to interpret input",
        f'error: {f}: case 2 "wrong types": expect.outcome: Input should be \'approved\', '
        "'denied', 'pending' or 'refused'",
        f'error: {f}: case 2 "wrong types": expect.steps: Input should be a valid list',
        f'error: {f}: case 5 "typo": name: the same as case 1; each case needs its own name',
        f'error: {f}: case 5 "typo": expect: give at least one of outcome, workflow, rule, '
        "steps, emergency, elevated",
        f"error: {f}: case 6: must be a mapping",
        f'error: {f}: case 3 "strangers": request.requester: unknown user "zed" (not among '
        "accord.yaml's users and group members)",
        f'error: {f}: case 3 "strangers": request.resource: unknown resource "payroll" '
        "(known: lab, orders-db, staging-db)",
        f'error: {f}: case 3 "strangers": expect.workflow: no workflow "nightly" in '
        "accord.yaml (workflows: prod, staging)",
        f'error: {f}: case 3 "strangers": expect.steps[0][1]: unknown user "yves"',
        f'error: {f}: case 4 "no such role": request.role: orders-db offers no role "sudo" '
        "(offers: read, write, admin)",
        "16 errors",
    ], err


@pytest.mark.parametrize(("text", "problem"), [
    ("cases:\n  - name: x\n   bad: [\n", "line 3, column 4: not valid YAML: "),
    ("- a list\n", "must be a mapping with a `cases:` list"),
    ("cases: {a: 1}\n", "must be a mapping with a `cases:` list"),
    ("cases: []\nname: extra\n", "name: unknown field"),
])
def test_a_file_that_is_not_a_tests_file(text: str, problem: str) -> None:
    with pytest.raises(CasesError) as info:
        parse_cases(text, "t.yaml")
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(f"t.yaml: {problem}")


def test_a_missing_tests_file_is_named(policy_dir: Path) -> None:
    code, _out, err = run(policy_dir, str(policy_dir / "nope.yaml"))
    assert code == 2 and f"error: {policy_dir / 'nope.yaml'}: no such file" in err


def test_cases_run_over_the_files_people_and_an_explicit_time() -> None:
    text = POLICY.replace(
        "auto_approve: '\"engineers\" in request.requester.groups && request.role == \"read\"'",
        "auto_approve: 'request.role == \"read\" && request.time.getHours() < 6'")
    p = Policy(parse_policy_text(text, "accord.yaml"))
    cases = parse_cases("""\
cases:
  - name: night
    request: {requester: dave, resource: staging-db, role: read, duration: 1h,
              time: 2026-12-01T03:00:00Z}
    expect: {outcome: approved}
  - name: day
    request: {requester: dave, resource: staging-db, role: read, duration: 1h,
              time: "2026-12-01T13:00:00+00:00"}
    expect: {outcome: pending, steps: [[bob, gina]]}
""", "t.yaml")
    report = policy_tests.run(p, [cases], now=datetime(2026, 1, 1, 3, tzinfo=UTC))
    assert report.summary == "2 passed, 0 failed", report.failed
