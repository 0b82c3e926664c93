"""`accord serve --demo` (what ./scripts/demo runs) starts, seeds, and signs people in."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.serverproc import ACCORD, _free_port


def test_the_demo_serves_seeded_data_and_the_login_picker(tmp_path: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "ACCORD_DATA_DIR": str(tmp_path / ".accord")}
    env.pop("ACCORD_DATABASE_URL", None)
    env.pop("ACCORD_CONFIG", None)
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([ACCORD, "serve", "--demo", "--port", str(port)], env=env,
                                stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # another process: poll until it answers
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        printed = log.read_text()
        assert "pick a demo user" in printed
        tokens = dict(re.findall(r"^\s+(alice|dave)\s+.*?(acc_\S+)$", printed, re.M))
        assert set(tokens) == {"alice", "dave"}
        page = httpx.get(url + "/login", timeout=5)
        assert page.status_code == 200 and 'name="user"' in page.text  # the demo picker
        auth = {"Authorization": f"Bearer {tokens['dave']}"}
        items = httpx.get(url + "/api/v1/requests", params={"limit": 100}, headers=auth,
                          timeout=5).json()["items"]
        statuses = {r["status"] for r in items}
        assert {"pending", "active", "denied", "cancelled"} <= statuses
        assert any(r["emergency"] for r in items)  # the break-glass example
        deadline = time.monotonic() + 30
        alerts: list[dict[str, object]] = []
        while time.monotonic() < deadline and not alerts:  # the worker's detectors run
            alerts = httpx.get(url + "/api/v1/alerts", params={"rule": "break_glass"},
                               headers=auth, timeout=5).json()["items"]
            time.sleep(0.1)
        assert alerts and alerts[0]["status"] == "open"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
