"""accord.yaml validation, `accord policy check`, and CEL semantics of the compiled policy."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from accord.policy.engine import Decision, Policy, PolicyRefusal
from accord.spec.load import PolicyError, parse_policy_text
from tests.conftest import POLICY

STAGING_STEPS = "    steps: [{approvers: [leads]}]\n"
PROD_LEAD = "      - {name: lead, approvers: [leads]}\n"
NOON = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy_text(text, "accord.yaml")
    found = [str(p) for p in info.value.problems]
    assert found, "a PolicyError must carry at least one problem"
    return found


def swap(old: str, new: str, text: str = POLICY) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


# ---------------------------------------------------------------- validation


def test_the_shared_policy_is_valid() -> None:
    loaded = parse_policy_text(POLICY, "accord.yaml")
    assert loaded.version == hashlib.sha256(POLICY.encode()).hexdigest()
    assert loaded.source == "accord.yaml"
    assert [w.name for w in loaded.spec.workflows] == ["staging", "prod"]
    assert loaded.spec.workflows[1].max_duration == timedelta(hours=4)
    assert loaded.spec.workflows[1].expire_after == timedelta(hours=2)


def test_unknown_group_is_reported_with_its_exact_path() -> None:
    text = swap(PROD_LEAD, "      - {name: lead, approvers: [lead]}\n")
    assert problems(text) == ['workflows[1].steps[0].approvers[0]: unknown group "lead"']


def test_unknown_principals_elsewhere_carry_their_paths() -> None:
    text = swap(STAGING_STEPS, "    steps: [{approvers: [leads, group:nobody, user:zed]}]\n")
    text = swap("min_approvals: 2}]", "min_approvals: 2}, {approvers: [ghosts]}]", text)
    text = swap("accord: {admins: [admins]", "accord: {admins: [admin]", text)
    text = swap("owners: [frank]", "owners: [owners]", text)
    assert sorted(problems(text)) == sorted([
        'accord.admins[0]: unknown group "admin"',
        'resources[2].owners[0]: "owners" is only meaningful in steps',
        'workflows[0].steps[0].approvers[1]: unknown group "nobody"',
        'workflows[0].steps[0].approvers[2]: unknown user "zed"',
        'workflows[1].elevated.steps[1].approvers[0]: unknown group "ghosts"',
    ])


def test_unknown_group_member_is_reported() -> None:
    text = swap("leads: [bob, gina]", "leads: [bob, gina, zoe]")
    assert problems(text) == ['groups.leads[2]: unknown user "zoe"']


def test_invalid_cel_is_reported_with_the_parser_message() -> None:
    text = swap("match: 'resource.labels.env == \"staging\"'", "match: 'resource.labels.env =='")
    (found,) = problems(text)
    assert found.startswith("workflows[0].match: invalid CEL: ")
    assert "Syntax error" in found
    assert "\n" not in found


@pytest.mark.parametrize("key", ["match", "auto_approve", "auto_deny"])
def test_invalid_cel_in_every_expression_field(key: str) -> None:
    base = (POLICY.replace("    match: 'resource.labels.env == \"prod\"'\n", "")
            .replace("    auto_deny: 'size(request.reason) < 10'\n", ""))
    text = swap("    max_duration: 4h\n",
                f"    max_duration: 4h\n    {key}: 'request.role ==  &&'\n", base)
    (found,) = problems(text)
    assert found.startswith(f"workflows[1].{key}: invalid CEL: ")


@pytest.mark.parametrize(("key", "expr", "names"), [
    ("match", 'user.name == "alice"', "user"),
    ("auto_approve", 'now.getHours() < 18 && env == "x"', "env, now"),
    ("auto_deny", "size(reason) < 10", "reason"),
])
def test_unknown_cel_variables_are_refused(key: str, expr: str, names: str) -> None:
    base = (POLICY.replace("    match: 'resource.labels.env == \"staging\"'\n", "")
            .replace("    auto_approve: '\"engineers\" in request.requester.groups && "
                     "request.role == \"read\"'\n", ""))
    text = swap("  - name: staging\n", f"  - name: staging\n    {key}: '{expr}'\n", base)
    assert problems(text) == [
        f"workflows[0].{key}: invalid CEL: unknown variable {names} (use request or resource)"
    ]


@pytest.mark.parametrize(("old", "new", "path"), [
    ("max_duration: 8h\n", "max_duration: 8h\n    colour: red\n", "workflows[0].colour"),
    ("users: [", "colour: red\nusers: [", "colour"),
    ("kind: generic,", "kind: generic, colour: red,", "resources[2].colour"),
    ("{name: admins, approvers: [admins], min_approvals: 2}",
     "{name: admins, approvers: [admins], min_approvals: 2, quorum: 3}",
     "workflows[1].elevated.steps[0].quorum"),
    ("accord: {admins: [admins],", "accord: {owners: [admins], admins: [admins],",
     "accord.owners"),
])
def test_unknown_fields_are_refused(old: str, new: str, path: str) -> None:
    assert problems(swap(old, new)) == [f"{path}: unknown field"]


@pytest.mark.parametrize(("old", "new", "path", "words"), [
    ("max_duration: 8h", "max_duration: forever", "workflows[0].max_duration",
     "is not a duration"),
    ("max_duration: 4h", "max_duration: -4h", "workflows[1].max_duration", "negative"),
    ("expire_after: 2h", "expire_after: 0s", "workflows[1].expire_after", "zero"),
    ("expire_after: 2h", "expire_after: 4000d", "workflows[1].expire_after", "longest"),
    ("expire_after: 2h", "expire_after: [2h]", "workflows[1].expire_after", "duration"),
    ("expire_after: 2h\n", "escalation: {remind_after: soon}\n",
     "workflows[1].escalation.remind_after", "is not a duration"),
])
def test_bad_durations_are_refused(old: str, new: str, path: str, words: str) -> None:
    (found,) = problems(swap(old, new))
    assert found.startswith(f"{path}: "), found
    assert words in found


def test_durations_accept_every_documented_form() -> None:
    for value, expected in [("90m", timedelta(minutes=90)), ("1h30m", timedelta(minutes=90)),
                            ("2d", timedelta(days=2)), ("PT1H30M", timedelta(minutes=90)),
                            ("3600", timedelta(hours=1))]:
        loaded = parse_policy_text(swap("max_duration: 4h", f"max_duration: {value}"))
        assert loaded.spec.workflows[1].max_duration == expected, value


def test_duplicate_names_are_refused() -> None:
    text = swap("  - name: prod\n", "  - name: staging\n")
    assert problems(text) == ['workflows[1].name: duplicate workflow "staging"']
    text = swap("{name: lab,", "{name: orders-db,")
    assert problems(text) == ['resources[2].name: duplicate resource "orders-db"']
    text = swap("roles: [use]", "roles: [use, use]")
    assert problems(text) == ["resources[2].roles: duplicate role"]


def test_a_workflow_needs_steps_or_auto_approve() -> None:
    text = swap(STAGING_STEPS, "").replace(
        "    auto_approve: '\"engineers\" in request.requester.groups && "
        "request.role == \"read\"'\n", "")
    assert problems(text) == ["workflows[0].steps: a workflow needs approval steps or auto_approve"]
    # Either one alone is enough.
    parse_policy_text(swap(STAGING_STEPS, ""))
    parse_policy_text(text.replace("  - name: staging\n",
                                   "  - name: staging\n    steps: [{approvers: [leads]}]\n"))


def test_min_approvals_must_be_positive() -> None:
    (found,) = problems(swap("min_approvals: 2", "min_approvals: 0"))
    assert found.startswith("workflows[1].elevated.steps[0].min_approvals: ")


def test_every_problem_of_one_kind_is_reported_at_once() -> None:
    text = swap(PROD_LEAD, "      - {name: lead, approvers: [lead]}\n")
    text = swap("  - name: prod\n", "  - name: staging\n", text)
    text = swap("auto_deny: 'size(request.reason) < 10'", "auto_deny: 'size(reason) < 10'", text)
    assert sorted(problems(text)) == sorted([
        'workflows[1].name: duplicate workflow "staging"',
        "workflows[1].auto_deny: invalid CEL: unknown variable reason (use request or resource)",
        'workflows[1].steps[0].approvers[0]: unknown group "lead"',
    ])


def test_every_problem_is_reported_at_once_even_across_kinds() -> None:
    # spec/load.py promises "every problem at once ... so an operator fixes a file in one pass":
    # a bad duration must not hide an unknown group elsewhere in the file.
    text = swap(PROD_LEAD, "      - {name: lead, approvers: [lead]}\n")
    text = swap("max_duration: 8h", "max_duration: forever", text)
    found = problems(text)
    assert any(p.startswith("workflows[0].max_duration: ") for p in found), found
    assert 'workflows[1].steps[0].approvers[0]: unknown group "lead"' in found, found


def test_broken_yaml_and_wrong_shapes() -> None:
    (found,) = problems("workflows: [")
    assert found.startswith("line 1, column ")
    assert "not valid YAML" in found
    assert problems("- a\n- b\n") == ["the file must be a mapping at the top level"]
    (found,) = problems("workflows: {name: x}\n")
    assert found.startswith("workflows: ")


# ---------------------------------------------------------------- the CLI


def _cli(args: list[str]) -> tuple[int, str]:
    from accord.cli.main import app  # imports accord.cli.request, which is being written

    result = CliRunner().invoke(app, args)
    # rich wraps long lines at 80 columns when not on a terminal: compare words, not lines.
    return result.exit_code, " ".join(result.output.split())


def test_policy_check_prints_every_error_with_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    text = swap(PROD_LEAD, "      - {name: lead, approvers: [lead]}\n")
    text = swap("  - name: prod\n", "  - name: staging\n", text)
    text = swap("match: 'resource.labels.env == \"staging\"'", "match: 'user.name == \"x\"'", text)
    Path("bad.yaml").write_text(text, encoding="utf-8")

    code, out = _cli(["policy", "check", "bad.yaml"])
    assert code == 1, out
    for line in [
        'bad.yaml: workflows[0].match: invalid CEL: unknown variable user '
        '(use request or resource)',
        'bad.yaml: workflows[1].name: duplicate workflow "staging"',
        'bad.yaml: workflows[1].steps[0].approvers[0]: unknown group "lead"',
    ]:
        assert line in out, out
    assert "3 error(s)" in out


def test_policy_check_reports_bad_durations_and_unknown_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    text = swap("max_duration: 8h", "max_duration: forever\n    colour: red")
    Path("bad.yaml").write_text(text, encoding="utf-8")
    code, out = _cli(["policy", "check", "bad.yaml"])
    assert code == 1, out
    assert "bad.yaml: workflows[0].max_duration: 'forever' is not a duration" in out
    assert "bad.yaml: workflows[0].colour: unknown field" in out
    assert "2 error(s)" in out


def test_policy_check_on_a_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out = _cli(["policy", "check", "nope.yaml"])
    assert code == 1
    assert "no such file" in out


def test_policy_check_accepts_a_good_file_and_prints_its_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("accord.yaml").write_text(POLICY, encoding="utf-8")
    code, out = _cli(["policy", "check", "accord.yaml"])
    assert code == 0, out
    assert "accord.yaml: ok" in out
    assert hashlib.sha256(POLICY.encode()).hexdigest() in out
    assert "2 workflows" in out


# ---------------------------------------------------------------- CEL semantics


def policy(workflows: str) -> Policy:
    head = POLICY.split("workflows:\n")[0]
    return Policy(parse_policy_text(head + "workflows:\n" + workflows))


def decide(p: Policy, *, resource: str = "orders-db", role: str = "read",
           requester: str = "alice", duration: timedelta = timedelta(hours=1),
           reason: str = "INC-1 investigate orders", now: datetime = NOON) -> Decision:
    return p.decide(requester=requester, resource=p.resources[resource], role=role,
                    duration=duration, reason=reason, now=now)


def test_first_matching_workflow_in_file_order_wins() -> None:
    first = """\
  - {name: one, match: 'resource.labels.env == "prod"', steps: [{approvers: [leads]}]}
  - {name: two, match: 'true', steps: [{approvers: [dba]}]}
