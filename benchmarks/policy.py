"""Policies proven before they go live, at scale. One section per figure; `main` runs the
sections asked for (all by default) and prints one JSON object.

- **test_cases**: `accord policy test` on 1,000 cases against a generated policy of 50
  workflows and 500 resources (target: under 2 s). Timed in-process from the files on disk
  to the report (reading and compiling the policy, reading and checking the cases, running
  them), as the command does after Python started; `cli_seconds` is the whole command in a
  fresh interpreter, start-up included. Every case must pass: the generator knows what each
  request must get.

- **satisfiable**: the joint check that a chain's steps can be filled by distinct people
  (`accord.policy.satisfiable.fill`) on a 10-step chain with 200 eligible people a step, in
  five shapes (one shared pool, overlapping pools, random pools, a tight fit, one short):
  target under 10 ms each, worst of 50.

Further sections add a function `section_<name>(args) -> dict` and an entry in SECTIONS.

    .venv/bin/python benchmarks/policy.py                       # every section, the issue's sizes
    .venv/bin/python benchmarks/policy.py --only test_cases --cases 1000 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET_TEST_CASES_S = 2.0
ADMINS = [f"adm{i}" for i in range(5)]
MAX_DURATION_H = 8


# ---------------------------------------------------------------- the generated policy


def policy_text(workflows: int, resources: int, requesters: int) -> str:
    """`workflows` workflows each matching one team's resources (label `team: tK`), in
    file order, so a request of team K evaluates K+1 matches; the resources of team
    `workflows` match none (default deny). Even teams auto-approve engineers' reads."""
    people = [f"u{j}" for j in range(requesters)] + ADMINS + [
        name for k in range(workflows) for name in (f"lead{k}", f"own{k}a", f"own{k}b")]
    lines = [f"users: [{', '.join(people)}]", "groups:",
             f"  engineers: [{', '.join(f'u{j}' for j in range(0, requesters, 2))}]",
             f"  admins: [{', '.join(ADMINS)}]"]
    for k in range(workflows):
        lines += [f"  leads-t{k}: [lead{k}]", f"  owners-t{k}: [own{k}a, own{k}b]"]
    lines += ["accord: {admins: [admins]}", "resources:"]
    for i in range(resources):
        team = _team(i, workflows)
        owners = f"owners-t{team}" if team < workflows else "admins"
        lines.append(f"  - {{name: r{i}, kind: postgres, labels: {{team: t{team}}}, "
                     f"owners: [{owners}], roles: [read, write, admin]}}")
    lines.append("workflows:")
    for k in range(workflows):
        lines += [f"  - name: w{k}",
                  f"    match: 'resource.labels.team == \"t{k}\"'",
                  f"    max_duration: {MAX_DURATION_H}h",
                  "    auto_deny: 'size(request.reason) < 10'"]
        if k % 2 == 0:
            lines.append("    auto_approve: '\"engineers\" in request.requester.groups && "
                         "request.role == \"read\"'")
        lines += [f"    steps: [{{name: lead, approvers: [leads-t{k}]}}, "
                  "{name: owner, approvers: [owners]}]",
                  "    elevated: {roles: [admin], steps: [{approvers: [admins], "
                  "min_approvals: 2}]}"]
    return "\n".join(lines) + "\n"


def _team(resource: int, workflows: int) -> int:
    """Resource i's team: one in 50 belongs to no workflow's team (default deny)."""
    return workflows if resource % 50 == 49 else resource % workflows


