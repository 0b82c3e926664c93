"""`accord policy check` on guardrail rules: every problem with its path in the file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from accord.policy.engine import Policy
from accord.spec.load import parse_policy_text
from tests.policy.test_config import problems, swap

ORDERS = """  - {name: orders-db, kind: postgres, labels: {env: prod}, owners: [dba],
     roles: [read, write, admin]}
"""


def with_rules(rules: str, kind: str = "postgres") -> str:
    return swap(ORDERS, f"""  - name: orders-db
    kind: {kind}
    labels: {{env: prod}}
    owners: [dba]
    roles: [read, write, admin]
    gateway:
      dsn_env: ORDERS_DSN
      review_window: 30m
      guardrails:
""" + rules)


def test_valid_rules_load() -> None:
    loaded = parse_policy_text(with_rules(
        "        - {name: a, action: block, statements: [DELETE], without_where: true}\n"
        "        - {name: b, action: warn, tables: ['public.\"Orders\"'], roles: [read]}\n"
        "        - {name: c, action: review, functions: [pg_catalog.pg_sleep]}\n"),
        "accord.yaml")
    g = next(r for r in loaded.spec.resources if r.name == "orders-db").gateway
    assert g is not None and [r.name for r in g.guardrails] == ["a", "b", "c"]
    assert g.review_window == timedelta(minutes=30)


def test_rule_problems_carry_their_paths() -> None:
    found = problems(with_rules(
        "        - {name: a, action: block, statements: [delete, wipe], roles: [owner]}\n"
        "        - {name: a, action: warn}\n"
        "        - {name: c, action: warn, tables: ['bad name'], statements: [select],\n"
        "           without_where: true}\n"
        "        - {name: d, action: review, schemas: [a.b], without_limit: true,\n"
        "           statements: [delete]}\n"))
    base = "resources[1].gateway.guardrails"
    assert f'{base}[0].statements[1]: unknown statement kind "wipe" (one of select, ' \
           in "\n".join(found)
    assert f'{base}[0].roles[0]: unknown role "owner"' in found
    assert f'{base}[1].name: duplicate guardrail "a"' in found
    assert any(p.startswith(f"{base}[1]: give at least one condition") for p in found)
    assert f'{base}[2].tables[0]: "bad name" is not a valid name' in found
    assert f"{base}[2].without_where: only UPDATE and DELETE have a WHERE here" in found
    assert f'{base}[3].schemas[0]: "a.b" is not a valid name' in found
    assert f"{base}[3].without_limit: only queries (select) have a LIMIT" in found


def test_mysql_resources_cannot_have_guardrails() -> None:
    """The MySQL gateway does not match guardrails: a rule it would not apply must not load
    as if it did."""
    found = problems(with_rules("        - {name: a, action: block, statements: [DELETE]}\n",
                                kind="mysql"))
    assert "resources[1].gateway.guardrails: guardrails are applied by the PostgreSQL " \
           "gateway only; this resource is served over mysql" in found


def test_unknown_action_is_refused() -> None:
    found = problems(with_rules("        - {name: a, action: deny, statements: [drop]}\n"))
    assert any("guardrails[0].action" in p for p in found)


def test_cel_sees_the_request_kind_and_statement() -> None:
    text = swap("workflows:\n", """workflows:
  - name: statements
    match: 'request.kind == "statement" && request.statement.startsWith("DELETE")'
    steps: [{approvers: [dba]}]
""")
    policy = Policy(parse_policy_text(text, "accord.yaml"))
    spec = policy.resources["orders-db"]
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    def route(kind: str, statement: str = "") -> str | None:
        return policy.decide(requester="alice", resource=spec, role="write",
                             duration=timedelta(hours=1), reason="INC-1: a stuck order",
                             now=now, kind=kind, statement=statement).workflow

    assert route("statement", "DELETE FROM t WHERE id = 1") == "statements"
    assert route("access") != "statements"