"""
    d = decide(policy(first))
    assert (d.outcome, d.workflow, d.rule) == ("steps", "one", "match")
    assert d.steps[0].approvers == ("leads",)

    swapped = """\
  - {name: two, match: 'true', steps: [{approvers: [dba]}]}
  - {name: one, match: 'resource.labels.env == "prod"', steps: [{approvers: [leads]}]}
"""
    d = decide(policy(swapped))
    assert (d.workflow, d.steps[0].approvers) == ("two", ("dba",))

    # A later workflow is reached when earlier ones do not match.
    d = decide(policy(first), resource="lab", role="use")
    assert d.workflow == "two"


def test_first_match_wins_even_when_it_denies() -> None:
    p = policy("""\
  - name: strict
    match: 'true'
    auto_deny: 'request.role == "write"'
    steps: [{approvers: [leads]}]
  - {name: lax, match: 'true', auto_approve: 'true'}
""")
    d = decide(p, role="write")
    assert (d.outcome, d.workflow, d.rule) == ("deny", "strict", "auto_deny")
    d = decide(p, role="read")
    assert (d.outcome, d.workflow) == ("steps", "strict")


def test_no_match_is_default_deny() -> None:
    p = policy("  - {name: only, match: 'resource.name == \"lab\"', auto_approve: 'true'}\n")
    d = decide(p)
    assert d.outcome == "deny"
    assert d.workflow is None
    assert d.rule == "default_deny"
    assert d.reason == "no workflow matches orders-db/read"


def test_a_match_with_a_type_error_does_not_match() -> None:
    p = policy("""\
  - {name: broken, match: 'request.role > 1', auto_approve: 'true'}
  - {name: fallback, match: 'true', steps: [{approvers: [leads]}]}