def cases_text(count: int, workflows: int, resources: int, requesters: int,
               seed: int = 7) -> str:
    """`count` cases with what each must get, derived from how policy_text is built."""
    rnd = random.Random(seed)
    out = ["cases:"]
    for n in range(count):
        j, i = rnd.randrange(requesters), rnd.randrange(resources)
        role = rnd.choice(["read", "read", "write", "admin"])
        hours = rnd.choice([1, 2, 4, MAX_DURATION_H + 2])
        reason = rnd.choice(["short", "INC-1234: investigate the orders backlog"])
        team = _team(i, workflows)
        if team == workflows:
            expect = "{outcome: denied, rule: default_deny, workflow: null}"
        elif hours > MAX_DURATION_H:
            expect = f"{{outcome: refused, workflow: w{team}}}"
        elif reason == "short":
            expect = f"{{outcome: denied, rule: auto_deny, workflow: w{team}}}"
        elif team % 2 == 0 and role == "read" and j % 2 == 0:
            expect = f"{{outcome: approved, rule: auto_approve, workflow: w{team}}}"
        else:
            steps = f"[lead{team}], [own{team}a, own{team}b]"
            if role == "admin":
                steps += f", [{', '.join(ADMINS)}]"
            expect = (f"{{outcome: pending, rule: match, workflow: w{team}, steps: [{steps}], "
                      f"elevated: {'true' if role == 'admin' else 'false'}}}")
        out += [f"  - name: case {n}",
                f"    request: {{requester: u{j}, resource: r{i}, role: {role}, "
                f"duration: {hours}h, reason: \"{reason}\"}}",
                f"    expect: {expect}"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- sections


def section_test_cases(args: argparse.Namespace) -> dict[str, Any]:
    """`accord policy test`: N cases against a policy of W workflows and R resources."""
    from accord.policy.engine import Policy
    from accord.requests import policy_tests
    from accord.spec.load import load_policy_file

    with tempfile.TemporaryDirectory(prefix="accord-bench-policy-") as tmp:
        config = Path(tmp) / "accord.yaml"
        config.write_text(policy_text(args.workflows, args.resources, args.requesters),
                          encoding="utf-8")
        tests = Path(tmp) / "accord.tests.yaml"
        tests.write_text(cases_text(args.cases, args.workflows, args.resources,
                                    args.requesters), encoding="utf-8")
        runs: list[dict[str, float]] = []
        report = None
        for _ in range(args.repeat):
            began = time.perf_counter()
            policy = Policy(load_policy_file(config))
            loaded_at = time.perf_counter()
            files = policy_tests.load(policy, [tests])
            checked_at = time.perf_counter()
            report = policy_tests.run(policy, files)
            done = time.perf_counter()
            runs.append({"total": done - began, "policy": loaded_at - began,
                         "cases": checked_at - loaded_at, "run": done - checked_at})
        assert report is not None
        cli = _cli_seconds(config, tests) if args.cli else None
    best = min(runs, key=lambda r: r["total"])
    median = statistics.median(r["total"] for r in runs)
    return {
        "cases": args.cases, "workflows": args.workflows, "resources": args.resources,
        "people": args.requesters + 2 * args.workflows + args.workflows + len(ADMINS),
        "passed": report.passed, "failed": len(report.failed),
        "seconds": round(median, 4),
        "best": {k: round(v, 4) for k, v in best.items()},
        "ms_per_case": round(best["run"] / args.cases * 1000, 4),
        "repeat": args.repeat,
        "cli_seconds": round(cli, 3) if cli is not None else None,
        "target_s": TARGET_TEST_CASES_S,
        "met": median < TARGET_TEST_CASES_S and not report.failed,
    }


def _cli_seconds(config: Path, tests: Path) -> float:
    """The whole command, in a fresh interpreter: what a CI job waits for."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "accord.cli.main", "policy", "test",
                           "-c", str(config), str(tests)], env=env, capture_output=True,
                          text=True, check=False)
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"accord policy test exited {proc.returncode}:\n"
                         f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return seconds


# ---------------------------------------------------------------- satisfiable


TARGET_SATISFIABLE_MS = 10.0


def chains(steps: int, people: int, seed: int = 7) -> dict[str, Any]:
    """Chains of `steps` steps with `people` eligible people each, in the shapes that cost
    the matching most: one shared pool (every step competes for the same people), pools
    that overlap their neighbours', random pools, a tight fit (the steps need exactly as
    many approvals as there are people), and an impossible one (one short)."""
    from accord.policy.satisfiable import Step

    rng = random.Random(seed)
    pool = [f"p{i:05d}" for i in range(people * steps)]
    shared = frozenset(pool[:people])
    need = max(1, people // steps)  # tight: the steps need all the shared people
    return {
        "shared_pool": [Step(shared, 2, f"s{i}") for i in range(steps)],
        "overlapping": [Step(frozenset(pool[i * people // 2:i * people // 2 + people]), 3,
                             f"s{i}") for i in range(steps)],
        "random": [Step(frozenset(rng.sample(pool, people)), 2, f"s{i}")
                   for i in range(steps)],
        "tight": [Step(shared, need, f"s{i}") for i in range(steps)],
        "impossible": [Step(shared, need + (1 if i == steps - 1 else 0), f"s{i}")
                       for i in range(steps)],
    }


def section_satisfiable(args: argparse.Namespace) -> dict[str, Any]:
    """The joint check of a chain (`accord.policy.satisfiable.fill`), as routing, each
    approval and each reload run it: median and worst milliseconds per shape."""
    from accord.policy.satisfiable import fill

    shapes: dict[str, Any] = {}
    worst = 0.0
    for name, steps in chains(args.steps, args.people).items():
        times = []
        for _ in range(args.sat_repeat):
            t0 = time.perf_counter()
            filling = fill(steps, exclude={"requester"})
            times.append((time.perf_counter() - t0) * 1000)
        worst = max(worst, max(times))
        shapes[name] = {"ok": filling.ok, "median_ms": round(statistics.median(times), 3),
                        "max_ms": round(max(times), 3)}
    # The generator knows which shapes can be filled: a wrong answer fails the run.
    right = all(shapes[n]["ok"] == (n != "impossible") for n in shapes)
    return {"steps": args.steps, "people_per_step": args.people, "shapes": shapes,
            "worst_ms": round(worst, 3), "target_ms": TARGET_SATISFIABLE_MS,
            "right": right, "met": right and worst < TARGET_SATISFIABLE_MS}


SECTIONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "test_cases": section_test_cases,
    "satisfiable": section_satisfiable,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--only", action="append", choices=sorted(SECTIONS),
                   help="run this section (again for several); default: all")
    p.add_argument("--cases", type=int, default=1000, help="test_cases: cases (1000)")
    p.add_argument("--workflows", type=int, default=50, help="test_cases: workflows (50)")
    p.add_argument("--resources", type=int, default=500, help="test_cases: resources (500)")
    p.add_argument("--requesters", type=int, default=200,
                   help="test_cases: requesters, half of them engineers (200)")
    p.add_argument("--repeat", type=int, default=3,
                   help="test_cases: timed runs; the median is reported (3)")
    p.add_argument("--no-cli", dest="cli", action="store_false",
                   help="test_cases: skip timing the whole command in a fresh interpreter")
    p.add_argument("--steps", type=int, default=10, help="satisfiable: steps a chain (10)")
    p.add_argument("--people", type=int, default=200,
                   help="satisfiable: eligible people a step (200)")
    p.add_argument("--sat-repeat", type=int, default=50,
                   help="satisfiable: checks timed per shape (50)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "loadavg_before":
                                       [round(x, 2) for x in os.getloadavg()],
                                       "python": sys.version.split()[0]}}
    for name in args.only or list(SECTIONS):
        out[name] = SECTIONS[name](args)
    out["targets"] = {name: out[name].get("met") for name in SECTIONS if name in out}
    out["targets"]["all_met"] = all(v for v in out["targets"].values())
    return out


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT / "src"))  # this checkout's accord, whatever is installed
    print(json.dumps(run(parse_args(argv)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
