"""`accord policy check` on masking rules: every problem with its path in the file."""

from __future__ import annotations

from accord.spec.load import parse_policy_text
from tests.policy.test_config import problems, swap
from tests.policy.test_guardrail_config import ORDERS


def with_masking(rules: str, kind: str = "postgres") -> str:
    return swap(ORDERS, f"""  - name: orders-db
    kind: {kind}
    labels: {{env: prod}}
    owners: [dba]
    roles: [read, write, admin]
    gateway:
      dsn_env: ORDERS_DSN
      masking:
""" + rules)


def test_valid_rules_load() -> None:
    loaded = parse_policy_text(with_masking(
        "        - {name: a, roles: [read], columns: [public.customers.email, '*.*.ssn']}\n"
        "        - {name: b, column_patterns: ['*email*'], detectors: [card, iban],\n"
        "           replacement: '[x]'}\n"), "accord.yaml")
    g = next(r for r in loaded.spec.resources if r.name == "orders-db").gateway
    assert g is not None and [r.name for r in g.masking] == ["a", "b"]
    assert g.masking[1].detectors == ["card", "iban"] and g.masking[1].replacement == "[x]"
    parse_policy_text(with_masking("        - {name: a, detectors: [email]}\n"), "accord.yaml")


def test_rule_problems_carry_their_paths() -> None:
    found = problems(with_masking(
        "        - {name: a, roles: [owner], columns: [customers.email]}\n"
        "        - {name: a}\n"
        "        - {name: c, column_patterns: ['*', 'e-mail'], replacement: ''}\n"))
    base = "resources[1].gateway.masking"
    assert f'{base}[0].roles[0]: unknown role "owner"' in found
    assert f'{base}[0].columns[0]: "customers.email" is not schema.table.column' in found
    assert f'{base}[1].name: duplicate masking rule "a"' in found
    assert f"{base}[1]: give at least one of columns, column_patterns, detectors" in found
    assert any(p.startswith(f'{base}[2].column_patterns[0]: "*" is not') for p in found)
    assert any(p.startswith(f'{base}[2].column_patterns[1]: "e-mail" is not') for p in found)
    assert any(p.startswith(f"{base}[2].replacement: must not be empty") for p in found)


def test_unknown_detector_is_refused_and_mysql_resources_cannot_mask() -> None:
    found = problems(with_masking("        - {name: a, detectors: [ssn]}\n"))
    assert any("detectors" in p for p in found)
    found = problems(with_masking("        - {name: a, detectors: [email]}\n", kind="mysql"))
    assert "resources[1].gateway.masking: masking is applied by the PostgreSQL gateway " \
           "only; this resource is served over mysql" in found
