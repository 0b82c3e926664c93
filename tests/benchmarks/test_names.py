"""A benchmark script's directory is the first entry of `sys.path` when it runs (and several
scripts put it there to import their siblings), so a script named like a package Accord
imports shadows that package for every benchmark: `benchmarks/mcp.py` once broke every
script that imports `accord.api.app` ("'mcp' is not a package")."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _elsewhere(name: str) -> bool:
    """Whether `name` imports from outside benchmarks/ (a benchmark another test imported
    is in sys.modules, where find_spec looks first: its own file is no clash)."""
    spec = importlib.util.find_spec(name)
    return spec is not None and (spec.origin is None
                                 or Path(spec.origin).resolve().parent != BENCHMARKS)


def test_no_benchmark_script_is_named_like_an_importable_module() -> None:
    here = {str(BENCHMARKS), ""}
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if p not in here and Path(p or ".").resolve() != BENCHMARKS]
    try:
        clashes = sorted(
            script.name for script in BENCHMARKS.glob("*.py")
            if script.stem in sys.stdlib_module_names or _elsewhere(script.stem))
    finally:
        sys.path[:] = saved
    assert clashes == []
