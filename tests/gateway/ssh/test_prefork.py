"""`accord gateway --processes 2` with the SSH front: the parent listens on the SSH port too
and each child serves the SSH connections handed to it (asyncssh on the accepted socket)."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from accord.ledger.models import LedgerEntry
from tests.gateway.ssh.conftest import World, gateway_process

pytestmark = pytest.mark.ssh


def test_two_processes_serve_ssh(world: World, tmp_path: Path) -> None:
    with gateway_process(world, tmp_path, "--processes", "2", "--log-level", "info") as (
            ssh_port, proc, log):
        deadline = time.monotonic() + 60
        while len(re.findall(r"gateway process \d \(pid \d+\) is ready", log.read_text())) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)  # another process: nothing to await but what it logs
        grant = world.grant("erin")
        token = world.token(grant, "erin")
        for n in range(3):  # connections alternate between the children
            r = world.ssh(token, f"echo child-call-{n}", port=ssh_port)
            assert r.returncode == 0 and r.stdout == f"child-call-{n}\n", r.stderr
        deadline = time.monotonic() + 30
        while True:  # the children's shippers write the ledger
            with world.env.st.sessions() as s:
                execs = [json.loads(leaf)["data"] for leaf in s.execute(
                    select(LedgerEntry.leaf).where(
                        LedgerEntry.type == "gateway.ssh_exec",
                        LedgerEntry.subject == f"grant:{grant['id']}")).scalars()]
            if len(execs) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert sorted(e["command"] for e in execs) == [f"echo child-call-{n}" for n in range(3)]
        assert len({e["session"].rsplit("-", 1)[0] for e in execs}) == 2  # both children
        proc.send_signal(signal.SIGTERM)  # and it stops cleanly
        assert proc.wait(60) == 0, log.read_text()
