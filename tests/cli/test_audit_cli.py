"""`accord audit` end to end: key, export, verify (file and URL), tamper caught, exit codes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from typer.testing import CliRunner

from accord.cli.main import app
from tests.conftest import POLICY, LiveServer

runner = CliRunner()


def _env(tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "accord.yaml"
    config.write_text(POLICY, encoding="utf-8")
    return {"ACCORD_DATA_DIR": str(tmp_path / "data"), "ACCORD_CONFIG": str(config),
            "ACCORD_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'accord.db'}"}


def test_export_then_verify_then_tamper(tmp_path: Path) -> None:
    env = _env(tmp_path)
    for user in ("alice", "bob", "carol"):
        assert runner.invoke(app, ["token", "issue", user], env=env).exit_code == 0
    key = runner.invoke(app, ["audit", "key"], env=env).stdout.strip()
    assert key.startswith("accord.local/ledger+")
    pin = tmp_path / "pin.txt"
    pin.write_text(runner.invoke(app, ["audit", "checkpoint"], env=env).stdout)

    bundle = tmp_path / "ledger.bundle"
    r = runner.invoke(app, ["audit", "export", "--out", str(bundle)], env=env)
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["audit", "verify", "--bundle", str(bundle), "--key", key,
                            "--pin", str(pin)], env=env)
    assert r.exit_code == 0, r.output
    assert "OK: 4 entries" in r.stdout

    db = sqlite3.connect(tmp_path / "data" / "accord.db")
    db.execute("DROP TRIGGER ledger_entries_no_update")
    db.execute("UPDATE ledger_entries SET leaf = CAST(replace(CAST(leaf AS TEXT), 'bob', 'eve')"
               " AS BLOB) WHERE idx = 2")
    db.commit()
    db.close()
    r = runner.invoke(app, ["audit", "export", "--out", str(bundle)], env=env)
    assert r.exit_code == 0
    r = runner.invoke(app, ["audit", "verify", "--bundle", str(bundle), "--key", key, "--json"],
                      env=env)
    assert r.exit_code == 1
    assert '"first_bad_index": 2' in r.stdout


def test_verify_over_the_api(live: LiveServer) -> None:
    live.env.ask("alice")
    env = {"ACCORD_TOKEN": live.env.tokens["dave"]}
    key = live.env.st.ledger.signer.verifier.encode()
    r = runner.invoke(app, ["audit", "verify", "--url", live.url, "--key", key], env=env)
    assert r.exit_code == 0, r.output
    assert "OK:" in r.stdout
    denied = runner.invoke(app, ["audit", "verify", "--url", live.url],
                           env={"ACCORD_TOKEN": live.env.tokens["alice"]})
    assert denied.exit_code == 1
    assert "auditor" in denied.stderr


def test_verify_needs_a_source() -> None:
    r = runner.invoke(app, ["audit", "verify"])
    assert r.exit_code == 2
    assert "--bundle" in r.stderr
