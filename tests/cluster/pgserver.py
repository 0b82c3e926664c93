"""A private PostgreSQL server for the cluster tests: `initdb` in a temporary directory, on
a free port, that a test may stop and start without disturbing anyone else's server.

It logs every DDL statement (`log_statement = ddl`) with a millisecond time stamp: the
provisioning target's own record of each GRANT and REVOKE the connector sent.
Run as root, the server runs as the `postgres` system user (initdb refuses root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

import psycopg


def binaries() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian's layout), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """`start()`, `stop()` (fast shutdown), `start()` again; `url(db)` for each database."""

    def __init__(self, base: Path) -> None:
        bin_dir = binaries()
        if bin_dir is None:
            raise FileNotFoundError("no PostgreSQL server binaries (initdb, pg_ctl) found")
        self.bin = bin_dir
        self.base = base
        self.data = base / "data"
        self.log = base / "server.log"
        self.port = _free_port()
        self.stops = 0  # how often a test stopped it
        self._user = None
        if os.geteuid() == 0:
            self._user = pwd.getpwnam("postgres")
        base.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            os.chown(base, self._user.pw_uid, self._user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--no-sync", "-E", "UTF8", "--locale=C")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{base}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\nshared_buffers = 32MB\n"
                "log_statement = 'ddl'\nlog_line_prefix = '%m [%p] %u@%d '\n"
                "log_min_messages = warning\n")

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        cmd = [str(self.bin / args[0]), *args[1:]]
        return subprocess.run(cmd, check=check, capture_output=True, timeout=120,
                              user=self._user.pw_uid if self._user else None,
                              group=self._user.pw_gid if self._user else None)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        # -w: pg_ctl itself waits until the server accepts connections.
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "start")

    def stop(self) -> None:
        self.stops += 1
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def ready(self) -> bool:
        try:
            with psycopg.connect(self.url(), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def destroy(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        deadline = time.monotonic() + 10
        while (self.data / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # another process (the postmaster) is leaving
        shutil.rmtree(self.base, ignore_errors=True)

    def statements(self) -> list[tuple[str, str]]:
        """(time stamp, statement) of every statement the server logged so far."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if " LOG:  statement: " in line:
                stamp = " ".join(line.split(" ", 3)[:3])
                out.append((stamp, line.split(" LOG:  statement: ", 1)[1]))
        return out
