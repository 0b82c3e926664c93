"""`accord policy test`: run a policy's tests (accord.tests.yaml) without a database."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from accord.settings import Settings
from accord.spec.load import PolicyError, load_policy_file

if TYPE_CHECKING:
    from accord.requests.policy_tests import CaseResult, Report

EXIT_FAILED = 1  # a case failed
EXIT_CANNOT_RUN = 2  # the tests could not run: a malformed file, a broken policy, no tests


def policy_test(
    files: Annotated[list[Path] | None, typer.Argument(
        help="Tests files. Default: the policy's own, `policy.tests` in accord.yaml, else "
             "accord.tests.yaml beside it.", show_default=False)] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="The policy to test (default: $ACCORD_CONFIG).")] = None,
    junit_xml: Annotated[Path | None, typer.Option(
        "--junit-xml", help="Also write the results as JUnit XML to this file (for CI).",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Run policy tests: each case is a request (requester, resource, role, duration,
    reason, optional time and emergency) and what the policy must decide (outcome
    approved/denied/pending/refused, workflow, rule, the eligible people per step,
    emergency, elevated). Routing is the server's own, without a database, over the
    file's users and groups. A case may instead give a statement (resource, role, sql)
    and what the resource's guardrails do with it (action block/warn/review/none, the
    deciding rule, every rule matched), read by the gateway's own SQL parser.

    Prints one line per case, a diff for each failure and `N passed, M failed`. Exit 1
    when a case fails, 2 when the tests cannot run (a malformed tests file, a case naming
    an unknown user, resource or role, a broken policy, no tests found). A policy whose
    own tests fail is not loaded by the server (start, SIGHUP, POST /api/v1/admin/reload).
    """
    # The routing code (requests, grants, the ORM): only for this command, not at every start.
    from accord.gateway.postgres.cases import guardrail_case
    from accord.policy.engine import Policy
    from accord.requests import policy_tests
    from accord.spec.policytests import CasesError

    try:
        path = config or Settings.from_env().config_path
    except ValueError as exc:
        _error(str(exc))
    try:
        policy = Policy(load_policy_file(path))
    except PolicyError as exc:
        _error(*(f"{path}: {p}" for p in exc.problems))
    paths = list(files or [])
    if not paths:
        declared = policy_tests.declared(policy)
        if declared is None:
            _error(f"{path} declares no tests: give tests files, set policy.tests in it, or "
                   f"write {path.parent / 'accord.tests.yaml'}")
        paths = [declared]
    try:
        loaded = policy_tests.load(policy, paths)
    except CasesError as exc:
        _error(*exc.problems)
    report = policy_tests.run(policy, loaded, statements=guardrail_case)
    if junit_xml is not None:
        _junit(report).write(junit_xml, encoding="utf-8", xml_declaration=True)
    if as_json:
        typer.echo(json.dumps(_as_json(report, path, policy.version), indent=2))
    else:
        _print(report)
    if report.failed:
        raise typer.Exit(EXIT_FAILED)


def _error(*lines: str) -> NoReturn:
    for line in lines:
        typer.echo(f"error: {line}", err=True)
    if len(lines) > 1:
        typer.echo(f"{len(lines)} errors", err=True)
    raise typer.Exit(EXIT_CANNOT_RUN)


def _show(key: str, value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if key == "steps":
        return "[" + ", ".join("[" + ", ".join(p) + "]" for p in value) + "]" if value \
            else "no steps"
    return str(value)


def diff(result: CaseResult) -> list[str]:
    """A failure in words: each differing field, expected against got."""
    lines = []
    for key in result.differences:
        expected, got = result.expected[key], result.got[key]
        lines += [f"  {key}:", f"    expected {_show(key, expected)}",
                  f"    got      {_show(key, got)}"]
        if key == "steps":
            for i, (e, g) in enumerate(zip(expected, got, strict=False)):
                missing, extra = sorted(set(e) - set(g)), sorted(set(g) - set(e))
                if missing or extra:
                    said = [f"missing {', '.join(missing)}"] if missing else []
                    said += [f"unexpected {', '.join(extra)}"] if extra else []
                    lines.append(f"    step {i + 1}: {'; '.join(said)}")
    lines.append(f"  decided: {result.got['reason']}")
    return lines


def _print(report: Report) -> None:
    several = len(report.files) > 1
    current = None
    for r in report.results:
        if several and r.file != current:
            current = r.file
            typer.echo(f"{r.file}:")
        typer.echo(f"{'  ' if several else ''}{'✔' if r.passed else '✘'} {r.name}")
    for r in report.failed:
        typer.echo("")
        typer.echo(f"✘ {r.name} ({r.label})")
        for line in diff(r):
            typer.echo(line)
    typer.echo("")
    typer.echo(report.summary)


def _as_json(report: Report, policy: Path, version: str) -> dict[str, Any]:
    return {
        "policy": str(policy), "version": version, "files": report.files,
        "passed": report.passed, "failed": len(report.failed),
        "cases": [{"file": r.file, "case": r.index + 1, "name": r.name, "passed": r.passed,
                   "differences": r.differences, "expected": r.expected, "got": r.got,
                   "seconds": round(r.seconds, 6)} for r in report.results],
    }


def _junit(report: Report) -> ET.ElementTree:
    """JUnit XML (the shape CI systems read): a testsuite per file, a testcase per case."""
    root = ET.Element("testsuites", name="accord policy test", tests=str(len(report.results)),
                      failures=str(len(report.failed)), errors="0",
                      time=f"{sum(r.seconds for r in report.results):.6f}")
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    for file in report.files:
        results = [r for r in report.results if r.file == file]
        suite = ET.SubElement(root, "testsuite", name=file, tests=str(len(results)),
                              failures=str(sum(not r.passed for r in results)), errors="0",
                              skipped="0", time=f"{sum(r.seconds for r in results):.6f}",
                              timestamp=stamp)
        classname = Path(file).name.removesuffix(".yaml").removesuffix(".yml")
        for r in results:
            case = ET.SubElement(suite, "testcase", classname=classname, name=r.name,
                                 time=f"{r.seconds:.6f}")
            if not r.passed:
                first = r.differences[0]
                failure = ET.SubElement(
                    case, "failure", type="PolicyTestFailure",
                    message=f"{first}: expected {_show(first, r.expected[first])}, got "
                            f"{_show(first, r.got[first])}")
                failure.text = "\n".join(diff(r))
    ET.indent(root)
    return ET.ElementTree(root)
