"""The demo ships its policy's tests (accord.tests.yaml beside accord.yaml), and they pass."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from accord import demo
from accord.cli.main import app
from accord.gateway.postgres.cases import guardrail_case
from accord.policy.engine import Policy
from accord.requests import policy_tests
from accord.spec.load import parse_policy_text
from accord.spec.policytests import parse_cases
from tests.serverproc import _free_port


@pytest.mark.parametrize("pg", [None, demo.DemoPostgres("host=/nowhere", "127.0.0.1", 5432,
                                                         "accord_demo_orders")])
def test_the_demo_policy_passes_its_tests(tmp_path: Path, pg: demo.DemoPostgres | None) -> None:
    text = demo.render_policy(tmp_path, pg, 6432 if pg else None)
    policy = Policy(parse_policy_text(text, str(tmp_path / "accord.yaml")))
    # with a PostgreSQL, orders-db has the gateway's guardrails and the statement cases
    text = demo.DEMO_TESTS + (demo.DEMO_STATEMENT_TESTS if pg else "")
    cases = parse_cases(text, "accord.tests.yaml")
    assert policy_tests.check(policy, cases) == []
    report = policy_tests.run(policy, [cases], statements=guardrail_case)
    assert report.failed == [], [(r.name, r.expected, r.got) for r in report.failed]
    assert report.passed == len(cases.cases) >= (11 if pg else 8)


def test_the_demo_writes_its_tests_beside_the_policy_and_keeps_edited_ones(
        tmp_path: Path) -> None:
    no_pg = {"ACCORD_DEMO_PG": f"postgresql://postgres@127.0.0.1:{_free_port()}/x"}
    demo.write_policy(tmp_path, no_pg)
    tests = tmp_path / "accord.tests.yaml"
    assert tests.read_text(encoding="utf-8") == demo.DEMO_TESTS
    result = CliRunner().invoke(app, ["policy", "test", "-c", str(tmp_path / "accord.yaml")])
    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip().endswith(f"{len(parse_cases(demo.DEMO_TESTS, 't').cases)} "
                                           "passed, 0 failed")
    tests.write_text(demo.DEMO_TESTS + "  # mine\n", encoding="utf-8")
    demo.write_policy(tmp_path, no_pg)
    assert tests.read_text(encoding="utf-8").endswith("  # mine\n")
    tests.unlink()
    demo.write_policy(tmp_path, no_pg)
    assert tests.read_text(encoding="utf-8") == demo.DEMO_TESTS
