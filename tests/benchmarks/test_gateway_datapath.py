"""`benchmarks/gateway_datapath.py` keeps measuring the real data path (a smoke run)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from accord.gateway import spool

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gateway_datapath.py"


@pytest.fixture(scope="module")
def datapath():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gateway_datapath", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gateway_datapath"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gateway_datapath", None)


@pytest.mark.parametrize("kind", ["simple", "extended"])
def test_the_loop_runs_every_statement_through_the_spool(datapath, kind: str,  # type: ignore[no-untyped-def]
                                                         tmp_path: Path) -> None:
    us, writer = datapath.run(kind, 300, tmp_path)
    assert us > 0
    reader = spool.Reader(writer.dir)
    reader.poll()
    facts = reader.take()
    statements = [f for f in facts if f[1] == spool.STATEMENT]
    assert len(statements) == 350  # 50 warm-up transactions, then 300
    assert all(f[4][9] == "ok" and f[4][6] == "SELECT 1" and f[4][7] == 1 for f in statements)
    texts = {f[4][3] for f in statements}
    if kind == "simple":  # the warm-up sent the first 50 texts again
        assert len(texts) == 300 and all(t.startswith("SELECT abalance") for t in texts)
    else:  # the client's text, though the server ran the statement prepared for reuse
        assert texts == {"SELECT abalance FROM pgbench_accounts WHERE aid = $1;"}


def test_the_read_only_loop_records_each_statement_with_its_rows(datapath,  # type: ignore[no-untyped-def]
                                                                tmp_path: Path) -> None:
    us, writer = datapath.run("mysql_read_only", 3, tmp_path)
    assert us > 0
    reader = spool.Reader(writer.dir)
    reader.poll()
    statements = [f[4] for f in reader.take() if f[1] == spool.STATEMENT]
    assert len(statements) == 8 * 16  # 5 warm-up transactions, then 3
    rows = {(row[3], row[6], row[7]) for row in statements if row[9] == "ok"}
    assert len(rows) == 7 and len(statements) == sum(1 for row in statements if row[9] == "ok")
    assert ("SELECT c FROM sbtest1 WHERE id BETWEEN ? AND ?", "ROWS", 100) in rows
    assert ("SELECT c FROM sbtest1 WHERE id=?", "ROWS", 1) in rows
    assert ("COMMIT", "OK", 0) in rows
