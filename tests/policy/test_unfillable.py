"""`accord policy check` warns about every workflow whose steps cannot be filled jointly for
someone it routes (accord.policy.lint), naming the workflow, resource, roles, who asks and
why; exit 0 (also with --warn), 1 with --strict."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from accord.demo import DEMO_POLICY, render_policy
from accord.policy.engine import Policy
from accord.policy.lint import unfillable
from accord.spec.load import parse_policy_text
from tests.conftest import POLICY
from tests.policy.test_config import _cli

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
# The defect issue 23 found: carol is an owner of orders-db (dba) and an admin, and the
# elevated step needs two distinct admins from {carol, frank}.
CAROL = ('workflow "prod" cannot complete a request for orders-db admin when carol asks: '
         "step 3 (admins) needs 2 approvals from distinct people but only frank can give one")
ERIN = ('workflow "prod" cannot complete a request for orders-db admin when erin asks: steps '
        "2 (owner) and 3 (admins) need 3 approvals from distinct people but only carol and "
        "frank can give them")
FRANK = ('workflow "prod" cannot complete a request for orders-db admin when frank asks: '
         "step 3 (admins) needs 2 approvals from distinct people but only carol can give one")


def warnings(text: str) -> list[str]:
    return [str(u) for u in unfillable(Policy(parse_policy_text(text)), now=NOW)]


def test_the_shared_policy_has_the_issues_defect() -> None:
    assert warnings(POLICY) == [CAROL, ERIN, FRANK]


def test_policy_check_warns_and_exits_by_its_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("accord.yaml").write_text(POLICY, encoding="utf-8")
    code, out = _cli(["policy", "check", "accord.yaml"])
    assert code == 0, out
    for line in (CAROL, ERIN, FRANK):
        assert f"accord.yaml: warning: {line}" in out
    assert "2 workflows; version" in out and "3 warning(s)" in out
    assert _cli(["policy", "check", "--warn", "accord.yaml"])[0] == 0
    assert _cli(["policy", "check", "--strict", "accord.yaml"])[0] == 1
    code, out = _cli(["policy", "check", "--strict", "--warn", "accord.yaml"])
    assert code == 2 and "contradict" in out
    # A third admin fills it whoever asks.
    Path("fixed.yaml").write_text(POLICY.replace("admins: [carol, frank]",
                                                 "admins: [carol, frank, gina]"),
                                  encoding="utf-8")
    code, out = _cli(["policy", "check", "--strict", "fixed.yaml"])
    assert code == 0 and "warning" not in out, out


def test_the_same_plan_for_everyone_is_said_once() -> None:
    text = POLICY.replace("steps: [{approvers: [leads]}]",
                          "steps: [{approvers: [auditors], min_approvals: 2}]")
    assert warnings(text)[0] == (
        'workflow "staging" cannot complete a request for staging-db read/write when anyone '
        "asks: step 1 needs 2 approvals from distinct people but only dave can give one")


def test_only_requests_the_workflow_routes_count() -> None:
    # carol, erin and frank are routed elsewhere first: prod never sees their admin requests.
    text = POLICY.replace("workflows:\n", """workflows:
  - name: ops
    match: '"admins" in request.requester.groups || "dba" in request.requester.groups'
    steps: [{approvers: [leads]}]
""")
    assert warnings(text) == []
    # A workflow that matches only long requests is still judged (by its own max_duration).
    text = POLICY.replace("workflows:\n", """workflows:
  - name: long
    match: 'request.duration > duration("2h")'
    max_duration: 8h
    steps: [{approvers: [auditors]}]
""")
    assert 'workflow "long" cannot complete a request for lab use when dave asks: step 1 ' \
           "needs 1 approval but nobody can give it" in warnings(text)


def test_a_manager_step_is_judged_for_each_requester() -> None:
    text = POLICY.replace("users: [alice, bob, carol, dave, erin, frank, gina]", """users:
  alice: {manager: bob}
  bob: {}
  carol: {manager: bob}
  dave: {manager: bob}
  erin: {manager: bob}
  frank: {manager: bob}
  gina: {manager: bob}""").replace("  - name: prod\n", """  - name: lab
    match: 'resource.labels.env == "lab"'
    steps: [{approvers: [manager]}, {approvers: [leads]}]
  - name: prod
""")
    # bob has no manager; alice's manager bob is also the leads' only other member than gina.
    assert warnings(text)[0] == (
        'workflow "lab" cannot complete a request for lab use when bob asks: step 1 needs 1 '
        "approval but nobody can give it")
    assert not any("when alice asks" in w for w in warnings(text))


def test_the_demo_policy_passes_strict_and_still_needs_two_admins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = render_policy(tmp_path, None, None)
    assert warnings(text) == []
    monkeypatch.chdir(tmp_path)
    Path("accord.yaml").write_text(text, encoding="utf-8")
    code, out = _cli(["policy", "check", "--strict", "accord.yaml"])
    assert code == 0 and "warning" not in out, out
    assert "min_approvals: 2" in DEMO_POLICY  # the elevated step the demo shows
