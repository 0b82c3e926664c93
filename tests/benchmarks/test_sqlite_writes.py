"""`benchmarks/sqlite_writes.py` keeps measuring the SQLite server (a smoke run: two short
ceiling runs and a small burst against a real `accord serve`)."""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "sqlite_writes.py"


def test_a_small_run_reports_the_ceiling_and_the_burst() -> None:
    spec = importlib.util.spec_from_file_location("sqlite_writes", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sqlite_writes"] = module  # its dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
        args = module.parse_args(["--seconds", "0.5", "--concurrency", "1,2", "--burst", "24",
                                  "--burst-clients", "6", "--warmup", "2", "--json-only"])
        out = module.run(args)
    finally:  # the sibling script it imported, and the path it imported it from
        sys.modules.pop("sqlite_writes", None)
        sys.modules.pop("lifecycle", None)
        if str(SCRIPT.parent) in sys.path:
            sys.path.remove(str(SCRIPT.parent))
    assert out["ok"], out
    # Whether the default detectors raised an alert for every request filed (the time).
    assert out["off_hours_alerts"] == module.off_hours(datetime.fromisoformat(out["started"]))
    assert module.off_hours(datetime(2026, 11, 28, 3, 0, tzinfo=UTC))  # a Saturday night
    assert not module.off_hours(datetime(2026, 11, 25, 10, 0, tzinfo=UTC))  # a Wednesday
    assert set(out["ceiling"]) == {"1", "2"}
    for level in out["ceiling"].values():
        assert level["writes_per_s"] > 0 and level["2xx"] > 0 and level["5xx_other"] == 0
    burst = out["burst"]
    assert sum(burst["totals"].values()) == 24
    assert burst["totals"]["5xx_other"] == burst["totals"]["timeout"] == 0
    assert burst["totals"]["2xx"] + burst["totals"]["503"] == 24
    assert burst["healthz"]["count"] >= 1 and burst["healthz"]["timeout"] == 0
    assert out["server_log_lock_errors"] == 0
