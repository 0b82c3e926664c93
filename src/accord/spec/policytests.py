"""`policy:` (where the policy's own tests are) and the tests file itself
(`accord.tests.yaml`): cases, each a request and what the policy must make of it.

Reading a tests file reports every problem at once, each naming the file, the case and the
field (`accord.tests.yaml: case 2 "short reason": request.duration: '1 hour' is not a
duration ...`), as `load.py` does for `accord.yaml`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AwareDatetime, Field, ValidationError, field_validator, model_validator

from accord.spec.base import Strict, as_duration

DEFAULT_TESTS = "accord.tests.yaml"  # beside accord.yaml, when `policy.tests` is not given
# libyaml's safe loader when PyYAML has it: a thousand cases read in a tenth of the time.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
OUTCOMES = ("approved", "denied", "pending", "refused")
# What a case's `expect` may assert, in the order failures are shown.
EXPECTABLE = ("outcome", "workflow", "rule", "steps", "emergency", "elevated", "action",
              "rules")
# What a statement case may assert (`rule`: the guardrail that decided, or none).
STATEMENT_EXPECTABLE = ("action", "rule", "rules")
REQUEST_EXPECTABLE = tuple(k for k in EXPECTABLE if k not in ("action", "rules"))
GUARDRAIL_ACTIONS = ("block", "warn", "review", "none")
# How statement cases are decided: (resource spec, role, SQL) → `action`, `rule`, `rules`
# and `reason`. The gateway's parser does it; the outer layer hands it in.
StatementJudge = Callable[[Any, str, str], dict[str, Any]]


class PolicySection(Strict):
    """`policy:` in accord.yaml: about the policy file itself."""

    # The policy's own tests (relative to accord.yaml). A policy whose tests fail is not
    # loaded. Default: accord.tests.yaml beside accord.yaml, when there is one.
    tests: str | None = Field(default=None, min_length=1)


class CaseRequest(Strict):
    """A request as someone would file it."""

    requester: str
    resource: str
    role: str
    duration: timedelta
    reason: str = ""
    time: AwareDatetime | None = None  # when it is filed (request.time); default: now
    emergency: bool = False  # break the glass

    _d = field_validator("duration", mode="before")(lambda cls, v: as_duration(v))


class CaseStatement(Strict):
    """A statement as a gateway session of `role` on `resource` would send it."""

    resource: str
    role: str
    sql: str = Field(min_length=1)


class CaseExpect(Strict):
    """What the policy must decide; only the fields given are checked."""

    outcome: Literal["approved", "denied", "pending", "refused"] | None = None
    workflow: str | None = None  # `workflow: null`: no workflow matched
    rule: str | None = None
    steps: list[list[str]] | None = None  # eligible people per step, after exclusions
    emergency: bool | None = None
    elevated: bool | None = None
    # Statement cases: what the resource's guardrails do with it (`none`: no rule matched)
    # and every rule it matched, in file order.
    action: Literal["block", "warn", "review", "none"] | None = None
    rules: list[str] | None = None

    @field_validator("outcome", "steps", "emergency", "elevated", "action", "rules",
                     mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:  # only `workflow` and `rule` may be asserted to be none
            raise ValueError("must not be null")
        return value

    def given(self) -> dict[str, Any]:
        """The asserted fields and their values, in EXPECTABLE order."""
        return {k: getattr(self, k) for k in EXPECTABLE if k in self.model_fields_set}


class Case(Strict):
    """A request and what the policy decides, or a statement and what the guardrails do."""

    name: str = Field(min_length=1)
    request: CaseRequest | None = None
    statement: CaseStatement | None = None
    expect: CaseExpect

    @model_validator(mode="after")
    def _one(self) -> Case:
        if (self.request is None) == (self.statement is None):
            raise ValueError("give either request or statement")
        given = set(self.expect.given())
        if self.statement is not None and (wrong := given - set(STATEMENT_EXPECTABLE)):
            raise ValueError(f"a statement case expects only {', '.join(STATEMENT_EXPECTABLE)}"
                             f" (not {', '.join(sorted(wrong))})")
        if self.request is not None and (wrong := given & {"action", "rules"}):
            raise ValueError(f"{', '.join(sorted(wrong))}: only statement cases expect it")
        return self


@dataclass(frozen=True)
class LoadedCases:
    """A validated tests file."""

    path: str
    cases: list[Case]
    text: str
    # Each case's place in the file (0-based): all of them, or, in a CasesError, those that
    # validated.
    places: list[int]


class CasesError(Exception):
    """A tests file that cannot be run; `problems` lists every reason, each with its file,
    case and field."""

    def __init__(self, problems: list[str], loaded: LoadedCases | None = None) -> None:
        self.problems = problems
        self.loaded = loaded  # the cases that did validate, to check further
        super().__init__("; ".join(problems))


def case_label(index: int, name: object) -> str:
    """`case 2 "short reason"` (1-based, as people count), or `case 2` without a name."""
    return f"case {index + 1} {json.dumps(name)}" if isinstance(name, str) and name \
        else f"case {index + 1}"


def _field(parts: tuple[int | str, ...]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown field"
    if err["type"] == "missing":
        return "is required"
    if err["type"] in ("model_type", "dict_type", "model_attributes_type"):
        return "must be a mapping"
    if err["type"] == "string_type":
        return "must be text"
    if err["type"] == "timezone_aware":
        return "needs a time zone, such as 2026-12-01T03:00:00Z"
    return str(err["msg"]).removeprefix("Value error, ")


def parse_cases(text: str, source: str) -> LoadedCases:
    """Validate a tests file; raise CasesError listing every problem."""
    try:
        raw = yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader, libyaml's when built
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise CasesError([f"{source}: {where}not valid YAML: {problem}"]) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("cases"), list):
        raise CasesError([f"{source}: must be a mapping with a `cases:` list"])
    if unknown := sorted(str(k) for k in raw if k != "cases"):
        problems = [f"{source}: {k}: unknown field" for k in unknown]
    else:
        problems = []
    # Each case alone, so one broken case does not hide the problems of the others.
    cases: list[Case] = []
    places: list[int] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw["cases"]):
        name = item.get("name") if isinstance(item, dict) else None
        where = f"{source}: {case_label(i, name)}"
        if isinstance(name, str) and name in seen:
            problems.append(f"{where}: name: the same as case {seen[name] + 1}; each case "
                            "needs its own name")
        if isinstance(name, str):
            seen.setdefault(name, i)
        try:
            case = Case.model_validate(item)
        except ValidationError as exc:
            for err in exc.errors():
                field = _field(tuple(err["loc"]))
                problems.append(f"{where}: {field}: {_message(err)}" if field
                                else f"{where}: {_message(err)}")
            continue
        if not case.expect.given():
            fields = STATEMENT_EXPECTABLE if case.statement is not None else REQUEST_EXPECTABLE
            problems.append(f"{where}: expect: give at least one of {', '.join(fields)}")
        cases.append(case)
        places.append(i)
    loaded = LoadedCases(path=source, cases=cases, text=text, places=places)
    if problems:
        raise CasesError(problems, loaded)
    return loaded


def load_cases(path: Path) -> LoadedCases:
    """Read and validate a tests file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CasesError([f"{path}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CasesError([f"{path}: cannot read: {exc}"]) from None
    return parse_cases(text, str(path))


def declared_tests(policy_path: Path, section: PolicySection) -> Path | None:
    """The tests a policy declares: `policy.tests` (relative to the policy file), else
    accord.tests.yaml beside it when there is one; None when it declares none."""
    if section.tests is not None:
        return policy_path.parent / section.tests
    beside = policy_path.parent / DEFAULT_TESTS
    return beside if beside.exists() else None
