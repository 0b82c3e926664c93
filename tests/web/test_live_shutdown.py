"""`accord serve` stopping with a page open: its live stream ends at once, quietly.

A page left open holds a server-sent event stream. Stopped with Ctrl-C, the server used to
wait out its 5 s grace period for that stream, then cancel it, and uvicorn logged the
cancellation as "Exception in ASGI application" with a traceback.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import POLICY
from tests.serverproc import Server


def test_an_open_live_stream_ends_quietly_when_the_server_stops(tmp_path: Path) -> None:
    config = tmp_path / "accord.yaml"
    config.write_text(POLICY + "web: {local_login: true}\n", encoding="utf-8")
    env = {**os.environ, "ACCORD_DATABASE_URL": f"sqlite:///{tmp_path / 'accord.db'}",
           "ACCORD_DATA_DIR": str(tmp_path)}
    log = tmp_path / "server.log"
    server = Server(env, config, log)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            form = http.get("/login").text
            pre = re.search(r'name="csrf" value="([^"]+)"', form)
            assert pre
            r = http.post("/login/demo", data={"user": "alice", "csrf": pre.group(1)},
                          headers={"Origin": server.url})
            assert r.status_code == 303, r.text
            opened, ended = threading.Event(), threading.Event()

            def follow() -> None:
                with http.stream("GET", "/live") as stream:
                    for _ in stream.iter_bytes():
                        opened.set()
                ended.set()

            reader = threading.Thread(target=follow, daemon=True)
            reader.start()
            assert opened.wait(10), "the live stream did not open"
            assert server.proc is not None
            started = time.monotonic()
            server.proc.send_signal(signal.SIGINT)
            assert ended.wait(10), "the live stream outlived the server"
            assert server.proc.wait(timeout=30) == 0
            took = time.monotonic() - started
            reader.join(5)
    finally:
        server.stop()
    text = log.read_text()
    assert "Exception in ASGI application" not in text and "Traceback" not in text, text
    assert took < 4, f"the server waited {took:.1f} s for an open page (grace: 5 s)"
