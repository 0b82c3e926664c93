"""A real `accord serve` process for tests that need one (signals, crashes)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ACCORD = str(Path(sys.executable).parent / "accord")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, env: dict[str, str], config: Path, log: Path,
                 args: tuple[str, ...] = ()) -> None:
        self.env, self.config, self.log, self.args = env, config, log, args
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [ACCORD, "serve", "--port", str(self.port), "--config", str(self.config),
                 "--log-level", "warning", *self.args], env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # waiting on another process: nothing to await
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError("server did not start: " + self.log.read_text())

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


class Demo:
    """A real `accord serve --demo` (what ./scripts/demo runs) in `home`, as a newcomer
    starts it: its printed tokens and lines are parsed from what it wrote."""

    def __init__(self, home: Path, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("ACCORD_DATABASE_URL", "ACCORD_CONFIG", "ACCORD_URL",
                                 "ACCORD_TOKEN")}
        self.env.update({"ACCORD_DATA_DIR": str(home / ".accord"), **(env or {})})
        self.log = home / "demo.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.printed = ""
        self.tokens: dict[str, str] = {}

    def start(self) -> Demo:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([ACCORD, "serve", "--demo", "--port", str(self.port)],
                                         env=self.env, cwd=self.home, stdout=out, stderr=out)
        deadline = time.monotonic() + 60
        while True:  # another process: poll until it answers
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "demo did not start: " + self.log.read_text()
            time.sleep(0.05)
        self.printed = self.log.read_text()
        banner = re.search(r"\nAccord demo: .*?\n  export ACCORD_DATA_DIR=[^\n]*\n", self.printed,
                           re.S)
        if banner:  # the demo shows its users' tokens on purpose: not a leak
            from tests.leakcheck.plugin import intended_output

            intended_output(self.log, banner.group(0))
        self.tokens = dict(re.findall(r"^  (alice|bob|carol|dave|erin|frank|gina)\s+.*?(acc_\S+)$",
                                      self.printed, re.M))
        return self

    def line(self, pattern: str) -> str:
        """The one printed line matching `pattern` (a regex), stripped."""
        found = [ln.strip() for ln in self.printed.splitlines() if re.search(pattern, ln)]
        assert len(found) == 1, (pattern, self.printed)
        return found[0]

    def headers(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def client_env(self, user: str = "alice") -> dict[str, str]:
        """The environment of a shell that ran the export lines the demo printed."""
        exports = dict(re.findall(r"(ACCORD_\w+)=(\S+)", " ".join(
            ln for ln in self.printed.splitlines() if ln.strip().startswith("export "))))
        path = f"{Path(ACCORD).parent}{os.pathsep}{self.env.get('PATH', '')}"  # activated
        return {**self.env, **exports, "ACCORD_TOKEN": self.tokens[user], "PATH": path}

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


@contextlib.contextmanager
def demo_postgres_lock() -> Iterator[None]:
    """One demo on PostgreSQL at a time: its role names (orders-db's) are cluster-wide."""
    import fcntl
    import tempfile

    with (Path(tempfile.gettempdir()) / "accord-demo-postgres.lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
