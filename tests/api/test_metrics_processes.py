"""Multi-process mode: the directory is emptied at start, a killed process's counts stay in
the sums and its live gauges stop counting. Run in a process of its own: prometheus_client
chooses where values live once per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import json, os, signal, sys
from pathlib import Path
from accord import metrics
from tests import scrape

path = Path(sys.argv[1])
metrics.enable_multiprocess(path)
m = metrics.get()
m.http_requests.labels("/x", "GET", "200").inc()
r, w = os.pipe()
pid = os.fork()
if pid == 0:  # a worker: counts, holds a session open, and is killed
    m.http_requests.labels("/x", "GET", "200").inc(2)
    m.gateway_sessions_open.labels("postgres").inc()
    os.write(w, b"x")
    signal.pause()
os.read(r, 1)
before = metrics.exposition().decode()
os.kill(pid, signal.SIGKILL)
os.waitpid(pid, 0)
after = metrics.exposition().decode()
print(json.dumps({
    "before": [scrape.value(before, "accord_http_requests_total", route="/x"),
               scrape.value(before, "accord_gateway_sessions_open")],
    "after": [scrape.value(after, "accord_http_requests_total", route="/x"),
              scrape.value(after, "accord_gateway_sessions_open")],
}))
"""


def test_a_killed_process_counts_stay_and_its_live_gauges_go(tmp_path: Path) -> None:
    path = tmp_path / "metrics" / "serve-8000"
    path.mkdir(parents=True)
    (path / "counter_999999.db").write_bytes(b"stale")  # a previous run's: emptied at start
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)])}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], env=env, cwd=root,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["before"] == [3, 1]  # both processes' counts, the child's open session
    assert out["after"] == [3, 0]  # the killed child's counts stay; its session does not
    assert not (path / "counter_999999.db").exists()
