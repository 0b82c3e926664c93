"""`accord serve --workers 2` whose parent is SIGKILLed alone (the OOM killer picks one
process): its HTTP workers stop by themselves and free the port, so the replica can be
started again. (uvicorn's workers went on serving as orphans, holding the socket.)"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from tests.conftest import POLICY
from tests.serverproc import Server


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has stopped


def test_http_workers_stop_when_their_parent_is_killed(tmp_path: Path) -> None:
    config = tmp_path / "accord.yaml"
    config.write_text(POLICY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCORD_")}
    env.update({"ACCORD_DATA_DIR": str(tmp_path / "data"), "ACCORD_CONFIG": str(config)})
    server = Server(env, config, tmp_path / "serve.log", ("--workers", "2"))
    children: list[int] = []
    try:
        server.start(timeout=180)  # three processes to start: give a busy machine time
        assert server.proc is not None
        children = _children(server.proc.pid)
        assert len(children) >= 2, children  # the HTTP workers (and a resource tracker)
        server.kill()  # the parent alone
        deadline = time.monotonic() + 60  # a second, and a graceful stop, on a busy machine
        while any(_running(c) for c in children):  # other processes: poll with a deadline
            assert time.monotonic() < deadline, (children, server.log.read_text()[-3000:])
            time.sleep(0.05)
        try:
            httpx.get(server.url + "/readyz", timeout=2)
            answered = True
        except httpx.TransportError:
            answered = False
        assert not answered, "an orphaned worker still serves the port"
    finally:
        server.stop()
        for child in children:  # a failed run's orphans
            if _running(child):
                os.kill(child, signal.SIGKILL)