""")
    d = decide(p)
    assert (d.outcome, d.workflow) == ("steps", "fallback")
    # With nothing else to match, the error is named in the default deny.
    p = policy("  - {name: broken, match: 'request.role > 1', auto_approve: 'true'}\n")
    d = decide(p)
    assert (d.outcome, d.rule) == ("deny", "default_deny")
    assert "broken" in d.reason


def test_a_match_that_is_not_a_bool_does_not_match() -> None:
    p = policy("""\
  - {name: odd, match: 'request.role', auto_approve: 'true'}
  - {name: fallback, match: 'true', steps: [{approvers: [leads]}]}
""")
    assert decide(p).workflow == "fallback"


@pytest.mark.parametrize("expr", [
    'resource.labels.team == "payments"',   # a label this resource does not have
    'request.requester.groups[5] == "x"',  # out of range
    "1 / (size(request.role) - 4) == 1",    # division by zero for "read"
])
def test_a_match_that_errors_at_runtime_does_not_match(expr: str) -> None:
    p = policy(f"""\
  - {{name: broken, match: '{expr}', auto_approve: 'true'}}
  - {{name: fallback, match: 'true', steps: [{{approvers: [leads]}}]}}
""")
    d = decide(p)
    assert (d.outcome, d.workflow) == ("steps", "fallback")


def test_an_auto_deny_with_a_type_error_denies() -> None:
    p = policy("  - {name: w, auto_deny: 'request.reason > 3', auto_approve: 'true'}\n")
    d = decide(p)
    assert (d.outcome, d.workflow, d.rule) == ("deny", "w", "auto_deny")
    assert "could not be evaluated" in d.reason


@pytest.mark.parametrize("expr", [
    'resource.labels.team == "payments"',
    "1 / (size(request.role) - 4) == 1",
])
def test_an_auto_deny_that_errors_at_runtime_denies(expr: str) -> None:
    p = policy(f"  - {{name: w, auto_deny: '{expr}', auto_approve: 'true'}}\n")
    d = decide(p)
    assert (d.outcome, d.workflow, d.rule) == ("deny", "w", "auto_deny")


def test_an_auto_approve_with_a_type_error_does_not_approve() -> None:
    p = policy("  - {name: w, auto_approve: 'request.role > 1', steps: [{approvers: [leads]}]}\n")
    assert decide(p).outcome == "steps"


def test_an_auto_approve_that_errors_at_runtime_does_not_approve() -> None:
    p = policy("  - {name: w, auto_approve: 'resource.labels.team == \"x\"', "
               "steps: [{approvers: [leads]}]}\n")
    assert decide(p).outcome == "steps"


def test_request_duration_is_usable_in_cel() -> None:
    p = policy("""\
  - name: short
    auto_approve: 'request.duration <= duration("1h")'
    steps: [{approvers: [leads]}]
