"""`benchmarks/integrity.py` keeps running end to end (a smoke run at a tiny size: a
preloaded ledger re-hashed whole, then a monitor process beside an appender process)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from tests.conftest import PG_ADMIN_URL

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_a_tiny_ledger_and_a_short_live_run(pg_url: str) -> None:  # pg_url: PG is up
    # Imported by name, so that its spawned processes can import it too.
    sys.path.insert(0, str(BENCHMARKS))
    try:
        module = importlib.import_module("integrity")
        args = module.parse_args(["--preload", "2000", "--rate", "500", "--seconds", "1.5",
                                  "--appenders", "1", "--pg-admin-url", PG_ADMIN_URL])
        out = module.run(args)
    finally:
        sys.modules.pop("integrity", None)
        sys.path.remove(str(BENCHMARKS))
    full, live = out["full_pass"], out["live"]
    assert full["entries"] >= 2000 and full["entries_per_cpu_s"] > 0
    assert full["ledger_rehashed_whole_per_hour_at_target_rate"] > 0
    assert live["damage"] is None and live["lag_after_stop"] == 0
    assert live["appended_per_s"] > 0 and live["entries_checked"] > 0
