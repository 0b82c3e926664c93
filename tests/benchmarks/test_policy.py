"""`benchmarks/policy.py` keeps running end to end (a smoke run of each section at a tiny
size: its generated cases must all pass against its generated policy; its replay must
replay every recorded request and find the ones its candidate changes)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "policy.py"


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("policy_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_tiny_policy_passes_its_generated_cases() -> None:
    module = bench()
    args = module.parse_args(["--only", "test_cases", "--cases", "60", "--workflows", "4",
                              "--resources", "100", "--requesters", "10", "--repeat", "1",
                              "--no-cli"])
    out = module.run(args)
    cases = out["test_cases"]
    assert (cases["cases"], cases["passed"], cases["failed"]) == (60, 60, 0)
    assert cases["seconds"] > 0 and cases["cli_seconds"] is None
    assert set(out["targets"]) == {"test_cases", "all_met"}


def test_a_tiny_replay_replays_every_recorded_request() -> None:
    module = bench()
    args = module.parse_args(["--only", "replay", "--recorded", "300", "--workflows", "4",
                              "--resources", "100", "--requesters", "10", "--repeat", "1"])
    out = module.run(args)
    replay = out["replay"]
    # 300 generated, and the one request filed through service.create to check their shape
    assert replay["recorded"] == replay["replayed"] == 301
    assert replay["changed"] > 0 and replay["counts"]["outcome"] == replay["changed"]
    assert replay["counts"]["workflow"] == 0
    assert replay["seconds"] > 0 and replay["cli_seconds"] > 0 and replay["met"] is True
    assert set(out["targets"]) == {"replay", "all_met"}


def test_a_tiny_chain_check_gives_the_right_answer_for_every_shape() -> None:
    module = bench()
    out = module.run(module.parse_args(["--only", "satisfiable", "--steps", "4", "--people",
                                        "20", "--sat-repeat", "2"]))
    sat = out["satisfiable"]
    assert sat["right"] and sat["shapes"]["impossible"]["ok"] is False
    assert sat["shapes"]["tight"]["ok"] is True
    assert set(out["targets"]) == {"satisfiable", "all_met"}