""")
    assert decide(p, duration=timedelta(minutes=30)).outcome == "approve"
    assert decide(p, duration=timedelta(hours=1)).outcome == "approve"
    assert decide(p, duration=timedelta(hours=1, seconds=1)).outcome == "steps"


def test_request_time_is_usable_in_cel() -> None:
    p = policy("""\
  - name: office-hours
    auto_approve: 'request.time.getHours() >= 9 && request.time.getHours() < 18'
    steps: [{approvers: [leads]}]
""")
    assert decide(p, now=NOON).outcome == "approve"
    assert decide(p, now=NOON.replace(hour=17, minute=59)).outcome == "approve"
    assert decide(p, now=NOON.replace(hour=18)).outcome == "steps"
    assert decide(p, now=NOON.replace(hour=3)).outcome == "steps"


def test_requester_groups_and_resource_fields_are_usable_in_cel() -> None:
    p = policy("""\
  - name: w
    match: 'resource.kind == "postgres" && "prod" == resource.labels.env'
    auto_approve: '"leads" in request.requester.groups && request.requester.name == "gina"'
    steps: [{approvers: [dba]}]
""")
    assert decide(p, requester="gina").outcome == "approve"
    assert decide(p, requester="bob").outcome == "steps"
    assert decide(p, requester="alice").outcome == "steps"
    assert decide(p, resource="lab", role="use").rule == "default_deny"


def test_auto_deny_is_checked_before_auto_approve() -> None:
    p = policy("  - {name: w, auto_deny: 'request.role == \"write\"', auto_approve: 'true'}\n")
    assert decide(p, resource="staging-db", role="write").outcome == "deny"
    assert decide(p, resource="staging-db", role="read").outcome == "approve"


def test_the_matched_workflow_enforces_max_duration_and_reason() -> None:
    p = Policy(parse_policy_text(POLICY))
    with pytest.raises(PolicyRefusal) as info:
        decide(p, duration=timedelta(hours=5))
    assert info.value.field == "duration"
    with pytest.raises(PolicyRefusal) as info:
        decide(p, reason="  ")
    assert info.value.field == "reason"


def test_elevated_roles_add_their_steps() -> None:
    p = Policy(parse_policy_text(POLICY))
    plain = decide(p, role="read")
    assert [s.name for s in plain.steps] == ["lead", "owner"]
    elevated = decide(p, role="admin")
    assert [s.name for s in elevated.steps] == ["lead", "owner", "admins"]
    assert elevated.steps[2].elevated is True
    assert elevated.steps[2].min_approvals == 2
    assert elevated.pending_timeout == timedelta(hours=2)


def test_decisions_are_said_in_words_or_in_the_workflows_own_message() -> None:
    from accord.policy.engine import in_words

    assert in_words("size(request.reason) < 10") == \
        "a reason of at least 10 characters is required"
    assert in_words('"engineers" in request.requester.groups && request.role == "read"') == \
        "the requester is in group engineers and the role is read"
    assert in_words('request.duration > duration("2h")') == \
        "the access asked for is longer than 2h"
    assert in_words("true") == "this workflow approves every request it matches"
    assert in_words("request.time.getHours() < 9") == \
        "the rule `request.time.getHours() < 9` matched"
    text = POLICY_WITH_MESSAGE
    spec = parse_policy_text(text)
    assert spec.spec.workflows[0].messages.auto_deny == "say which ticket, and why"
    # The decision says the workflow's own message, or the rule in words.
    p = Policy(spec)
    denied = decide(p, resource="db", reason="short")
    assert denied.outcome == "deny"
    assert denied.reason == "denied by workflow 'all': say which ticket, and why"
    approved = decide(p, resource="db", reason="INC-4711 the nightly export failed")
    assert approved.outcome == "approve"
    assert approved.reason == \
        "approved by workflow 'all': this workflow approves every request it matches"


POLICY_WITH_MESSAGE = """\
users: [alice]
resources: [{name: db, roles: [read]}]
workflows:
  - name: all
    auto_deny: 'size(request.reason) < 10'
    auto_approve: 'true'
    messages: {auto_deny: "say which ticket, and why"}
"""


def test_policy_check_reads_accord_config_without_a_path(tmp_path: Path) -> None:
    from accord.cli.main import app

    config = tmp_path / "accord.yaml"
    config.write_text(POLICY, encoding="utf-8")
    ok = CliRunner().invoke(app, ["policy", "check", "--offline"],
                            env={"ACCORD_CONFIG": str(config)})
    assert ok.exit_code == 0 and "ok:" in ok.output, ok.output
    missing = CliRunner().invoke(app, ["policy", "check"],
                                 env={"ACCORD_CONFIG": str(tmp_path / "nope.yaml")})
    assert missing.exit_code == 1 and "no such file" in missing.output
