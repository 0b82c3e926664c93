"""Real `accord serve` replicas and `accord worker` processes on one private PostgreSQL,
a steady load of requests and approvals against them, and what the tests look at.

Each process runs in a session of its own and is killed as a whole (`os.killpg`): a
replica with `--workers 2` is a parent (its background jobs) and two HTTP children, and
SIGKILL takes them all, as when its container or host dies.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.cluster.pgserver import PgServer
from tests.serverproc import _free_port

ACCORD = str(Path(sys.executable).parent / "accord")
TARGET = "target"  # the provisioned resource, and its database on the private server
USERS = [f"u{i:03d}" for i in range(300)]  # one request each: one login each on the target
LEADS = ["lead1", "lead2"]
DURATION = "3s"  # every grant expires moments later, all through the run
RECONCILE = 2  # seconds: how often the target is compared with the grants
INTRUDER = "intruder"  # a role granted the group by hand: drift, reported each period

POLICY = """\
users: [{users}, lead1, lead2, audit]
groups:
  engineers: [{users}]
  leads: [lead1, lead2]
  auditors: [audit]
accord: {{auditors: [auditors]}}
resources:
  - name: {target}
    roles: [read]
    owners: [leads]
    reconcile: report
    provision:
      type: postgres
      dsn_env: ACCORD_TEST_TARGET_DSN
      host: 127.0.0.1
      port: {port}
      database: {target}
      roles: {{read: {{privileges: ["SELECT ON ALL TABLES IN SCHEMA public"]}}}}
worker: {{reconcile_every: {reconcile}s}}
ledger:
  sinks: [{{name: audit, type: jsonl, path: "{sink}", max_bytes: 1000000000}}]
workflows:
  - name: all
    match: 'true'
    require_reason: false
    max_duration: 1h
    steps: [{{approvers: [leads]}}]
"""


def until(what: Callable[[], bool], timeout: float, every: float = 0.05) -> bool:
    """Whether `what` turns true within `timeout` (other processes' work: looked at often)."""
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


class Proc:
    """One `accord serve` or `accord worker`, started in a session of its own."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path,
                 port: int | None = None) -> None:
        self.name, self.args, self.env, self.log, self.port = name, args, env, log, port
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        with self.log.open("ab") as out:
            out.write(f"---- start {self.starts} of {self.name}\n".encode())
            out.flush()
            self.proc = subprocess.Popen([ACCORD, *self.args], env=self.env, stdout=out,
                                         stderr=out, start_new_session=True)
        self.starts += 1

    def ready(self) -> bool:
        """A replica answers /readyz with 200; a worker is up (its ledger LISTEN shows)."""
        assert self.alive(), self.tail()
        if self.port is None:
            return True
        try:
            return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        """SIGKILL the process and its children at once."""
        assert self.proc is not None
        self.kills += 1
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError):  # children left behind
            os.killpg(self.proc.pid, signal.SIGKILL)

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


@dataclass
class Acked:
    """What the cluster acknowledged to the clients."""

    requests: dict[int, str] = field(default_factory=dict)  # request id -> requester
    approvals: set[int] = field(default_factory=set)  # request ids whose approval got 200
    refused: list[str] = field(default_factory=list)  # answers that were not 2xx, for the report
    failed_calls: int = 0


class Load:
    """A client thread: each user files one request on one replica and a lead approves it on
    the other (a load balancer's retry: the call goes to the next replica when one fails).
    Paced, not synchronised: `every` seconds between requests."""

    def __init__(self, replicas: list[Proc], tokens: dict[str, str], users: Iterator[str],
                 every: float = 0.3) -> None:
        self.replicas = replicas
        self.tokens = tokens
        self.every = every
        self.acked = Acked()
        self.lock = threading.Lock()
        self._users = users  # shared by every load of a cluster: a user files once
        self._turn = itertools.count()
        self.stopped = 0.0  # when the load stopped (time.monotonic())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self.client = httpx.Client(timeout=10)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self.client.close()
        self.stopped = time.monotonic()

    def count(self) -> int:
        with self.lock:
            return len(self.acked.approvals)

    def _call(self, user: str, path: str, body: dict[str, Any] | None, *, retry: bool
              ) -> httpx.Response | None:
        start = next(self._turn)
        for i in range(len(self.replicas) if retry else 1):
            replica = self.replicas[(start + i) % len(self.replicas)]
            try:
                r = self.client.post(replica.url + path, json=body,
                                     headers={"Authorization": f"Bearer {self.tokens[user]}"})
            except httpx.TransportError:
                self.acked.failed_calls += 1
                continue
            if r.status_code < 500:
                return r
            self.acked.failed_calls += 1
        return None

    def _run(self) -> None:
        next_at = time.monotonic()
        for user in self._users:
            if self._stop.is_set():
                return
            # Not retried elsewhere: a request that failed may have been filed all the same,
            # and a second one would give the user two grants on one login.
            r = self._call(user, "/api/v1/requests",
                           {"resource": TARGET, "role": "read", "duration": DURATION,
                            "reason": "cluster test"}, retry=False)
            if r is not None and r.status_code == 201:
                rid = int(r.json()["id"])
                with self.lock:
                    self.acked.requests[rid] = user
                lead = LEADS[rid % 2]
                for _ in range(3):  # approving again is refused if the first one went in
                    a = self._call(lead, f"/api/v1/requests/{rid}/approve",
                                   {"comment": "ok"}, retry=True)
                    if a is not None and a.status_code == 200:
                        with self.lock:
                            self.acked.approvals.add(rid)
                        break
                    if a is not None:
                        self.acked.refused.append(f"approve {rid}: {a.status_code} {a.text}")
                        break
            elif r is not None:
                self.acked.refused.append(f"create {user}: {r.status_code} {r.text}")
            next_at += self.every
            self._stop.wait(max(0.0, next_at - time.monotonic()))


def sql(url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(query, args)
        return cur.fetchall() if cur.description is not None else []


def integrator_pid(url: str) -> int | None:
    """The OS pid of the process holding the ledger integrator role (its advisory lock)."""
    rows = sql(url, "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a"
                    " ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
                    " AND l.database = (SELECT oid FROM pg_database"
                    " WHERE datname = current_database())"
                    " AND a.application_name LIKE 'accord ledger integrator %%'")
    # application_name: "accord ledger integrator HOST:PID"
    if not rows:
        return None
    m = re.search(r":(\d+)$", str(rows[0][0]))
    return int(m.group(1)) if m else None


def free_port() -> int:
    return _free_port()


__all__ = ["POLICY", "Acked", "Load", "PgServer", "Proc", "free_port", "integrator_pid",
           "sql", "until"]
