"""`benchmarks/ssh.py` end to end on a tiny file: its JSON has the gateway's figures beside
direct and the bare asyncssh relay's (`benchmarks/ssh_relay.py`), and the recording store's
CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gateway.ssh.conftest import require_services

pytestmark = pytest.mark.ssh
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ssh.py"


def test_a_small_run_prints_every_figure() -> None:
    require_services()
    done = subprocess.run([sys.executable, str(SCRIPT), "--megabytes", "2", "--runs", "1",
                           "--keys", "5", "--binary"],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    speed = out["throughput_mb_s"]
    assert speed["direct"] > 0 and speed["gateway"] > 0 and speed["relay"] > 0
    assert speed["gateway_to_relay"] == pytest.approx(speed["gateway"] / speed["relay"],
                                                      rel=0.02)  # of rounded figures
    assert out["gateway_cpu_s_per_100mb"] > 0 and out["store_cpu_s_per_100mb"] >= 0
    assert out["keystroke_ms"]["gateway"]["p50"] > 0


def test_an_upload_run_sends_the_file_the_other_way() -> None:
    require_services()
    done = subprocess.run([sys.executable, str(SCRIPT), "--megabytes", "2", "--runs", "1",
                           "--keys", "5", "--upload", "--no-relay"],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    speed = json.loads(done.stdout)["throughput_mb_s"]
    assert speed["direction"] == "upload" and speed["direct"] > 0 and speed["gateway"] > 0
