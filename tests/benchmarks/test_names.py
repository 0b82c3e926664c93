"""A benchmark script's directory is the first entry of `sys.path` when it runs (and several
scripts put it there to import their siblings), so a script named like a package Accord
imports shadows that package for every benchmark: `benchmarks/mcp.py` once broke every
script that imports `accord.api.app` ("'mcp' is not a package")."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_no_benchmark_script_is_named_like_an_importable_module() -> None:
    here = {str(BENCHMARKS), ""}
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if p not in here and Path(p or ".").resolve() != BENCHMARKS]
    try:
        clashes = sorted(
            script.name for script in BENCHMARKS.glob("*.py")
            if script.stem in sys.stdlib_module_names
            or importlib.util.find_spec(script.stem) is not None)
    finally:
        sys.path[:] = saved
    assert clashes == []
