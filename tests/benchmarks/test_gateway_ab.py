"""`benchmarks/gateway_ab.py` keeps comparing two gateways (a smoke run: one pair, the same
tree with one process against two)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import PG_ADMIN_URL

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gateway_ab.py"


@pytest.mark.skipif(shutil.which("pgbench") is None, reason="pgbench is not installed")
def test_one_pair_through_two_gateways(pg_url: str) -> None:  # pg_url: PostgreSQL is up
    spec = importlib.util.spec_from_file_location("gateway_ab", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        src = str(ROOT / "src")
        out = module.compare(src, src, runs=1, seconds=1, processes="1", processes_b="2",
                             modes=["select_simple"], clients=2, scale=1,
                             admin_url=PG_ADMIN_URL)
    finally:  # the sibling script it imported, and the path it imported it from
        sys.modules.pop("gateway", None)
        sys.modules.pop("procstat", None)
        if str(SCRIPT.parent) in sys.path:
            sys.path.remove(str(SCRIPT.parent))
    result = out["select_simple"]
    assert len(result["tps"]["A"]) == len(result["tps"]["B"]) == 1
    assert min(result["tps"]["A"] + result["tps"]["B"]) > 0
    assert result["pair_ratios"] == [round(result["tps"]["B"][0] / result["tps"]["A"][0], 3)]
    assert result["b_faster_in"].endswith("of 1 pairs")
