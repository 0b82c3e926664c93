"""`benchmarks/gateway.py` on a machine without pgbench or pgbouncer says what to install
and exits 2, instead of a FileNotFoundError traceback."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gateway.py"


def _load(monkeypatch: pytest.MonkeyPatch, script: str) -> Any:
    """A benchmark script imported as a module, its sibling modules importable."""
    path = SCRIPT.with_name(script)
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    spec.loader.exec_module(module)
    return module


def test_missing_tools_are_named_with_how_to_install_them(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    module = _load(monkeypatch, "gateway.py")
    monkeypatch.setattr(module, "PGBOUNCER", "/nonexistent/pgbouncer")
    monkeypatch.setattr(module, "PGBENCH", "/nonexistent/pgbench")
    assert set(module.missing_tools(False)) == {"pgbench", "pgbouncer"}
    assert set(module.missing_tools(True)) == {"pgbench"}
    monkeypatch.setattr(sys, "argv", ["gateway.py", "--runs", "1", "--seconds", "1"])
    assert module.main() == 2
    out, err = capsys.readouterr()
    said = json.loads(out)
    assert said["error"] == "missing tools" and "pgbouncer" in said["missing"]
    assert "apt-get install pgbouncer" in err and "--no-pgbouncer" in err


def test_gateway_mysql_names_haproxy_when_it_is_asked_for_and_missing(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`gateway_mysql.py --targets ...,haproxy` where HAProxy is not installed says how to
    install it and exits 2 (by default the run goes on without it)."""
    module = _load(monkeypatch, "gateway_mysql.py")
    monkeypatch.setattr(module, "SYSBENCH", sys.executable)  # present: not the one missing
    monkeypatch.setattr(module, "HAPROXY", None)
    monkeypatch.setattr(sys, "argv", ["gateway_mysql.py", "--targets", "direct,haproxy"])
    assert module.main() == 2
    said = json.loads(capsys.readouterr().out)
    assert "apt-get install haproxy" in said["error"]


def test_gateway_mysql_pin_needs_two_cpus(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`gateway_mysql.py --pin` on one CPU says so and exits 2 (there is no core to give
    the proxies), before it touches MariaDB or PostgreSQL."""
    module = _load(monkeypatch, "gateway_mysql.py")
    monkeypatch.setattr(module, "SYSBENCH", sys.executable)
    monkeypatch.setattr(module.os, "cpu_count", lambda: 1)
    monkeypatch.setattr(sys, "argv", ["gateway_mysql.py", "--pin", "--targets",
                                      "direct,gateway", "--mariadb", "mysql://x@192.0.2.1/"])
    assert module.main() == 2
    assert "two CPUs" in json.loads(capsys.readouterr().out)["error"]
