"""`benchmarks/policy.py` keeps running end to end (a smoke run at a tiny size: its generated
cases must all pass against its generated policy)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "policy.py"


def test_a_tiny_policy_passes_its_generated_cases() -> None:
    spec = importlib.util.spec_from_file_location("policy_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = module.parse_args(["--cases", "60", "--workflows", "4", "--resources", "100",
                              "--requesters", "10", "--repeat", "1", "--no-cli",
                              "--steps", "4", "--people", "20", "--sat-repeat", "2"])
    out = module.run(args)
    cases = out["test_cases"]
    assert (cases["cases"], cases["passed"], cases["failed"]) == (60, 60, 0)
    assert cases["seconds"] > 0 and cases["cli_seconds"] is None
    sat = out["satisfiable"]
    assert sat["right"] and sat["shapes"]["impossible"]["ok"] is False
    assert set(out["targets"]) == {"test_cases", "satisfiable", "all_met"}
