"""Reading `accord.yaml`: `load_policy_file` returns every problem at once, each with its
path (`workflows[1].steps[0].approvers: unknown group "lead"`), so an operator fixes a
file in one pass."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from accord.spec.checks import PolicyProblem, check_references
from accord.spec.file import PolicyFile


class PolicyError(Exception):
    """accord.yaml could not be loaded; `problems` lists every reason."""

    def __init__(self, problems: list[PolicyProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


@dataclass(frozen=True)
class LoadedPolicy:
    """A validated policy file with the sha256 of its exact bytes."""

    spec: PolicyFile
    version: str
    text: str
    source: str


def _loc(parts: tuple[int | str, ...]) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return out


def parse_policy_text(text: str, source: str = "<string>") -> LoadedPolicy:
    """Validate policy text; raise PolicyError listing every problem with its path."""
    version = hashlib.sha256(text.encode()).hexdigest()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError([PolicyProblem(where, f"not valid YAML: {problem}")]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PolicyError([PolicyProblem("", "the file must be a mapping at the top level")])
    structural: list[PolicyProblem] = []
    spec = None
    # Validate; on errors drop the offending optional keys and retry, so cross-reference
    # problems elsewhere in the file are reported in the same pass. List items are never
    # dropped: their indices must stay true in the paths we print.
    for _attempt in range(20):
        try:
            spec = PolicyFile.model_validate(raw)
            break
        except ValidationError as exc:
            removed = False
            for err in exc.errors():
                problem = PolicyProblem(_loc(tuple(err["loc"])), _pydantic_message(err))
                if problem not in structural:
                    structural.append(problem)
                removed |= _drop(raw, err["loc"])
            if not removed:
                break
    problems = structural + (check_references(spec) if spec is not None else [])
    if problems or spec is None:
        raise PolicyError(problems)
    return LoadedPolicy(spec=spec, version=version, text=text, source=source)


def _pydantic_message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown field"
    if err["type"] == "missing":
        return "is required"
    return str(err["msg"]).removeprefix("Value error, ")


def _drop(raw: Any, loc: tuple[int | str, ...]) -> bool:
    """Delete the mapping key at `loc` if it is not required; True if something went."""
    node = raw
    for part in loc[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False
    key = loc[-1] if loc else None
    required = {"name", "roles", "approvers", "owner"}
    if isinstance(node, dict) and key in node and key not in required:
        del node[key]
        return True
    return False


def load_policy_file(path: Path) -> LoadedPolicy:
    """Read and validate `accord.yaml`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError([PolicyProblem("", f"{path}: no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError([PolicyProblem("", f"{path}: cannot read: {exc}")]) from None
    return parse_policy_text(text, source=str(path))
