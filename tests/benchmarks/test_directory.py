"""`benchmarks/directory.py` keeps running end to end (a smoke run at a tiny size: a real
server, a SCIM push, a big-ish PATCH, requests before and after)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from tests.conftest import PG_ADMIN_URL

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "directory.py"


def test_a_tiny_push_and_requests_before_and_after(pg_url: str) -> None:  # pg_url: PG is up
    spec = importlib.util.spec_from_file_location("directory_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        args = module.parse_args(["--users", "30", "--groups", "4", "--members", "5",
                                  "--patch-members", "10", "--requests", "20", "--rounds", "1",
                                  "--clients", "2", "--scim-clients", "2",
                                  "--server-workers", "1",
                                  "--pg-admin-url", PG_ADMIN_URL, "--quiet"])
        out = module.run(args)
    finally:  # the sibling script it imported, and the path it imported it from
        sys.modules.pop("lifecycle", None)
        if str(SCRIPT.parent) in sys.path:
            sys.path.remove(str(SCRIPT.parent))
    assert out["errors"] == []
    assert (out["users"], out["groups"], out["memberships"]) == (30, 4, 20)
    assert out["push"]["operations"] == 34 and out["push"]["seconds"] > 0
    assert out["patch"]["members_added"] == 10 and out["patch"]["seconds"] is not None
    requests = out["requests"]
    assert requests["small_directory"]["completed"] == 20
    assert requests["loaded_directory"]["completed"] == 20
    assert requests["loaded_over_small"] > 0
